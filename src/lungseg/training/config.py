"""Training settings (:class:`TrainConfig`) and their validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lungseg.training.dataset import ROI_MODES
from lungseg.training.losses import LOSSES
from lungseg.training.models import MODELS, NORMS
from lungseg.training.sampling import PARTITIONS

MODES = ("ddp", "fedavg")
OPTIMIZERS = ("adam", "sgd")
AMP_MODES = ("auto", "off", "bf16", "fp16")
SWITCHES = ("auto", "on", "off")
#: settings a checkpoint must share with the current config to be resumed
RESUME_KEYS = ("arch", "base_channels", "depth", "norm", "label", "image_size", "hu_window", "roi", "roi_label",
               "roi_margin", "mode", "optimizer", "local_epochs", "fed_partition", "fed_fractions")


@dataclass
class TrainConfig:
    """Training settings.

    ``batch_size`` is per process; ``threads`` is the CPU thread budget of the whole job on this node,
    split evenly among its processes. ``mode``: ``ddp`` (one process, or synchronous data-parallel
    SGD over all torchrun processes) or ``fedavg`` (each process is a federated client that trains
    ``local_epochs`` epochs on its partition before the n_k/n-weighted averaging; ``epochs`` counts
    all local epochs, so rounds = epochs / local_epochs).
    """

    arch: str = "unet"
    base_channels: int = 16
    depth: int = 4
    norm: str = "batch"
    pretrained: str | None = None  # vgg16_unet: weights file, or "hub" (torch hub cache); never downloaded
    freeze_encoder_epochs: int = 0
    label: str = "lung"
    image_size: int = 128
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    roi: str = "none"  # none, crop (to the roi_label box) or mask (HU outside roi_label -> window low)
    roi_label: str = "lung"
    roi_margin: int = 8
    epochs: int = 8
    batch_size: int = 8
    loss: str = "bce_dice"
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_min: float = 1e-6
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: bool = True
    mixup: float = 0.0  # Beta(alpha, alpha) mixup of batch pairs; 0 = off
    oversample: float = 1.0  # sampling weight of slices with foreground relative to the others
    mode: str = "ddp"
    local_epochs: int = 1
    fed_partition: str = "iid"
    fed_fractions: tuple[float, ...] = ()
    num_workers: int = 0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto (CUDA when available), cuda or cpu
    amp: str = "auto"  # auto = bf16 on CUDA, off on CPU
    channels_last: str = "auto"  # auto = on with CUDA
    sync_bn: bool = False  # SyncBatchNorm across DDP processes (CUDA only)
    deterministic: bool = False
    log_every: int = 0  # log a line every N training steps (0: progress bar only)

    def validate(self) -> None:
        choices = {"arch": MODELS, "norm": NORMS, "roi": ROI_MODES, "loss": LOSSES, "optimizer": OPTIMIZERS,
                   "mode": MODES, "fed_partition": PARTITIONS, "amp": AMP_MODES, "channels_last": SWITCHES,
                   "device": ("auto", "cpu", "cuda")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(sorted(valid))}")
        for name in ("base_channels", "depth", "image_size", "epochs", "batch_size", "local_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 2**self.depth:
            raise ValueError(f"image_size {self.image_size} is too small for depth {self.depth} (needs >= {2**self.depth})")
        if len(self.hu_window) != 2 or not float(self.hu_window[1]) > float(self.hu_window[0]):
            raise ValueError(f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"need lr > 0, 0 <= lr_min <= lr and weight_decay >= 0, got lr={self.lr}, "
                             f"lr_min={self.lr_min}, weight_decay={self.weight_decay}")
        if self.num_workers < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"num_workers must be >= 0 and threads >= 1, got {self.num_workers}, {self.threads}")
        if self.warmup_epochs < 0 or self.freeze_encoder_epochs < 0 or self.roi_margin < 0 or self.log_every < 0:
            raise ValueError("warmup_epochs, freeze_encoder_epochs, roi_margin and log_every must be >= 0")
        if self.mixup < 0 or self.oversample <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need mixup >= 0, oversample > 0 and 0 <= momentum < 1, got {self.mixup}, "
                             f"{self.oversample}, {self.momentum}")
        if self.mode == "fedavg" and self.epochs % self.local_epochs:
            raise ValueError(f"fedavg: epochs ({self.epochs}) must be a multiple of local_epochs ({self.local_epochs}); "
                             f"rounds = epochs / local_epochs")
        if self.pretrained and self.arch != "vgg16_unet":
            raise ValueError(f"pretrained weights are only for arch vgg16_unet, not {self.arch}")

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_channels": 1, "out_channels": 1, "base_channels": int(self.base_channels),
                "depth": int(self.depth), "norm": str(self.norm)}

    def as_dict(self) -> dict[str, Any]:
        """Primitives only (lists for tuples), as stored in checkpoints."""
        d = asdict(self)
        d["hu_window"] = [float(v) for v in self.hu_window]
        d["fed_fractions"] = [float(v) for v in self.fed_fractions]
        return d
