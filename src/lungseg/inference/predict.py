"""Slice-batched inference of a trained model over one volume."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from lungseg.training.preprocess import logits_to_mask, to_model_input


@torch.inference_mode()
def predict_volume(model: torch.nn.Module, meta: dict, hu: np.ndarray, batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """uint8 (z, y, x) mask of a HU volume, predicted slice by slice in batches, at the volume's own size."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros(hu.shape, dtype=np.uint8)
    starts = range(0, hu.shape[0], batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress):
        batch = hu[start : start + batch_size]
        x = to_model_input(batch, meta["image_size"], meta["hu_window"]).to(device)
        out[start : start + batch_size] = logits_to_mask(model(x), batch.shape[1:])
    return out
