"""A SIGTERM / SIGUSR1 to any process of a guarded 2-process torchrun training (the guard, torchrun, one
worker, or all at once as at a SLURM time limit) gives a checkpoint, exit 75 and one line without a
traceback; the same command then resumes and finishes. Real processes on CPU (gloo)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from test_training import make_case
from test_training_distributed import ENV, TORCHRUN, _wait_for, tiny_args

from lungseg.training.guard import StopReportFilter
from lungseg.training.preemption import REQUEUE_EXIT_CODE


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    d = tmp_path_factory.mktemp("cases")
    # 40 slices, batch 1 on each of 2 processes: 20 steps per epoch
    return [make_case(d / f"t{i}.h5", i, n=20) for i in range(2)], [make_case(d / "v.h5", 9, n=2)]


def _targets(guard: psutil.Process, target: str) -> list[psutil.Process]:
    torchrun = guard.children()[0]
    workers = torchrun.children()
    assert len(workers) == 2, workers
    rank1 = [w for w in workers if w.environ().get("RANK") == "1"]  # not the rank that writes the checkpoint
    return {"guard": [guard], "torchrun": [torchrun], "worker": rank1, "all": [guard, torchrun, *workers]}[target]


@pytest.mark.parametrize(("target", "sig"), [
    ("guard", signal.SIGTERM), ("torchrun", signal.SIGTERM), ("worker", signal.SIGTERM),
    ("torchrun", signal.SIGUSR1), ("all", signal.SIGTERM),
])
def test_signal_to_any_process_checkpoints_exits_75_in_one_line_and_resumes(
        cases, tmp_path: Path, target: str, sig: signal.Signals) -> None:
    out_dir, log = tmp_path / "run", tmp_path / "stopped.log"
    command = [sys.executable, "-m", "lungseg", "train-guard", "--", *TORCHRUN,
               *tiny_args(*cases, out_dir, "--epochs", "3", "--batch-size", "1", "--log-every", "1")]
    with open(log, "w") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=ENV)
    try:
        _wait_for(proc, log, "epoch 1/3 step 2/20")
        for process in _targets(psutil.Process(proc.pid), target):
            process.send_signal(sig)
        assert proc.wait(timeout=120) == REQUEUE_EXIT_CODE, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    guard_lines = [line for line in text.splitlines() if line.startswith("lungseg train-guard:")]
    assert guard_lines == [f"lungseg train-guard: stopped by {sig.name}; the training wrote its checkpoint in "
                           f"--out-dir: the same command resumes it (exit {REQUEUE_EXIT_CODE})"], text[-3000:]
    assert text.rstrip().endswith(guard_lines[0])
    state = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    where = (f"epoch {state['position']['epoch'] + 1}, step {state['position']['step']}" if state["position"]
             else f"epoch {state['epoch'] + 1}, step 0")
    assert text.count(f"stopped by {sig.name} at {where}; resumable checkpoint") == 1, text[-3000:]  # rank 0's line

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out_dir / 'checkpoint.pt'}" in rerun.stderr and "Traceback" not in rerun.stderr
    assert torch.load(out_dir / "checkpoint.pt", weights_only=True)["epoch"] == 3


def test_stop_report_filter_streams_output_and_drops_torchruns_report_after_a_stop() -> None:
    out, stopped = io.BytesIO(), [False]
    report = StopReportFilter(out, lambda: stopped[0])
    report.write(b"\repoch 1/3:  10%|#")
    assert out.getvalue() == b"\repoch 1/3:  10%|#"  # a partial line (progress bar) passes at once
    report.write(b"  | 2/20\nTraceback (most recent call last):\n  File x\nValueError: before a stop\n")
    stopped[0] = True
    report.write(b"rank 0 WARNING stopped by SIGTERM at epoch 1, step 2\nE1130 11:19:58.879000 5437 "
                 b"/torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 75)\nTrace")
    report.write(b"back (most recent call last):\n  File y\nChildFailedError:\n====\nrank 1\n")
    report.close()
    assert out.getvalue().decode() == ("\repoch 1/3:  10%|#  | 2/20\nTraceback (most recent call last):\n  File x\n"
                                       "ValueError: before a stop\nrank 0 WARNING stopped by SIGTERM at epoch 1, step 2\n")
