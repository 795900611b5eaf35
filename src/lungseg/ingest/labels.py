"""Label masks (NIfTI / NRRD / MHA ...) resampled onto a scan's grid in physical space.

Resampling goes through SimpleITK with nearest-neighbour interpolation, so a mask stored with
flipped or permuted axes relative to the DICOM rows still lands on the right voxels. Refused:
a mask whose grid does not cover the scan's (wrong shape or field of view: drawn on another series),
a mask whose labelled voxels all fall outside the scan, and an empty mask for a structure every
chest CT shows (:data:`NONEMPTY_LABELS`). An all-zero ``nodule`` mask is a valid negative case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

#: labels that can never be empty on a chest CT
NONEMPTY_LABELS = frozenset({"lung"})
#: a scan corner may lie this far (in mask voxels) outside the mask grid and still count as covered
COVER_TOLERANCE = 0.51


def _corners(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    z, y, x = shape_zyx
    return np.array([[i, j, k] for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)], dtype=float)


def _uncovered(label: sitk.Image, geometry: Geometry, shape: tuple[int, int, int]) -> bool:
    """True when some corner voxel of the scan lies outside the mask's grid."""
    size = np.asarray(label.GetSize(), dtype=float)
    for corner in geometry.index_to_physical(_corners(shape)):
        index = np.asarray(label.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in corner)))
        if np.any(index < -COVER_TOLERANCE) or np.any(index > size - 1 + COVER_TOLERANCE):
            return True
    return False


def load_label_on_grid(path: Path, geometry: Geometry, shape: tuple[int, int, int], *, name: str = "") -> np.ndarray:
    """Read a label volume and resample it onto the (z, y, x) grid described by ``geometry``/``shape``."""
    path = Path(path)
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise IngestError(
            path,
            f"cannot be read as an image volume ({exc.args[0].splitlines()[0][:160]})",
            "give a NIfTI/NRRD/MHA mask",
        ) from exc
    if label.GetNumberOfComponentsPerPixel() != 1 or label.GetDimension() != 3:
        raise IngestError(
            path,
            f"is not a 3-D single-channel mask ({label.GetDimension()}-D, "
            f"{label.GetNumberOfComponentsPerPixel()} channel(s))",
            "give one 3-D label volume per structure",
        )
    if _uncovered(label, geometry, shape):
        mask_shape = "x".join(str(v) for v in reversed(label.GetSize()))
        scan_shape = "x".join(str(v) for v in shape)
        raise IngestError(
            path,
            f"has the wrong shape or field of view: its {mask_shape} (z, y, x) grid does not cover "
            f"the scan's {scan_shape} grid in physical space",
            "give the mask drawn on this very series (same slices and field of view)",
        )
    reference = geometry.to_sitk(np.zeros(shape, dtype=np.uint8))
    resampled = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(resampled)
    if not array.any():
        if sitk.GetArrayViewFromImage(label).any():
            raise IngestError(
                path, "has labelled voxels, but none falls inside the scan", "check that the mask belongs to this scan"
            )
        if name in NONEMPTY_LABELS:
            raise IngestError(
                path,
                f"is empty (no labelled voxel), but every chest CT shows the {name}",
                f"give the {name} mask of this scan (or leave the {name} label out)",
            )
    return array
