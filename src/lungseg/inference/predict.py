"""Slice-batched inference of a trained model over one volume, with optional test-time flips.

With flips, the network sees every slice of a batch also mirrored left-right (``x``), front-back
(``y``) or both (``xy``: identity, x, y and x+y); the sigmoid probabilities are flipped back and
averaged before resizing to the scan and thresholding. All views of a batch go through one forward
pass under :func:`torch.inference_mode`, in channels-last memory layout (faster CPU convolutions).

Several models (an ensemble, e.g. the k models of a cross-validation) are averaged in probability
space: per batch of slices, each model's probabilities (after its own flips, resized to the scan) are
summed and divided by the number of models before the threshold. One model takes the same path and
gives exactly its own probabilities, so its mask is the single-model mask.

Patch models (trained with ``patch_size``; the model file's ``input`` is of kind ``patches``) are run by
:mod:`lungseg.inference.sliding_window` over the whole scan, inside their region of interest grown by
their margin; flips are applied to the whole volume and undone on the probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from lungseg.inference.sliding_window import patch_model_probabilities
from lungseg.training.dataset import roi_box
from lungseg.training.models import SPATIAL_DIMS
from lungseg.training.patches import dilate_region
from lungseg.training.preprocess import _resize, to_model_input  # _resize: the one logits_to_mask uses

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


def ensemble_mismatch(metas: Sequence[dict]) -> tuple[int, str] | None:
    """``(index, reason)`` of the first model whose file cannot be averaged with the first one's, else None.

    The models of an ensemble must segment the same label and see the same input region: the same
    region-of-interest mode and label, and for ``crop`` the same margin (the crop box depends on it).
    Image size, HU window and architecture may differ: each model gets its own input.
    """
    if not metas:
        return None
    first, first_roi = metas[0], model_roi(metas[0])
    for i, meta in enumerate(metas[1:], start=1):
        if meta.get("label") != first.get("label"):
            return i, f"segments '{meta.get('label')}', but the first model segments '{first.get('label')}'"
        if input_kind(meta) != input_kind(first):
            return i, f"sees {input_kind(meta)}, but the first model sees {input_kind(first)}"
        roi = model_roi(meta)
        keys = ("mode", "label", "margin") if first_roi["mode"] == "crop" else ("mode", "label")
        if any(roi[k] != first_roi[k] for k in keys):
            return i, f"was trained with {_describe(roi)}, but the first model with {_describe(first_roi)}"
    return None


def input_kind(meta: dict) -> str:
    """``slices`` (whole slices resized to ``image_size``) or ``patches`` (sliding window)."""
    return str((meta.get("input") or {}).get("kind", "slices"))


def _describe(roi: dict) -> str:
    text = f"roi {roi['mode']}"
    if roi["mode"] != "none":
        text += f" of '{roi['label']}'"
    return text + (f" with margin {roi['margin']}" if roi["mode"] == "crop" else "")


def _as_ensemble(model: torch.nn.Module | Sequence[torch.nn.Module], meta: dict | Sequence[dict]
                 ) -> tuple[list[torch.nn.Module], list[dict]]:
    models = [model] if isinstance(model, torch.nn.Module) else list(model)
    metas = [meta] if isinstance(meta, dict) else list(meta)
    if not models or len(models) != len(metas):
        raise ValueError(f"need one metadata dict per model, got {len(models)} model(s) and {len(metas)} metadata dict(s)")
    mismatch = ensemble_mismatch(metas)
    if mismatch:
        raise ValueError(f"model {mismatch[0] + 1} of the ensemble {mismatch[1]}")
    for m, meta in zip(models, metas):  # outside inference mode, so that the weights stay usable with autograd
        m.eval()
        if SPATIAL_DIMS.get(str(meta.get("arch")), 2) == 2:
            m.to(memory_format=torch.channels_last)  # NHWC: faster oneDNN convolutions on CPU, same results
    return models, metas


def _probabilities(model: torch.nn.Module, meta: dict, hu_slices: np.ndarray, flips: str) -> torch.Tensor:
    """Foreground probabilities ``(N, H, W)`` float32 of HU slices, at the slices' own size: the sigmoid of the
    (flip-averaged) logits, resized exactly as :func:`logits_to_mask` does before it thresholds."""
    device = next(model.parameters()).device
    x = to_model_input(hu_slices, meta["image_size"], meta["hu_window"]).to(device, memory_format=torch.channels_last)
    logits = predict_logits(model, x, flips)
    return _resize(torch.sigmoid(logits.detach().to(torch.float32)), tuple(hu_slices.shape[1:]), "bilinear")[:, 0]


def _predict_patches(models: list[torch.nn.Module], metas: list[dict], hu: np.ndarray, out: np.ndarray,
                     batch_size: int, flips: str, progress: bool, roi_mask: np.ndarray | None, threshold: float | None,
                     spacing: tuple[float, ...] | None) -> np.ndarray:
    """:func:`_predict` for patch models: each model's sliding window (per flipped view), averaged."""
    roi = model_roi(metas[0])
    region = None
    if roi["mode"] != "none":
        if roi_mask is None or roi_mask.shape != hu.shape:
            raise ValueError(f"the model was trained inside a '{roi['label']}' region; give a mask of that region "
                             f"on the scan's grid (shape {hu.shape})")
        region = dilate_region(roi_mask, roi["margin"])
        if not region.any():
            return out
    if spacing is None and any(m["input"].get("spacing_mm") is not None for m in metas):
        raise ValueError("the model works at a fixed pixel size: give the scan's spacing (x, y, z mm)")
    spacing = tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0)
    total = np.zeros(hu.shape, np.float32)
    for model, meta in zip(models, metas):
        for dims in FLIPS[flips]:
            axes = tuple(d % 3 for d in dims)  # (z, y, x) volume: -1 = x, -2 = y
            view = np.flip(hu, axes) if axes else hu
            view_region = None if region is None else (np.flip(region, axes) if axes else region)
            p = patch_model_probabilities(model, meta, np.ascontiguousarray(view), spacing,
                                          None if view_region is None else np.ascontiguousarray(view_region),
                                          batch_size, progress)
            total += np.flip(p, axes) if axes else p
    mean = total / (len(models) * len(FLIPS[flips]))
    out[...] = mean if threshold is None else mean > threshold
    return out


