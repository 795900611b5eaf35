"""The GPU check (issue 20): lungseg's CUDA path in one prepared run, or its reduced form on CPU.

On a CUDA machine (the full form, about 5 minutes on one H100/H200, at most 8 by design; every
section is time-boxed and the JSON is rewritten after every check, so an interrupted run keeps what
it measured):

* ``environment``: GPU model, memory, driver (nvidia-smi), CUDA, cuDNN, NCCL and torch versions, CPU, date.
* ``correctness``: one step of lungseg's training loop (:func:`lungseg.training.train.train`, SGD so
  the update is the gradient) on the GPU against the same step on the CPU, fp32 (TF32, as lungseg
  trains) and bf16 autocast; a checkpoint written on the GPU resumed on the CPU and the reverse
  (against an uninterrupted run); ``lungseg predict`` on the CPU against the same model on the GPU
  (:class:`lungseg.api.Segmenter`; the command has no device option).
* ``ddp``: a real torchrun launch of ``lungseg train`` with one process per GPU (NCCL), and the NCCL
  collectives lungseg uses (all-reduce, broadcast, gather, federated averaging, DDP with
  SyncBatchNorm under bf16 + channels_last, and the training loop inside the NCCL group).
* ``throughput``: U-Net base 64 at 256², batch 32, bf16 + channels_last: images/s of the bare
  ``forward + backward + step`` loop and of lungseg's training pipeline (HDF5 slices, DataLoader,
  loop) in the same run (goal: pipeline / bare >= 0.9), and the time of the distributed U-Net
  paper's workload, 1000 images x 10 epochs (14 min 54 s on one RTX 2080 Ti; goal <= 30 s).
* ``inference``: a 300-slice 512² volume through lungseg's predict path with the demo-size model on
  the GPU (goal <= 2 s per volume), against the same on 2 CPU threads.
* ``classifier``: lungseg's ResNet18 nodule classifier (3 x 64² planes): training and inference patches/s, bf16.

Without CUDA (or with ``--form cpu``) the reduced form runs the same code at tiny sizes, fp32, gloo,
and records ``skipped: no CUDA device`` for every check that needs a GPU; its figures are not
comparable and it refuses to write into ``benchmarks/results/``. Exit status 1 when a check failed
or raised, else 0 (a missed speed goal is a finding, not a failure).

Run: ``benchmarks/gpu_check.sh`` (full form on a GPU: writes ``benchmarks/results/gpu_check.json``);
``benchmarks/gpu_check.sh --form cpu --out /tmp/gpu_check_cpu.json`` (reduced form, about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_inference import chest_volume, default_model
from bench_training import Bare, write_cases

from lungseg.cluster.launch import standalone_command
from lungseg.docs_reference import machine
from lungseg.training.checkpoint import load_checkpoint
from lungseg.training.distributed import available_cpus
from lungseg.training.models import build_model
from lungseg.training.train import METRICS_NAME, TrainConfig, seed_everything, train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GPU_OUT = RESULTS / "gpu_check.json"
CPU_OUT = REPO / "logs" / "gpu_check_cpu.json"  # ignored by git: the CPU form's figures are never committed
NO_CUDA = "no CUDA device"
#: the device and collective backend of the full form; tests rehearse its code paths with "cpu" and "gloo"
GPU = "cuda"
GPU_BACKEND = "nccl"
PAPER_WORKLOAD = {"images": 1000, "epochs": 10, "size": 256, "paper_s": 14 * 60 + 54, "paper_gpu": "one RTX 2080 Ti",
                  "goal_s": 30.0}
SECTIONS = ("correctness", "ddp", "throughput", "inference", "classifier")
MIN_SECTION_S = 20


# ---------------------------------------------------------------- sizes of the two forms


@dataclass(frozen=True)
class Sizes:
    """What each section runs at: the full GPU form or the reduced CPU form."""

    stored: int  # slice size of the synthetic cases
    step: dict[str, Any]  # TrainConfig of the correctness runs (one step = one batch of training slices)
    ddp: dict[str, Any]  # TrainConfig of the torchrun launch
    ddp_slices: int  # training slices per process of the torchrun launch
    throughput: dict[str, Any]  # TrainConfig of the pipeline run
    train_cases: int  # x slices_per_case = training images per epoch
    slices_per_case: int
    bare_steps: int  # steps per bare block
    inference_slices: int
    inference_size: int
    classifier_batch: int
    classifier_steps: int
    budgets: dict[str, float]  # seconds per section (checked between its steps)
    total_s: float  # the whole run: a section is skipped when less than MIN_SECTION_S is left


GPU_SIZES = Sizes(
    stored=256,
    step={"base_channels": 16, "depth": 4, "image_size": 128, "batch_size": 8},
    ddp={"base_channels": 16, "depth": 4, "image_size": 128, "batch_size": 8, "epochs": 2},
    ddp_slices=32,
    throughput={"base_channels": 64, "depth": 4, "image_size": 256, "batch_size": 32,
                "epochs": PAPER_WORKLOAD["epochs"]},
    train_cases=10, slices_per_case=100,  # the paper's 1000 images per epoch
    bare_steps=30,
    inference_slices=300, inference_size=512,
    classifier_batch=256, classifier_steps=30,
    budgets={"correctness": 120, "ddp": 100, "throughput": 150, "inference": 90, "classifier": 30},
    total_s=420,  # 7 minutes of checks; the slowest single step (a torchrun launch, one epoch) fits in the 8th
)
CPU_SIZES = Sizes(
    stored=64,
    step={"base_channels": 8, "depth": 3, "image_size": 64, "batch_size": 4},
    ddp={"base_channels": 4, "depth": 2, "image_size": 32, "batch_size": 4, "epochs": 1},
    ddp_slices=4,
    throughput={"base_channels": 8, "depth": 4, "image_size": 64, "batch_size": 4, "epochs": 3},
    train_cases=2, slices_per_case=8,
    bare_steps=3,
    inference_slices=16, inference_size=128,
    classifier_batch=8, classifier_steps=2,
    budgets={"correctness": 40, "ddp": 60, "throughput": 40, "inference": 30, "classifier": 5},
    total_s=300,
)
#: relative error allowed between a GPU and a CPU computation of the same thing
TOLERANCE = {"fp32": 2e-2, "bf16": 1e-1, "exact": 1e-6, "probability": 1e-2}


# ---------------------------------------------------------------- comparisons (unit-tested)


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                   base: dict[str, torch.Tensor] | None = None) -> float:
    """``||got - want|| / ||want - base||`` over all floating tensors of two state dicts (in float64 on CPU).

    ``base`` (the common starting weights) makes it the relative error of the *update*, not of the
    weights, which would hide any difference behind the unchanged part. 0 when both are equal; inf
    when ``want`` equals ``base`` but ``got`` differs; NaN when either holds a non-finite value.
    """
    if set(got) != set(want):
        raise ValueError(f"the state dicts hold different tensors: {sorted(set(got) ^ set(want))[:5]}")
    num = den = 0.0
    for key, w in want.items():
        if not w.is_floating_point():
            continue
        g, w = got[key].detach().cpu().double(), w.detach().cpu().double()
        ref = base[key].detach().cpu().double() if base is not None else torch.zeros_like(w)
        num += float((g - w).pow(2).sum())
        den += float((w - ref).pow(2).sum())
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tolerance: float,
            base: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """``passed`` when :func:`relative_error` is at most ``tolerance`` (NaN and inf fail)."""
    error = relative_error(got, want, base)
    return {"status": "passed" if error <= tolerance else "failed", "relative_error": _round(error),
            "tolerance": tolerance}


def compare_probabilities(got: np.ndarray, want: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Two probability maps of one volume: ``passed`` when they differ by at most ``tolerance`` everywhere and
    the masks (``p > 0.5``) agree on every voxel whose reference is further than ``tolerance`` from 0.5."""
    if got.shape != want.shape:
        return {"status": "failed", "why": f"shapes differ: {got.shape} vs {want.shape}"}
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
    decisive = np.abs(want - 0.5) > tolerance
    flipped = int(((got > 0.5) != (want > 0.5))[decisive].sum())
    ok = diff <= tolerance and flipped == 0  # NaN in diff fails
    return {"status": "passed" if ok else "failed", "max_abs_difference": _round(diff), "tolerance": tolerance,
            "decisive_voxels": int(decisive.sum()), "decisive_voxels_flipped": flipped,
            "mask_voxels_differing": int(((got > 0.5) != (want > 0.5)).sum())}


