"""A label volume sampled on the planes of source slices, in physical space.

Where a plane coincides with a slice of the volume's grid (same in-plane axes, spacing, size and first
pixel; the usual case: a prediction in the scan's own geometry) that slice is copied; otherwise the
volume is resampled onto the plane, nearest neighbour (a resampled case grid, an untilted gantry-tilt
series, other grids of the same frame of reference). Voxels of a plane outside the volume are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from lungseg.export.source import Plane

#: a plane coincides with a grid slice when its first pixel is within this many voxels of one
INDEX_TOLERANCE = 1e-3
#: ... and its axes and spacings agree to this (cosines; relative spacing)
AXIS_TOLERANCE = 1e-4


def _grid_slice(image: sitk.Image, plane: Plane) -> int | None:
    """The index of the grid slice that ``plane`` coincides with, or None."""
    nx, ny, nz = image.GetSize()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if plane.shape != (ny, nx):
        return None
    if not (np.allclose(direction[:, 0], plane.row_direction, atol=AXIS_TOLERANCE)
            and np.allclose(direction[:, 1], plane.column_direction, atol=AXIS_TOLERANCE)):
        return None
    if not np.allclose(spacing[:2], (plane.spacing[1], plane.spacing[0]), rtol=AXIS_TOLERANCE):
        return None
    index = np.linalg.solve(direction * spacing, plane.position - np.asarray(image.GetOrigin()))
    k = int(np.rint(index[2]))
    if np.abs(index[:2]).max() > INDEX_TOLERANCE or abs(index[2] - k) > INDEX_TOLERANCE or not 0 <= k < nz:
        return None
    return k


def _resampled(image: sitk.Image, plane: Plane) -> np.ndarray:
    """``image`` sampled (nearest neighbour, 0 outside) at the pixel centres of ``plane``."""
    reference = sitk.Image([plane.shape[1], plane.shape[0], 1], image.GetPixelID())
    reference.SetOrigin(tuple(float(v) for v in plane.position))
    reference.SetSpacing((plane.spacing[1], plane.spacing[0], 1.0))
    axes = np.column_stack([plane.row_direction, plane.column_direction, plane.normal])
    reference.SetDirection(tuple(float(v) for v in axes.ravel()))
    sampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(sampled)[0]


def mask_on_planes(image: sitk.Image, planes: Sequence[Plane]) -> tuple[np.ndarray, int]:
    """The labels of ``image`` on every plane (uint8, (planes, rows, columns)) and how many planes were resampled."""
    if not planes:
        raise ValueError("no planes to sample on")
    rows, cols = planes[0].shape
    out = np.zeros((len(planes), rows, cols), dtype=np.uint8)
    array = sitk.GetArrayViewFromImage(image)
    resampled = 0
    for i, plane in enumerate(planes):
        if plane.shape != (rows, cols):
            raise ValueError("the source slices differ in size")
        k = _grid_slice(image, plane)
        if k is not None:
            out[i] = array[k]
        else:
            out[i] = _resampled(image, plane)
            resampled += 1
    return out, resampled