@torch.inference_mode()
def _predict(models: list[torch.nn.Module], metas: list[dict], hu: np.ndarray, out: np.ndarray, batch_size: int,
             flips: str, progress: bool, roi_mask: np.ndarray | None, threshold: float | None,
             spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Fill ``out`` (zeros, the volume's shape) with the models' mean probability, or with it thresholded."""
    if flips not in FLIPS:
        raise ValueError(f"unknown flip mode {flips!r}; valid: {', '.join(FLIPS)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if input_kind(metas[0]) == "patches":  # the same for all models (checked by _as_ensemble)
        return _predict_patches(models, metas, hu, out, batch_size, flips, progress, roi_mask, threshold, spacing)
    roi = model_roi(metas[0])  # the same for all models (checked by _as_ensemble)
    rows, cols = slice(None), slice(None)
    if roi["mode"] != "none":
        if roi_mask is None or roi_mask.shape != hu.shape:
            raise ValueError(f"the model was trained on a '{roi['label']}' region ({roi['mode']}); give a mask of that "
                             f"region on the scan's grid (shape {hu.shape})")
        if roi["mode"] == "crop":  # the square box around the region plus the margin; outside it: background
            box = roi_box(roi_mask, roi["margin"])
            if box is None:  # an empty region: nothing to segment
                return out
            rows, cols = slice(box[0], box[1]), slice(box[2], box[3])
        elif roi["mode"] != "mask":
            raise ValueError(f"unknown region-of-interest mode {roi['mode']!r} in the model file")
    starts = range(0, hu.shape[0], batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress):
        z = slice(start, start + batch_size)
        batch = hu[z, rows, cols]
        total = None
        for model, meta in zip(models, metas):  # the ensemble: the mean of the models' probabilities
            view = batch
            if roi["mode"] == "mask":  # HU outside the region set to the low end of this model's window
                view = np.where(roi_mask[z] > 0, batch, np.int16(meta["hu_window"][0]))
            p = _probabilities(model, meta, view, flips)
            total = p if total is None else total + p
        mean = total / len(models)  # one model: exactly its own probabilities
        out[z, rows, cols] = (mean if threshold is None else mean > threshold).cpu().numpy()
    return out


def predict_probabilities(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    meta: dict | Sequence[dict],
    hu: np.ndarray,
    batch_size: int = 16,
    flips: str = "none",
    progress: bool = True,
    roi_mask: np.ndarray | None = None,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """float32 (z, y, x) foreground probability of a HU volume at its own size: of one model, or the mean of
    several models' (an ensemble, e.g. the folds of a cross-validation), each after its own test-time flips.
    Outside a ``crop`` model's box the probability is 0. See :func:`predict_volume` for ``roi_mask``."""
    models, metas = _as_ensemble(model, meta)
    return _predict(models, metas, hu, np.zeros(hu.shape, np.float32), batch_size, flips, progress, roi_mask, None,
                    spacing)


def predict_volume(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    meta: dict | Sequence[dict],
    hu: np.ndarray,
    batch_size: int = 16,
    flips: str = "none",
    progress: bool = True,
    roi_mask: np.ndarray | None = None,
    threshold: float = 0.5,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """uint8 (z, y, x) mask of a HU volume, predicted slice by slice in batches, at the volume's own size:
    :func:`predict_probabilities` ``> threshold`` (one model or the mean of several).

    A model trained on a region of interest (``meta["roi"]``: ``crop`` to the square box around the ROI
    label plus a margin, or ``mask`` = HU outside it set to the window's low end) gets the same treatment
    here, with ``roi_mask`` (on the volume's grid) standing in for that label.
    """
    models, metas = _as_ensemble(model, meta)
    return _predict(models, metas, hu, np.zeros(hu.shape, np.uint8), batch_size, flips, progress, roi_mask, threshold,
                    spacing)
