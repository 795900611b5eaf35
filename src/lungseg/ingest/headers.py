"""Header-level facts about one DICOM file, shared by discovery and ingest.

Each ``*_problem`` function returns a short reason (for a radiologist) when a file is not a slice of
an axial CT image series, or ``None``. :func:`non_image_kind` names the objects that live beside CT
slices in archives (structure sets, plans, doses, segmentations, reports, directory files ...) so that
both set them aside instead of taking them for another series. Enhanced CT files hold one slice per
frame; :func:`frame_headers` gives each frame's geometry and rescale from the functional groups.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lungseg.ingest.errors import IngestError

#: files that live beside DICOM series in archives (annotations, notes, labels) and are not slices
NON_DICOM_SUFFIXES = (
    ".xml",
    ".txt",
    ".csv",
    ".tsv",
    ".json",
    ".md",
    ".nii",
    ".gz",
    ".nrrd",
    ".mha",
    ".mhd",
    ".raw",
    ".zip",
    ".pdf",
    ".html",
    ".yaml",
    ".yml",
    ".h5",
)
#: SOP classes that are never image slices (DICOMDIR media directory)
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Enhanced CT Image Storage: one file, many frames, geometry in the functional groups
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"
#: SOP class UID prefixes of objects that are not image slices -> the short name a note gives them
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.481.8": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.481.4": "RTRECORD",
    "1.2.840.10008.5.1.4.1.1.481.6": "RTRECORD",
    "1.2.840.10008.5.1.4.1.1.481.7": "RTRECORD",
    "1.2.840.10008.5.1.4.1.1.481.9": "RTRECORD",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.66.5": "SEG",
    "1.2.840.10008.5.1.4.1.1.66.1": "REG",
    "1.2.840.10008.5.1.4.1.1.66.3": "REG",
    "1.2.840.10008.5.1.4.1.1.66.2": "FID",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.88.": "SR",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.3.12.2.1107.5.9.1": "raw data",  # Siemens CSA non-image
}
#: modalities of objects that are never CT slices, whatever their SOP class
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "SR", "PR", "KO", "REG", "FID", "DOC", "PLAN"}
#: slice normal may deviate this much from the patient's feet-head axis and still count as axial
AXIAL_TOLERANCE_DEG = 20.0
SCOUT_IMAGE_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM"}


def list_candidate_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files below ``folder`` (symbolic links followed, each real folder once), less
    known non-DICOM kinds (DICOM files often lack an extension)."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link cycle or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(top) / name
            for name in files
            if not name.startswith(".")
            and not name.lower().endswith(NON_DICOM_SUFFIXES)
            and os.path.isfile(os.path.join(top, name))
        ]
    return sorted(found)


def read_header(path: Path, *, pixels: bool = False, defer_size: str | None = None) -> pydicom.Dataset:
    """Read one file (headers only unless ``pixels``; large values read on access with ``defer_size``).

    A clear :class:`IngestError` if it is not DICOM or is cut short inside the header.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, defer_size=defer_size)
    except InvalidDicomError as exc:
        raise IngestError(
            path, "is not a DICOM file (no DICM marker, unreadable header)", "remove it from the series folder"
        ) from exc
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise IngestError(
            path,
            f"is a corrupt DICOM file ({type(exc).__name__}: {str(exc)[:120]})",
            "re-export or re-copy this file from the archive, or remove it",
        ) from exc


def _sop_class(ds: pydicom.Dataset) -> str:
    return str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))


def is_directory_record(ds: pydicom.Dataset) -> bool:
    return _sop_class(ds) == DIRECTORY_SOP_CLASS or "DirectoryRecordSequence" in ds


def non_image_kind(ds: pydicom.Dataset) -> str | None:
    """Short name (``RTSTRUCT``, ``SEG``, ``DICOMDIR`` ...) of an object that is not an image slice, or None.

    Judged by SOP class, then modality; an object without Rows and pixel data counts too (a file
    with Rows but no pixel data is left to the callers: it is usually a slice cut short).
    """
    if is_directory_record(ds):
        return "DICOMDIR"
    sop_class = _sop_class(ds)
    for prefix, name in NON_IMAGE_SOP_CLASSES.items():
        if sop_class == prefix or (prefix.endswith(".") and sop_class.startswith(prefix)):
            return name
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return modality
    if "Rows" not in ds and "PixelData" not in ds and "SeriesInstanceUID" in ds:
        return f"{modality or 'DICOM'} object without pixel data"
    return None


@dataclass(frozen=True)
class SliceHeader:
    """The header values ingest and discovery check, read from a dataset once."""

    series_uid: str
    sop_uid: str
    modality: str
    image_type: tuple[str, ...]
    rows: int | None
    columns: int | None
    samples: int
    photometric: str
    frames: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6)
    position: tuple[float, ...] | None  # ImagePositionPatient (3)
    pixel_spacing: tuple[float, ...] | None  # (row spacing, column spacing)
    syntax: str
    #: Enhanced CT: geometry from the functional groups (``frames`` counts the file's slices)
    enhanced: bool = False
    #: (RescaleSlope, RescaleIntercept) of an enhanced frame; None: read them from the dataset
    rescale: tuple[float, float] | None = None

    @property
    def scout(self) -> bool:
        return bool(set(self.image_type) & SCOUT_IMAGE_TYPES)


