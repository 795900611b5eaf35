"""Label masks (NIfTI / NRRD / MHA ...) resampled onto a scan's grid in physical space.

Resampling goes through SimpleITK with nearest-neighbour interpolation, so a mask stored with
flipped or permuted axes relative to the DICOM rows still lands on the right voxels. An all-zero mask
is accepted (a case without nodules); a mask whose labelled voxels all fall outside the scan is not.
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
    # an all-zero mask is a valid negative case (no nodule); labelled voxels that all miss the scan are not
    if not array.any() and sitk.GetArrayViewFromImage(label).any():
        raise IngestError(path, "has labelled voxels, but none falls inside the scan", "check that the mask belongs to this scan")
    return array
