"""Optimiser (Adam or SGD) and the learning-rate schedules: linear warmup, then cosine annealing or
ReduceLROnPlateau.

The cosine schedule is a pure function of the epoch (seed 000, Table 4: warmup from lr/10, cosine from
``lr`` down to ``lr_min`` reached at the last epoch), so a resumed run, or one whose ``epochs`` was
raised, follows it without any stored scheduler object. The plateau schedule (:class:`LRSchedule` with
``kind="plateau"``) depends on the validation losses seen so far; its state goes into the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

#: the first warmup epoch runs at this fraction of ``lr`` (seed 000: 1e-5 before 1e-4)
WARMUP_START = 0.1


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    """``adam`` (Adam) or ``sgd`` (SGD with momentum); frozen parameters (no gradient) are skipped by both."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: adam, sgd")


def lr_at(epoch: int, epochs: int, lr: float, lr_min: float = 0.0, warmup_epochs: int = 0) -> float:
    """Learning rate of 0-based ``epoch`` of ``epochs``.

    Warmup epochs ``0 .. warmup_epochs - 1`` rise linearly from ``WARMUP_START * lr`` towards ``lr``;
    then cosine annealing from ``lr`` (first epoch after warmup) to ``lr_min`` (last epoch).
    """
    if epoch < warmup_epochs:
        return lr * (WARMUP_START + (1.0 - WARMUP_START) * epoch / warmup_epochs)
    span = epochs - 1 - warmup_epochs
    if span <= 0:
        return lr
    t = min(1.0, (epoch - warmup_epochs) / span)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


#: ReduceLROnPlateau's defaults (mode min, relative threshold, no cooldown, smallest change applied)
PLATEAU_THRESHOLD, PLATEAU_EPS = 1e-4, 1e-8


class LRSchedule:
    """The learning rate of each epoch: ``cosine`` (:func:`lr_at`) or ``plateau``.

    ``plateau`` is torch's ``ReduceLROnPlateau`` (mode ``min`` on the validation loss, relative threshold
    1e-4, no cooldown) after the linear warmup: when ``patience`` epochs in a row bring no lower validation
    loss, the rate is multiplied by ``factor`` (not below ``lr_min``). Kept here, not in a torch scheduler
    bound to one optimiser, so every federated client and a resumed run follow the same rates.
    """

    def __init__(self, kind: str, lr: float, lr_min: float, epochs: int, warmup_epochs: int = 0,
                 patience: int = 2, factor: float = 0.5) -> None:
        if kind not in ("cosine", "plateau"):
            raise ValueError(f"unknown scheduler {kind!r}; valid choices: cosine, plateau")
        self.kind, self.base_lr, self.lr_min, self.epochs, self.warmup_epochs = kind, lr, lr_min, epochs, warmup_epochs
        self.patience, self.factor = patience, factor
        self.current, self.best, self.bad_epochs = lr, math.inf, 0

    def lr(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        if self.kind == "cosine":
            return lr_at(epoch, self.epochs, self.base_lr, self.lr_min, self.warmup_epochs)
        if epoch < self.warmup_epochs:
            return lr_at(epoch, self.epochs, self.base_lr, self.lr_min, self.warmup_epochs)
        return self.current

    def step(self, epoch: int, val_loss: float) -> None:
        """Record the validation loss after 0-based ``epoch`` (plateau: may cut the rate of the next epochs)."""
        if self.kind != "plateau" or epoch < self.warmup_epochs:
            return
        if math.isfinite(val_loss) and val_loss < self.best * (1.0 - PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = float(val_loss), 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            new = max(self.current * self.factor, self.lr_min)
            if self.current - new > PLATEAU_EPS:
                self.current = new
            self.bad_epochs = 0

    def state_dict(self, epoch_done: int, lr: float) -> dict[str, Any]:
        """The checkpoint's ``scheduler`` entry after ``epoch_done`` epochs (``lr``: the last rate used)."""
        if self.kind == "cosine":
            return {"kind": "warmup_cosine", "last_epoch": epoch_done, "lr": float(lr)}
        return {"kind": "plateau", "last_epoch": epoch_done, "lr": float(lr), "current": float(self.current),
                "best": float(self.best), "bad_epochs": int(self.bad_epochs)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's ``scheduler`` entry (a cosine entry carries nothing to restore)."""
        if self.kind == "plateau" and state and state.get("kind") == "plateau":
            self.current, self.best, self.bad_epochs = float(state["current"]), float(state["best"]), int(state["bad_epochs"])
