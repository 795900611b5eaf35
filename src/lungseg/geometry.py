"""Physical geometry of a volume (ITK/LPS convention) and conversion to/from SimpleITK images.

Arrays in lungseg are numpy ``(z, y, x)`` = (slice, row, column). Geometry follows ITK, indexed
``(x, y, z)``: ``spacing`` in mm, ``origin`` = LPS position (mm) of voxel (0, 0, 0), and
``direction`` = 3x3 matrix, row-major, whose *columns* are the LPS directions of the x, y and z
index axes (for DICOM: column = ImageOrientationPatient row cosine, then column cosine, then the
slice normal in the order the slices are stored).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 floats, row-major

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError(f"geometry needs 3 spacing, 3 origin and 9 direction values, got {self}")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """Wrap a ``(z, y, x)`` array as a SimpleITK image carrying this geometry."""
        if array.ndim != 3:
            raise ValueError(f"expected a (z, y, x) volume, got shape {array.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` in (x, y, z) order to LPS millimetres."""
        index_xyz = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing)) @ self.direction_matrix.T

    def as_attrs(self) -> dict[str, np.ndarray]:
        return {
            "spacing": np.asarray(self.spacing, dtype=np.float64),
            "origin": np.asarray(self.origin, dtype=np.float64),
            "direction": np.asarray(self.direction, dtype=np.float64),
        }

    @classmethod
    def from_attrs(cls, attrs) -> Geometry:  # noqa: ANN001 - h5py AttributeManager or dict
        return cls(
            spacing=tuple(float(v) for v in attrs["spacing"]),
            origin=tuple(float(v) for v in attrs["origin"]),
            direction=tuple(float(v) for v in attrs["direction"]),
        )


def write_volume(path: str, array: np.ndarray, geometry: Geometry) -> None:
    """Write a ``(z, y, x)`` array with ``geometry`` to any ITK format (by extension), atomically.

    ITK's NIfTI writer truncates silently on a full disk, so on a (nearly) full file system the file is
    read back and compared; lack of space raises :class:`lungseg.atomic.DiskFullError`.
    """
    from lungseg.atomic import atomic_path, nearly_full

    image = geometry.to_sitk(array)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        if nearly_full(tmp.parent) and not _written_completely(tmp, image):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))


def _written_completely(path: Path, image: sitk.Image) -> bool:
    try:
        written = sitk.ReadImage(str(path))
    except RuntimeError:
        return False
    return written.GetSize() == image.GetSize() and np.array_equal(
        sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(image))


def read_volume(path: str) -> tuple[np.ndarray, Geometry]:
    """Read any ITK-readable volume as a ``(z, y, x)`` array and its geometry."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)
