"""The training loop: slice-wise segmentation, single process or DDP under torchrun, resumable.

Outputs in ``out_dir`` (written by rank 0, atomically):

* ``checkpoint.pt``: everything needed to resume (weights, optimizer, scheduler, epoch, RNG states,
  best validation Dice, per-epoch history, config); rewritten after every epoch and reused
  automatically by the next call with the same ``out_dir``.
* ``model.pt``: the best epoch by validation Dice, in the model file format of
  :mod:`lungseg.training.checkpoint`.
* ``metrics.csv``: one row per epoch (:data:`METRICS_FIELDS`): mean training loss, validation loss,
  slice-aggregated validation Dice ``2 sum(TP) / (sum(P) + sum(G))``, the epoch's learning rate,
  training throughput of the whole job (images/s, data loading included) and the epoch's wall time.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from lungseg.atomic import atomic_path
from lungseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    cpu_state_dict,
    load_checkpoint,
    model_file_state,
    save_checkpoint,
)
from lungseg.training.dataset import SliceDataset
from lungseg.training.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup,
    init_distributed,
    is_distributed,
)
from lungseg.training.losses import bce_dice_loss, dice_counts, dice_from_counts
from lungseg.training.models import MODELS, build_model

log = logging.getLogger("lungseg.train")

METRICS_FIELDS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "images_per_s", "epoch_seconds")
#: settings a checkpoint must share with the current config to be resumed
RESUME_KEYS = ("arch", "base_channels", "depth", "label", "image_size", "hu_window")
CHECKPOINT_NAME, MODEL_NAME, METRICS_NAME = "checkpoint.pt", "model.pt", "metrics.csv"


@dataclass
class TrainConfig:
    """Training settings (``batch_size`` is per process; ``threads`` is the CPU thread budget of the
    whole job on this node, split evenly among its processes)."""

    arch: str = "unet"
    base_channels: int = 16
    depth: int = 4
    label: str = "lung"
    image_size: int = 128
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_workers: int = 0
    seed: int = 0
    augment: bool = True
    threads: int | None = None
    device: str = "auto"  # auto (CUDA when available), cuda or cpu

    def validate(self) -> None:
        if self.arch not in MODELS:
            raise ValueError(f"unknown model architecture {self.arch!r}; valid choices: {', '.join(sorted(MODELS))}")
        for name in ("base_channels", "depth", "image_size", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 2**self.depth:
            raise ValueError(f"image_size {self.image_size} is too small for depth {self.depth} (needs >= {2**self.depth})")
        if len(self.hu_window) != 2 or not float(self.hu_window[1]) > float(self.hu_window[0]):
            raise ValueError(f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.num_workers < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"num_workers must be >= 0 and threads >= 1, got {self.num_workers}, {self.threads}")

    def model_kwargs(self) -> dict[str, int]:
        return {"in_channels": 1, "out_channels": 1, "base_channels": int(self.base_channels), "depth": int(self.depth)}

    def as_dict(self) -> dict[str, Any]:
        """Primitives only (lists for tuples), as stored in checkpoints."""
        d = asdict(self)
        d["hu_window"] = [float(v) for v in self.hu_window]
        return d


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of one epoch on one rank: reseeding per epoch makes a resumed run repeat an uninterrupted one."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch as primitives + tensors (``weights_only``-loadable)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _cosine_factor(epochs: int) -> Callable[[int], float]:
    """LR factor of epoch ``e`` (0-based): cosine annealing from 1 towards 0 over ``epochs``."""

    def factor(e: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))

    return factor  # a plain function: LambdaLR does not store it, so a resumed run may change ``epochs``


def write_metrics_csv(path: Path, rows: Sequence[dict[str, float]]) -> None:
    """Write the per-epoch metrics table atomically."""
    formats = {"epoch": "{:d}", "train_loss": "{:.6f}", "val_loss": "{:.6f}", "val_dice": "{:.6f}",
               "lr": "{:.6g}", "images_per_s": "{:.2f}", "epoch_seconds": "{:.3f}"}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_FIELDS)
        for row in rows:
            writer.writerow([formats[k].format(int(row[k]) if k == "epoch" else float(row[k])) for k in METRICS_FIELDS])


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _check_resumable(path: Path, state: dict[str, Any], config: TrainConfig) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a lungseg training checkpoint (format={state.get('format')!r}); "
                         f"use another --out-dir or delete it")
    saved, current = state["config"], config.as_dict()
    diffs = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in RESUME_KEYS if saved.get(k) != current[k]]
    if diffs:
        raise ValueError(
            f"{path} was written for a different training setup ({'; '.join(diffs)}); refusing to resume "
            f"from it or overwrite it. Use a new --out-dir, or delete the checkpoint to start over."
        )


def _loader(dataset, sampler, config: TrainConfig, generator: torch.Generator, device: torch.device,
            drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=generator,
    )


def train(
    config: TrainConfig,
    train_cases: Sequence[str | Path],
    val_cases: Sequence[str | Path],
    out_dir: str | Path,
    *,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train ``config.arch`` on ``train_cases``, validating on ``val_cases`` every epoch; returns ``out_dir/model.pt``.

    Runs as one process, or as one rank of a torchrun job (DDP; NCCL on GPUs, gloo on CPU). Resumes
    from ``out_dir/checkpoint.pt`` when present. ``on_epoch_end(epoch, metrics_row)`` is called on
    every rank after each epoch's outputs are written (epochs count from 1).
    """
    config.validate()
    if not train_cases:
        raise ValueError("no training cases given (--train is empty); the split has no training cases?")
    if not val_cases:
        raise ValueError("no validation cases given (--val is empty); the split needs at least one validation case")
    owns_group = not is_distributed()
    env, device = init_distributed(config.device)
    try:
        return _train(config, [str(p) for p in train_cases], [str(p) for p in val_cases], Path(out_dir),
                      env, device, on_epoch_end)
    finally:
        if owns_group:
            cleanup()