def _floats(value, n: int) -> tuple[float, ...] | None:  # noqa: ANN001 - pydicom MultiValue
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _functional_group(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """The first item of functional group ``keyword`` for ``frame`` (per-frame, else shared), or None."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index:
            group = items[index].get(keyword)
            if group:
                return group[0]
    return None


def _frame_geometry(ds: pydicom.Dataset, frame: int) -> dict:
    position = _functional_group(ds, frame, "PlanePositionSequence")
    orientation = _functional_group(ds, frame, "PlaneOrientationSequence")
    measures = _functional_group(ds, frame, "PixelMeasuresSequence")
    return {
        "position": _floats(position.get("ImagePositionPatient") or (), 3) if position else None,
        "orientation": _floats(orientation.get("ImageOrientationPatient") or (), 6) if orientation else None,
        "pixel_spacing": _floats(measures.get("PixelSpacing") or (), 2) if measures else None,
    }


def frame_headers(ds: pydicom.Dataset) -> list[SliceHeader]:
    """One :class:`SliceHeader` per frame of an Enhanced CT file (position, orientation, spacing, rescale)."""
    first = slice_header(ds)
    out = []
    for k in range(first.frames):
        transform = _functional_group(ds, k, "PixelValueTransformationSequence")
        rescale = (1.0, 0.0)
        if transform is not None:
            rescale = (float(transform.get("RescaleSlope", 1.0) or 1.0), float(transform.get("RescaleIntercept", 0.0) or 0.0))
        # frames share the file's SOP UID: never a slice reference
        out.append(replace(first, sop_uid="", rescale=rescale, **_frame_geometry(ds, k)))
    return out


def slice_header(ds: pydicom.Dataset) -> SliceHeader:
    """Extract the :class:`SliceHeader` of one dataset (of an Enhanced CT file: its first frame)."""
    header = _classic_header(ds)
    if _sop_class(ds) == ENHANCED_CT_SOP_CLASS:
        return replace(header, enhanced=True, **_frame_geometry(ds, 0))
    return header


def _classic_header(ds: pydicom.Dataset) -> SliceHeader:
    get = ds.get
    rows, columns = get("Rows"), get("Columns")
    meta = getattr(ds, "file_meta", None)
    return SliceHeader(
        series_uid=str(get("SeriesInstanceUID", "") or ""),
        sop_uid=str(get("SOPInstanceUID", "") or ""),
        modality=str(get("Modality", "") or "").upper(),
        image_type=tuple(str(v).upper() for v in (get("ImageType") or [])),
        rows=int(rows) if rows is not None else None,
        columns=int(columns) if columns is not None else None,
        samples=int(get("SamplesPerPixel", 1) or 1),
        photometric=str(get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2"),
        frames=int(get("NumberOfFrames", 1) or 1),
        orientation=_floats(get("ImageOrientationPatient") or (), 6),
        position=_floats(get("ImagePositionPatient") or (), 3),
        pixel_spacing=_floats(get("PixelSpacing") or (), 2),
        syntax=str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else "",
    )


@lru_cache(maxsize=64)
def orientation_normal(orientation: tuple[float, ...]) -> tuple[float, float, float] | None:
    """Unit slice normal of an ImageOrientationPatient, or ``None`` if degenerate."""
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    return None if norm < 1e-6 else tuple(float(v) for v in normal / norm)


@lru_cache(maxsize=64)
def plane_name(normal: tuple[float, float, float]) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique (NN deg from axial)' for a slice normal (LPS)."""
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if tilt <= AXIAL_TOLERANCE_DEG:
        return "axial"
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) > math.cos(math.radians(AXIAL_TOLERANCE_DEG)):
        return ("sagittal", "coronal", "axial")[axis]
    return f"oblique ({tilt:.0f} deg from axial)"


def header_problem(h: SliceHeader) -> str | None:
    """Reason why a slice (or Enhanced CT frame) is not a grey-level axial CT slice (modality, scout, colour,
    multi-frame without per-frame geometry, plane)."""
    if h.modality != "CT":
        return f"has modality {h.modality or 'unknown'}, not CT"
    if h.scout:
        return "is a scout/localizer image (ImageType " + "\\".join(h.image_type) + ")"
    if h.rows is None or h.columns is None:
        return "holds no image (no Rows/Columns)"
    if h.samples != 1 or not h.photometric.startswith("MONOCHROME"):
        return (
            f"is a colour image ({h.photometric}, {h.samples} samples per pixel), not a grey-level CT slice "
            "(a screenshot or secondary capture?)"
        )
    if h.frames > 1 and not h.enhanced:
        return f"is a multi-frame image ({h.frames} frames) without per-frame geometry (not Enhanced CT)"
    normal = orientation_normal(h.orientation) if h.orientation else None
    if normal is None or h.position is None:
        return "lacks ImageOrientationPatient/ImagePositionPatient (no patient geometry)"
    if h.pixel_spacing is None:
        return "lacks PixelSpacing"
    plane = plane_name(normal)
    if plane != "axial":
        return f"is a {plane} image, not axial"
    return None
