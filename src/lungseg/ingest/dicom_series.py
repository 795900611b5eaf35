"""Read one CT DICOM series into a Hounsfield-unit volume with its physical geometry.

Slices are ordered by ImagePositionPatient projected on the slice normal (never by file name or
InstanceNumber). HU = RescaleSlope * stored + RescaleIntercept; PixelPaddingValue and values below
-1024 HU (out of the field of view) are mapped to air (-1024).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

AIR_HU = -1024
MAX_HU = 3071
#: relative tolerance on slice spacing before a series counts as non-uniform
SPACING_TOLERANCE = 0.01
#: files that live beside DICOM series in archives (annotations, notes, labels) and are not slices
NON_DICOM_SUFFIXES = (".xml", ".txt", ".csv", ".tsv", ".json", ".md", ".nii", ".gz", ".nrrd", ".mha", ".mhd", ".raw")


@dataclass
class SeriesVolume:
    hu: np.ndarray  # int16, (z, y, x)
    geometry: Geometry
    files: list[Path]  # in slice order
    provenance: dict[str, str | int | float]


def list_dicom_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files below ``folder``, less known non-DICOM kinds (DICOM files often lack an extension)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(folder, "is not a folder", "point the case at the folder holding the series' DICOM files")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not p.name.lower().endswith(NON_DICOM_SUFFIXES)
    )
    if not files:
        raise IngestError(folder, "contains no files", "check the path in the case sheet")
    return files


def _read(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise IngestError(path, f"is not a readable DICOM file ({exc})", "remove it from the series folder") from exc


def _slice_normal(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        _ = ds.ImagePositionPatient
    except AttributeError as exc:
        raise IngestError(path, "lacks ImageOrientationPatient/ImagePositionPatient", "export the series with patient geometry") from exc
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _to_hu(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/undecodable pixel data
        raise IngestError(path, f"pixel data cannot be decoded ({exc})", "re-export the series uncompressed or install the decoder") from exc
    if stored.ndim != 2:
        raise IngestError(path, f"has pixel data of shape {stored.shape}, not one grey-level slice", "use a single-frame CT series")
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    hu = stored.astype(np.float32) * slope + intercept
    padding = getattr(ds, "PixelPaddingValue", None)
    if padding is not None:
        pad = int(padding)
        if stored.dtype.kind == "i" and pad > np.iinfo(stored.dtype).max:  # written as US for signed data
            pad -= 1 << int(ds.BitsAllocated)
        hu[stored == pad] = AIR_HU
    return np.clip(np.rint(hu), AIR_HU, MAX_HU).astype(np.int16)


def read_series(folder: Path) -> SeriesVolume:
    """Read, check and order one CT series from ``folder``."""
    files = list_dicom_files(folder)
    datasets = [(path, _read(path)) for path in files]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in datasets}
    if len(series) > 1:
        raise IngestError(folder, f"holds {len(series)} series", "put each series in its own folder (one case per series)")
    modalities = {str(getattr(ds, "Modality", "")) for _, ds in datasets}
    if modalities != {"CT"}:
        raise IngestError(folder, f"has modality {sorted(modalities)}, not CT", "give lungseg a CT series")

    row, col, normal = _slice_normal(datasets[0][1], datasets[0][0])
    positions = np.asarray([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    along = (positions @ normal)[order]
    steps = np.diff(along)
    if len(datasets) > 1:
        if np.any(steps < 1e-3):
            dup = files[order[int(np.argmin(steps)) + 1]]
            raise IngestError(dup, "has the same slice position as another file (duplicate slice)", "remove duplicate files")
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > SPACING_TOLERANCE * dz + 1e-3:
            raise IngestError(folder, f"has non-uniform slice spacing ({steps.min():.3f}-{steps.max():.3f} mm): missing slices?", "re-export the complete series")
    else:
        dz = float(getattr(datasets[0][1], "SliceThickness", 1.0) or 1.0)

    ordered = [datasets[i] for i in order]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in ordered}
    if len(shapes) > 1:
        raise IngestError(folder, f"mixes slice sizes {sorted(shapes)}", "put each series in its own folder")
    hu = np.stack([_to_hu(ds, path) for path, ds in ordered])
    first = ordered[0][1]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    geometry = Geometry(
        spacing=(col_spacing, row_spacing, dz),
        origin=tuple(float(v) for v in first.ImagePositionPatient),
        direction=tuple(np.column_stack([row, col, normal]).ravel().tolist()),
    )
    provenance: dict[str, str | int | float] = {
        "source_kind": "dicom",
        "n_slices": len(ordered),
        "manufacturer": str(getattr(first, "Manufacturer", "")),
        "transfer_syntax": str(first.file_meta.TransferSyntaxUID) if hasattr(first, "file_meta") else "",
    }
    return SeriesVolume(hu=hu, geometry=geometry, files=[p for p, _ in ordered], provenance=provenance)
