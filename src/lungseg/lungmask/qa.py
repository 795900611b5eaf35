"""Plausibility figures for a lung mask: volume, right/left balance, components, flags.

A mask is flagged (``plausible: false``, reasons in ``flags``) rather than refused: a bad scan
(all air, all tissue, no lungs in the field of view, a single slice) gives an empty or partial mask
and a QA line that says why, and the cohort carries on.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungseg.geometry import Geometry
from lungseg.lungmask.sides import LEFT, RIGHT, physical_x

#: adult lungs hold roughly 2-8 L; partial scans hold less, so only extremes are flagged
MIN_PLAUSIBLE_ML = 100.0
MAX_PLAUSIBLE_ML = 12000.0
#: right lung / left lung volume: about 1.1 in adults
MIN_RATIO, MAX_RATIO = 0.33, 3.0
#: two lungs; a few more pieces (e.g. a base cut off by the field of view) are fine
MAX_COMPONENTS = 4
#: pieces smaller than this are not counted as components
MIN_COMPONENT_ML = 1.0

COLUMNS = ("case_id", "method", "n_slices", "volume_ml", "right_ml", "left_ml", "right_left_ratio",
           "n_components", "slices_with_lung", "plausible", "flags", "notes")


def _sides(mask: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Right / left voxels: from labels 1 / 2, or (binary masks) by the image centre's physical x."""
    if (mask == LEFT).any():
        return mask == RIGHT, mask == LEFT
    binary = mask > 0
    spacing = geometry.spacing[::-1]
    x = physical_x(mask.shape, spacing, geometry.direction_matrix)
    centre = physical_x((1, 1, 1), spacing, geometry.direction_matrix, tuple((n - 1) / 2 for n in mask.shape))
    right = np.broadcast_to(x < centre[0, 0, 0], mask.shape)
    return binary & right, binary & ~right


def _components(mask: np.ndarray, voxel_ml: float) -> int:
    """3-D (26-connected) components of at least :data:`MIN_COMPONENT_ML`."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_ml
    return int(np.count_nonzero(sizes >= MIN_COMPONENT_ML))


def lung_mask_qa(mask: np.ndarray, geometry: Geometry, notes: list[str] | tuple[str, ...] = ()) -> dict:
    """QA figures and flags of a lung mask (0 background; 1 right / 2 left, or 1 lung for binary masks)."""
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    binary = mask > 0
    right, left = _sides(mask, geometry)
    volume_ml = float(np.count_nonzero(binary)) * voxel_ml
    right_ml = float(np.count_nonzero(right)) * voxel_ml
    left_ml = float(np.count_nonzero(left)) * voxel_ml
    n_components = sum(_components(part, voxel_ml) for part in ((right, left) if (mask == LEFT).any() else (binary,)))
    slices_with_lung = int(np.count_nonzero(binary.any(axis=(1, 2))))

    flags = [note for note in notes if "could not" in note]  # the method's own warnings
    if mask.shape[0] == 1:
        flags.append("single slice: 3-D checks (components along z, apex and bases) not possible")
    if volume_ml == 0:
        flags.append(f"empty mask: {'; '.join(notes) or 'no lung found'}")
    elif volume_ml < MIN_PLAUSIBLE_ML:
        flags.append(f"lung volume {volume_ml:.0f} mL < {MIN_PLAUSIBLE_ML:.0f} mL")
    if volume_ml > MAX_PLAUSIBLE_ML:
        flags.append(f"lung volume {volume_ml:.0f} mL > {MAX_PLAUSIBLE_ML:.0f} mL")
    ratio = right_ml / left_ml if left_ml > 0 else float("inf")
    if volume_ml > 0:
        if right_ml == 0 or left_ml == 0:
            flags.append(f"only one lung ({'left' if right_ml == 0 else 'right'})")
        elif not MIN_RATIO < ratio < MAX_RATIO:
            flags.append(f"right/left volume ratio {ratio:.2f} outside {MIN_RATIO}-{MAX_RATIO}")
    if n_components > MAX_COMPONENTS:
        flags.append(f"{n_components} components (> {MAX_COMPONENTS})")
    if binary[:, [0, -1], :].any() or binary[:, :, [0, -1]].any():
        flags.append("mask touches the in-plane image border (lungs cut by the field of view?)")
    return {
        "n_slices": int(mask.shape[0]),
        "volume_ml": round(volume_ml, 2),
        "right_ml": round(right_ml, 2),
        "left_ml": round(left_ml, 2),
        "right_left_ratio": round(ratio, 3) if np.isfinite(ratio) else None,
        "n_components": n_components,
        "slices_with_lung": slices_with_lung,
        "plausible": not flags,
        "flags": "; ".join(flags),
        "notes": "; ".join(notes),
    }
