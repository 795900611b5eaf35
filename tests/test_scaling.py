"""The scaling study as an experiment family (workflow/rules/scaling.smk, lungseg.training.scaling): one run
per mode and device count (`lungseg train-scaling run`), put side by side with speed-up and efficiency
(`lungseg train-scaling table`); switched on with scaling.enabled."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from test_training import make_case

from lungseg.cli import main
from lungseg.training import scaling
from lungseg.training.rule_args import write_train_settings


def record(mode: str, devices: int, train_s: float, study: str = "s1", **extra: object) -> dict:
    return {"mode": mode, "devices": devices, "batch_per_process": 8, "global_batch": 8 * devices if mode == "ddp" else 8,
            "epochs": 2, "threads_per_process": 1, "wall_s": train_s + 5, "train_s": train_s,
            "images_per_s": 400 / train_s, "final_train_loss": 0.5, "final_val_dice": 0.9, "best_val_dice": 0.92,
            "study": study, **extra}


def write_runs(root: Path, records: list[dict], with_curves: bool = True) -> list[Path]:
    paths = []
    for r in records:
        run_dir = root / scaling.run_name(r["mode"], r["devices"])
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps(r))
        if with_curves:
            (run_dir / "metrics.csv").write_text("epoch,train_loss,val_dice\n1,1.0,0.5\n2,0.5,0.9\n")
        paths.append(run_dir / "run.json")
    return paths


def test_aggregate_speedup_and_efficiency_of_known_runs() -> None:
    runs = [record("fedavg", 4, 20.0), record("ddp", 2, 25.0), record("single", 1, 40.0), record("ddp", 4, 16.0),
            record("fedavg", 2, 32.0)]
    rows = scaling.aggregate(runs)
    assert [(r["mode"], r["devices"]) for r in rows] == [("single", 1), ("ddp", 2), ("fedavg", 2), ("ddp", 4),
                                                         ("fedavg", 4)]
    got = {(r["mode"], r["devices"]): (r["speedup"], r["efficiency"]) for r in rows}
    assert got[("single", 1)] == (1.0, 1.0)
    assert got[("ddp", 2)] == pytest.approx((1.6, 0.8))
    assert got[("fedavg", 2)] == pytest.approx((1.25, 0.625))
    assert got[("ddp", 4)] == pytest.approx((2.5, 0.625))
    assert got[("fedavg", 4)] == pytest.approx((2.0, 0.5))
    # without the single-process run there is no baseline: NaN, not a made-up number
    assert all(math.isnan(r["speedup"]) and math.isnan(r["efficiency"]) for r in scaling.aggregate(runs[:2]))
    with pytest.raises(ValueError, match="different studies"):
        scaling.aggregate([record("single", 1, 40.0), record("ddp", 2, 25.0, study="other")])
    with pytest.raises(ValueError, match="ddp-2 is given twice"):
        scaling.aggregate([record("ddp", 2, 25.0), record("ddp", 2, 26.0)])


def test_table_command_writes_csv_and_figure(tmp_path: Path) -> None:
    paths = write_runs(tmp_path / "runs", [record("single", 1, 40.0), record("ddp", 2, 25.0), record("fedavg", 2, 32.0)])
    table, plot = tmp_path / "scaling.csv", tmp_path / "scaling.png"
    assert main(["train-scaling", "table", "--runs", *map(str, paths), "--table", str(table), "--plot", str(plot)]) == 0
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == scaling.FIELDS
    assert [(r["mode"], r["devices"], r["speedup"], r["efficiency"]) for r in rows] == [
        ("single", "1", "1.000", "1.000"), ("ddp", "2", "1.600", "0.800"), ("fedavg", "2", "1.250", "0.625")]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # a missing or incomplete run record: exit 1, nothing written
    (tmp_path / "bad.json").write_text(json.dumps({"mode": "ddp"}))
    assert main(["train-scaling", "table", "--runs", str(tmp_path / "bad.json"), "--table", str(tmp_path / "t.csv"),
                 "--plot", str(tmp_path / "p.png")]) == 1
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "p.png").exists()


def test_one_run_records_what_the_table_needs(tmp_path: Path) -> None:
    """`lungseg train-scaling run`: one tiny single-process run (1 epoch, one training and one validation case)."""
    train_case, val_case = make_case(tmp_path / "train.h5", 1), make_case(tmp_path / "val.h5", 2)
    settings = tmp_path / "settings.json"
    write_train_settings({"base_channels": 4, "depth": 2, "image_size": 32, "batch_size": 4, "roi": "none",
                          "mode": "fedavg", "local_epochs": 2}, settings)  # the study sets mode / local_epochs itself
    out = tmp_path / "runs" / "single-1"
    assert main(["train-scaling", "run", "--mode", "single", "--devices", "1", "--train", train_case, "--val", val_case,
                 "--out-dir", str(out), "--epochs", "1", "--train-config", str(settings)]) == 0
    run = json.loads((out / scaling.RUN_RECORD).read_text())
    assert set(scaling.RUN_FIELDS) <= set(run)
    assert (run["mode"], run["devices"], run["epochs"], run["batch_per_process"], run["global_batch"]) == (
        "single", 1, 1, 4, 4)
    assert run["wall_s"] > run["train_s"] > 0 and run["images_per_s"] > 0
    assert 0 <= run["final_val_dice"] <= run["best_val_dice"] <= 1 and math.isfinite(run["final_train_loss"])
    assert "mode" not in json.loads((out / "train_settings.json").read_text())
    rows = scaling.aggregate(scaling.read_runs([out / scaling.RUN_RECORD]))
    assert rows[0]["speedup"] == rows[0]["efficiency"] == 1.0
    # a run that fails: exit 1, the reason in the log, no run record
    assert main(["train-scaling", "run", "--mode", "single", "--devices", "1", "--train", str(tmp_path / "none.h5"),
                 "--val", val_case, "--out-dir", str(out), "--epochs", "1"]) == 1
    assert not (out / scaling.RUN_RECORD).exists() and (out / "run.log").read_text()


# ---------------------------------------------------------------- the workflow


@pytest.fixture(scope="module")
def split_run(tmp_path_factory) -> Path:
    """A tiny demo workflow run up to the split (the study's jobs are planned from fold 0's cases)."""
    from test_workflow_experiments import smk, tiny_config

    workdir = tmp_path_factory.mktemp("scaling")
    tiny_config(workdir)
    smk(workdir, "--cores", "2", "results/split.tsv")
    return workdir


@pytest.mark.slow
def test_devices_plan_one_job_per_mode_and_count_and_disabled_plans_none(split_run: Path) -> None:
    from test_workflow_experiments import jobs, smk, tiny_config

    tiny_config(split_run, scaling={"enabled": True, "devices": [1, 2]})
    planned = jobs(smk(split_run, "-n").stdout)
    runs = sorted((w["mode"], w["devices"]) for rule, w in planned if rule == "scaling_run")
    assert runs == [("ddp", "2"), ("fedavg", "2"), ("single", "1")], planned
    assert [rule for rule, _ in planned].count("scaling") == 1
    tiny_config(split_run, scaling={"enabled": False, "devices": [1, 2]})
    planned = [rule for rule, _ in jobs(smk(split_run, "-n").stdout)]
    assert "train" in planned and not {"scaling_run", "scaling", "scaling_settings"} & set(planned), planned
