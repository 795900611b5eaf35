"""Slice-batched inference of a trained model over one volume, with optional test-time flips.

With flips, the network sees every slice of a batch also mirrored left-right (``x``), front-back
(``y``) or both (``xy``: identity, x, y and x+y); the sigmoid probabilities are flipped back and
averaged before resizing to the scan and thresholding. All views of a batch go through one forward
pass under :func:`torch.inference_mode`, in channels-last memory layout (faster CPU convolutions).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from lungseg.training.dataset import roi_box
from lungseg.training.preprocess import logits_to_mask, to_model_input

#: flip mode -> tensor dims flipped in each view of an (N, C, H, W) batch (() = as is)
FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "x": ((), (-1,)),
    "y": ((), (-2,)),
    "xy": ((), (-1,), (-2,), (-2, -1)),
}


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


def predict_logits(model: torch.nn.Module, x: torch.Tensor, flips: str = "none") -> torch.Tensor:
    """Logits ``(N, 1, S, S)`` of a network input batch; averaged over flipped views in probability space."""
    try:
        views = FLIPS[flips]
    except KeyError:
        raise ValueError(f"unknown flip mode {flips!r}; valid: {', '.join(FLIPS)}") from None
    if len(views) == 1:
        return model(x)
    n = x.shape[0]
    logits = model(torch.cat([_flip(x, dims) for dims in views]))
    probs = torch.stack([_flip(torch.sigmoid(logits[i * n : (i + 1) * n]), dims) for i, dims in enumerate(views)])
    return torch.logit(probs.mean(dim=0), eps=1e-7)


def model_roi(meta: dict) -> dict:
    """The region-of-interest setting a model was trained with (``mode`` none, crop or mask)."""
    roi = dict(meta.get("roi") or {})
    return {"mode": roi.get("mode", "none") or "none", "label": roi.get("label", ""), "margin": int(roi.get("margin", 0))}


@torch.inference_mode()
def predict_volume(
    model: torch.nn.Module,
    meta: dict,
    hu: np.ndarray,
    batch_size: int = 16,
    flips: str = "none",
    progress: bool = True,
    roi_mask: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 (z, y, x) mask of a HU volume, predicted slice by slice in batches, at the volume's own size.

    A model trained on a region of interest (``meta["roi"]``: ``crop`` to the square box around the ROI
    label plus a margin, or ``mask`` = HU outside it set to the window's low end) gets the same treatment
    here, with ``roi_mask`` (on the volume's grid) standing in for that label.
    """
    roi = model_roi(meta)
    if roi["mode"] != "none":
        if roi_mask is None or roi_mask.shape != hu.shape:
            raise ValueError(f"the model was trained on a '{roi['label']}' region ({roi['mode']}); give a mask of that "
                             f"region on the scan's grid (shape {hu.shape})")
        if roi["mode"] == "mask":
            hu = np.where(roi_mask > 0, hu, np.int16(meta["hu_window"][0]))
        elif roi["mode"] == "crop":
            box = roi_box(roi_mask, roi["margin"])
            out = np.zeros(hu.shape, dtype=np.uint8)
            if box is not None:  # an empty region: nothing to segment
                y0, y1, x0, x1 = box
                out[:, y0:y1, x0:x1] = predict_volume(model, {**meta, "roi": None}, hu[:, y0:y1, x0:x1],
                                                      batch_size, flips, progress)
            return out
        else:
            raise ValueError(f"unknown region-of-interest mode {roi['mode']!r} in the model file")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    model.eval()
    model.to(memory_format=torch.channels_last)  # NHWC: faster oneDNN convolutions on CPU, same results
    device = next(model.parameters()).device
    out = np.zeros(hu.shape, dtype=np.uint8)
    starts = range(0, hu.shape[0], batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress):
        batch = hu[start : start + batch_size]
        x = to_model_input(batch, meta["image_size"], meta["hu_window"]).to(device, memory_format=torch.channels_last)
        out[start : start + batch_size] = logits_to_mask(predict_logits(model, x, flips), batch.shape[1:])
    return out
