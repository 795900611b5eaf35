"""Seed 001's lung-parenchyma recipe, per axial slice.

Otsu threshold (dark = air and lung), remove the air connected to the image border (outside the
body), erosion with a disk of radius 2, closing with a disk of radius 5 (keeps juxta-pleural
nodules attached), hole filling. Radii are in pixels, as in the paper.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import binary_closing, binary_erosion, disk
from skimage.segmentation import clear_border

EROSION_RADIUS = 2
CLOSING_RADIUS = 5
_EROSION = disk(EROSION_RADIUS, decomposition="sequence")
_CLOSING = disk(CLOSING_RADIUS, decomposition="sequence")


def mask_slice(hu: np.ndarray) -> np.ndarray:
    """Boolean lung mask of one axial HU slice."""
    if hu.min() == hu.max():  # all air or all tissue: nothing to threshold
        return np.zeros(hu.shape, dtype=bool)
    dark = hu < threshold_otsu(hu)
    inside = clear_border(dark)
    mask = binary_erosion(inside, _EROSION)
    mask = binary_closing(mask, _CLOSING)
    return ndimage.binary_fill_holes(mask)


def lung_mask_seed001(volume: np.ndarray) -> np.ndarray:
    """uint8 (z, y, x) lung mask (1 = lung) of a HU volume, slice by slice."""
    return np.stack([mask_slice(s) for s in volume]).astype(np.uint8)
