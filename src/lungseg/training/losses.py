"""Training loss (BCE + soft Dice) and the hard Dice metric, both over a whole batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of sigmoid(logits) against a {0, 1} target, pooled over the batch."""
    probs = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (probs * target).sum()
    return (2.0 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy on logits plus ``1 - soft Dice`` (pooled over the batch)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce + (1.0 - soft_dice(logits, target, smooth))


def dice_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[true positives, predicted positives, reference positives]`` (float64) of ``logits > 0`` vs ``target > 0.5``."""
    pred = logits > 0  # sigmoid(logits) > 0.5
    ref = target > 0.5
    return torch.stack([(pred & ref).sum(), pred.sum(), ref.sum()]).to(torch.float64)


def dice_from_counts(counts: torch.Tensor) -> float:
    """``2 TP / (P + G)`` from :func:`dice_counts` sums; 1.0 when both prediction and reference are empty."""
    tp, pred, ref = (float(v) for v in counts)
    return 1.0 if pred + ref == 0 else 2.0 * tp / (pred + ref)


def dice_score(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Hard Dice (probability threshold 0.5) pooled over the batch; empty prediction + empty reference = 1."""
    return dice_from_counts(dice_counts(logits, target))
