"""The training loop: segmentation or nodule classification as one process, DDP or federated averaging; resumable.

What depends on the task (data, network, loss, validation metrics, the selection metric) comes from its
task head (:mod:`lungseg.training.tasks`, ``config.task``); everything below is shared.

Outputs in ``out_dir`` (written by rank 0, atomically):

* ``checkpoint.pt``: everything needed to resume (weights, optimiser, schedule position, AMP scaler,
  epoch and step, RNG states, best validation score, per-epoch history, config); rewritten after every
  epoch (every round in ``fedavg`` mode) and when SIGTERM / SIGUSR1 stops the run mid-epoch, and
  reused automatically by the next call with the same ``out_dir``.
* ``model.pt``: the best epoch by the task's selection metric (validation Dice; classification: validation
  AUC), in the model file format of :mod:`lungseg.training.checkpoint`.
* ``metrics.csv``: one row per epoch (per round in ``fedavg`` mode; segmentation: :data:`METRICS_FIELDS`):
  mean training loss, validation loss, slice-aggregated validation Dice ``2 sum(TP) / (sum(P) + sum(G))``,
  mean per-slice validation F-score, the learning rate, training throughput of the whole job
  (images/s, data loading included) and the wall time; classification:
  :data:`~lungseg.training.tasks.CLASSIFICATION_FIELDS` (AUCs, accuracy, balanced accuracy instead of
  Dice and F-score).

Determinism: the data of an epoch (order, augmentation, mixup) is a function of ``(seed, epoch)``
only, so ``N`` processes with batch ``b`` see the same batches as one process with batch ``N b``,
and a run resumed mid-epoch continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from lungseg.atomic import atomic_path
from lungseg.training.allocator import keep_freed_memory
from lungseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    cpu_state_dict,
    data_fingerprint,
    load_checkpoint,
    model_file_state,
    save_checkpoint,
)
from lungseg.training.config import RESUME_KEYS, TrainConfig
from lungseg.training.dataset import item_seed
from lungseg.training.distributed import (
    DistEnv,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    cleanup,
    gather_to_main,
    init_distributed,
    is_distributed,
    weighted_average_,
)
from lungseg.training.losses import get_loss
from lungseg.training.models import SPATIAL_DIMS, set_encoder_trainable
from lungseg.training.optim import LRSchedule, build_optimizer, set_lr
from lungseg.training.preemption import StopRequest, TrainingInterrupted, record_stop
from lungseg.training.pretrained import load_vgg16_pretrained
from lungseg.training.sampling import SliceSampler, partition_clients
from lungseg.training.tasks import SEGMENTATION_FIELDS, TaskHead, task_head

__all__ = ["METRICS_FIELDS", "TrainConfig", "train", "NonFiniteLossError"]

log = logging.getLogger("lungseg.train")

#: the columns of a segmentation run's metrics.csv (a classification run's: tasks.CLASSIFICATION_FIELDS)
METRICS_FIELDS = SEGMENTATION_FIELDS
CHECKPOINT_NAME, MODEL_NAME, METRICS_NAME = "checkpoint.pt", "model.pt", "metrics.csv"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


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


def write_metrics_csv(path: Path, rows: Sequence[dict[str, float]], fields: Sequence[str] = METRICS_FIELDS) -> None:
    """Write the per-epoch metrics table (columns ``fields``) atomically; validation metrics with 6 decimals."""
    formats = {"epoch": "{:d}", "lr": "{:.6g}", "images_per_s": "{:.2f}", "epoch_seconds": "{:.3f}"}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([formats.get(k, "{:.6f}").format(int(row[k]) if k == "epoch" else float(row.get(k, math.nan)))
                             for k in fields])


def _check_resumable(path: Path, state: dict[str, Any], config: TrainConfig, env: DistEnv) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a lungseg training checkpoint (format={state.get('format')!r}); "
                         f"use another --out-dir or delete it")
    # settings added since a checkpoint was written count as their defaults (what that run trained with)
    saved, current = {**TrainConfig().as_dict(), **state.get("config", {})}, config.as_dict()
    diffs = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in RESUME_KEYS if saved.get(k) != current[k]]
    if diffs:
        raise ValueError(
            f"{path} was written for a different training setup ({'; '.join(diffs)}); refusing to resume "
            f"from it or overwrite it. Use a new --out-dir, or delete the checkpoint to start over."
        )
    same_layout = state.get("world_size") == env.world_size and saved.get("batch_size") == config.batch_size
    if config.mode == "fedavg" and state.get("world_size") != env.world_size:
        raise ValueError(f"{path} was written by {state.get('world_size')} federated clients, this run has "
                         f"{env.world_size}; resume with --nproc_per_node={state.get('world_size')}, or use a new --out-dir")
    if state.get("position") and not same_layout:
        raise ValueError(f"{path} was saved mid-epoch by {state.get('world_size')} process(es) with batch size "
                         f"{saved.get('batch_size')}; resume with the same layout to continue that epoch, or use a new --out-dir")


@dataclass
class _Ctx:
    """What the epoch loops share."""

    config: TrainConfig
    env: DistEnv
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    amp_dtype: torch.dtype | None
    channels_last: bool
    stop: StopRequest
    out_dir: Path
    train_ds: Any
    val_loader: DataLoader
    head: TaskHead
    schedule: LRSchedule
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf
    frozen: bool | None = None
    net: torch.nn.Module | None = None  # the model as trained (DDP-wrapped when data-parallel)
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None  # added to the training loss (FedProx)
    data: str = ""  # the training data's fingerprint (checkpoint.data_fingerprint), saved with every checkpoint

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def model_path(self) -> Path:
        return self.out_dir / MODEL_NAME

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)


@dataclass
class _EpochResult:
    steps: int  # steps done in this epoch so far (resumed steps included)
    completed: bool
    nonfinite: bool = False
    message: str = ""


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA (fp16 on GPUs without bf16), off on CPU; ``bf16`` also
    runs on CPU (slow there: a test path); ``fp16`` (with a gradient scaler) needs CUDA."""
    cuda = device.type == "cuda"
    if config.amp == "off" or (config.amp == "auto" and not cuda):
        return None
    if config.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if config.amp == "fp16":
        if not cuda:
            raise ValueError("--amp fp16 needs CUDA; use --amp bf16 or off on CPU")
        return torch.float16
    if cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --amp fp16 or auto")
    return torch.bfloat16


