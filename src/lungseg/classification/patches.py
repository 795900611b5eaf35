"""2.5-D nodule patches: three orthogonal planes through a nodule centre, resampled in physical space.

Each plane is ``size`` x ``size`` pixels covering ``patch_mm`` x ``patch_mm`` mm (pixel pitch
``patch_mm / size``, pixel centres symmetric about the nodule centre), sampled with linear interpolation
(``scipy.ndimage.map_coordinates``) at voxel coordinates computed from the case geometry (origin, anisotropic
spacing, direction cosines). Plane axes are patient (LPS) directions, so a flipped or oblique scan gives the
same picture as a canonical one:

- channel 0 axial: rows anterior -> posterior (+y), columns right -> left (+x)
- channel 1 coronal: rows superior -> inferior (-z), columns right -> left (+x)
- channel 2 sagittal: rows superior -> inferior (-z), columns anterior -> posterior (+y)

Samples outside the volume (beyond the outer voxel faces) are -1024 HU and flag the patch ``at_edge``.
Only the slab of slices the patch touches is read from the case file.

File ``<case>.patches.h5``: ``/patches`` int16 (N, 3, S, S), attrs ``format`` = "lungseg-nodule-patches",
``format_version`` = 1, ``patch_mm``, ``patch_size``, ``planes`` = "axial,coronal,sagittal" (N may be 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from lungseg.casefile import create_h5
from lungseg.geometry import Geometry

FORMAT = "lungseg-nodule-patches"
FORMAT_VERSION = 1
PLANES = ("axial", "coronal", "sagittal")
AIR_HU = -1024
#: (row direction, column direction) of each plane in LPS
PLANE_AXES = {
    "axial": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
    "coronal": ((0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
    "sagittal": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
}


def sample_points_mm(centre_mm: Sequence[float], patch_mm: float, size: int) -> np.ndarray:
    """(3, S, S, 3) LPS positions of the pixel centres of the three planes through ``centre_mm``."""
    offsets = (np.arange(size) - (size - 1) / 2.0) * (patch_mm / size)
    centre = np.asarray(centre_mm, dtype=float)
    planes = []
    for name in PLANES:
        rows, cols = (np.asarray(v) for v in PLANE_AXES[name])
        planes.append(centre + offsets[:, None, None] * rows + offsets[None, :, None] * cols)
    return np.stack(planes)


def physical_to_index(points_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """LPS mm ``(..., 3)`` -> continuous (x, y, z) voxel indices (inverse of ``Geometry.index_to_physical``)."""
    inverse = np.linalg.inv(geometry.direction_matrix * np.asarray(geometry.spacing))
    return (np.asarray(points_mm, dtype=float) - np.asarray(geometry.origin)) @ inverse.T


def extract_patch(
    image: h5py.Dataset | np.ndarray, geometry: Geometry, centre_mm: Sequence[float], patch_mm: float, size: int
) -> tuple[np.ndarray, bool]:
    """int16 (3, S, S) planes through ``centre_mm`` (see the module docstring) and whether any sample left the volume.

    ``image`` is the (z, y, x) HU volume, in memory or an HDF5 dataset (only the box the samples touch is read).
    """
    shape = np.asarray(image.shape)  # (z, y, x)
    index_zyx = physical_to_index(sample_points_mm(centre_mm, patch_mm, size), geometry)[..., ::-1]
    outside = ((index_zyx < -0.5) | (index_zyx > shape - 0.5)).any(axis=-1)
    if outside.all():
        return np.full((3, size, size), AIR_HU, dtype=np.int16), True
    inside = index_zyx[~outside]
    lo = np.clip(np.floor(inside.min(axis=0)).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil(inside.max(axis=0)).astype(int) + 1, 1, shape)
    box = np.asarray(image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    coords = np.moveaxis(index_zyx - lo, -1, 0)
    values = ndimage.map_coordinates(box, coords.reshape(3, -1), order=1, mode="nearest").reshape(outside.shape)
    values[outside] = AIR_HU
    return np.rint(values).clip(-32768, 32767).astype(np.int16), bool(outside.any())


def write_patches(path: str | Path, patches: np.ndarray, patch_mm: float, size: int) -> None:
    """Write ``patches`` (N, 3, S, S) int16 with the format attrs, atomically (N may be 0)."""
    patches = np.asarray(patches, dtype=np.int16).reshape(-1, 3, size, size)
    with create_h5(path, expected_bytes=patches.nbytes + (1 << 16)) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["patch_mm"] = float(patch_mm)
        f.attrs["patch_size"] = int(size)
        f.attrs["planes"] = ",".join(PLANES)
        f.create_dataset("patches", data=patches, chunks=(1, 3, size, size) if len(patches) else None)


def read_patches(path: str | Path) -> tuple[np.ndarray, dict]:
    """``(patches, attrs)``: int16 (N, 3, S, S) and the file attrs (format, format_version, patch_mm, patch_size, planes)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a lungseg nodule-patches file (format attr missing); run `lungseg nodule-patches`")
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        return f["patches"][()], attrs