def _round(value: float, digits: int = 4) -> float | str:
    if not math.isfinite(value):
        return str(value)
    return float(f"{value:.{digits}g}")


# ---------------------------------------------------------------- the run: results, time boxes, output


class Run:
    """The results so far; written to ``out`` after every check."""

    def __init__(self, out: Path, form: str, argv: list[str]) -> None:
        self.out, self.form, self.started = out, form, time.perf_counter()
        self.data: dict[str, Any] = {
            "benchmark": "gpu_check: lungseg's CUDA path (issue 20)",
            "form": form,
            "environment": environment(),
            "checks": {},
            "provenance": {"command": shlex.join(argv), "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                           "machine": machine()},
        }

    def record(self, section: str, name: str, result: dict[str, Any]) -> None:
        self.data["checks"].setdefault(section, {})[name] = result
        status = str(result["status"])
        tag = {"passed": "PASS", "failed": "FAIL", "measured": "MEAS", "skipped": "SKIP", "error": "ERROR"}[status.split(":")[0]]
        print(f"[{time.perf_counter() - self.started:6.1f} s] {tag:5} {section}.{name}: {result.get('summary', status)}",
              flush=True)
        self.write()

    def write(self) -> None:
        counts: dict[str, int] = {}
        for checks in self.data["checks"].values():
            for result in checks.values():
                kind = str(result["status"]).split(":")[0]
                counts[kind] = counts.get(kind, 0) + 1
        self.data["counts"] = counts
        self.data["provenance"]["wall_s"] = round(time.perf_counter() - self.started, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.out)

    @property
    def ok(self) -> bool:
        return not any(str(r["status"]).startswith(("failed", "error")) for c in self.data["checks"].values() for r in c.values())


def guarded(run: Run, section: str, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one check; an exception becomes an ``error`` result (the run goes on: GPU time is scarce)."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - any failure of a check is recorded, not raised
        result = {"status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  "traceback": traceback.format_exc()[-3000:]}
    result.setdefault("seconds", round(time.perf_counter() - t0, 2))
    run.record(section, name, result)
    return result


class TimeBox:
    """A section's time budget: ``left()`` seconds remain; ``over()`` once spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def over(self) -> bool:
        return self.left() <= 0


def skipped(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": f"skipped: {reason}", "summary": reason, **extra}


# ---------------------------------------------------------------- environment


def _nvidia_smi() -> list[dict[str, str]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [[v.strip() for v in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]
    return [{"name": r[0], "memory": r[1], "driver": r[2]} for r in rows if len(r) == 3] or None


def environment() -> dict[str, Any]:
    """GPU model / memory / driver / CUDA / cuDNN / NCCL / torch versions (None without CUDA), CPU, cores, date."""
    cuda = torch.cuda.is_available()
    info = machine()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"})
    nccl = None
    if cuda:
        with contextlib.suppress(Exception):
            v = torch.cuda.nccl.version()
            nccl = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    smi = _nvidia_smi()
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "gpus": gpus or None, "gpu_count": len(gpus),
        "driver": smi[0]["driver"] if smi else None, "nvidia_smi": smi,
        "cuda_runtime": torch.version.cuda if cuda else None, "torch_built_for_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "nccl": nccl,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": info["cpu"], "cores": info["cores"], "cores_available": available_cpus(), "ram_gib": info["ram_gib"],
        "os": info["os"], "load_1min": info["load_1min"],
    }


def gpu_count() -> int:
    return torch.cuda.device_count() if GPU == "cuda" else 1


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if GPU == "cuda" else f"{GPU} (rehearsal of the GPU form)"


def synchronize() -> None:
    if GPU == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- helpers around lungseg's training


@contextlib.contextmanager
def quiet(log_path: Path) -> Iterator[None]:
    """Send training's progress bars and log lines (stderr) to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f, contextlib.redirect_stderr(f):
        yield


def initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights ``train`` starts from (it seeds with ``config.seed`` before building the model)."""
    seed_everything(config.seed)
    return build_model(config.arch, **config.model_kwargs()).state_dict()


def run_train(config: TrainConfig, cases: tuple[list[str], list[str]], out_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """``train`` in this process; returns its checkpoint (on the CPU) and the per-epoch metrics rows."""
    with quiet(out_dir.parent / "train.log"):
        train(config, cases[0], cases[1], out_dir, **kwargs)
    with open(out_dir / METRICS_NAME, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {"checkpoint": load_checkpoint(out_dir / "checkpoint.pt"), "rows": rows}


def synthetic_cases(folder: Path, n_train: int, slices: int, size: int, n_val_slices: int = 4) -> tuple[list[str], list[str]]:
    """Chest-like cases (``benchmarks/bench_training.write_cases``): ``n_train`` training cases of ``slices``
    slices and one validation case; written once per folder."""
    index = folder / "cases.json"
    if not index.is_file():
        (folder / "train").mkdir(parents=True, exist_ok=True)
        (folder / "val").mkdir(parents=True, exist_ok=True)
        cases = [write_cases(folder / "train", n_train, slices, size), write_cases(folder / "val", 1, max(n_val_slices, 3), size)]
        index.write_text(json.dumps(cases))
    train_cases, val_cases = json.loads(index.read_text())
    return train_cases, val_cases


# ---------------------------------------------------------------- correctness


def check_train_steps(sizes: Sizes, work: Path, cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """One step of lungseg's loop on the CPU (fp32, the reference) and on the GPU, in fp32 (TF32, as lungseg
    trains on CUDA) and with bf16 autocast: the weights' change and the loss must agree within tolerance."""
    cases = synthetic_cases(work / "step_cases", 1, sizes.step["batch_size"], sizes.stored)  # one batch: one step
    config = TrainConfig(**sizes.step, epochs=1, optimizer="sgd", lr=0.05, roi="none", seed=0, amp="off", threads=2)
    base = initial_weights(config)
    cpu = run_train(replace(config, device="cpu"), cases, work / "step_cpu")
    update = math.sqrt(sum(float((cpu["checkpoint"]["model"][k].double() - v.double()).pow(2).sum())
                           for k, v in base.items() if v.is_floating_point()))
    reference = {"train_loss": _round(cpu["rows"][0]["train_loss"]), "update_norm": _round(update), "ran": True}
    if not cuda:
        note = "the CPU step ran (its loss and update are recorded); the GPU step to compare it with needs CUDA"
        return [("train_step_fp32", skipped(NO_CUDA, cpu_reference_step=reference, note=note)),
                ("train_step_bf16", skipped(NO_CUDA, note="bf16 autocast is the GPU default; the CPU form runs fp32 only"))]
    results = []
    for amp, precision in (("off", "fp32 (TF32 convolutions, as lungseg trains on CUDA)"), ("bf16", "bf16 autocast")):
        gpu = run_train(replace(config, device=GPU, amp=amp), cases, work / f"step_gpu_{amp}")
        tolerance = TOLERANCE["bf16" if amp == "bf16" else "fp32"]
        result = compare(gpu["checkpoint"]["model"], cpu["checkpoint"]["model"], tolerance, base)
        loss_gpu, loss_cpu = gpu["rows"][0]["train_loss"], cpu["rows"][0]["train_loss"]
        loss_error = abs(loss_gpu - loss_cpu) / max(abs(loss_cpu), 1e-12)
        if not loss_error <= tolerance / 10:
            result["status"] = "failed"
        result.update(cpu_reference_step=reference, train_loss_gpu=_round(loss_gpu), train_loss_relative_error=_round(loss_error),
                      summary=f"GPU {precision} vs CPU fp32: weights' change rel. error {result['relative_error']} "
                              f"(tol {tolerance}), loss rel. error {_round(loss_error)} (tol {tolerance / 10})")
        results.append((f"train_step_{'fp32' if amp == 'off' else 'bf16'}", result))
    return results


def check_resume(sizes: Sizes, work: Path, first: str, second: str) -> dict[str, Any]:
    """A checkpoint written on ``first`` resumed on ``second`` against an uninterrupted 2-epoch run on ``second``."""
    name = f"resume_{first}_to_{second}"
    cases = synthetic_cases(work / "resume_cases", 1, 2 * sizes.step["batch_size"], sizes.stored)
    config = TrainConfig(**sizes.step, epochs=2, optimizer="sgd", lr=0.05, roi="none", seed=0, amp="off", threads=2)
    base = initial_weights(config)
    reference = run_train(replace(config, device=second), cases, work / name / "uninterrupted")
    split = work / name / "split"
    first_run = run_train(replace(config, epochs=1, device=first), cases, split)
    saved = first_run["checkpoint"]
    moved = load_checkpoint(split / "checkpoint.pt", map_location=second)
    transfer_exact = all(torch.equal(saved["model"][k], moved["model"][k].cpu()) for k in saved["model"])
    resumed = run_train(replace(config, device=second), cases, split)
    final = resumed["checkpoint"]
    exact = first == second
    tolerance = TOLERANCE["exact" if exact else "fp32"]
    result = compare(final["model"], reference["checkpoint"]["model"], tolerance, base)
    continued = int(final["epoch"]) == 2 and len(final["history"]) == 2 and \
        final["history"][0]["train_loss"] == saved["history"][0]["train_loss"]
    if not (transfer_exact and continued):
        result["status"] = "failed"
    result.update(checkpoint_loads_exactly_on_target=transfer_exact, resumed_at_epoch_2_with_history=continued,
                  summary=f"{first} epoch 1 + {second} epoch 2 vs 2 epochs on {second}: rel. error of the weights' change "
                          f"{result['relative_error']} (tol {tolerance}); loaded exactly {transfer_exact}, continued {continued}")
    return result


def check_predict(sizes: Sizes, work: Path, model_path: Path, cuda: bool, threads: int) -> list[tuple[str, dict[str, Any]]]:
    """``lungseg predict`` (the command, on the CPU) against :class:`lungseg.api.Segmenter` on the CPU and on the GPU."""
    from lungseg.api import Segmenter, read_scan
    from lungseg.geometry import read_volume
    from lungseg.inference.predict import predict_probabilities

    case = synthetic_cases(work / "predict_cases", 1, sizes.step["batch_size"] * 2, sizes.stored)[0][0]
    out = work / "predict" / "mask.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lungseg", "predict", case, "--model", str(model_path), "-o", str(out),
           "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    cli_s = time.perf_counter() - t0
    if proc.returncode != 0:
        return [("predict_cli_cpu", {"status": "failed", "why": f"exit {proc.returncode}", "log_tail": proc.stderr[-2000:]})]
    cli_mask, _ = read_volume(str(out))
    scan = read_scan(case)
    torch.set_num_threads(threads)
    cpu_seg = Segmenter(model_path, device="cpu", batch_size=16)
    api_mask = cpu_seg.predict(scan)
    p_cpu = predict_probabilities(cpu_seg.models, cpu_seg.metas, scan.hu, progress=False)
    same = cli_mask.shape == api_mask.shape and bool(np.array_equal(cli_mask, api_mask))
    checks = [("predict_cli_cpu", {
        "status": "passed" if same else "failed", "command_seconds": round(cli_s, 2), "voxels": int(cli_mask.sum()),
        "shape": list(cli_mask.shape), "mask_equals_api": same,
        "summary": f"`lungseg predict` on {scan.hu.shape[0]} slices of {scan.hu.shape[1]}² ran ({cli_s:.1f} s incl. start-up); "
                   f"its mask {'equals' if same else 'DIFFERS from'} lungseg.api.Segmenter's on the CPU"})]
    note = "probabilities through lungseg.api.Segmenter(device=...); masks through `lungseg predict --device cuda`"
    if not cuda:
        checks.append(("predict_gpu_vs_cpu", skipped(NO_CUDA, note=note)))
        return checks
    gpu_out = out.with_name("mask_gpu.nii.gz")
    gpu_cmd = [sys.executable, "-m", "lungseg", "predict", case, "--model", str(model_path), "-o", str(gpu_out),
               "--threads", str(threads), "--device", GPU]
    proc = subprocess.run(gpu_cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        checks.append(("predict_gpu_vs_cpu", {"status": "failed", "why": f"`lungseg predict --device {GPU}` exit "
                                              f"{proc.returncode}", "log_tail": proc.stderr[-2000:]}))
        return checks
    gpu_mask, _ = read_volume(str(gpu_out))
    gpu_seg = Segmenter(model_path, device=GPU, batch_size=16)
    p_gpu = predict_probabilities(gpu_seg.models, gpu_seg.metas, scan.hu, progress=False)
    result = compare_probabilities(p_gpu, p_cpu, TOLERANCE["probability"])
    result.update(note=note, gpu_cli_mask_voxels_differing_from_cpu_cli=int((gpu_mask != cli_mask).sum()),
                  summary=f"probabilities on the GPU vs the CPU: max difference {result.get('max_abs_difference')} "
                          f"(tol {TOLERANCE['probability']}), {result.get('decisive_voxels_flipped')} decisive voxels flipped")
    checks.append(("predict_gpu_vs_cpu", result))
    return checks


def record_all(run: Run, section: str, fn: Callable[[], list[tuple[str, dict[str, Any]]]], names: list[str]) -> None:
    """Run a function giving several checks' results; an exception becomes an ``error`` result for each of ``names``."""
    t0 = time.perf_counter()
    try:
        results = fn()
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        error = {"status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                 "traceback": traceback.format_exc()[-3000:]}
        results = [(name, dict(error)) for name in names]
    for name, result in results:
        result.setdefault("seconds", round(time.perf_counter() - t0, 2))
        run.record(section, name, result)


def section_correctness(run: Run, sizes: Sizes, work: Path, cuda: bool, threads: int, box: TimeBox) -> None:
    record_all(run, "correctness", lambda: check_train_steps(sizes, work, cuda), ["train_step_fp32", "train_step_bf16"])
    guarded(run, "correctness", "checkpoint_cpu_to_cpu", lambda: check_resume(sizes, work, "cpu", "cpu"))
    for name, first, second in (("checkpoint_gpu_to_cpu", GPU, "cpu"), ("checkpoint_cpu_to_gpu", "cpu", GPU)):
        if not cuda:
            run.record("correctness", name, skipped(NO_CUDA))
        elif box.over():
            run.record("correctness", name, skipped("time budget of the section spent"))
        else:
            guarded(run, "correctness", name, lambda a=first, b=second: check_resume(sizes, work, a, b))
    model = work / "resume_cpu_to_cpu" / "split" / "model.pt"  # trained for 2 epochs by the first checkpoint check
    record_all(run, "correctness", lambda: check_predict(sizes, work, model, cuda, threads),
               ["predict_cli_cpu", "predict_gpu_vs_cpu"])


# ---------------------------------------------------------------- ddp


def torchrun(nproc: int, target: list[str]) -> list[str]:
    """lungseg's single-node launch command (:func:`lungseg.cluster.launch.standalone_command`), with the
    torchrun of this interpreter."""
    cmd = standalone_command(nproc, target)
    local = Path(sys.executable).with_name("torchrun")
    return [str(local), *cmd[1:]] if local.is_file() else [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]


def check_torchrun_train(sizes: Sizes, work: Path, cuda: bool, timeout: float) -> dict[str, Any]:
    """``torchrun -m lungseg train``: one process per GPU with NCCL, or 1-2 gloo processes on the CPU."""
    nproc = gpu_count() if cuda else max(1, min(2, available_cpus()))
    cases = synthetic_cases(work / "ddp_cases", nproc, sizes.ddp_slices, sizes.stored)
    device = GPU if cuda else "cpu"
    target = ["-m", "lungseg", "train", "--train", *cases[0], "--val", *cases[1], "--out-dir", str(work / "ddp_run"),
              "--device", device, "--roi", "none", *[f"--{k.replace('_', '-')}={v}" for k, v in sizes.ddp.items()]]
    if device == "cuda" and nproc > 1:
        target.append("--sync-bn")
    if device == "cpu":
        target += ["--threads", str(nproc)]
    cmd = torchrun(nproc, target)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({} if device == "cuda" else {"OMP_NUM_THREADS": "1"})}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 30), env=env)
    wall = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    backend = ("nccl" if device == "cuda" else "gloo") if nproc > 1 else "none (one process forms no process group)"
    expected = f"{nproc} process(es) on {device}"
    rows = []
    if (work / "ddp_run" / METRICS_NAME).is_file():
        with open(work / "ddp_run" / METRICS_NAME, newline="") as f:
            rows = list(csv.DictReader(f))
    ok = proc.returncode == 0 and expected in log and len(rows) == sizes.ddp["epochs"] and \
        (work / "ddp_run" / "model.pt").is_file() and all(math.isfinite(float(r["train_loss"])) for r in rows)
    result = {"status": "passed" if ok else "failed", "processes": nproc, "backend": backend, "exit_code": proc.returncode,
              "wall_s": round(wall, 1), "command": shlex.join(["torchrun", *cmd[cmd.index("--standalone"):]]),
              "images_per_s_by_epoch": [float(r["images_per_s"]) for r in rows],
              "summary": f"torchrun {nproc} process(es), backend {backend}: exit {proc.returncode}, "
                         f"{len(rows)} epoch(s) in {wall:.1f} s"}
    if device == "cuda" and nproc == 1:
        result["note"] = ("one GPU: 1 process (2 processes sharing one GPU would not be a measurement, and lungseg "
                          "refuses more processes than GPUs); a single process forms no process group, so NCCL is "
                          "exercised by ddp.nccl_collectives")
    if not ok:
        result["log_tail"] = log[-3000:]
    return result


def check_nccl(sizes: Sizes, work: Path, timeout: float) -> dict[str, Any]:
    """NCCL under torchrun, one process per GPU, each running :func:`nccl_worker` (this script's ``--worker``)."""
    nproc = gpu_count()
    cases = synthetic_cases(work / "nccl_cases", 1, sizes.ddp_slices, sizes.stored)
    out = work / "nccl"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"train": cases[0], "val": cases[1], "out": str(out), "config": sizes.ddp, "device": GPU, "backend": GPU_BACKEND}
    (out / "spec.json").write_text(json.dumps(spec))
    cmd = torchrun(nproc, [str(Path(__file__).resolve()), "--worker", str(out / "spec.json")])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 30),
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    ok = proc.returncode == 0 and len(ranks) == nproc and all(r.get("ok") for r in ranks)
    result = {"status": "passed" if ok else "failed", "processes": nproc, "exit_code": proc.returncode,
              "wall_s": round(time.perf_counter() - t0, 1), "ranks": ranks,
              "summary": f"{nproc} NCCL process(es): collectives, DDP + SyncBatchNorm bf16 step and lungseg's loop "
                         f"{'all passed' if ok else 'FAILED'}"}
    if not ok:
        result["log_tail"] = (proc.stdout + proc.stderr)[-3000:]
    return result


