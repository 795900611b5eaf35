"""The per-case HDF5 file: the one contract between ingest and every later stage.

Layout (version 1)::

    /                 attrs: format="lungseg-case", format_version=1, case_id (pseudonymous),
                             lungseg_version, spacing (3 x float64, mm, x/y/z),
                             origin (3 x float64, LPS mm), direction (9 x float64, row-major),
                             plus free-form provenance attrs (never patient identifiers)
    /image            int16 (z, y, x) Hounsfield units; slices ordered along the slice normal;
                      chunked one slice per chunk; uncompressed (default) or lzf + shuffle
    /labels/<name>    uint8 (z, y, x) on the image grid, e.g. labels/lung (1 = left/right lungs,
                      or 1/2 when sides are split), labels/nodule (0/1)

Additions (still version 1; files without them read as before):

    / attrs           status="ok" | "quarantined"; source_spacing/source_origin/source_direction
                      (float64) and source_shape (int64, z/y/x): the scan's own grid before any
                      target-spacing resampling (write masks back in it); ingest_notes (JSON list)
    /annotations/<name>  uint8 (z, y, x) on the image grid: lidc_readers (bit r = reader r+1 outlined
                      the voxel), lidc_nodules / luna16_nodules (voxel = nodule number 1..N);
                      group attrs lidc_nodules, lidc_points, luna16_nodules (JSON tables)

A quarantined case (bad input, see :func:`write_quarantined_case`) has format attrs, status,
file, reason and fix, and no /image; :func:`open_case` and :func:`read_case` refuse it with its reason.
Everything is written atomically (temporary file + rename); a full disk raises one
:class:`lungseg.atomic.DiskFullError` naming the file (see :func:`create_h5`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from lungseg import __version__
from lungseg.atomic import DeferredErrorFile, atomic_path
from lungseg.geometry import Geometry

FORMAT = "lungseg-case"
FORMAT_VERSION = 1
STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"
_RESERVED = {"format", "format_version", "case_id", "lungseg_version", "spacing", "origin", "direction", "status",
             "source_spacing", "source_origin", "source_direction", "source_shape"}


class QuarantinedCaseError(ValueError):
    """Raised when opening a case file that ingest quarantined (no image)."""


@dataclass
class CaseVolume:
    case_id: str
    image: np.ndarray  # int16 HU, (z, y, x)
    geometry: Geometry
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, str | int | float] = field(default_factory=dict)
    annotations: dict[str, np.ndarray] = field(default_factory=dict)  # uint8 (z, y, x) under /annotations
    annotation_attrs: dict[str, str] = field(default_factory=dict)  # JSON tables on /annotations
    source_geometry: Geometry | None = None  # the scan's own grid when the image was resampled
    source_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"case {self.case_id}: image must be (z, y, x), got shape {self.image.shape}")
        for name, label in {**self.labels, **self.annotations}.items():
            if label.shape != self.image.shape:
                raise ValueError(
                    f"case {self.case_id}: label '{name}' has shape {label.shape}, "
                    f"image has {self.image.shape}; resample the label onto the image grid first"
                )


def _slice_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape[1:])


#: HDF5 metadata (superblock, object headers, attributes, chunk indexes) of a case or mask file, roughly
H5_METADATA_BYTES = 1 << 16


@contextlib.contextmanager
def create_h5(path: str | Path, *, expected_bytes: int = 0) -> Iterator[h5py.File]:
    """A new HDF5 file written atomically to ``path``; lack of space raises :class:`lungseg.atomic.DiskFullError`.

    ``expected_bytes`` is checked against the free space first. HDF5 is left broken by a failed write
    (and crashes the interpreter at exit), so it writes through a :class:`~lungseg.atomic.DeferredErrorFile`:
    it finishes cleanly and the write error is raised after it has closed the file.
    """
    with atomic_path(path, expected_bytes=expected_bytes) as tmp, DeferredErrorFile(tmp) as raw:
        try:
            with h5py.File(raw, "w") as f:
                yield f
        finally:
            raw.raise_deferred_error()


def write_case(path: str | Path, case: CaseVolume, *, compress_image: bool = False) -> None:
    """Write ``case`` to ``path`` atomically (see the module docstring for the layout).

    The image is stored uncompressed by default: lzf costs ~5 ms per 512x512 slice, several times
    the DICOM read itself, for a ~2x smaller file (``compress_image=True``: lzf + byte shuffle).
    The free space is checked first for the uncompressed image (compressed data is checked as it is written).
    """
    image_bytes = 0 if compress_image else case.image.size * np.dtype(np.int16).itemsize
    with create_h5(path, expected_bytes=H5_METADATA_BYTES + image_bytes) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["case_id"] = case.case_id
        f.attrs["lungseg_version"] = __version__
        f.attrs["status"] = STATUS_OK
        for key, value in case.geometry.as_attrs().items():
            f.attrs[key] = value
        for key, value in (case.source_geometry or case.geometry).as_attrs().items():
            f.attrs[f"source_{key}"] = value
        f.attrs["source_shape"] = np.asarray(case.source_shape or case.image.shape, dtype=np.int64)
        for key, value in case.provenance.items():
            f.attrs[key] = value
        f.create_dataset(
            "image",
            data=np.asarray(case.image, dtype=np.int16),
            chunks=_slice_chunks(case.image.shape),
            compression="lzf" if compress_image else None,
            shuffle=compress_image,
        )
        for group_name, arrays in (("labels", case.labels), ("annotations", case.annotations)):
            if group_name == "annotations" and not arrays and not case.annotation_attrs:
                continue
            group = f.create_group(group_name)
            for name, label in arrays.items():
                group.create_dataset(
                    name,
                    data=np.asarray(label, dtype=np.uint8),
                    chunks=_slice_chunks(label.shape),
                    compression="lzf",
                )
            if group_name == "annotations":
                for key, value in case.annotation_attrs.items():
                    group.attrs[key] = value


def write_quarantined_case(path: str | Path, case_id: str, file: str, reason: str, fix: str) -> None:
    """Write the placeholder of a case that failed ingest: format attrs, status, reason; no image."""
    with create_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["case_id"] = case_id
        f.attrs["lungseg_version"] = __version__
        f.attrs["status"] = STATUS_QUARANTINED
        f.attrs["file"] = file
        f.attrs["reason"] = reason
        f.attrs["fix"] = fix


def read_status(path: str | Path) -> dict[str, str]:
    """``{"case_id", "status"}`` (plus file/reason/fix when quarantined) of a case file; never raises for quarantine."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a lungseg case file (format attr missing); re-run `lungseg ingest`")
        out = {"case_id": str(f.attrs["case_id"]), "status": str(f.attrs.get("status", STATUS_OK))}
        for key in ("file", "reason", "fix"):
            if key in f.attrs:
                out[key] = str(f.attrs[key])
        return out


