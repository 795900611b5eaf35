"""Rerun semantics of the DAG (README "Rerunning"): what reruns after changed DICOM data or changed
training settings, `--list-changes params`, and the `--forcerun` / `--until` recipes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.slow
CASES = ["demo001", "demo002", "demo003"]


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def smk(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def jobs(output: str) -> list[tuple[str, str | None]]:
    """(rule, case) of every job that a Snakemake run or dry run lists."""
    found: list[tuple[str, str | None]] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ", "checkpoint ")) and line.endswith(":"):
            found.append((line.split()[1].rstrip(":"), None))
        elif line.startswith("wildcards: case=") and found:
            found[-1] = (found[-1][0], line.split("=", 1)[1])
    return found


def rules(output: str) -> set[str]:
    return {rule for rule, _ in jobs(output)}


def status_plan(summary: str) -> dict[str, tuple[str, str]]:
    """`snakemake --summary` -> {output: (status, plan)}."""
    lines = [line.split("\t") for line in summary.splitlines() if "\t" in line]
    header = lines[0]
    status, plan = header.index("status"), header.index("plan")
    return {row[0]: (row[status], row[plan]) for row in lines[1:] if len(row) == len(header)}


def write_config(workdir: Path, **train: object) -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["demo"].update(n_cases=len(CASES), slices=8, size=64)
    config["train"].update(epochs=1, image_size=32, base_channels=4, depth=2, batch_size=8, nproc_per_node=1)
    config["train"].update(train)
    config.pop("experiments")  # one experiment, named after train.arch: unet
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))


def targets(workdir: Path) -> list[str]:
    """Everything up to the metrics (the report figures are other tests' business)."""
    return [*(f"results/lungmask/{c}.qa.json" for c in CASES), "results/metrics/summary.json"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("rerun")
    write_config(workdir)
    smk(workdir, "--cores", "2", *targets(workdir))
    return workdir


def preprocessing_mtimes(workdir: Path) -> dict[str, float]:
    files = [*(workdir / "results/ingest").glob("*.h5"), *(workdir / "results/lungmask").glob("*.nii.gz")]
    assert len(files) == 2 * len(CASES)
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_forcerun_and_until_recipes(run_dir: Path) -> None:
    """The README's recipes (targets go before --forcerun, which takes several values)."""
    # retrain, nothing after it
    assert rules(smk(run_dir, "-n", "--forcerun", "train", "--until", "train")) == {"train"}
    # retrain and predict
    assert rules(smk(run_dir, "-n", "--forcerun", "train", "--until", "predict")) == {"train", "predict"}
    # redo inference and metrics, keep the model
    planned = rules(smk(run_dir, "-n", *targets(run_dir), "--forcerun", "predict"))
    assert {"predict", "evaluate", "aggregate"} <= planned and "train" not in planned, planned
    # the lung masks of every case, nothing else
    planned = jobs(smk(run_dir, "-n", "--forcerun", "lung_mask", "--until", "lung_mask"))
    assert sorted(planned) == [("lung_mask", c) for c in CASES], planned
    # one case's preprocessing
    planned = jobs(smk(run_dir, "-n", "results/lungmask/demo002.qa.json", "--forcerun", "results/ingest/demo002.h5"))
    assert sorted(planned) == [("ingest", "demo002"), ("lung_mask", "demo002")], planned


def test_changed_dicom_of_one_case_reruns_only_that_case(run_dir: Path) -> None:
    """New pixel data in one slice (not just a touch): that case's ingest and lung mask, and what uses them."""
    dicom = sorted((run_dir / "resources/demo/demo003/dicom").iterdir())[2]
    ds = pydicom.dcmread(dicom)
    pixels = ds.pixel_array.copy()
    pixels[:8, :8] = np.asarray(pixels.max(), pixels.dtype)
    ds.PixelData = pixels.tobytes()
    time.sleep(1)
    ds.save_as(dicom)
    planned = jobs(smk(run_dir, "-n", *targets(run_dir)))
    per_case = {(rule, case) for rule, case in planned if case}
    assert {("ingest", "demo003"), ("lung_mask", "demo003")} <= per_case, planned
    assert {case for rule, case in per_case if rule in ("ingest", "lung_mask")} == {"demo003"}, planned
    assert "demo_case" not in {rule for rule, _ in planned}  # the generator does not rerun
    ran = {(rule, case) for rule, case in jobs(smk(run_dir, "--cores", "2", *targets(run_dir))) if case}
    assert {case for rule, case in ran if rule in ("ingest", "lung_mask")} == {"demo003"}, ran
    assert "Nothing to be done" in smk(run_dir, "-n", *targets(run_dir))


def test_changed_training_settings_rerun_training_and_below_only(run_dir: Path) -> None:
    before = preprocessing_mtimes(run_dir)
    write_config(run_dir, lr=0.01)  # the last test of this module: no need to restore
    # `--summary`: status "params changed" marks exactly the training outputs, plan "update pending"
    # what follows from them. (`--list-changes params` of Snakemake 9.27 lists every output that
    # has stored params, changed or not; it still lists the model.)
    summary = status_plan(smk(run_dir, "--summary", *targets(run_dir)))
    changed = {path for path, (status, _) in summary.items() if status == "params changed"}
    # the experiment's settings file, and its model (whose checkpoint folder is keyed by the settings)
    assert changed == {"results/experiments/unet/train_settings.json", "results/experiments/unet/folds/0/model.pt",
                       "results/experiments/unet/folds/0/metrics.csv"}, summary
    pending = {path for path, (_, plan) in summary.items() if plan == "update pending"}
    assert any(p.startswith("results/experiments/unet/predictions/") for p in pending), pending
    assert "results/metrics/summary.json" in pending
    assert not {p for p in pending if p.startswith(("results/ingest/", "results/lungmask/", "resources/"))}, pending
    assert "results/experiments/unet/train_settings.json" in smk(run_dir, "--list-changes", "params", *targets(run_dir))
    dry = smk(run_dir, "-n", *targets(run_dir))
    assert "params have changed since last execution:\n        train_settings\n" in dry
    planned = rules(dry)
    assert {"train", "predict", "evaluate", "aggregate"} <= planned, planned
    assert not planned & {"demo_case", "ingest", "lung_mask", "split"}, planned
    ran = rules(smk(run_dir, "--cores", "2", *targets(run_dir)))
    assert "train" in ran and not ran & {"demo_case", "ingest", "lung_mask", "split"}, ran
    assert preprocessing_mtimes(run_dir) == before  # preprocessing outputs untouched
    assert "Nothing to be done" in smk(run_dir, "-n", *targets(run_dir))
