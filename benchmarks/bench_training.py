"""Training throughput: lungseg's whole training pipeline against the bare model step, same run.

* ``pipeline``: :func:`lungseg.training.train.train` on real per-case HDF5 files (demo shape by default:
  256 x 256 slices resized to ``--image-size``): lazy slice reads, HU windowing, resizing, flips and
  rotations, DataLoader, forward, loss (BCE + Dice), backward, optimiser step, the per-step NaN /
  stop-signal check, progress bar. Its images/s is the ``images_per_s`` of ``metrics.csv`` (training
  part of each epoch, data loading included, validation excluded), the best of its epochs after the
  first (warm-up).
* ``bare``: the same model, optimiser (Adam) and loss on random tensors of the same shape, already in
  memory: ``forward + backward + step`` in a loop of ``--bare-steps`` steps per timed block.

Both run in this process with the same thread budget (``--threads``), interleaved: a bare block before
the first epoch and after every epoch (from the pipeline's epoch callback), so that a shared machine
slows both alike. The ratio of epoch e is its images/s over the mean of the bare blocks just before
and after it; the result is the median over the epochs after the first. On CUDA both use the
pipeline's defaults there (bf16 autocast, channels_last). Prints the ratio pipeline / bare (goal
>= 0.9) and writes ``benchmarks/results/training.json`` (or ``--out``).

With ``--patch-size S`` the same comparison for patch training (issue 13): the pipeline draws
``S x S`` patches (``--context-slices K`` neighbours as channels, or ``--arch unet3d --patch-depth D``)
from the cases, a third of them centred on small "nodule" blobs, at the scan's own pixels; the bare
loop gets random tensors of the patch shape.

Run: ``.venv/bin/python benchmarks/bench_training.py [--threads 2] [--image-size 128 --base-channels 16]``;
patches: ``... --patch-size 64 --context-slices 3 --depth 3 --batch-size 16 --out benchmarks/results/training_patches.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lungseg.training.train as train_module
from lungseg.casefile import CaseVolume, write_case
from lungseg.geometry import Geometry
from lungseg.training.allocator import keep_freed_memory
from lungseg.training.losses import get_loss
from lungseg.training.models import build_model
from lungseg.training.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def write_cases(folder: Path, n_cases: int, n_slices: int, size: int) -> list[str]:
    """Synthetic chest-like cases (body, two lungs, noise) with a lung label, as ingest writes them."""
    y, x = np.mgrid[:size, :size] / size
    paths = []
    for c in range(n_cases):
        rng = np.random.default_rng(c)
        body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.52) / 0.32) ** 2 < 1
        r = 0.18 + 0.02 * rng.random()
        lungs = (((x - 0.32) / 0.13) ** 2 + ((y - 0.48) / r) ** 2 < 1) | (((x - 0.68) / 0.13) ** 2 + ((y - 0.48) / r) ** 2 < 1)
        hu = np.where(body, np.where(lungs, -850, 40), -1000).astype(np.int16)
        image = (np.repeat(hu[None], n_slices, 0) + rng.normal(0, 15, (n_slices, size, size))).astype(np.int16)
        label = np.repeat(lungs[None], n_slices, 0).astype(np.uint8)
        nodule = np.zeros_like(label)
        for z, yy, xx in zip(rng.integers(1, n_slices - 1, 4), rng.integers(size // 3, 2 * size // 3, 4),
                             rng.integers(size // 4, 3 * size // 4, 4)):
            nodule[z - 1:z + 2, yy - 4:yy + 5, xx - 4:xx + 5] = label[z - 1:z + 2, yy - 4:yy + 5, xx - 4:xx + 5]
        image[nodule > 0] = 30
        path = folder / f"case{c}.h5"
        write_case(path, CaseVolume(f"bench{c}", image, Geometry((0.7, 0.7, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                                    labels={"lung": label, "nodule": nodule}))
        paths.append(str(path))
    return paths


class Bare:
    """forward + backward + Adam step of the pipeline's model on random in-memory tensors."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        torch.manual_seed(0)
        self.cuda = device.type == "cuda"
        fmt = torch.channels_last if self.cuda and not config.patch_depth > 1 else torch.contiguous_format
        self.model = build_model(config.arch, **config.model_kwargs()).to(device).to(memory_format=fmt)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.loss_fn = get_loss(config.loss)
        if config.patches:
            spec = config.input_spec()["patch_size"]
            shape = ((config.batch_size, 1, *spec) if spec[0] > 1 else
                     (config.batch_size, config.model_kwargs()["in_channels"], spec[1], spec[2]))
        else:
            shape = (config.batch_size, 1, config.image_size, config.image_size)
        target = (shape[0], 1, *shape[2:])
        self.x = torch.rand(shape, device=device).contiguous(memory_format=fmt)
        self.y = (torch.rand(target, device=device) > 0.5).float()
        self.batch = config.batch_size
        for _ in range(3):  # warm-up
            self.step()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext():
            logits = self.model(self.x)
        self.loss_fn(logits, self.y).backward()
        self.optimizer.step()

    def images_per_s(self, steps: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.cuda:
            torch.cuda.synchronize()
        return steps * self.batch / (time.perf_counter() - t0)


@contextlib.contextmanager
def model_step_timer(shares: list[float]):
    """Inside the pipeline's own epochs (CPU): per epoch, the seconds from the model's forward call to the end of
    the optimiser step, summed over the steps, over the epoch's training loop seconds (data loading included).
    The model step is the bare loop's work (forward, loss, backward, step), done on the same cores at the same
    moment, so this share is the pipeline's efficiency free of the machine's drift between epochs. Appends one
    share per epoch to ``shares``."""
    original = train_module._run_epoch

    def timed_epoch(ctx, *args, **kwargs):
        started: list[float] = []
        total = [0.0]
        step = ctx.optimizer.step

        def timed_step(*a, **k):
            out = step(*a, **k)
            if started:
                total[0] += time.perf_counter() - started.pop()
            return out

        hook = ctx.model.register_forward_pre_hook(lambda module, inputs: started.append(time.perf_counter()))
        ctx.optimizer.step = timed_step
        t0 = time.perf_counter()
        try:
            return original(ctx, *args, **kwargs)
        finally:
            shares.append(total[0] / (time.perf_counter() - t0))
            hook.remove()
            del ctx.optimizer.step

    train_module._run_epoch = timed_epoch
    try:
        yield shares
    finally:
        train_module._run_epoch = original


def measure_interleaved(config: TrainConfig, train_files: list, val_files: list, run_dir: Path, bare_model: Bare,
                        bare_steps: int) -> dict[str, Any]:
    """The pipeline (:func:`train`) with a bare block before the first epoch and after every epoch: per-epoch
    images/s, the blocks, each epoch's ratio to the mean of the blocks around it (epoch 1 is warm-up), best
    figures and the median ratio. On CPU also the in-loop ratio (:func:`model_step_timer`): the share of each
    epoch's training seconds spent in the model's step, whatever the machine's speed in that epoch."""
    bare = [bare_model.images_per_s(bare_steps)]
    shares: list[float] = []
    timer = model_step_timer(shares) if not bare_model.cuda else contextlib.nullcontext()
    with timer:  # on CUDA, host-side timing would measure kernel launches, not work: not timed there
        train(config, train_files, val_files, run_dir,
              on_epoch_end=lambda epoch, row: bare.append(bare_model.images_per_s(bare_steps)))
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [float(r["images_per_s"]) for r in rows]
    ratios = [epochs[e] / ((bare[e] + bare[e + 1]) / 2) for e in range(1, len(epochs))]
    figures = {
        "pipeline_images_per_s_by_epoch": [round(v, 2) for v in epochs],
        "bare_images_per_s_blocks": [round(v, 2) for v in bare],
        "ratio_by_epoch": [round(v, 3) for v in ratios],
        "pipeline_images_per_s_best": round(max(epochs[1:]), 2),
        "bare_images_per_s_best": round(max(bare[1:]), 2),
        "ratio_pipeline_over_bare_median": round(float(np.median(ratios)), 3),
    }
    if shares:  # epoch 1 is warm-up here too
        figures["in_loop_model_step_share_by_epoch"] = [round(v, 3) for v in shares[1:]]
        figures["in_loop_ratio_median"] = round(float(np.median(shares[1:])), 3)
    return figures


def interleaved_line(figures: dict[str, Any]) -> str:
    """One line of :func:`measure_interleaved`'s figures."""
    def listed(key: str, fmt: str) -> str:
        return ", ".join(format(v, fmt) for v in figures[key])

    return (f"pipeline {figures['pipeline_images_per_s_best']:.1f} images/s (epochs "
            f"{listed('pipeline_images_per_s_by_epoch', '.1f')}), bare {figures['bare_images_per_s_best']:.1f} images/s "
            f"(blocks {listed('bare_images_per_s_blocks', '.1f')}): ratio {figures['ratio_pipeline_over_bare_median']:.3f} "
            f"(median of {listed('ratio_by_epoch', '.2f')}; goal >= 0.9)"
            + (f"; in-loop model-step share {figures['in_loop_ratio_median']:.3f} (median of "
               f"{listed('in_loop_model_step_share_by_epoch', '.2f')})" if "in_loop_ratio_median" in figures else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--slice-size", type=int, default=256, help="stored slice size (demo: 256)")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--slices", type=int, default=16, help="slices per case")
    parser.add_argument("--epochs", type=int, default=6, help="pipeline epochs (the first is warm-up)")
    parser.add_argument("--bare-steps", type=int, default=6, help="steps per bare block")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=0, help="patch training: S x S patches (0: whole slices)")
    parser.add_argument("--context-slices", type=int, default=0, help="patches: neighbouring slices per side as channels")
    parser.add_argument("--patch-depth", type=int, default=1, help="patches of unet3d: slices per patch")
    parser.add_argument("--patches-per-epoch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kept = device.type == "cpu" and keep_freed_memory()  # as train() does on CPU: both loops with the same allocator
    config = TrainConfig(arch=args.arch, base_channels=args.base_channels, depth=args.depth, image_size=args.image_size,
                         batch_size=args.batch_size, epochs=args.epochs, threads=args.threads, lr=1e-3,
                         num_workers=args.num_workers, patch_size=args.patch_size, context_slices=args.context_slices,
                         patch_depth=args.patch_depth, patches_per_epoch=args.patches_per_epoch,
                         label="nodule" if args.patch_size else "lung")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = write_cases(tmp, args.cases + 1, args.slices, args.slice_size)
        figures = measure_interleaved(config, cases[:-1], cases[-1:], tmp / "run", Bare(config, device), args.bare_steps)
    result = {
        "benchmark": "training images/s: pipeline vs bare forward+backward+step",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "config": {"arch": args.arch, "base_channels": args.base_channels, "depth": args.depth,
                   "image_size": args.image_size, "batch_size": args.batch_size, "slice_size": args.slice_size,
                   "train_slices": args.cases * args.slices, "num_workers": args.num_workers,
                   "amp": "bf16" if device.type == "cuda" else "off", "keep_freed_memory": kept,
                   **({"input": config.input_spec(), "patches_per_epoch": args.patches_per_epoch} if args.patch_size else {})},
        **figures,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{interleaved_line(figures)} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
