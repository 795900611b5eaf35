"""Training losses (BCE, soft Dice, BCE + soft Dice pooled over the batch or per item) and the validation
metrics (Dice, F-score)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, per_item: bool = False) -> torch.Tensor:
    """Soft Dice of sigmoid(logits) against a {0, 1} target, pooled over the batch; with ``per_item``, one per
    item (a ``(B,)`` tensor)."""
    probs = torch.sigmoid(logits.float())
    target = target.float()
    if per_item:
        probs, target = probs.flatten(1), target.flatten(1)
        return (2.0 * (probs * target).sum(dim=1) + smooth) / (probs.sum(dim=1) + target.sum(dim=1) + smooth)
    intersection = (probs * target).sum()
    return (2.0 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy on logits plus ``1 - soft Dice`` (pooled over the batch)."""
    return bce_loss(logits, target) + (1.0 - soft_dice(logits, target, smooth))


def bce_dice_per_item_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy plus ``1 - soft Dice`` of each item that holds foreground, averaged over those
    items. Pooled over the batch, a large nodule's voxels drown a small one's; per item, a patch centred on a
    3 mm nodule weighs as much as one on a 30 mm nodule. Items without foreground are left to the BCE (their
    Dice would punish any false positive voxel as hard as a missed nodule)."""
    bce = bce_loss(logits, target)  # over every item: every logit (and parameter) gets a gradient
    holds = target.flatten(1).sum(dim=1) > 0
    if not bool(holds.any()):
        return bce
    return bce + (1.0 - soft_dice(logits[holds], target[holds], smooth, per_item=True).mean())


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits (a mean over pixels: data-parallel exact)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` pooled over the batch."""
    return 1.0 - soft_dice(logits, target, smooth)


#: loss name -> function(logits, target) -> scalar
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce_dice": bce_dice_loss,
    "bce_dice_per_item": bce_dice_per_item_loss,
    "bce": bce_loss,
    "dice": dice_loss,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)}") from None


def fscore_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of per-slice F-scores (seed 000: harmonic mean of precision and recall).

    Per slice ``2 TP / (P + G)``; a slice where prediction and reference are both empty scores 1.
    Divide the sum over all slices by their number for the mean F-score.
    """
    pred = (logits > 0).flatten(1)
    ref = (target > 0.5).flatten(1)
    tp = (pred & ref).sum(1).to(torch.float64)
    total = (pred.sum(1) + ref.sum(1)).to(torch.float64)
    return torch.where(total > 0, 2.0 * tp / total.clamp(min=1), torch.ones_like(tp)).sum()


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
