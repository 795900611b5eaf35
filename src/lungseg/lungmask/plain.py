"""The plain 3-D threshold lung mask: the comparison point of issue 14, not a method of the workflow.

Air below -400 HU; air components (face-connected, 3-D) that reach the in-plane image border are
outside air and removed; the two largest remaining components are kept; holes are filled per slice.
Binary (1 = lung): no right / left, no airway removal, no closing. ``threshold_3d``
(:mod:`lungseg.lungmask.default`) is measured against it in ``benchmarks/bench_lungmask.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungseg.lungmask.morphology import CONN_3D, below, components_touching, fill_holes

#: air and aerated lung are darker than this (HU)
PLAIN_AIR_HU = -400.0


def lung_mask_plain_threshold(hu: np.ndarray, air_hu: float = PLAIN_AIR_HU) -> np.ndarray:
    """Binary lung mask (uint8, 1 = lung) of a HU volume ``(z, y, x)`` by the plain 3-D threshold recipe."""
    labels, n = ndimage.label(below(hu, air_hu), structure=CONN_3D)
    inner = (labels > 0) & ~components_touching(labels, n, (1, 2))[labels]
    labels, n = ndimage.label(inner, structure=CONN_3D)
    if n == 0:
        return np.zeros(hu.shape, dtype=np.uint8)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.argsort(sizes)[::-1][:2]] = True
    keep &= sizes > 0
    return fill_holes(keep[labels], per_slice=True).astype(np.uint8)
