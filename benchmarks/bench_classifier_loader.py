"""The nodule classifier's data loader alone: batched against per-item augmentation, and loader workers started
at every epoch against kept between epochs (``persistent_workers``), in one run.

* ``augmentation``: one thread, one batch of ``--batch-size`` patches: ``NoduleDataset.__getitems__`` (the whole
  batch augmented at once by ``transform_batch``) against the same items fetched one by one, then collated.
* ``loader``: a DataLoader pass per epoch (shuffled, ``--workers`` processes, pinned memory and a copy to the GPU
  where there is one) with the workers started at every epoch, then kept (the training default since
  2026-12-01); patches/s of each epoch.

On the lent H200 (16 cores, 12 workers, 3 x 64^2 patches, batch 256) a first form of this script measured
17 000 patches/s with workers started per epoch and 28 500 from the second epoch with kept workers; the
classifier's bare training step there takes about 7 ms per batch (``classifier_gpu.json``).

Run: ``.venv/bin/python benchmarks/bench_classifier_loader.py [--workers 2] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from lungseg.classification.dataset import NoduleDataset
from lungseg.classification.synthetic import write_synthetic_cases

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def ms_per_batch(fetch, repeats: int) -> float:
    fetch()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fetch()
    return 1e3 * (time.perf_counter() - t0) / repeats


def loader_epochs(dataset: NoduleDataset, batch_size: int, workers: int, persistent: bool, epochs: int,
                  device: torch.device) -> list[float]:
    """Patches/s of each epoch of one DataLoader (its epoch seed set before each epoch, as training does)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                        worker_init_fn=lambda _: torch.set_num_threads(1))
    rates = []
    for epoch in range(epochs):
        dataset.set_epoch_seed(epoch)
        t0 = time.perf_counter()
        for x, _ in loader:
            x.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(dataset) / (time.perf_counter() - t0))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--nodules", type=int, default=64, help="nodules per case")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="batches timed per augmentation form")
    parser.add_argument("--out", type=Path, default=RESULTS / "classifier_loader.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_synthetic_cases(Path(tmp), args.cases, args.nodules, args.patch_size, seed=1)
        dataset = NoduleDataset(files, ["image"], "orthogonal", args.patch_size, (-1000.0, 400.0), augment=True)
        batch = list(range(min(args.batch_size, len(dataset))))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        batched = ms_per_batch(lambda: default_collate(dataset.__getitems__(batch)), args.repeats)
        per_item = ms_per_batch(lambda: default_collate([dataset[i] for i in batch]), args.repeats)
        torch.set_num_threads(threads)
        started = loader_epochs(dataset, args.batch_size, args.workers, False, args.epochs, device)
        kept = loader_epochs(dataset, args.batch_size, args.workers, True, args.epochs, device)
    result = {
        "benchmark": "nodule classifier loader: batched vs per-item augmentation; workers per epoch vs kept",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "python": platform.python_version(),
        "config": {"patches": len(dataset), "input": [3, args.patch_size, args.patch_size],
                   "batch_size": args.batch_size, "workers": args.workers},
        "augmentation_ms_per_batch_one_thread": {"batched": round(batched, 2), "per_item": round(per_item, 2)},
        "ratio_per_item_over_batched": round(per_item / batched, 2),
        "loader_patches_per_s_workers_started_each_epoch": [round(r) for r in started],
        "loader_patches_per_s_workers_kept": [round(r) for r in kept],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"augmentation, one thread: batched {batched:.1f} ms, per item {per_item:.1f} ms per batch of {len(batch)}; "
          f"loader patches/s, workers started each epoch {[round(r) for r in started]}, kept {[round(r) for r in kept]} "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
