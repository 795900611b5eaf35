"""Plausibility figures for a lung mask: volume, components, left/right balance."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungseg.geometry import Geometry

#: adult lungs hold roughly 2-8 L; a demo or partial scan may be smaller, so only flag extremes
MIN_PLAUSIBLE_ML = 100.0
MAX_PLAUSIBLE_ML = 12000.0


def lung_mask_qa(mask: np.ndarray, geometry: Geometry) -> dict[str, float | int | str | bool]:
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    binary = mask > 0
    _, n_components = ndimage.label(binary)
    volume_ml = float(binary.sum()) * voxel_ml
    # patient's right is at low x (LPS) when the direction is close to identity
    mid = mask.shape[2] // 2
    right_ml = float(binary[:, :, :mid].sum()) * voxel_ml
    left_ml = float(binary[:, :, mid:].sum()) * voxel_ml
    flags = []
    if volume_ml < MIN_PLAUSIBLE_ML:
        flags.append(f"lung volume {volume_ml:.0f} mL < {MIN_PLAUSIBLE_ML:.0f} mL")
    if volume_ml > MAX_PLAUSIBLE_ML:
        flags.append(f"lung volume {volume_ml:.0f} mL > {MAX_PLAUSIBLE_ML:.0f} mL")
    ratio = right_ml / left_ml if left_ml > 0 else float("inf")
    if volume_ml > 0 and not 0.33 < ratio < 3.0:
        flags.append(f"right/left volume ratio {ratio:.2f} outside 0.33-3")
    return {
        "volume_ml": round(volume_ml, 2),
        "right_ml": round(right_ml, 2),
        "left_ml": round(left_ml, 2),
        "right_left_ratio": round(ratio, 3) if np.isfinite(ratio) else "inf",
        "n_components": int(n_components),
        "plausible": not flags,
        "flags": "; ".join(flags),
    }