def train(
    config: TrainConfig,
    train_cases: Sequence[str | Path],
    val_cases: Sequence[str | Path],
    out_dir: str | Path,
    *,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    initial_weights: Mapping[str, torch.Tensor] | None = None,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
) -> Path:
    """Train ``config.arch`` on ``train_cases``, validating on ``val_cases`` every epoch; returns ``out_dir/model.pt``.

    ``train_cases`` / ``val_cases``: ingested case files (``task: segmentation``) or nodule patch files
    ``<case>.patches.h5`` with their ``<case>.nodules.tsv`` beside them (``task: classification``).

    Runs as one process, or as one rank of a torchrun job (``mode="ddp"``: DDP; ``mode="fedavg"``: a
    federated client); NCCL on GPUs, gloo on CPU. Resumes from ``out_dir/checkpoint.pt`` when present.
    ``on_epoch_end(epoch, metrics_row)`` is called on every rank after each epoch's (round's) outputs
    are written (epochs count from 1). ``initial_weights`` (a state dict of ``config.arch``, e.g. a federated
    round's global model) start a fresh run instead of the seeded initialisation; a checkpoint in ``out_dir``
    still takes precedence (resume). ``extra_loss(model)`` is added to each training step's loss (FedProx's
    proximal term, :mod:`lungseg.federated`). SIGTERM / SIGUSR1 to any rank stop all ranks after the same step
    with a checkpoint (rank 0 logs it in one line) and raise :class:`~lungseg.training.preemption.TrainingInterrupted`.
    """
    config.validate()
    if config.mode == "flower":  # the Flower server and site clients call train() per round with mode ddp
        raise ValueError("mode flower runs as lungseg fl-run (or fl-server + one fl-client per site), not lungseg train")
    if not train_cases:
        raise ValueError("no training cases given (--train is empty): the split has no training cases; "
                         "add cases or change split.fractions")
    if not val_cases:
        raise ValueError("no validation cases given (--val is empty): the split needs at least one validation "
                         "case; add cases or raise the validation fraction in split.fractions")
    owns_group = not is_distributed()
    env, device = init_distributed(config.device)
    try:
        return _train(config, [str(p) for p in train_cases], [str(p) for p in val_cases], Path(out_dir),
                      env, device, on_epoch_end, initial_weights, extra_loss)
    finally:
        if owns_group:
            cleanup()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader workers only decode / resize: leave the cores to the model