def nccl_worker(spec_path: Path) -> int:
    """One torchrun rank: NCCL collectives as lungseg uses them, a DDP step and lungseg's training loop in the group."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lungseg.training import distributed as ld
    from lungseg.training.losses import get_loss

    spec = json.loads(spec_path.read_text())
    env = ld.dist_env()
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda", env.local_rank) if cuda else torch.device(spec["device"])
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(spec["backend"], **({"device_id": device} if cuda else {}))
    n, r = env.world_size, env.rank
    res: dict[str, Any] = {"rank": r, "world_size": n, "backend": dist.get_backend()}
    try:
        s = ld.all_reduce_sum(torch.tensor([float(r + 1)], device=device))
        m = ld.all_reduce_max(torch.tensor([float(r)], device=device))
        res["all_reduce_sum"] = float(s) == n * (n + 1) / 2
        res["all_reduce_max"] = float(m) == n - 1
        gathered = ld.gather_to_main({"rank": r})
        res["gather_to_main"] = gathered == [{"rank": i} for i in range(n)] if r == 0 else gathered is None
        torch.manual_seed(0)
        model = build_model("unet", base_channels=16, depth=4)
        if cuda:  # SyncBatchNorm has no CPU kernel
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device).to(memory_format=torch.channels_last)
        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        generator = torch.Generator(device=device).manual_seed(100 + r)  # a different batch per rank
        x = torch.rand((4, 1, 128, 128), device=device, generator=generator).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = net(x)
        loss = get_loss("bce_dice")(logits, (x > 0.5).float())
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])
        first = grads.clone()
        dist.broadcast(first, 0)
        res["ddp_gradients_equal_across_ranks"] = bool(torch.equal(grads, first))
        res["ddp_gradients_finite"] = bool(torch.isfinite(grads).all())
        optimizer.step()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ld.weighted_average_(model, 1.0 / n)  # the ranks hold equal weights: averaging must leave them
        res["fedavg_average_of_equal_weights"] = all(torch.allclose(v, before[k], rtol=1e-5, atol=1e-6)
                                                     for k, v in model.state_dict().items() if v.is_floating_point())
        ld.broadcast_buffers(model)
        ld.barrier()
        config = TrainConfig(**spec["config"], roi="none", device=spec["device"], sync_bn=cuda)
        out_dir = Path(spec["out"]) / "train"
        t0 = time.perf_counter()
        with quiet(Path(spec["out"]) / f"train_rank{r}.log"):
            train(replace(config, epochs=1), spec["train"], spec["val"], out_dir)  # reuses this NCCL group
        res["lungseg_train_in_nccl_group_s"] = round(time.perf_counter() - t0, 1)
        res["lungseg_train_model_written"] = (out_dir / "model.pt").is_file() if r == 0 else True
    except Exception as exc:  # noqa: BLE001 - reported through the rank's file
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()[-2000:]
    res["ok"] = "error" not in res and all(v for k, v in res.items() if isinstance(v, bool))
    (Path(spec["out"]) / f"rank{r}.json").write_text(json.dumps(res))
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return 0 if res["ok"] else 1


def section_ddp(run: Run, sizes: Sizes, work: Path, cuda: bool, box: TimeBox) -> None:
    guarded(run, "ddp", "lungseg_train_torchrun", lambda: check_torchrun_train(sizes, work, cuda, box.left()))
    if not cuda:
        run.record("ddp", "nccl_collectives", skipped(NO_CUDA, note="NCCL needs CUDA; the gloo launch above ran"))
    else:
        guarded(run, "ddp", "nccl_collectives", lambda: check_nccl(sizes, work, max(box.left(), 60)))


# ---------------------------------------------------------------- throughput


class _TimeUp(Exception):
    """Raised from the epoch callback when the section's time is spent."""