def open_ingested(path: str | Path) -> h5py.File:
    """:func:`open_case` for a command's input: a quarantined case raises an IngestError naming the file and the fix."""
    from lungseg.ingest.errors import quarantined_error

    try:
        return open_case(path)
    except QuarantinedCaseError as exc:
        raise quarantined_error(path) from exc


def open_case(path: str | Path) -> h5py.File:
    """Open a case file read-only (for lazy slice access); checks the format marker."""
    f = h5py.File(path, "r")
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise ValueError(f"{path} is not a lungseg case file (format attr missing); re-run `lungseg ingest`")
    if str(f.attrs.get("status", STATUS_OK)) == STATUS_QUARANTINED:
        case_id, reason, fix = (str(f.attrs.get(k, "?")) for k in ("case_id", "reason", "fix"))
        f.close()
        raise QuarantinedCaseError(
            f"{path}: case {case_id} was quarantined at ingest and holds no image ({reason}). Fix: {fix}"
        )
    return f


def read_case(path: str | Path, labels: bool = True) -> CaseVolume:
    """Read a whole case file into memory."""
    with open_case(path) as f:
        geometry = Geometry.from_attrs(f.attrs)
        label_arrays = {name: ds[()] for name, ds in f["labels"].items()} if labels else {}
        annotations = f.get("annotations")
        provenance = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items() if k not in _RESERVED}
        source = "source_spacing" in f.attrs
        return CaseVolume(
            case_id=str(f.attrs["case_id"]),
            image=f["image"][()],
            geometry=geometry,
            labels=label_arrays,
            provenance=provenance,
            annotations={n: ds[()] for n, ds in annotations.items()} if labels and annotations is not None else {},
            annotation_attrs={k: str(v) for k, v in annotations.attrs.items()} if annotations is not None else {},
            source_geometry=read_source_geometry_attrs(f.attrs) if source else None,
            source_shape=tuple(int(v) for v in f.attrs["source_shape"]) if source else None,
        )


def read_source_geometry_attrs(attrs) -> Geometry:  # noqa: ANN001 - h5py AttributeManager
    """The scan's own grid (before target-spacing resampling); the image grid for older files."""
    if "source_spacing" not in attrs:
        return Geometry.from_attrs(attrs)
    return Geometry.from_attrs({k: attrs[f"source_{k}"] for k in ("spacing", "origin", "direction")})