def _loader(dataset, sampler, config: TrainConfig, device: torch.device, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        worker_init_fn=_worker_init if config.num_workers else None,
        # workers kept between epochs (on an H200, 28.5k instead of 17k classifier patches/s: no re-fork and
        # re-copy of the dataset per epoch); they read each epoch's seed from shared memory (EpochSeeded)
        persistent_workers=config.num_workers > 0,
    )


def _train(config: TrainConfig, train_cases: list[str], val_cases: list[str], out_dir: Path, env: DistEnv,
           device: torch.device, on_epoch_end: Callable[[int, dict[str, float]], None] | None,
           initial_weights: Mapping[str, torch.Tensor] | None = None,
           extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None) -> Path:
    main = env.is_main
    if config.threads:
        if config.threads < env.local_world_size and env.local_rank == 0:
            # e.g. Snakemake gave a 4-process job the 2 cores of a laptop: run, one thread each, and say so
            log.warning("--threads %d is fewer than the %d processes on this node: one thread each (the cores are "
                        "oversubscribed, so times are not a measurement)", config.threads, env.local_world_size)
        torch.set_num_threads(max(1, config.threads // env.local_world_size))
    if device.type == "cpu":
        keep_freed_memory()  # no mmap / page faults per step: about 1.5x faster on 2 cores (training/allocator.py)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if config.sync_bn and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); leave it off on CPU")
    amp_dtype = _amp_dtype(config, device)
    if config.channels_last == "on" and SPATIAL_DIMS[config.arch] == 3:
        raise ValueError("--channels-last on is for 2-D architectures; use auto or off with unet3d")
    channels_last = SPATIAL_DIMS[config.arch] == 2 and (
        config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda"))
    ckpt_path, model_path, csv_path = out_dir / CHECKPOINT_NAME, out_dir / MODEL_NAME, out_dir / METRICS_NAME

    head = task_head(config)
    seed_everything(config.seed)  # identical initial weights on every rank
    model = head.build_model(config)
    state = None
    data = data_fingerprint(train_cases, val_cases)
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        if state.get("data", data) != data:  # checkpoints written before the fingerprint: resumed as before
            if main:
                log.warning("%s was written for other training data (cases added, removed or rewritten since): "
                            "training starts over (the checkpoint is replaced at the first save)", ckpt_path)
            state = None
        else:
            _check_resumable(ckpt_path, state, config, env)
    if state is None and initial_weights is not None:
        model.load_state_dict(initial_weights)
    elif state is None and config.pretrained:
        used = load_vgg16_pretrained(model, config.pretrained)
        if main:
            log.info("encoder initialised from pretrained VGG16-BN weights %s", used)
    if config.sync_bn and env.world_size > 1 and config.mode == "ddp":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay, config.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    schedule = LRSchedule(config.scheduler, config.lr, config.lr_min, config.epochs, config.warmup_epochs,
                          config.plateau_patience, config.plateau_factor)

    start_epoch, position, client = 0, None, None
    history: list[dict[str, float]] = []
    best_score = -math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        if config.mode == "fedavg":
            client = state["clients"][env.rank]
            optimizer.load_state_dict(client["optimizer"])
            if client.get("model") is not None:  # stopped mid-round: this client's own weights
                model.load_state_dict(client["model"])
            position = client.get("position")
        else:
            optimizer.load_state_dict(state["optimizer"])
            position = state.get("position")
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        best = state["best_val_score"] if "best_val_score" in state else state["best_val_dice"]  # older checkpoints
        start_epoch, best_score, history = int(state["epoch"]), float(best), list(state["history"])
        schedule.load_state_dict(state.get("scheduler"))
        set_rng_state(state["rng"])
        if main:
            if start_epoch < config.epochs or position:
                where = (f"epoch {position['epoch'] + 1}/{config.epochs}, step {position['step']}" if position
                         else f"epoch {start_epoch + 1}/{config.epochs}")
                log.info("resuming from %s at %s (best %s so far %.4f)", ckpt_path, where, head.selection, best_score)
            else:
                log.info("%s already has %d epoch(s) (>= %d requested); nothing to train", ckpt_path, start_epoch, config.epochs)
    if start_epoch >= config.epochs and not position:
        if not model_path.is_file():
            raise FileNotFoundError(f"{ckpt_path} is complete but {model_path} is missing; delete the checkpoint to retrain")
        if main:
            write_metrics_csv(csv_path, history, head.metric_fields)
        barrier()
        return model_path

    train_ds, val_ds = head.datasets(config, train_cases, val_cases)
    head.check_data(config, train_ds, val_ds, train_cases)
    unit = head.unit
    val_loader = _loader(Subset(val_ds, range(env.rank, len(val_ds), env.world_size)), None, config, device)
    ctx = _Ctx(config, env, device, model, optimizer, scaler, head.loss_fn(config, train_ds, get_loss), amp_dtype, channels_last,
               StopRequest(), out_dir, train_ds, val_loader, head, schedule, history, best_score)
    ctx.extra_loss, ctx.data = extra_loss, data
    if main:
        log.info("training %s %s (%s) on %d %s per epoch (%d cases), validating on %d %s (%d cases); "
                 "%d process(es) on %s, batch %d per process, input %s, epochs %d..%d, amp %s%s",
                 config.arch, config.model_kwargs(), config.mode, len(train_ds), unit, len(train_cases),
                 len(val_ds), unit, len(val_cases), env.world_size, device.type, config.batch_size,
                 head.describe_input(config), start_epoch + 1, config.epochs, amp_dtype or "off",
                 ", channels_last" if channels_last else "")
    with ctx.stop:
        if config.mode == "fedavg":
            _fit_fedavg(ctx, start_epoch, position, client, on_epoch_end)
        else:
            _fit_ddp(ctx, start_epoch, position, on_epoch_end)
    barrier()
    if main:
        log.info("done: best %s %.4f -> %s", head.selection, ctx.best_score, model_path)
    return model_path


# ---------------------------------------------------------------- shared pieces


def _set_phase(ctx: _Ctx, epoch: int, wrap_ddp: bool) -> None:
    """Freeze the encoder for the first ``freeze_encoder_epochs`` epochs, then train all; (re)wrap DDP
    when the set of trained parameters changes (DDP fixes it at construction)."""
    frozen = epoch < ctx.config.freeze_encoder_epochs
    if frozen == ctx.frozen and ctx.net is not None:
        return
    if ctx.config.freeze_encoder_epochs:
        set_encoder_trainable(ctx.model, not frozen)
        if ctx.env.is_main:
            log.info("epoch %d: encoder %s", epoch + 1, "frozen" if frozen else "trained")
    ctx.frozen = frozen
    if wrap_ddp and ctx.env.world_size > 1:
        dev = [ctx.device.index] if ctx.device.type == "cuda" else None
        ctx.net = DistributedDataParallel(ctx.model, device_ids=dev)
    else:
        ctx.net = ctx.model


def _mixup(ctx: _Ctx, images: torch.Tensor, masks: torch.Tensor, epoch_seed: int, step: int, rank: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al.; seed 000's outlook): blend each slice and its mask with another of the batch."""
    rng = np.random.default_rng(item_seed(epoch_seed, 1_000_000_007 + step * 4099 + rank))
    lam = float(rng.beta(ctx.config.mixup, ctx.config.mixup))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    return lam * images + (1.0 - lam) * images[perm], lam * masks + (1.0 - lam) * masks[perm]


def _run_epoch(ctx: _Ctx, loader: DataLoader, epoch: int, epoch_seed: int, start_step: int, sums: torch.Tensor,
               collective: bool) -> _EpochResult:
    """Train on ``loader`` from step ``start_step`` of ``epoch``; adds ``[loss * n, n]`` to ``sums``.

    ``collective``: the ranks train one model together (DDP) and agree after every step on stopping
    (NaN loss anywhere raises at once; a signal to any rank stops all after the same step). Otherwise
    (federated clients with different step counts) the flags are local and reported in the result.
    """
    config, main = ctx.config, ctx.env.is_main
    ctx.net.train()
    tty = sys.stderr.isatty()  # terminal: a live bar; log file: a line every 30 s and the final count
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", file=sys.stderr, leave=not tty,
               disable=not main, mininterval=0.5 if tty else 30.0, initial=start_step,
               total=start_step + len(loader))
    step = start_step
    for images, masks in bar:
        images, masks = ctx.to_device(images, masks)
        if config.mixup > 0:
            images, masks = _mixup(ctx, images, masks, epoch_seed, step, ctx.env.rank)
        ctx.optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            logits = ctx.net(images)
        loss = ctx.loss_fn(logits, masks)
        if ctx.extra_loss is not None:
            loss = loss + ctx.extra_loss(ctx.model)
        ctx.scaler.scale(loss).backward()  # before the check, so DDP's gradient all-reduce completes everywhere
        flags = torch.stack([(~torch.isfinite(loss.detach())).to(torch.float32),
                             torch.tensor(float(ctx.stop.signum or 0), device=ctx.device)])
        if collective:
            all_reduce_max(flags)
        nonfinite, signum = flags.tolist()
        stop = ctx.stop.adopt(int(signum))  # a signal to any rank stops all
        if nonfinite > 0:
            message = (f"training loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1} "
                       f"(lr {ctx.optimizer.param_groups[0]['lr']:.3g}); stopped without updating the weights. "
                       f"The last good checkpoint ({ctx.ckpt_path}, if any) is kept; lower --lr or check the input data.")
            if collective:
                raise NonFiniteLossError(message)
            bar.close()
            return _EpochResult(step, completed=False, nonfinite=True, message=message)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        n = images.shape[0]
        sums[0] += loss.detach().to(torch.float64) * n
        sums[1] += n
        step += 1
        if main:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if config.log_every and step % config.log_every == 0:
                log.info("epoch %d/%d step %d/%d loss %.4f", epoch + 1, config.epochs, step,
                         start_step + len(loader), loss.item())
        if stop:
            bar.close()
            return _EpochResult(step, completed=False)
    bar.close()
    return _EpochResult(step, completed=True)


def _finish_epoch(ctx: _Ctx, epoch_done: int, row: dict[str, float], checkpoint: dict[str, Any]) -> None:
    """Record a finished epoch (round): history, best ``model.pt``, ``metrics.csv``, checkpoint, log line."""
    config, head = ctx.config, ctx.head
    ctx.history.append(row)
    score = head.score(row)
    improved = score > ctx.best_score
    ctx.best_score = max(ctx.best_score, score)
    if not ctx.env.is_main:
        return
    if improved or not ctx.model_path.is_file():  # (re-)create a deleted model.pt on resume
        info = head.model_file_info(config)
        selected = {"val_dice": row["val_dice"]} if head.selection == "val_dice" else {
            "task": config.task, "score": {"metric": head.selection, "value": row[head.selection]}}
        save_checkpoint(ctx.model_path, model_file_state(
            ctx.model, arch=config.arch, model_kwargs=config.model_kwargs(), image_size=config.image_size,
            hu_window=config.hu_window, epoch=epoch_done, gpus=ctx.env.world_size if ctx.device.type == "cuda" else 0,
            **selected, **info))
    write_metrics_csv(ctx.out_dir / METRICS_NAME, ctx.history, head.metric_fields)
    _save(ctx, epoch_done, **checkpoint)
    log.info("epoch %d/%d  %s  lr %.3g  %.1f img/s  %.1f s", epoch_done, config.epochs, head.log_row(row, improved),
             row["lr"], row["images_per_s"], row["epoch_seconds"])


def _save(ctx: _Ctx, epoch_done: int, **extra: Any) -> None:
    """Write ``checkpoint.pt`` (rank 0): the state after ``epoch_done`` epochs plus ``extra`` (position, clients)."""
    state = {
        "format": CHECKPOINT_FORMAT, "epoch": epoch_done, "model": cpu_state_dict(ctx.model),
        "optimizer": None, "scheduler": ctx.schedule.state_dict(epoch_done, ctx.optimizer.param_groups[0]["lr"]),
        "scaler": ctx.scaler.state_dict(), "best_val_score": ctx.best_score, "history": ctx.history,
        "config": ctx.config.as_dict(), "world_size": ctx.env.world_size, "rng": rng_state(),
        "position": None, "clients": None, "data": ctx.data,
    }
    state.update(extra)
    save_checkpoint(ctx.ckpt_path, state)


def _stop_agreed(ctx: _Ctx) -> bool:
    """Whether any rank received a stop signal (every rank then takes it on)."""
    flag = torch.tensor([float(ctx.stop.signum or 0)], device=ctx.device)
    return ctx.stop.adopt(int(all_reduce_max(flag).item()))


def _stopped(ctx: _Ctx, epoch: int, step: int) -> TrainingInterrupted:
    """After the stop's checkpoint is written: log the stop (rank 0), record it for ``lungseg train-guard``
    (local rank 0 of each node) and wait for all ranks; returns the exception to raise."""
    exc = TrainingInterrupted(ctx.stop.signum, str(ctx.ckpt_path), epoch, step)
    if ctx.env.is_main:
        log.warning("%s", exc)
    if ctx.env.local_rank == 0:
        record_stop(exc.signum)
    barrier()
    return exc


def _row(epoch_done: int, train_sums: torch.Tensor, val: dict[str, float], lr: float,
         train_seconds: float, seconds: float) -> dict[str, float]:
    loss, n = float(train_sums[0]), float(train_sums[1])
    return {"epoch": epoch_done, "train_loss": loss / max(n, 1.0), **val, "lr": lr,
            "images_per_s": n / max(train_seconds, 1e-9), "epoch_seconds": seconds}


def _validate_and_schedule(ctx: _Ctx, epoch: int) -> dict[str, float]:
    """The task head's validation metrics after 0-based ``epoch``, fed to the learning-rate schedule
    (plateau: the next epochs' rate) before the checkpoint records its state."""
    val = ctx.head.validate(ctx)
    ctx.schedule.step(epoch, val["val_loss"])
    return val


def _sampler(ctx: _Ctx, dataset, indices: np.ndarray | None, replicas: int, rank: int, seed: int) -> SliceSampler:
    return SliceSampler(dataset, num_replicas=replicas, rank=rank, seed=seed,
                        weights=ctx.head.sampling_weights(ctx.config, ctx.train_ds, indices))


def _train_loader(ctx: _Ctx, dataset, sampler: SliceSampler) -> DataLoader:
    # a trailing batch of one slice breaks BatchNorm at small bottlenecks and adds noise: skip it
    shard, b = sampler.num_samples, ctx.config.batch_size
    return _loader(dataset, sampler, ctx.config, ctx.device, drop_last=shard > b and shard % b == 1)


# ---------------------------------------------------------------- one model: single process or DDP


def _fit_ddp(ctx: _Ctx, start_epoch: int, position: dict | None,
             on_epoch_end: Callable[[int, dict[str, float]], None] | None) -> None:
    config, env = ctx.config, ctx.env
    sampler = _sampler(ctx, ctx.train_ds, None, env.world_size, env.rank, config.seed)
    loader = _train_loader(ctx, ctx.train_ds, sampler)
    first_epoch = position["epoch"] if position else start_epoch
    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        _set_phase(ctx, epoch, wrap_ddp=True)
        seed_everything(_epoch_seed(config.seed, epoch, env.rank))
        data_seed = _epoch_seed(config.seed, epoch, 0)  # the same on every rank: per-item augmentation
        ctx.train_ds.set_epoch_seed(data_seed)
        sampler.set_epoch(epoch)
        sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss * n, n
        start_step = 0
        if position and position["epoch"] == epoch:
            start_step = int(position["step"])
            sampler.skip(start_step * config.batch_size)
            if env.is_main:
                sums += torch.tensor(position["sums"], dtype=torch.float64, device=ctx.device)
        position = None
        lr = ctx.schedule.lr(epoch)
        set_lr(ctx.optimizer, lr)
        result = _run_epoch(ctx, loader, epoch, data_seed, start_step, sums, collective=True)
        if not result.completed:  # stopped by a signal after step result.steps, on every rank
            all_reduce_sum(sums)
            if env.is_main:
                _save(ctx, epoch, optimizer=ctx.optimizer.state_dict(),
                      position={"epoch": epoch, "step": result.steps, "sums": sums.tolist()})
            raise _stopped(ctx, epoch, result.steps)
        train_seconds = time.perf_counter() - t0
        all_reduce_sum(sums)
        val = _validate_and_schedule(ctx, epoch)
        row = _row(epoch + 1, sums, val, lr, train_seconds, time.perf_counter() - t0)
        _finish_epoch(ctx, epoch + 1, row, {"optimizer": ctx.optimizer.state_dict()})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
        if _stop_agreed(ctx):
            raise _stopped(ctx, epoch + 1, 0)


# ---------------------------------------------------------------- federated averaging


def _fit_fedavg(ctx: _Ctx, start_epoch: int, position: dict | None, client: dict | None,
                on_epoch_end: Callable[[int, dict[str, float]], None] | None) -> None:
    """Each rank is client k: ``local_epochs`` epochs on its partition, then the n_k/n-weighted
    average of all clients' weights (eq. 1 of seed 000) becomes everyone's model; repeat."""
    config, env = ctx.config, ctx.env
    case_of_item = ctx.head.case_of_item(ctx.train_ds)
    parts = partition_clients(case_of_item, env.world_size, config.fed_partition, config.seed,
                              config.fed_fractions or None)
    sizes = [len(p) for p in parts]
    if min(sizes) == 0:
        raise ValueError(f"fedavg: a client got no training {ctx.head.unit} (client sizes {sizes}, partition "
                         f"{config.fed_partition!r}); use fewer clients, partition iid, or more training cases")
    mine = parts[env.rank]
    weight = sizes[env.rank] / float(sum(sizes))
    if env.is_main:
        log.info("fedavg: %d client(s), %s partition, %s per client %s, %d local epoch(s) per round",
                 env.world_size, config.fed_partition, ctx.head.unit, sizes, config.local_epochs)
    subset = Subset(ctx.train_ds, mine.tolist())
    sampler = _sampler(ctx, subset, mine, 1, 0, config.seed + env.rank)
    loader = _train_loader(ctx, subset, sampler)
    e_local = config.local_epochs
    round_start = start_epoch  # a multiple of local_epochs: the last averaged state
    round_sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    if client and client.get("round_sums"):
        round_sums += torch.tensor(client["round_sums"], dtype=torch.float64, device=ctx.device)
    while round_start < config.epochs:
        round_end = round_start + e_local
        t0 = time.perf_counter()
        result = _EpochResult(0, completed=True)
        lr = ctx.schedule.lr(round_start)
        first = int(position["epoch"]) if position else round_start  # a resumed client may be done already
        at = {"epoch": round_end, "step": 0}
        for e in range(first, round_end):
            _set_phase(ctx, e, wrap_ddp=False)
            seed_everything(_epoch_seed(config.seed, e, env.rank))
            data_seed = _epoch_seed(config.seed, e, 0)
            ctx.train_ds.set_epoch_seed(data_seed)
            sampler.set_epoch(e)
            start_step = int(position["step"]) if position and int(position["epoch"]) == e else 0
            sampler.skip(start_step * config.batch_size)
            position = None
            set_lr(ctx.optimizer, ctx.schedule.lr(e))
            result = _run_epoch(ctx, loader, e, data_seed, start_step, round_sums, collective=False)
            if not result.completed:
                at = {"epoch": e, "step": result.steps}
                break
        position = None
        flags = all_reduce_max(torch.tensor([float(result.nonfinite), float(ctx.stop.signum or 0)], device=ctx.device))
        if flags[0] > 0:
            raise NonFiniteLossError(result.message or f"a federated client's training loss became NaN/inf in round "
                                     f"ending at epoch {round_end}; stopped before averaging. The last good checkpoint "
                                     f"({ctx.ckpt_path}, if any) is kept; lower --lr or check the input data.")
        if ctx.stop.adopt(int(flags[1])):  # save every client's own progress in the round, then stop
            mine_state = {"optimizer": ctx.optimizer.state_dict(), "model": cpu_state_dict(ctx.model),
                          "position": at, "round_sums": round_sums.tolist()}
            clients = gather_to_main(mine_state)
            if env.is_main:
                _save(ctx, round_start, clients=clients)
            raise _stopped(ctx, at["epoch"], at["step"])
        train_seconds = time.perf_counter() - t0
        weighted_average_(ctx.model, weight)
        all_reduce_sum(round_sums)
        val = _validate_and_schedule(ctx, round_end - 1)
        row = _row(round_end, round_sums, val, lr, train_seconds, time.perf_counter() - t0)
        clients = gather_to_main({"optimizer": ctx.optimizer.state_dict()})
        _finish_epoch(ctx, round_end, row, {"clients": clients})
        round_sums.zero_()
        round_start = round_end
        if on_epoch_end is not None:
            on_epoch_end(round_end, row)
        if _stop_agreed(ctx):
            raise _stopped(ctx, round_end, 0)
