"""A site's validation of a model it was sent: loss, Dice counts and F-score sums on its own cases.

Only these sums leave the site (pooled Dice = ``2 sum TP / (sum P + sum G)`` over sites).
The validation data are built as the training core builds them (:func:`lungseg.training.train.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lungseg.training.config import TrainConfig
from lungseg.training.dataset import SliceDataset
from lungseg.training.losses import dice_counts, fscore_sum, get_loss
from lungseg.training.patches import PatchDataset, PatchSpec

__all__ = ["evaluate_model", "training_items", "validation_dataset"]


def _roi(config: TrainConfig) -> dict:
    return {"roi": config.roi, "roi_label": config.roi_label, "roi_margin": config.roi_margin}


def validation_dataset(config: TrainConfig, cases: Sequence[str | Path]) -> Dataset:
    """The validation slices (or the fixed validation patches) of ``cases``, as in training."""
    if not config.patches:
        return SliceDataset(cases, config.label, config.image_size, config.hu_window, augment=False, **_roi(config))
    ds = PatchDataset(cases, n_items=max(64, config.patches_per_epoch // 4), augment=False, label=config.label,
                      spec=PatchSpec.from_input(config.input_spec()), hu_window=config.hu_window,
                      foreground_rate=config.foreground_rate, seed=config.seed, **_roi(config))
    ds.set_epoch_seed(config.seed + 7919)
    return ds


def training_items(config: TrainConfig, cases: Sequence[str | Path]) -> int:
    """n_k: the training items of one local epoch (slices; ``patches_per_epoch`` with patches)."""
    if config.patches:
        return int(config.patches_per_epoch)
    return len(SliceDataset(cases, config.label, config.image_size, config.hu_window, augment=False, **_roi(config)))


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, config: TrainConfig, cases: Sequence[str | Path],
                   device: torch.device) -> dict[str, float]:
    """Sums over the validation items of ``cases``: ``loss_sum``, ``n``, ``tp``, ``p``, ``g``, ``fscore_sum``."""
    model.to(device).eval()
    loss_fn = get_loss(config.loss)
    sums = torch.zeros(6, dtype=torch.float64)
    for images, masks in DataLoader(validation_dataset(config, cases), batch_size=config.batch_size):
        images, masks = images.to(device), masks.to(device)
        logits = model(images).float()
        n = images.shape[0]
        sums[0] += float(loss_fn(logits, masks)) * n
        sums[1] += n
        sums[2:5] += dice_counts(logits, masks).cpu()
        sums[5] += float(fscore_sum(logits, masks))
    return dict(zip(("loss_sum", "n", "tp", "p", "g", "fscore_sum"), (float(v) for v in sums)))
