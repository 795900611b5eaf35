"""lungseg sweep: grid parsing and checks, metrics summary, table, and a real sweep with submitit's
local executor (one run trains, one fails and is reported). The SLURM sweep is in test_slurm_cluster.py."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lungseg.casefile import CaseVolume, write_case
from lungseg.cluster.sweep import (
    RunResult,
    RunSpec,
    SweepError,
    check_grid_keys,
    expand_grid,
    format_table,
    last_error_line,
    parse_grid,
    summarize_metrics,
    torchrun_command,
)
from lungseg.cluster.sweep_cli import _train_option_names
from lungseg.geometry import Geometry

#: lungseg train options for a run of a few seconds on the tiny cases below
TINY_TRAIN = ["--epochs", "1", "--image-size", "32", "--base-channels", "4", "--batch-size", "4"]


def write_tiny_cases(folder: Path, n: int = 3, slices: int = 6, size: int = 48) -> list[str]:
    """``n`` ingested cases: a bright disc per slice on a noisy dark background, labelled lung."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:size, :size]
    paths = []
    for i in range(n):
        image = rng.normal(-800.0, 30.0, (slices, size, size))
        mask = np.zeros((slices, size, size), np.uint8)
        for z in range(slices):
            cy, cx = rng.uniform(14, size - 14, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(6, 11) ** 2
            image[z][disc] += 850.0
            mask[z][disc] = 1
        geometry = Geometry((0.8, 0.8, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        path = folder / f"case{i}.h5"
        write_case(path, CaseVolume(f"case{i}", image.astype(np.int16), geometry, labels={"lung": mask}))
        paths.append(str(path))
    return paths


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


# ---------------------------------------------------------------- grid


def test_grid_is_the_product_of_its_axes_in_order() -> None:
    specs = expand_grid(parse_grid(["arch=unet,dense_unet", "nproc=1,2", "mode=ddp,fedavg"]))
    assert len(specs) == 8
    first = specs[0]
    assert first.name == "arch-unet_nproc-1_mode-ddp"
    assert first.values == {"arch": "unet", "nproc": "1", "mode": "ddp"}
    assert (first.nproc, first.nodes) == (1, 1)
    assert first.train_args == ("--arch", "unet", "--mode", "ddp")  # nproc shapes the job, not train
    assert specs[-1].name == "arch-denseunet_nproc-2_mode-fedavg" and specs[-1].nproc == 2
    assert expand_grid({})[0].name == "run"  # no grid: one run with the common options


def test_grid_keys_with_dashes_map_to_train_options() -> None:
    (spec,) = expand_grid(parse_grid(["batch-size=4"]))
    assert spec.values == {"batch_size": "4"} and spec.train_args == ("--batch-size", "4")


@pytest.mark.parametrize("items, message", [
    (["arch"], "write KEY=V1,V2"),
    (["arch="], "write KEY=V1,V2"),
    (["arch=unet", "arch=dense_unet"], "given twice"),
])
def test_malformed_grid_items_are_refused(items: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_grid(items)


def test_grid_keys_are_checked_against_lungseg_train() -> None:
    options = _train_option_names()
    assert {"arch", "epochs", "batch_size", "lr"} <= options
    check_grid_keys(parse_grid(["arch=unet", "nproc=1,2", "nodes=1", "lr=0.1,0.01"]), options)
    with pytest.raises(SweepError, match="no option --epoks"):
        check_grid_keys(parse_grid(["epoks=1"]), options)
    with pytest.raises(SweepError, match="sets --out-dir itself"):
        check_grid_keys(parse_grid(["out_dir=a,b"]), options)
    with pytest.raises(SweepError, match="positive integer"):
        check_grid_keys(parse_grid(["nproc=0,2"]), options)


def test_torchrun_command_per_layout() -> None:
    one = torchrun_command(RunSpec("r", {}, nproc=2), 0, "n1", "77")
    assert one[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"] and "--standalone" in one
    two = torchrun_command(RunSpec("r", {}, nproc=4, nodes=2), 1, "n1", "77")
    assert "--nnodes=2" in two and "--node_rank=1" in two and "--rdzv_backend=c10d" in two
    assert "--rdzv_endpoint=n1:20077" in two and "--standalone" not in two


# ---------------------------------------------------------------- summary and table


def test_metrics_summary(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_loss,val_dice,lr,images_per_s,epoch_seconds\n"
                    "1,0.9,0.8,0.5,0.01,100,2.0\n2,0.7,0.6,0.75,0.005,120,1.5\n3,0.6,0.65,0.7,0.001,,1.5\n")
    assert summarize_metrics(path) == {"epochs": 3, "images_per_s": 110.0, "final_train_loss": 0.6,
                                       "best_val_dice": 0.75, "train_seconds": 5.0}
    path.write_text("epoch,train_loss\n")
    with pytest.raises(ValueError, match="no epoch rows"):
        summarize_metrics(path)


def test_last_error_line_prefers_lungseg_reason(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("2026 lungseg.train ERROR image_size 32 is too small for depth 9\nTraceback ...\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n=====\n")
    assert last_error_line(log) == "image_size 32 is too small for depth 9"
    log.write_text("Traceback\nValueError: bad thing\n")
    assert last_error_line(log) == "ValueError: bad thing"


def test_table_text_lists_failures() -> None:
    spec_ok, spec_bad = RunSpec("nproc-1", {"nproc": "1"}), RunSpec("nproc-2", {"nproc": "2"}, nproc=2)
    text = format_table([RunResult(spec_ok, "ok", "11", {"wall_s": 3.2, "best_val_dice": 0.8}),
                         RunResult(spec_bad, "failed", "12", error="out of memory")], ["nproc"])
    header, ok, bad = text.splitlines()
    assert header.split()[:4] == ["run", "nproc", "status", "job_id"]
    assert ok.split()[:5] == ["nproc-1", "1", "ok", "11", "3.2"]
    assert bad.split()[:4] == ["nproc-2", "2", "failed", "12"] and bad.endswith("out of memory")


# ---------------------------------------------------------------- CLI


def lungseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungseg", *args], capture_output=True, text=True, timeout=timeout)


def test_sweep_refuses_bad_grid_before_submitting(tmp_path: Path) -> None:
    proc = lungseg("sweep", "--executor", "local", "--train", "a.h5", "--val", "b.h5", "--out-dir", str(tmp_path),
                   "--grid", "epoks=1,2")
    assert proc.returncode == 2 and "lungseg train has no option --epoks" in proc.stderr
    proc = lungseg("sweep", "--executor", "local", "--train", "a.h5", "--val", "b.h5", "--out-dir", str(tmp_path),
                   "--", "--threads", "4")
    assert proc.returncode == 2 and "--threads after --: the sweep sets it" in proc.stderr
    assert not (tmp_path / "submitit").exists()


def test_local_sweep_trains_and_reports_the_failed_run(tmp_path: Path) -> None:
    cases = write_tiny_cases(tmp_path / "cases")
    out = tmp_path / "sweep"
    # depth 9 needs 512-pixel images: that run fails in lungseg train's checks
    proc = lungseg("sweep", "--executor", "local", "--train", *cases[:2], "--val", cases[2], "--out-dir", str(out),
                   "--grid", "depth=2,9", "--", *TINY_TRAIN)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one run failed
    table = read_table(out / "sweep.csv")
    assert set(table) == {"depth-2", "depth-9"}
    ok, bad = table["depth-2"], table["depth-9"]
    assert ok["status"] == "ok" and ok["depth"] == "2" and not ok["error"]
    assert int(ok["epochs"]) == 1 and float(ok["wall_s"]) > 0 and float(ok["images_per_s"]) > 0
    assert 0.0 <= float(ok["best_val_dice"]) <= 1.0 and float(ok["final_train_loss"]) > 0
    assert (out / "runs/depth-2/model.pt").is_file()
    assert bad["status"] == "failed" and "too small for depth 9" in bad["error"]
    assert "1 ok, 1 failed" in proc.stdout and "depth-9" in proc.stdout
