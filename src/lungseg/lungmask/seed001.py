"""``per_slice_otsu``: the lung-parenchyma recipe of Chi et al., "The Early Diagnosis of Lung Cancer Based on
Soft Parameter Sharing of Transfer Learning", per axial slice, faithfully (for reproducing the paper).

Per slice: Otsu threshold (dark = air and lung), remove the dark regions connected to the image
border (8-connected, as ``skimage.segmentation.clear_border``), binary erosion with a disk of
radius 2, binary closing with a disk of radius 5 (keeps juxta-pleural nodules attached), hole
filling. Radii are in pixels, as in the paper; the mask is binary (1 = lung).

The result is identical to running ``skimage`` per slice (``threshold_otsu``, ``clear_border``,
``binary_erosion(disk(2))``, ``binary_closing(disk(5))``, ``scipy.ndimage.binary_fill_holes``;
tested), but all slices are processed at once: the disks are applied through skimage's exact
``decomposition="crosses"`` (each cross is a horizontal and a vertical line, applied by
:func:`lungseg.lungmask.morphology.line_filter`), border clearing and hole filling use
``scipy.ndimage.label``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from lungseg.lungmask.morphology import components_touching, fill_holes, line_filter

EROSION_RADIUS = 2
CLOSING_RADIUS = 5
_CONN_2D_FULL = np.zeros((3, 3, 3), dtype=bool)
_CONN_2D_FULL[1] = True  # 8-connected within a slice, as skimage.measure.label


def cross_sequence(radius: int) -> list[tuple[int, int]]:
    """skimage's ``disk(radius, decomposition="crosses")`` as ``(half_y, half_x)`` crosses, repeats expanded."""
    out = []
    for footprint, repeats in disk(radius, decomposition="crosses"):
        rows, cols = footprint.shape
        cross = np.zeros_like(footprint)
        cross[rows // 2, :] = 1
        cross[:, cols // 2] = 1
        if not np.array_equal(footprint, cross):
            raise ValueError(f"disk({radius}) decomposition holds a non-cross footprint; update cross_sequence")
        out.extend([(rows // 2, cols // 2)] * repeats)
    return out


_EROSION = cross_sequence(EROSION_RADIUS)
_CLOSING = cross_sequence(CLOSING_RADIUS)


def _cross_filter(mask: np.ndarray, crosses: list[tuple[int, int]], dilation: bool) -> np.ndarray:
    """Per-slice dilation / erosion by a sequence of crosses (a cross = union of two lines)."""
    combine = np.logical_or if dilation else np.logical_and
    for half_y, half_x in crosses:
        mask = combine(line_filter(mask, half_y, (0, 1, 0), dilation), line_filter(mask, half_x, (0, 0, 1), dilation))
    return mask


def otsu_thresholds(volume: np.ndarray) -> np.ndarray:
    """skimage's Otsu threshold of every slice (NaN for a constant slice)."""
    return np.array([threshold_otsu(s) if s.min() < s.max() else np.nan for s in volume], dtype=float)


def lung_mask_per_slice_otsu(volume: np.ndarray) -> np.ndarray:
    """uint8 (z, y, x) lung mask (1 = lung) of a HU volume, each slice on its own."""
    thresholds = otsu_thresholds(volume)
    dark = volume < np.nan_to_num(thresholds, nan=-np.inf)[:, None, None]  # a constant slice gives nothing
    labels, n = ndimage.label(dark, structure=_CONN_2D_FULL)
    inside = dark & ~components_touching(labels, n, (1, 2))[labels]
    mask = _cross_filter(inside, _EROSION, dilation=False)
    mask = _cross_filter(_cross_filter(mask, _CLOSING, dilation=True), _CLOSING, dilation=False)
    return fill_holes(mask, per_slice=True).astype(np.uint8)


#: the name before ``per_slice_otsu`` (kept for one release)
lung_mask_seed001 = lung_mask_per_slice_otsu