def check_throughput(sizes: Sizes, work: Path, cuda: bool, box: TimeBox, threads: int) -> dict[str, Any]:
    """Bare ``forward + backward + step`` against lungseg's pipeline, interleaved (``bench_training``'s method),
    and the time of the paper's workload through the pipeline."""
    device = torch.device(GPU if cuda else "cpu")
    workers = max(0, min(10, available_cpus() - 2)) if cuda else 0
    config = TrainConfig(**sizes.throughput, roi="none", lr=1e-3, num_workers=workers, device=device.type,
                         threads=None if cuda else threads)
    cases = synthetic_cases(work / "throughput_cases", sizes.train_cases, sizes.slices_per_case, sizes.stored,
                            n_val_slices=config.batch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train() sets it: the bare loop gets the same kernels
    bare_model = Bare(config, device)
    bare = [bare_model.images_per_s(sizes.bare_steps)]
    timed_out = []

    def between_epochs(epoch: int, row: dict[str, float]) -> None:
        bare.append(bare_model.images_per_s(sizes.bare_steps))
        if box.over() and epoch < config.epochs:
            timed_out.append(epoch)
            raise _TimeUp

    t0 = time.perf_counter()
    with contextlib.suppress(_TimeUp), quiet(work / "throughput.log"):
        train(config, cases[0], cases[1], work / "throughput_run", on_epoch_end=between_epochs)
    wall = time.perf_counter() - t0
    bare_s = sum(sizes.bare_steps * config.batch_size / b for b in bare[1:])  # the bare blocks inside train()'s wall
    with open(work / "throughput_run" / METRICS_NAME, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    pipeline = [r["images_per_s"] for r in rows]
    ratios = [pipeline[e] / ((bare[e] + bare[e + 1]) / 2) for e in range(1, len(pipeline))]
    ratio = float(np.median(ratios)) if ratios else math.nan
    images = sizes.train_cases * sizes.slices_per_case
    workload_s = wall - bare_s  # setup, data, training, validation and checkpoints of every epoch
    done = len(rows)
    full_workload_s = workload_s * PAPER_WORKLOAD["epochs"] * PAPER_WORKLOAD["images"] / (done * images)
    comparable = cuda and images == PAPER_WORKLOAD["images"] and config.image_size == PAPER_WORKLOAD["size"]
    workload = {"images_per_epoch": images, "epochs_run": done, "measured_s": round(workload_s, 1),
                "epochs_s": round(sum(r["epoch_seconds"] for r in rows), 1),
                "paper_s": PAPER_WORKLOAD["paper_s"], "paper_gpu": PAPER_WORKLOAD["paper_gpu"]}
    if comparable and done == PAPER_WORKLOAD["epochs"]:
        workload.update(seconds=round(workload_s, 1), how="measured: the whole workload ran through lungseg's pipeline",
                        goal_s=PAPER_WORKLOAD["goal_s"], goal_met=workload_s <= PAPER_WORKLOAD["goal_s"],
                        speedup_vs_paper=round(PAPER_WORKLOAD["paper_s"] / workload_s, 1))
    elif comparable:
        workload.update(seconds=round(full_workload_s, 1), how=f"extrapolated from {done} of 10 epochs (time box)",
                        goal_s=PAPER_WORKLOAD["goal_s"], goal_met=full_workload_s <= PAPER_WORKLOAD["goal_s"])
    else:
        workload.update(cpu_reduced_extrapolation_s=round(full_workload_s, 1), goal_met=None,
                        how=f"CPU-reduced, NOT comparable: {images} images of {config.image_size}² with base "
                            f"{config.base_channels} in fp32, scaled linearly to 1000 x 10")
    precision = "bf16 autocast + channels_last" if cuda else "fp32 (CPU-reduced)"
    result = {
        "status": "measured", "device": gpu_name() if cuda else f"cpu, {threads} threads",
        "config": {"arch": config.arch, "base_channels": config.base_channels, "depth": config.depth,
                   "image_size": config.image_size, "batch_size": config.batch_size, "precision": precision,
                   "num_workers": workers, "train_images_per_epoch": images},
        "bare_images_per_s_blocks": [round(b, 1) for b in bare],
        "pipeline_images_per_s_by_epoch": [round(p, 1) for p in pipeline],
        "ratio_by_epoch": [round(x, 3) for x in ratios], "ratio_pipeline_over_bare_median": _round(ratio, 3),
        "ratio_goal": 0.9, "ratio_goal_met": bool(ratio >= 0.9) if ratios else None,
        "bare_images_per_s_best": round(max(bare[1:] or bare), 1),
        "pipeline_images_per_s_best": round(max(pipeline[1:] or pipeline), 1) if pipeline else None,
        "paper_workload": workload, "time_box_hit": bool(timed_out),
    }
    seconds = workload.get("seconds", workload.get("cpu_reduced_extrapolation_s"))
    result["summary"] = (f"{precision}: bare {result['bare_images_per_s_best']} img/s, pipeline "
                         f"{result['pipeline_images_per_s_best']} img/s, ratio {result['ratio_pipeline_over_bare_median']} "
                         f"(goal 0.9); paper workload {seconds} s "
                         f"({'goal 30 s' if comparable else 'CPU-reduced, not comparable'})")
    return result


# ---------------------------------------------------------------- inference


def check_inference(sizes: Sizes, cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """The demo-size model (config/config.yaml, random weights: speed depends on shapes) over one chest volume
    through :func:`lungseg.inference.predict.predict_volume`, on the GPU and on 2 CPU threads."""
    from lungseg.inference.predict import predict_volume

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    batch = int(config["predict"]["batch_size"])
    volume = chest_volume(sizes.inference_slices, sizes.inference_size)
    model, meta = default_model(config, None)
    shape = f"{sizes.inference_slices} slices of {sizes.inference_size}²"
    model_text = (f"{config['train']['arch']} base {config['train']['base_channels']} depth {config['train']['depth']} "
                  f"at {config['train']['image_size']}²")
    results = []
    gpu_best = None
    if cuda:
        gpu_model = default_model(config, None)[0].to(GPU)
        times: dict[str, list[float]] = {}
        for b in sorted({batch, 64}):
            predict_volume(gpu_model, meta, volume[:b], batch_size=b, progress=False)  # warm-up (cuDNN, allocator)
            for _ in range(3):
                t0 = time.perf_counter()
                predict_volume(gpu_model, meta, volume, batch_size=b, progress=False)
                times.setdefault(str(b), []).append(round(time.perf_counter() - t0, 3))
        gpu_best = min(min(v) for v in times.values())
        results.append(("volume_gpu", {
            "status": "measured", "volume": shape, "model": model_text, "seconds_by_batch_size": times,
            "seconds_per_volume_best": gpu_best, "goal_s": 2.0, "goal_met": gpu_best <= 2.0,
            "note": "lungseg's predict path resizes on the CPU and runs the network in fp32 (TF32 convolutions) on the GPU",
            "summary": f"{shape} with the demo model on the GPU: {gpu_best:.2f} s per volume (goal 2 s)"}))
        del gpu_model
    else:
        results.append(("volume_gpu", skipped(NO_CUDA)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        predict_volume(model, meta, volume[:batch], batch_size=batch, progress=False)
        t0 = time.perf_counter()
        predict_volume(model, meta, volume, batch_size=batch, progress=False)
        cpu_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    result = {"status": "measured", "volume": shape, "model": model_text, "threads": 2, "batch_size": batch,
              "seconds_per_volume": round(cpu_s, 2),
              "summary": f"{shape} with the demo model on 2 CPU threads: {cpu_s:.2f} s per volume"}
    if gpu_best:
        result["gpu_speedup"] = round(cpu_s / gpu_best, 1)
        result["summary"] += f" ({result['gpu_speedup']}x the GPU's time)"
    results.append(("volume_cpu_2_threads", result))
    return results


# ---------------------------------------------------------------- classifier


def check_classifier(sizes: Sizes, cuda: bool) -> dict[str, Any]:
    """lungseg's nodule classifier (ResNet18 on the 3 orthogonal 64x64 planes, the model ``lungseg train --task
    classification`` builds): bare training and inference steps, patches/s (bf16 + channels_last on the GPU)."""
    from lungseg.classification.models import build_classifier

    device = torch.device(GPU if cuda else "cpu")
    model = build_classifier("resnet18").to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    n = sizes.classifier_batch
    x = torch.rand((n, 3, 64, 64), device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (n,), device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x)["image"].float(), y)
        loss.backward()
        optimizer.step()

    def rate(fn: Callable[[], Any], steps: int) -> float:
        for _ in range(3 if cuda else 1):
            fn()
        if cuda:
            synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            synchronize()
        return steps * x.shape[0] / (time.perf_counter() - t0)

    train_rate = rate(step, sizes.classifier_steps)
    model.eval()
    with torch.inference_mode(), autocast():
        infer_rate = rate(lambda: model(x), sizes.classifier_steps)
    precision = "bf16 autocast + channels_last" if cuda else "fp32 (CPU-reduced)"
    return {"status": "measured", "model": "lungseg.classification.models.build_classifier('resnet18'), 3x64x64 "
            f"patches, batch {n}, {precision}", "train_patches_per_s": round(train_rate),
            "inference_patches_per_s": round(infer_rate),
            "summary": f"lungseg's ResNet18 nodule classifier: {train_rate:.0f} patches/s training, "
                       f"{infer_rate:.0f} patches/s inference ({precision}); the whole pipeline: benchmarks/bench_classifier.py"}


# ---------------------------------------------------------------- main


def run_sections(run: Run, sections: list[str], sizes: Sizes, work: Path, cuda: bool, threads: int) -> None:
    """Run ``sections`` in order, each within its budget and all within ``sizes.total_s``."""
    whole = TimeBox(sizes.total_s)
    for section in sections:
        if whole.left() < MIN_SECTION_S:
            run.record(section, "all", skipped(f"the run's time budget ({sizes.total_s:.0f} s) is spent"))
            continue
        if cuda and GPU == "cuda":
            torch.cuda.empty_cache()
        torch.set_num_threads(threads)  # train() sets its own count and leaves it so
        box = TimeBox(min(sizes.budgets[section], whole.left()))
        if section == "correctness":
            section_correctness(run, sizes, work, cuda, threads, box)
        elif section == "ddp":
            section_ddp(run, sizes, work, cuda, box)
        elif section == "throughput":
            guarded(run, "throughput", "unet_train", lambda b=box: check_throughput(sizes, work, cuda, b, threads))
        elif section == "inference":
            record_all(run, "inference", lambda: check_inference(sizes, cuda), ["volume_gpu", "volume_cpu_2_threads"])
        elif section == "classifier":
            guarded(run, "classifier", "resnet18", lambda: check_classifier(sizes, cuda))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--form", choices=("auto", "gpu", "cpu"), default="auto",
                        help="gpu: the full check (needs CUDA); cpu: the reduced form; auto: gpu when CUDA is available")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"result JSON (default: {GPU_OUT.relative_to(REPO)} for the GPU form, "
                             f"{CPU_OUT.relative_to(REPO)} for the CPU form)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all: {','.join(SECTIONS)})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of this process (default: all available cores in the GPU form, 2 in the "
                             "CPU form); the CPU inference figure always uses 2")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the synthetic cases, runs and logs in a new run-DATE folder here "
                             "(default: a temporary folder, deleted)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # one NCCL rank (internal)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        return nccl_worker(args.worker)
    available = torch.cuda.is_available()
    if args.form == "gpu" and not available:
        print("gpu_check: --form gpu needs a CUDA device; none is visible (use --form cpu for the reduced form)",
              file=sys.stderr)
        return 2
    cuda = available and args.form != "cpu"
    out = (args.out or (GPU_OUT if cuda else CPU_OUT)).resolve()
    if not cuda and out.parent == RESULTS.resolve():
        print(f"gpu_check: the CPU form's figures are not GPU figures and must not land in {RESULTS.relative_to(REPO)}/ "
              f"(the docs' benchmark page is made from it); give another --out", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    threads = args.threads or (available_cpus() if cuda else 2)
    torch.set_num_threads(threads)
    sizes = GPU_SIZES if cuda else CPU_SIZES
    run = Run(out, "gpu" if cuda else "cpu-reduced", [Path(sys.argv[0]).as_posix(), *argv])
    env = run.data["environment"]
    gpu = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env["gpus"] or []) or "none"
    print(f"gpu_check ({run.form} form): GPU {gpu}; driver {env['driver']}; CUDA {env['cuda_runtime']}; NCCL {env['nccl']}; "
          f"torch {env['torch']}; CPU {env['cpu']} ({env['cores_available']} of {env['cores']} cores)", flush=True)
    if not cuda:
        reason = "--form cpu" if available else "no CUDA device"
        print(f"gpu_check: reduced CPU form ({reason}): tiny sizes, fp32, gloo; GPU-only checks are recorded as skipped",
              flush=True)
    run.write()
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        else:  # a fresh folder per run: a training folder left by an earlier run would be resumed, not trained
            work = args.work_dir / dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
            work.mkdir(parents=True)
        run_sections(run, [s for s in SECTIONS if s in args.sections.split(",")], sizes, work, cuda, threads)
    run.write()
    counts = ", ".join(f"{v} {k}" for k, v in sorted(run.data["counts"].items()))
    print(f"gpu_check: {counts} in {run.data['provenance']['wall_s']} s -> {out}", flush=True)
    return 0 if run.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
