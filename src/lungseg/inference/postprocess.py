"""Optional clean-up of a predicted mask: keep it inside the lungs, keep its largest components."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from lungseg.geometry import Geometry
from lungseg.lungmask.default import lung_mask_threshold_3d


def keep_largest_components(mask: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` largest 3-D connected components (face connectivity) of ``mask`` as uint8 0/1."""
    if n < 1:
        raise ValueError(f"number of components to keep must be >= 1, got {n}")
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if not binary.any():
        return binary
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(binary))
    ranked = sitk.GetArrayViewFromImage(sitk.RelabelComponent(components, sortByObjectSize=True))
    return ((ranked > 0) & (ranked <= n)).astype(np.uint8)


def restrict_to(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``mask`` with every voxel outside ``region`` (non-zero = inside) set to 0, as uint8 0/1."""
    if mask.shape != region.shape:
        raise ValueError(f"mask shape {mask.shape} differs from region shape {region.shape}")
    return ((mask > 0) & (region > 0)).astype(np.uint8)


def classical_lung_mask(hu: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The classical lung mask of a HU volume (``lungseg lung-mask``'s default method; 1 right, 2 left lung),
    for ``--lung-mask auto`` and ``--roi-mask auto``."""
    return lung_mask_threshold_3d(hu, geometry).mask