def _train(config: TrainConfig, train_cases: list[str], val_cases: list[str], out_dir: Path, env: DistEnv,
           device: torch.device, on_epoch_end: Callable[[int, dict[str, float]], None] | None) -> Path:
    main = env.is_main
    if config.threads:
        torch.set_num_threads(max(1, config.threads // max(1, env.local_world_size)))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ckpt_path, model_path, csv_path = out_dir / CHECKPOINT_NAME, out_dir / MODEL_NAME, out_dir / METRICS_NAME

    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config.arch, **config.model_kwargs()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    factor = _cosine_factor(config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
    start_epoch, best_dice, history = 0, -math.inf, []

    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(ckpt_path, state, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):  # schedule over the *current* epochs
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        start_epoch, best_dice, history = int(state["epoch"]), float(state["best_val_dice"]), list(state["history"])
        set_rng_state(state["rng"])
        if main:
            if start_epoch < config.epochs:
                log.info("resuming from %s at epoch %d/%d (best val Dice so far %.4f)",
                         ckpt_path, start_epoch + 1, config.epochs, best_dice)
            else:
                log.info("%s already has %d epoch(s) (>= %d requested); nothing to train", ckpt_path, start_epoch, config.epochs)
    if start_epoch >= config.epochs:
        if not model_path.is_file():
            raise FileNotFoundError(f"{ckpt_path} is complete but {model_path} is missing; delete the checkpoint to retrain")
        if main:
            write_metrics_csv(csv_path, history)
        barrier()
        return model_path

    train_ds = SliceDataset(train_cases, config.label, config.image_size, config.hu_window, augment=config.augment)
    val_ds = SliceDataset(val_cases, config.label, config.image_size, config.hu_window, augment=False)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f"no slices to learn from: {len(train_ds)} training and {len(val_ds)} validation slices")
    train_sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                       seed=config.seed, drop_last=False)
    shard = len(train_sampler)
    # a trailing batch of one slice breaks BatchNorm at small bottlenecks and adds noise: skip it
    drop_last = shard > config.batch_size and shard % config.batch_size == 1
    generator = torch.Generator()
    train_loader = _loader(train_ds, train_sampler, config, generator, device, drop_last=drop_last)
    val_loader = _loader(Subset(val_ds, range(env.rank, len(val_ds), env.world_size)), None, config, generator, device)
    if env.world_size > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp_model = model
    if main:
        log.info("training %s %s on %d slices (%d cases), validating on %d slices (%d cases); %d process(es) on %s, "
                 "batch %d per process, image %dx%d, epochs %d..%d",
                 config.arch, config.model_kwargs(), len(train_ds), len(train_cases), len(val_ds), len(val_cases),
                 env.world_size, device.type, config.batch_size, config.image_size, config.image_size,
                 start_epoch + 1, config.epochs)

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        seed = _epoch_seed(config.seed, epoch, env.rank)
        seed_everything(seed)
        generator.manual_seed(seed)
        train_sampler.set_epoch(epoch)
        lr = float(optimizer.param_groups[0]["lr"])
        train_loss, n_images = _train_epoch(ddp_model, optimizer, train_loader, device, epoch, config.epochs, main, ckpt_path)
        train_seconds = time.perf_counter() - t0
        val_loss, val_dice = _validate(model, val_loader, device)
        scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice, "lr": lr,
               "images_per_s": n_images / max(train_seconds, 1e-9), "epoch_seconds": time.perf_counter() - t0}
        history.append(row)
        improved = val_dice > best_dice
        best_dice = max(best_dice, val_dice)
        if main:
            if improved or not model_path.is_file():  # (re-)create a deleted model.pt on resume
                save_checkpoint(model_path, model_file_state(
                    model, arch=config.arch, model_kwargs=config.model_kwargs(), label=config.label,
                    image_size=config.image_size, hu_window=config.hu_window, epoch=epoch + 1, val_dice=val_dice))
            write_metrics_csv(csv_path, history)
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": cpu_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "best_val_dice": best_dice, "history": history, "config": config.as_dict(), "rng": rng_state(),
            })
            log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_dice %.4f%s  lr %.3g  %.1f img/s  %.1f s",
                     epoch + 1, config.epochs, train_loss, val_loss, val_dice, " (best)" if improved else "",
                     lr, row["images_per_s"], row["epoch_seconds"])
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    barrier()
    if main:
        log.info("done: best val Dice %.4f -> %s", best_dice, model_path)
    return model_path


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, device: torch.device,
                 epoch: int, epochs: int, main: bool, ckpt_path: Path) -> tuple[float, int]:
    """One pass over this rank's shard; returns (mean loss over all ranks, images seen by all ranks)."""
    model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss * n, n
    tty = sys.stderr.isatty()  # terminal: a live bar; log file: a line every 30 s and the final count
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr, leave=not tty,
               disable=not main, mininterval=0.5 if tty else 30.0)
    for step, (images, masks) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = bce_dice_loss(model(images), masks)
        loss.backward()  # before the check, so DDP's gradient all-reduce completes on every rank
        bad = all_reduce_sum((~torch.isfinite(loss.detach())).to(torch.float32).reshape(1))
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1} "
                f"(on {int(bad.item())} process(es), lr {optimizer.param_groups[0]['lr']:.3g}); stopped without "
                f"updating the weights. The last good checkpoint ({ckpt_path}, if any) is kept; "
                f"lower --lr or check the input data."
            )
        optimizer.step()
        n = images.shape[0]
        sums[0] += loss.detach().to(torch.float64) * n
        sums[1] += n
        if main:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    all_reduce_sum(sums)
    return float(sums[0] / sums[1].clamp(min=1)), int(sums[1])


@torch.no_grad()
def _validate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Validation loss and slice-aggregated Dice ``2 sum(TP) / (sum(P) + sum(G))`` over all ranks' shards."""
    broadcast_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss * n, n, TP, P, G
    for images, masks in loader:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        logits = model(images)
        n = images.shape[0]
        sums[0] += bce_dice_loss(logits, masks).to(torch.float64) * n
        sums[1] += n
        sums[2:] += dice_counts(logits, masks)
    all_reduce_sum(sums)
    if sums[1] == 0:
        raise ValueError("the validation cases have no slices")
    return float(sums[0] / sums[1]), dice_from_counts(sums[2:])

