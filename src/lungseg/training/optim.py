"""Optimiser (Adam or SGD) and the learning-rate schedule: linear warmup, then cosine annealing.

The schedule is a pure function of the epoch (seed 000, Table 4: warmup from lr/10, cosine from
``lr`` down to ``lr_min`` reached at the last epoch), so a resumed run, or one whose ``epochs`` was
raised, follows it without any stored scheduler object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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
