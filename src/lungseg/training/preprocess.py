"""Slice preprocessing shared by training and inference (one implementation, so they cannot drift).

HU slices -> clip to a window -> scale to [0, 1] -> resize (bilinear, antialiased when shrinking) to the
network's square ``image_size``; network logits -> probabilities -> resize back (bilinear) -> threshold.
Training masks are resized with nearest-neighbour interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor


def _check_window(window: Sequence[float]) -> tuple[float, float]:
    if len(window) != 2:
        raise ValueError(f"HU window must be (low, high), got {window!r}")
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"HU window must have high > low, got {window!r}")
    return lo, hi


def normalize_hu(hu: ArrayLike, window: Sequence[float]) -> ArrayLike:
    """Clip HU values to ``window = (low, high)`` and scale to float32 in [0, 1] (numpy in, numpy out)."""
    lo, hi = _check_window(window)
    if isinstance(hu, torch.Tensor):
        x = hu.to(torch.float32, copy=True)  # one buffer, scaled in place
        return x.clamp_(lo, hi).sub_(lo).mul_(1.0 / (hi - lo))
    x = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    return ((x - lo) / (hi - lo)).astype(np.float32, copy=False)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (N, C, H, W) to ``size``; bilinear is antialiased when shrinking either axis."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return F.interpolate(x, size=size, mode=mode)


def _as_slices(a: ArrayLike, what: str) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 3:
        raise ValueError(f"{what} must be a stack of slices (N, H, W), got shape {tuple(t.shape)}")
    return t


def to_model_input(hu_slices: ArrayLike, image_size: int, hu_window: Sequence[float]) -> torch.Tensor:
    """HU slices ``(N, H, W)`` -> normalized network input ``(N, 1, S, S)`` float32, S = ``image_size``."""
    x = normalize_hu(_as_slices(hu_slices, "HU slices"), hu_window)
    return _resize(x[:, None], (image_size, image_size), "bilinear").contiguous()


def resize_mask(mask_slices: ArrayLike, image_size: int) -> torch.Tensor:
    """Label slices ``(N, H, W)`` (non-zero = foreground) -> float32 ``(N, 1, S, S)`` in {0, 1}, nearest."""
    m = (_as_slices(mask_slices, "mask slices") > 0).to(torch.float32)
    return _resize(m[:, None], (image_size, image_size), "nearest-exact").contiguous()


def logits_to_mask(logits: torch.Tensor, out_hw: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """Logits ``(N, 1, S, S)`` -> uint8 mask ``(N, H, W)``: sigmoid, bilinear resize to ``out_hw``, ``> threshold``."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"expected logits of shape (N, 1, S, S), got {tuple(logits.shape)}")
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    probs = _resize(torch.sigmoid(logits.detach().to(torch.float32)), out_hw, "bilinear")
    return (probs[:, 0] > threshold).to(torch.uint8).cpu().numpy()
