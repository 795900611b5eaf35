"""Label masks (NIfTI / NRRD / MHA ...) resampled onto a scan's grid in physical space.

Resampling goes through SimpleITK with nearest-neighbour interpolation, so a mask stored with
flipped or permuted axes relative to the DICOM rows still lands on the right voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError


def load_label_on_grid(path: Path, geometry: Geometry, shape: tuple[int, int, int]) -> np.ndarray:
    """Read a label volume and resample it onto the (z, y, x) grid described by ``geometry``/``shape``."""
    path = Path(path)
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise IngestError(path, f"cannot be read as an image volume ({exc.args[0].splitlines()[0]})", "give a NIfTI/NRRD/MHA mask") from exc
    if label.GetNumberOfComponentsPerPixel() != 1 or label.GetDimension() != 3:
        raise IngestError(path, "is not a 3-D single-channel mask", "give one 3-D label volume per structure")
    reference = geometry.to_sitk(np.zeros(shape, dtype=np.uint8))
    resampled = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(resampled)
    if not array.any():
        raise IngestError(path, "is empty on the scan's grid (no labelled voxel falls inside the scan)", "check that the mask belongs to this scan")
    return array
