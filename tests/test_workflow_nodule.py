"""The nodule demo (config/nodule.yaml, issue 13) end to end at tiny size: patch models trained and run by
sliding window, the classical nodule baseline, per-nodule metrics, FROC and its figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_workflow_experiments import jobs, smk

pytestmark = pytest.mark.slow


def nodule_config(workdir: Path) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in yaml.safe_load((REPO / "config/nodule.yaml").read_text()).items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    config["results"] = "results"
    config["demo"].update(n_cases=6, slices=24, size=96, nodules_per_case=[1, 3], nodule_diameter_mm=[12, 30],
                          folder="resources/demo")
    config["train"].update(epochs=1, base_channels=4, depth=2, batch_size=4, patch_size=32, patches_per_epoch=16)
    config["experiments"]["unet3d"] = {"arch": "unet3d", "context_slices": 0, "patch_depth": 4}  # the 3-D option
    # two-stage detection (config/nodule_two_stage.yaml) on the classical detector's candidates (a 1-epoch U-Net's
    # probability map is one component per scan), a tiny classifier
    config["detection"] = {**yaml.safe_load((REPO / "config/nodule_two_stage.yaml").read_text())["detection"],
                           "candidates": "classical_nodule", "patch_size": 32, "classifier": {"epochs": 2, "batch_size": 16}}
    config["evaluate"]["bootstrap_samples"] = 100
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def nodule_run(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("nodule")
    nodule_config(workdir)
    run = smk(workdir, "--cores", "2", "-p")
    return workdir, run.stdout + run.stderr


def test_every_split_has_nodules_and_the_models_are_patch_models(nodule_run) -> None:
    workdir, _ = nodule_run
    results = workdir / "results"
    parts = {}
    for line in (results / "split.tsv").read_text().splitlines()[1:]:
        case, _, part, _ = line.split("\t")
        status = json.loads((results / "ingest" / f"{case}.status.json").read_text())
        parts.setdefault(part, []).append(status)
    assert set(parts) == {"train", "val", "test"}
    import torch

    for experiment, kind in (("unet_2_5d", [1, 32, 32]), ("unet3d", [4, 32, 32])):
        state = torch.load(results / f"experiments/{experiment}/folds/0/model.pt", weights_only=True)
        assert state["input"]["kind"] == "patches" and state["input"]["patch_size"] == kind


def test_two_stage_detection_rescores_the_candidates_of_the_test_scans(nodule_run) -> None:
    workdir, log = nodule_run
    results = workdir / "results"
    import torch

    state = torch.load(results / "experiments/candidate_classifier/folds/0/model.pt", weights_only=True)
    assert state["classification"]["heads"] == {"candidate": ["non_nodule", "nodule"]}
    test = [line.split("\t")[0] for line in (results / "split.tsv").read_text().splitlines()[1:] if "\ttest\t" in line]
    scores = (results / "detection/scores.tsv").read_text().splitlines()
    assert scores[0].split("\t")[:3] == ["case", "patient", "nodule"] and "p_nodule" in scores[0]
    assert {row.split("\t")[0] for row in scores[1:]} <= set(test)
    for case in test:  # every test scan rescored: the candidate table's rows are the scan's candidates
        assert (results / f"detection/predictions/{case}.probabilities.nii.gz").is_file()
        table = (results / f"candidates/{case}.nodules.tsv").read_text().splitlines()
        assert sum(row.startswith(f"{case}\t") for row in scores[1:]) == len(table) - 1
    summary = json.loads((results / "metrics/summary.json").read_text())
    assert "classical_nodule_fp_reduced" in summary
    comparison = json.loads((results / "comparison/comparison.json").read_text())
    assert comparison["methods"]["classical_nodule_fp_reduced"]["kind"] == "experiment"
    assert "lungseg rescore-candidates" in log and "--candidate-threshold 0.00392" in log
    # the candidate score chosen on the validation scans' candidates (one fold: the val split), never the test scans
    choice = json.loads((results / "detection/score.json").read_text())
    validation = [line.split("\t")[0] for line in (results / "split.tsv").read_text().splitlines()[1:] if "\tval\t" in line]
    assert choice["chosen"] in ("classifier", "product") and choice["n_scans"] == len(validation)
    scored = (results / "detection/validation/0.scores.tsv").read_text().splitlines()[1:]
    assert {row.split("\t")[0] for row in scored} == set(validation) and "--score-choice" in log


def test_sliding_window_predictions_baseline_froc_and_report(nodule_run) -> None:
    workdir, log = nodule_run
    results = workdir / "results"
    assert "lungseg nodule-baseline" in log and "--probabilities" in log
    summary = json.loads((results / "metrics/summary.json").read_text())
    assert {"unet_2_5d", "unet3d", "classical_nodule", "all_background"} <= set(summary)
    for method in ("unet_2_5d", "unet3d", "classical_nodule"):
        assert "froc" in summary[method] or summary[method].get("no_reference_nodules"), method
        assert "nodules" in summary[method] or summary[method].get("no_reference_nodules"), method
    assert (results / "report/froc.png").stat().st_size > 1000
    assert "Nodules" in (results / "report/metrics.html").read_text()
    # a second dry run has nothing to do
    assert not [rule for rule, _ in jobs(smk(workdir, "-n").stdout) if rule != "all"]
