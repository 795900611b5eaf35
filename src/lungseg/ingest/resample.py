"""Optional resampling of an ingested scan to a target spacing (SimpleITK).

Images use linear interpolation (air outside), labels and annotation masks nearest neighbour. The
new grid keeps the scan's origin and direction and covers the same physical extent.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from lungseg.geometry import Geometry
from lungseg.ingest.dicom_series import AIR_HU, MAX_HU


def target_grid(
    geometry: Geometry, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[Geometry, tuple[int, int, int]]:
    """Geometry and (z, y, x) shape of the grid at ``spacing`` (x, y, z mm) over the same extent."""
    size_xyz = [
        max(1, int(math.floor((n - 1) * old / new + 1e-6)) + 1)
        for n, old, new in zip(reversed(shape), geometry.spacing, spacing)
    ]
    new = Geometry(spacing=tuple(float(s) for s in spacing), origin=geometry.origin, direction=geometry.direction)
    return new, (size_xyz[2], size_xyz[1], size_xyz[0])


def resample_volume(
    array: np.ndarray, geometry: Geometry, target: Geometry, shape: tuple[int, int, int], *, label: bool
) -> np.ndarray:
    """``array`` (z, y, x) on ``geometry`` resampled onto ``target``/``shape``."""
    reference = target.to_sitk(np.zeros(shape, dtype=np.uint8))
    if label:
        out = sitk.Resample(geometry.to_sitk(array), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(out).astype(array.dtype, copy=False)
    image = geometry.to_sitk(array.astype(np.float32))
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float(AIR_HU), sitk.sitkFloat32)
    return np.clip(np.rint(sitk.GetArrayFromImage(out)), AIR_HU, MAX_HU).astype(np.int16)
