"""Nodule-classifier training throughput: the pipeline against the bare model step, same run.

* ``pipeline``: :func:`lungseg.training.train.train` with ``task: classification`` on nodule patch files
  (synthetic nodules, :mod:`lungseg.classification.synthetic`; ``--patch-size`` pixels per plane, the
  three planes as channels): the nodule dataset (windowed patches in memory, per-item seeded flips /
  x-y swap / scale), DataLoader, forward, masked cross-entropy, backward, optimiser step, the per-step
  NaN / stop-signal check, progress bar. Its images/s is the ``images_per_s`` of ``metrics.csv``
  (training part of each epoch, data loading included, validation excluded).
* ``bare``: the same network, optimiser (Adam) and cross-entropy on random tensors of the same shape,
  already on the device: ``forward + backward + step`` in a loop of ``--bare-steps`` steps per block.

Interleaved as in ``bench_training.py`` (a bare block before the first epoch and after every epoch), so a
shared machine slows both alike; the ratio of epoch e is its images/s over the mean of the bare blocks
around it, the result the median over the epochs after the first (warm-up). On a busy shared machine the
bare blocks themselves vary by 2-3x, so the run also times the pipeline's own extra work in isolation:
one pass of the training DataLoader (reading, windowing, augmentation, collation) per image, against the
bare step per image (``data_ms_per_image``, ``bare_ms_per_image``, ``data_share``). On CUDA both use bf16
autocast and channels_last (the pipeline's ``amp: auto``, ``channels_last: auto``). Writes
``benchmarks/results/classifier.json`` (or ``--out``); goal: ratio >= 0.9.

Run: ``.venv/bin/python benchmarks/bench_classifier.py [--device cpu|cuda] [--arch resnet18] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import bench_training
import torch
import torch.nn.functional as F

from lungseg.classification.dataset import NoduleDataset
from lungseg.classification.synthetic import write_synthetic_cases
from lungseg.training.allocator import keep_freed_memory
from lungseg.training.models import build_model
from lungseg.training.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


class Bare(bench_training.Bare):
    """forward + backward + Adam step of the pipeline's classifier on random in-memory tensors (the timing:
    ``bench_training.Bare.images_per_s``)."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        torch.manual_seed(0)
        self.cuda = device.type == "cuda"
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.model = build_model(config.arch, **config.model_kwargs()).to(device).to(memory_format=fmt)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        channels = config.model_kwargs()["in_channels"]
        self.x = torch.rand(config.batch_size, channels, config.image_size, config.image_size,
                            device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 2, (config.batch_size,), device=device)
        self.batch = config.batch_size
        for _ in range(3):  # warm-up
            self.step()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext():
            logits = self.model(self.x)["image"]
        F.cross_entropy(logits.float(), self.y).backward()
        self.optimizer.step()


def data_ms_per_image(config: TrainConfig, files: list[Path]) -> float:
    """Milliseconds per image of one pass over the training DataLoader (the pipeline's data work alone)."""
    from torch.utils.data import DataLoader

    dataset = NoduleDataset(files, list(config.heads()), config.planes, config.image_size, config.hu_window,
                            config.indeterminate, augment=True)
    t0 = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers):
        pass
    return 1e3 * (time.perf_counter() - t0) / len(dataset)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
    parser.add_argument("--patch-size", type=int, default=64, help="pixels per plane (stored and network input)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cases", type=int, default=12, help="training cases")
    parser.add_argument("--nodules", type=int, default=16, help="nodules per case")
    parser.add_argument("--epochs", type=int, default=5, help="pipeline epochs (the first is warm-up)")
    parser.add_argument("--bare-steps", type=int, default=6, help="steps per bare block")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "classifier.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if use_cuda else "cpu")
    kept = device.type == "cpu" and keep_freed_memory()  # as train() does on CPU: both loops with the same allocator
    config = TrainConfig(task="classification", arch=args.arch, image_size=args.patch_size, batch_size=args.batch_size,
                         epochs=args.epochs, threads=args.threads, lr=1e-3, num_workers=args.num_workers,
                         device=device.type)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_files = write_synthetic_cases(tmp / "train", args.cases, args.nodules, args.patch_size, seed=1)
        val_files = write_synthetic_cases(tmp / "val", 2, args.nodules, args.patch_size, seed=2, prefix="VAL")
        bare_model = Bare(config, device)
        figures = bench_training.measure_interleaved(config, train_files, val_files, tmp / "run", bare_model,
                                                     args.bare_steps)
        data_ms = data_ms_per_image(config, train_files)
    bare_ms = 1e3 / max(figures["bare_images_per_s_blocks"])
    result = {
        "benchmark": "classifier training images/s: pipeline vs bare forward+backward+step",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "note": "CPU figures: the throughput of a shared 2-core machine, not of a GPU" if device.type == "cpu" else
                "GPU figures, bf16 autocast and channels_last in both loops",
        "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "config": {"arch": args.arch, "input": [3, args.patch_size, args.patch_size], "batch_size": args.batch_size,
                   "train_nodules": args.cases * args.nodules, "num_workers": args.num_workers, "augment": True,
                   "amp": "bf16" if device.type == "cuda" else "off", "keep_freed_memory": kept},
        **figures,
        "data_ms_per_image": round(data_ms, 3), "bare_ms_per_image": round(bare_ms, 3),
        "data_share": round(data_ms / (data_ms + bare_ms), 4),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{bench_training.interleaved_line(figures)}; data {data_ms:.2f} ms vs bare step {bare_ms:.2f} ms per image "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
