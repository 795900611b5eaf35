"""Label objects (RTSTRUCT, DICOM-SEG): what they reference, read once for discovery and ingest.

A structure set or segmentation is attached to the CT series it references: by the referenced
SeriesInstanceUID (RTSTRUCT: Referenced Frame of Reference -> RT Referenced Study -> RT Referenced
Series; SEG: Referenced Series Sequence), else by frame of reference when exactly one discovered CT
series has it. Everything else is listed with its reason, never guessed: an object that references no
series of the tree, a frame of reference shared by several series, a second object of the same kind for
one series (the first by path is kept). UIDs stay in memory; reasons name none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from lungseg.ingest.errors import IngestError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: label object kind -> its case sheet column (and ``lungseg ingest`` option)
LABEL_KINDS = {"rtstruct": "RTSTRUCT", "seg": "SEG"}


@dataclass(frozen=True)
class LabelObject:
    """One RTSTRUCT or SEG file and the series / frames of reference it references."""

    kind: str  # "rtstruct" | "seg"
    path: Path
    series: frozenset[str]
    frames: frozenset[str]


def _uids(items: Iterable, keyword: str) -> set[str]:
    return {str(getattr(item, keyword, "") or "") for item in items} - {""}


def label_object(ds: pydicom.Dataset, path: Path) -> LabelObject | None:
    """The label object ``ds`` is (headers read, pixel data not needed), or None for any other file."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        references = ds.get("ReferencedFrameOfReferenceSequence", None) or []
        series: set[str] = set()
        for ref in references:
            for study in ref.get("RTReferencedStudySequence", None) or []:
                series |= _uids(study.get("RTReferencedSeriesSequence", None) or [], "SeriesInstanceUID")
        return LabelObject("rtstruct", path, frozenset(series), frozenset(_uids(references, "FrameOfReferenceUID")))
    if sop_class == SEG_SOP_CLASS or modality == "SEG":
        series = _uids(ds.get("ReferencedSeriesSequence", None) or [], "SeriesInstanceUID")
        frame = str(ds.get("FrameOfReferenceUID", "") or "")
        return LabelObject("seg", path, frozenset(series), frozenset({frame} - {""}))
    return None


def open_label_object(path: Path, kind: str) -> tuple[pydicom.Dataset, LabelObject]:
    """Read a whole ``kind`` ("rtstruct" | "seg") file: its dataset and references; IngestError if it is not one."""
    name = LABEL_KINDS[kind]
    what = "an RT Structure Set" if kind == "rtstruct" else "a DICOM Segmentation"
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise IngestError(path, "cannot be read as DICOM", f"give the {name} file drawn on this series") from exc
    obj = label_object(ds, Path(path))
    if obj is None or obj.kind != kind:
        raise IngestError(path, f"is not {what} (modality {ds.get('Modality', 'none')})",
                          f"give the {name} file drawn on this series")
    return ds, obj


def check_referenced_series(obj: LabelObject, series_uid: str | None) -> None:
    """IngestError when ``obj`` names the series it was drawn on and ``series_uid`` is not one of them."""
    if series_uid and obj.series and series_uid not in obj.series:
        sequence = "RTReferencedSeriesSequence" if obj.kind == "rtstruct" else "ReferencedSeriesSequence"
        raise IngestError(
            obj.path,
            f"references another series than the scan it is given with ({sequence})",
            f"give the {LABEL_KINDS[obj.kind]} drawn on this series (or the series it was drawn on)",
        )


@dataclass
class Attachments:
    """series UID -> {kind: file}, and (path, reason) rows for the objects left unattached."""

    by_series: dict[str, dict[str, Path]]
    unattached: list[dict[str, str]]


def attach_label_objects(objects: Iterable[LabelObject], series_frames: Mapping[str, str]) -> Attachments:
    """Attach each object to the discovered CT series it references (``series_frames``: series UID ->
    FrameOfReferenceUID, empty when unknown); see the module docstring for the rules."""
    by_frame: dict[str, list[str]] = {}
    for uid, frame in series_frames.items():
        if frame:
            by_frame.setdefault(frame, []).append(uid)
    by_series: dict[str, dict[str, Path]] = {}
    unattached: list[dict[str, str]] = []
    for obj in sorted(objects, key=lambda o: str(o.path)):
        name = LABEL_KINDS[obj.kind]
        targets = sorted(obj.series & series_frames.keys())
        if not targets and not obj.series:  # no series reference at all: fall back on the frame of reference
            targets = sorted({uid for frame in obj.frames for uid in by_frame.get(frame, [])})
            if len(targets) > 1:
                unattached.append(
                    {
                        "path": str(obj.path),
                        "reason": f"{name} names no series and its frame of reference is shared by {len(targets)} "
                        f"CT series; give it in the case sheet's {obj.kind} column of the right case",
                    }
                )
                continue
        if not targets:
            unattached.append(
                {"path": str(obj.path), "reason": f"{name} references no CT series found below the root (not attached)"}
            )
            continue
        for uid in targets:
            kept = by_series.setdefault(uid, {})
            if obj.kind in kept:
                unattached.append(
                    {
                        "path": str(obj.path),
                        "reason": f"a second {name} for a series that has one ({kept[obj.kind]} kept); "
                        f"set the case sheet's {obj.kind} column to choose",
                    }
                )
            else:
                kept[obj.kind] = obj.path
    return Attachments(by_series, unattached)
