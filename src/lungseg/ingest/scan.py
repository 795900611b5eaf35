"""Ingest one scan: DICOM folder or ITK volume (+ label masks) -> :class:`~lungseg.casefile.CaseVolume`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungseg.casefile import CaseVolume
from lungseg.geometry import Geometry
from lungseg.ingest.dicom_series import AIR_HU, MAX_HU, read_series
from lungseg.ingest.errors import IngestError
from lungseg.ingest.labels import load_label_on_grid

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def read_scan(source: Path) -> tuple[np.ndarray, Geometry, dict[str, str | int | float]]:
    """HU volume (int16, z/y/x), geometry and provenance of a DICOM folder or an ITK-readable volume."""
    source = Path(source)
    if source.is_dir():
        series = read_series(source)
        return series.hu, series.geometry, series.provenance
    if source.is_file() and source.name.lower().endswith(VOLUME_SUFFIXES):
        try:
            image = sitk.ReadImage(str(source))
        except RuntimeError as exc:
            raise IngestError(source, "cannot be read as an image volume", "give a valid NIfTI/NRRD/MHA file") from exc
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise IngestError(source, "is not a 3-D grey-level volume", "give a CT volume")
        hu = np.clip(np.rint(sitk.GetArrayFromImage(image)), AIR_HU, MAX_HU).astype(np.int16)
        return hu, Geometry.from_sitk(image), {"source_kind": "volume", "n_slices": int(hu.shape[0])}
    raise IngestError(source, "is neither a DICOM folder nor a volume file", f"give a folder of DICOM files or one of {', '.join(VOLUME_SUFFIXES)}")


def ingest_scan(case_id: str, source: Path, labels: dict[str, Path] | None = None) -> CaseVolume:
    """Read ``source`` and resample every label onto its grid."""
    hu, geometry, provenance = read_scan(source)
    label_arrays = {name: load_label_on_grid(path, geometry, hu.shape) for name, path in (labels or {}).items()}
    return CaseVolume(case_id=case_id, image=hu, geometry=geometry, labels=label_arrays, provenance=provenance)
