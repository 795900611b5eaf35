"""Experiments and k-fold cross-validation in the DAG (issue 12): E experiments x K folds are E*K training
jobs, a changed experiment reruns only its own jobs, the test cases are predicted by the fold ensemble,
config/cv.yaml runs, and bad folds or experiments stop the workflow at start in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.slow
EXPERIMENTS = {"unet": {}, "dense_unet": {"arch": "dense_unet"}, "unet_lr": {"lr": 0.01}}


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a Snakemake run or dry run lists."""
    found: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ", "checkpoint ")) and line.endswith(":"):
            found.append((line.split()[1].rstrip(":"), {}))
        elif line.startswith("wildcards: ") and found:
            found[-1][1].update(item.split("=", 1) for item in line[len("wildcards: "):].split(", "))
    return found


def tiny_config(workdir: Path, **changes: object) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["demo"].update(n_cases=5, slices=12, size=64)
    config["train"].update(epochs=1, image_size=32, base_channels=4, depth=2, batch_size=8)
    config["scaling"].update(epochs=1, image_size=32)
    config["evaluate"]["bootstrap_samples"] = 200
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory) -> Path:
    """3 experiments x 2 folds on 5 tiny demo cases, run up to the comparison."""
    workdir = tmp_path_factory.mktemp("experiments")
    tiny_config(workdir, experiments={"reference": "unet", **EXPERIMENTS},
                split={"folds": 2, "fractions": [0.8, 0.0, 0.2]})
    smk(workdir, "--cores", "2", "results/split.tsv")
    return workdir


def test_experiments_times_folds_are_separate_training_jobs(grid_run: Path) -> None:
    planned = [w for rule, w in jobs(smk(grid_run, "-n").stdout) if rule == "train"]
    assert sorted((w["experiment"], w["fold"]) for w in planned) == sorted(
        (e, str(k)) for e in EXPERIMENTS for k in range(2)), planned


def test_run_ensemble_out_of_fold_and_comparison(grid_run: Path) -> None:
    run = smk(grid_run, "--cores", "2", "-p", "results/comparison/comparison.json", "results/report/comparison.html")
    results = grid_run / "results"
    split = [line.split("\t") for line in (results / "split.tsv").read_text().splitlines()[1:]]
    test = [case for case, _, part, _ in split if part == "test"]
    assert test and {fold for _, _, part, fold in split if part != "test"} == {"0", "1"}
    # the test cases: one prediction per experiment from the ensemble of its two fold models
    commands = [line for line in run.stdout.splitlines() + run.stderr.splitlines() if "lungseg predict" in line]
    ensemble = [c for c in commands if "/predictions/" in c and "/out_of_fold/" not in c]
    assert ensemble and all(c.count("--model") == 2 and "folds/0/model.pt" in c and "folds/1/model.pt" in c
                            for c in ensemble), ensemble
    comparison = json.loads((results / "comparison/comparison.json").read_text())
    assert comparison["reference"] == "unet"
    assert set(comparison["methods"]) == {*EXPERIMENTS, "classical_threshold_3d", "all_background"}
    for name in EXPERIMENTS:
        method = comparison["methods"][name]
        assert method["folds"] == 2 and method["training"]["jobs"] == 2
        cv = method["cross_validation"]
        assert [f["fold"] for f in cv["folds"]] == [0, 1] and cv["pooled"]["n"] == len(split) - len(test)
        assert (method["difference"] is None) == (name == "unet")
    assert "dense_unet" in (results / "report/comparison.html").read_text()


def test_changing_one_experiment_reruns_only_its_jobs(grid_run: Path) -> None:
    config = yaml.safe_load((grid_run / "config/config.yaml").read_text())
    config["experiments"]["unet_lr"] = {"lr": 0.02}
    config["experiments"]["added"] = {"base_channels": 8}  # a new experiment trains, the others do not
    (grid_run / "config/config.yaml").write_text(yaml.safe_dump(config))
    planned = jobs(smk(grid_run, "-n", "results/comparison/comparison.json").stdout)
    trained = sorted((w["experiment"], w["fold"]) for rule, w in planned if rule == "train")
    assert trained == [("added", "0"), ("added", "1"), ("unet_lr", "0"), ("unet_lr", "1")], trained
    predicted = {w["experiment"] for rule, w in planned if rule.startswith("predict")}
    assert predicted == {"added", "unet_lr"}, planned


def test_cv_config_runs_five_folds(tmp_path: Path) -> None:
    """config/cv.yaml on top of config/config.yaml, at tiny size: five fold models, the ensemble, CV Dice."""
    cv = yaml.safe_load((REPO / "config/cv.yaml").read_text())
    tiny_config(tmp_path, **{**cv, "demo": {**cv["demo"], "n_cases": 7}})
    smk(tmp_path, "--cores", "2", f"{cv['results']}/comparison/comparison.json")
    results = tmp_path / cv["results"]
    assert sorted(p.parent.name for p in results.glob("experiments/unet/folds/*/model.pt")) == ["0", "1", "2", "3", "4"]
    method = json.loads((results / "comparison/comparison.json").read_text())["methods"]["unet"]
    assert [f["fold"] for f in method["cross_validation"]["folds"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"split": {"folds": 9, "fractions": [0.8, 0.0, 0.2]}}, "split.folds = 9"),
        ({"experiments": {"unet": {}, "dense": {"arch": "dense_unet", "epoks": 3}}}, "experiments.dense.epoks"),
        ({"experiments": {"lr-0.01": {}, "grid": {"lr": [0.01]}}}, "lr-0.01"),
        ({"experiments": {"bad name": {}}}, "bad name"),
    ],
)
def test_bad_folds_and_experiments_stop_at_start_in_one_line(tmp_path: Path, changes: dict, expected: str) -> None:
    tiny_config(tmp_path, **changes)
    proc = smk(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) < 15, out
    assert not (tmp_path / "results").exists()
