"""Real multi-process training on CPU (gloo): DDP equivalence, exact federated weighting, and killing a
2-process torchrun run with SIGTERM (mid-epoch) and SIGKILL, then resuming to the uninterrupted result."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_training import make_case, read_rows

from lungseg.training.models import build_model
from lungseg.training.preemption import REQUEUE_EXIT_CODE
from lungseg.training.train import TrainConfig, seed_everything, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_args(train_cases: list[str], val_cases: list[str], out_dir: Path, *extra: str) -> list[str]:
    return ["-m", "lungseg", "train", "--train", *train_cases, "--val", *val_cases, "--out-dir", str(out_dir),
            "--base-channels", "4", "--depth", "2", "--image-size", "32", "--threads", "2", "--device", "cpu", *extra]


def checkpoint_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)["model"]


def test_ddp_two_processes_batch_b_equal_one_process_batch_2b(tmp_path: Path) -> None:
    # 4 training slices: one step of 2 x 2 slices under DDP, one step of 4 slices in one process.
    # GroupNorm and BCE are per-sample, so the two are the same computation (BatchNorm statistics and
    # the batch-pooled Dice term are per process and would differ; SyncBatchNorm needs CUDA).
    train_case = make_case(tmp_path / "train.h5", 1, n=4)
    val_case = make_case(tmp_path / "val.h5", 2, n=2)
    opts = ["--epochs", "1", "--norm", "group", "--loss", "bce", "--optimizer", "sgd", "--lr", "0.5"]
    proc = subprocess.run([*TORCHRUN, *tiny_args([train_case], [val_case], tmp_path / "ddp", *opts, "--batch-size", "2")],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stderr
    config = TrainConfig(base_channels=4, depth=2, image_size=32, epochs=1, norm="group", loss="bce", optimizer="sgd",
                         lr=0.5, batch_size=4, threads=1)
    train(config, [train_case], [val_case], tmp_path / "single")
    seed_everything(0)
    init = build_model("unet", **config.model_kwargs()).state_dict()
    ddp, single = checkpoint_weights(tmp_path / "ddp"), checkpoint_weights(tmp_path / "single")
    moved = 0
    for key, value in single.items():
        assert torch.allclose(ddp[key], value, rtol=1e-4, atol=1e-6), key
        moved += not torch.equal(value, init[key])
    assert moved > len(single) // 2  # the step really changed the weights
    assert read_rows(tmp_path / "ddp" / "metrics.csv")[0]["train_loss"] == \
        read_rows(tmp_path / "single" / "metrics.csv")[0]["train_loss"]


def _client_model(rank: int) -> torch.nn.Module:
    """A small U-Net with different random weights and buffers per client."""
    torch.manual_seed(100 + rank)
    model = build_model("unet", base_channels=2, depth=2)
    with torch.no_grad():
        for value in model.state_dict().values():
            value.uniform_(0.5, 2.0) if value.is_floating_point() else value.fill_(10 * (rank + 1))
    return model


def _fedavg_worker(rank: int, init_file: str, out_dir: str, sizes: list[int]) -> None:
    import torch.distributed as dist

    from lungseg.training.distributed import weighted_average_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(sizes))
    model = _client_model(rank)
    weighted_average_(model, sizes[rank] / sum(sizes))
    torch.save(model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_fedavg_average_is_exactly_nk_weighted(tmp_path: Path) -> None:
    sizes = [3, 7]
    mp.start_processes(_fedavg_worker, args=(str(tmp_path / "init"), str(tmp_path), sizes), nprocs=2,
                       start_method="spawn")
    clients = [_client_model(rank).state_dict() for rank in range(2)]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    n = sum(sizes)
    for key, value in r0.items():
        assert torch.equal(value, r1[key]), key  # every client holds the same global model
        if value.is_floating_point():
            expected = (clients[0][key].double() * (sizes[0] / n) + clients[1][key].double() * (sizes[1] / n)).float()
            assert torch.equal(value, expected), key
            assert not torch.equal(value, (clients[0][key] + clients[1][key]) / 2), key  # not a plain mean
        else:
            assert int(value) == 20  # BatchNorm's batch counter: the maximum


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def _kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its workers in their own
    sessions, so a process-group kill would miss them), as a node failure or an OOM kill would."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    for pid in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before '{text}':\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"'{text}' not logged within {timeout} s:\n{log.read_text()[-3000:]}")


def test_kill_two_process_run_with_sigterm_and_sigkill_then_resume(tmp_path: Path) -> None:
    d = tmp_path / "cases"
    d.mkdir()
    train_cases = [make_case(d / f"t{i}.h5", i, n=20) for i in range(3)]
    val_cases = [make_case(d / "v.h5", 9, n=2)]
    # 60 slices, batch 1 on each of 2 processes: 30 steps per epoch; BatchNorm, BCE + Dice, Adam, augmentation
    extra = ["--epochs", "2", "--batch-size", "1", "--lr", "0.003", "--log-every", "1"]
    guard = [sys.executable, "-m", "lungseg", "train-guard", "--", *TORCHRUN]
    run = tiny_args(train_cases, val_cases, tmp_path / "run", *extra)

    reference = subprocess.run([*TORCHRUN, *tiny_args(train_cases, val_cases, tmp_path / "ref", *extra)],
                               capture_output=True, text=True, timeout=300, env=ENV)
    assert reference.returncode == 0, reference.stderr[-3000:]

    # SIGTERM to the job (as SLURM at the time limit) during epoch 1: checkpoint mid-epoch, exit 75
    proc = _start([*guard, *run], tmp_path / "a.log")
    _wait_for(proc, tmp_path / "a.log", "epoch 1/2 step 3/30")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == REQUEUE_EXIT_CODE, (tmp_path / "a.log").read_text()[-3000:]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and 3 <= state["position"]["step"] < 30  # mid-epoch 1: nothing lost
    assert not (tmp_path / "run" / "metrics.csv").exists()

    # restart; SIGKILL every process of the job (no chance to save) during epoch 2
    proc = _start([*guard, *run], tmp_path / "b.log")
    _wait_for(proc, tmp_path / "b.log", "epoch 2/2 step 3/30")
    _kill_tree(proc.pid)
    proc.wait(timeout=60)
    log_b = (tmp_path / "b.log").read_text()
    assert f"at epoch 1/2, step {state['position']['step']}" in log_b  # resumed where SIGTERM stopped it
    time.sleep(0.5)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len(read_rows(tmp_path / "run" / "metrics.csv")) == 1

    # restart: resumes from the end of epoch 1 (the killed, unfinished epoch 2 is the only loss) and finishes
    final = subprocess.run([*guard, *run], capture_output=True, text=True, timeout=300, env=ENV)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "at epoch 2/2 (best" in final.stdout + final.stderr
    ref, got = checkpoint_weights(tmp_path / "ref"), checkpoint_weights(tmp_path / "run")
    for key, value in ref.items():
        assert torch.allclose(value.float(), got[key].float(), rtol=1e-5, atol=1e-6), key
    ref_rows, got_rows = read_rows(tmp_path / "ref" / "metrics.csv"), read_rows(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in got_rows] == ["1", "2"]
    for a, b in zip(ref_rows, got_rows):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert float(a["val_dice"]) == pytest.approx(float(b["val_dice"]), abs=1e-5)
    assert np.isfinite(float(got_rows[-1]["val_loss"]))
