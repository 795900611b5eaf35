"""Read one CT DICOM series into a Hounsfield-unit volume with its physical geometry.

- Files: every non-hidden file below the folder (recursively) except known non-DICOM kinds
  (annotation ``.xml``, ``.csv``, masks ...); DICOMDIR files are skipped; scouts/localizers are dropped
  (with a note) when an axial series remains. A folder holding several series needs a selector
  (:func:`lungseg.ingest.pseudonym.series_selector`, written by ``lungseg discover``).
- Order: ImagePositionPatient projected on the slice normal, ascending (never file name or
  InstanceNumber).
- HU = RescaleSlope * stored + RescaleIntercept (signed or unsigned storage); PixelPaddingValue
  (and PixelPaddingRangeLimit) and values below -1024 HU (outside the field of view) become air
  (-1024); values above 3071 are clipped.
- Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg: JPEG lossless, JPEG-LS,
  JPEG 2000, RLE); a syntax without an installed decoder is refused with the package to install.
- Spacing: duplicate positions and gaps wider than ``max_gap`` x the median step (a missing slice
  with the default 1.5) are refused; smaller irregularities are fixed by linear resampling onto a
  uniform grid at the median step, and a note says so. Slices drifting sideways (gantry tilt) are
  refused.

Headers are read first with the pixel data deferred; pixel data are then read and converted slice by
slice, in z order, into one preallocated int16 volume, each slice's raw bytes released before the next,
so memory stays at about one volume per case.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID
from tqdm import tqdm

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.headers import (
    NON_DICOM_SUFFIXES,  # noqa: F401 - re-exported for older imports
    SliceHeader,
    header_problem,
    is_directory_record,
    list_candidate_files,
    orientation_normal,
    read_header,
    slice_header,
)
from lungseg.ingest.pseudonym import Scrubber, series_selector

AIR_HU = -1024
MAX_HU = 3071
#: relative tolerance on slice spacing before a series counts as non-uniform
SPACING_TOLERANCE = 0.01
#: default: gaps up to this many median steps are resampled over, wider ones refused (a missing slice is 2)
DEFAULT_MAX_GAP = 1.5
#: values larger than this (the pixel data) are read from the file only when converted, one slice at a time
DEFER_SIZE = "32 KB"
#: sideways drift of slice positions (in pixels) tolerated before a series counts as tilted/sheared
MAX_DRIFT_PIXELS = 0.5


@dataclass
class SeriesVolume:
    hu: np.ndarray  # int16, (z, y, x)
    geometry: Geometry
    files: list[Path]  # source slices, in slice order
    provenance: dict[str, str | int | float]
    #: SOPInstanceUID of each source slice, in slice order (kept in memory for annotation matching, never written)
    slice_uids: list[str] = field(default_factory=list, repr=False)
    #: positions (mm along the slice normal, relative to the volume origin) of the source slices
    source_positions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    series_uid: str = field(default="", repr=False)  # never written
    notes: list[str] = field(default_factory=list)


def list_dicom_files(folder: Path) -> list[Path]:
    """Candidate slice files below ``folder``; a clear error for a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(folder, "is not a folder", "point the case at the folder holding the series' DICOM files")
    files = list_candidate_files(folder)
    if not files:
        raise IngestError(folder, "contains no DICOM files (empty folder)", "check the path in the case sheet")
    return files


def _decoder_problem(transfer_syntax: str) -> str | None:
    uid = UID(transfer_syntax)
    if uid.is_transfer_syntax and not uid.is_compressed:
        return None
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if available:
        return None
    name = uid.name if uid.name != str(uid) else f"UID {uid}"
    return f"uses transfer syntax {name}, for which no decoder is installed"


def _expected_bytes(ds: pydicom.Dataset) -> int:
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8


def _to_hu(ds: pydicom.Dataset, path: Path, out: np.ndarray) -> None:
    """One slice in HU into ``out`` (int16), padding and out-of-field-of-view values as air."""
    uid = UID(str(ds.file_meta.TransferSyntaxUID)) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    try:
        data = ds.PixelData
    except (AttributeError, OSError, EOFError) as exc:
        raise IngestError(path, "has no readable pixel data", "re-export this slice from the archive") from exc
    if data is None:
        raise IngestError(path, "has no pixel data", "re-export this slice from the archive")
    if uid is not None and uid.is_transfer_syntax and not uid.is_compressed:
        expected = _expected_bytes(ds)
        if len(data) < expected:
            raise IngestError(
                path,
                f"has truncated pixel data ({len(data)} of {expected} bytes)",
                "re-copy this file from the archive (the copy was cut short)",
            )
    try:
        stored = _native_pixels(ds, uid) if uid is not None else None
        if stored is None:
            stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for damaged data
        raise IngestError(
            path,
            f"has pixel data that cannot be decoded ({type(exc).__name__}: {str(exc)[:150]})",
            "re-export this slice from the archive (damaged or truncated compressed data)",
        ) from exc
    if stored.shape != out.shape:
        raise IngestError(
            path,
            f"has pixel data of shape {stored.shape}, not one {out.shape[0]}x{out.shape[1]} grey-level slice",
            "use a single-frame CT series",
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept.is_integer() and _fits_int16(stored.dtype, int(ds.BitsStored), int(intercept)):
        out[...] = stored  # exact: the stored range plus the intercept fits int16
        if intercept:
            out += np.int16(intercept)
    else:
        out[...] = np.clip(np.rint(stored.astype(np.float32) * slope + intercept), AIR_HU, MAX_HU)
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        pad = _as_stored(int(padding), stored.dtype, int(ds.BitsAllocated))
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is not None:
            lo, hi = sorted((pad, _as_stored(int(limit), stored.dtype, int(ds.BitsAllocated))))
            out[(stored >= lo) & (stored <= hi)] = AIR_HU
        else:
            out[stored == pad] = AIR_HU
    np.clip(out, AIR_HU, MAX_HU, out=out)


def _fits_int16(dtype: np.dtype, bits: int, intercept: int) -> bool:
    """Whether every stored value of ``bits`` bits plus ``intercept`` lies in the int16 range."""
    if dtype.kind == "u":
        low, high = 0, (1 << min(bits, dtype.itemsize * 8)) - 1
    elif dtype.kind == "i":
        low, high = -(1 << (min(bits, dtype.itemsize * 8) - 1)), (1 << (min(bits, dtype.itemsize * 8) - 1)) - 1
    else:
        return False
    return low + intercept >= -32768 and high + intercept <= 32767 and low >= -32768 and high <= 32767


def _native_pixels(ds: pydicom.Dataset, uid: UID) -> np.ndarray | None:
    """Little-endian uncompressed 16-bit slices straight from the bytes (pydicom's general path is slower)."""
    if not uid.is_transfer_syntax or uid.is_compressed or not uid.is_little_endian:
        return None
    bits = int(ds.BitsStored)
    if int(ds.BitsAllocated) != 16 or int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.HighBit) != bits - 1:
        return None
    signed = bool(int(ds.PixelRepresentation))
    rows, cols = int(ds.Rows), int(ds.Columns)
    array = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
    if bits == 16:
        return array
    if signed:  # sign-extend from BitsStored, ignoring bits above HighBit
        shift = 16 - bits
        return (array << shift) >> shift
    return array & np.uint16((1 << bits) - 1)  # bits above HighBit may hold overlays


def _as_stored(value: int, dtype: np.dtype, bits_allocated: int) -> int:
    """A padding value written as US for signed data (e.g. 63536 for -2000) in the stored value range."""
    if dtype.kind == "i" and value > np.iinfo(dtype).max:
        value -= 1 << bits_allocated
    return value


class Slice(NamedTuple):
    path: Path
    ds: pydicom.Dataset
    header: SliceHeader


def _select_series(
    slices: list[Slice], folder: Path, selector: str | None, secret: str | None, notes: list[str]
) -> list[Slice]:
    """The slices of the one image series in ``slices`` (by selector when several), scouts dropped."""
    by_series: dict[str, list[Slice]] = {}
    for item in slices:
        by_series.setdefault(item.header.series_uid, []).append(item)
    if selector:
        if not secret:
            raise IngestError(
                folder,
                "was given a series selector but no pseudonym secret",
                "set the same secret that `lungseg discover` used (e.g. $LUNGSEG_PSEUDONYM_KEY)",
            )
        chosen = {uid: items for uid, items in by_series.items() if series_selector(secret, uid) == selector}
        if not chosen:
            raise IngestError(
                folder,
                f"holds no series matching selector {selector}",
                "re-run `lungseg discover` with the same secret and use its case sheet",
            )
        by_series = chosen
    kept: dict[str, list[Slice]] = {}
    n_scouts = 0
    for uid, items in by_series.items():
        images = [item for item in items if not item.header.scout]
        n_scouts += len(items) - len(images)
        if images:
            kept[uid] = images
    if not kept:
        raise IngestError(
            folder,
            f"holds only scout/localizer images ({n_scouts})",
            "point the case at the axial CT series, not the scout",
        )
    if n_scouts:
        notes.append(f"dropped {n_scouts} scout/localizer image(s)")
    if len(kept) > 1:
        sizes = " + ".join(str(len(items)) for items in sorted(kept.values(), key=len, reverse=True))
        raise IngestError(
            folder,
            f"holds {len(kept)} image series ({sizes} files)",
            "put each series in its own folder, or run `lungseg discover` on the folder and use "
            "its case sheet (its `series` column selects one)",
        )
    return next(iter(kept.values()))


_FIXES = {
    "modality": "give lungseg a CT series",
    "colour": "remove screenshots/secondary captures; give the original CT slices",
    "multi-frame": "export the series as single-frame (classic) CT images",
    "not axial": "give the axial series (lungseg reads axial CT; reformats are refused)",
}


def _check_slices(items: list[Slice]) -> None:
    """Every file is a CT axial grey-level slice of one size, orientation and decodable syntax."""
    for item in items:
        problem = header_problem(item.header)
        if problem:
            fix = next((f for k, f in _FIXES.items() if k in problem), "export the series with patient geometry")
            raise IngestError(item.path, problem, fix)
    for syntax in {item.header.syntax for item in items}:
        problem = _decoder_problem(syntax) if syntax else None
        if problem:
            path = next(item.path for item in items if item.header.syntax == syntax)
            raise IngestError(
                path,
                problem,
                "install the decoders lungseg depends on (pip install pylibjpeg "
                "pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle) or re-export the series uncompressed",
            )
    shapes = Counter((item.header.rows, item.header.columns) for item in items)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(item for item in items if (item.header.rows, item.header.columns) != common)
        raise IngestError(
            odd.path,
            f"is a {odd.header.rows}x{odd.header.columns} slice in a series of {common[0]}x{common[1]} slices",
            "put each series in its own folder",
        )
    orientation = items[0].header.orientation
    for item in items:
        if item.header.orientation != orientation and not np.allclose(item.header.orientation, orientation, atol=1e-3):
            raise IngestError(
                item.path,
                "has a different ImageOrientationPatient than the other slices",
                "put each series (orientation) in its own folder",
            )


def _order(items: list[Slice], folder: Path, max_gap: float) -> tuple[list[Slice], np.ndarray, np.ndarray]:
    """Sort along the normal; refuse duplicates, wide gaps and drift. Returns (items, positions, normal)."""
    first = items[0].header
    normal = np.asarray(orientation_normal(first.orientation))
    points = np.asarray([item.header.position for item in items])
    along = points @ normal
    order = np.argsort(along, kind="stable")
    items = [items[i] for i in order]
    points, along = points[order], along[order]
    if len(items) > 1:
        steps = np.diff(along)
        if np.any(steps < 1e-3):
            k = int(np.argmin(steps))
            raise IngestError(
                items[k + 1].path,
                f"has the same slice position ({along[k]:.2f} mm along the normal) as "
                f"{items[k].path.name} (duplicate slice)",
                "remove the duplicate file",
            )
        dz = float(np.median(steps))
        widest = int(np.argmax(steps))
        if steps[widest] > max_gap * dz:
            raise IngestError(
                items[widest + 1].path,
                f"follows a gap of {steps[widest]:.2f} mm in a series whose slices "
                f"are {dz:.2f} mm apart (missing slice(s) between {along[widest]:.2f} and "
                f"{along[widest + 1]:.2f} mm)",
                "re-export the complete series from the archive "
                "(or let lungseg interpolate over gaps up to N slices with --max-gap N)",
            )
        offsets = points - points[0]
        drift = offsets - np.outer(offsets @ normal, normal)
        worst = float(np.max(np.linalg.norm(drift, axis=1)))
        if worst > MAX_DRIFT_PIXELS * min(first.pixel_spacing):
            raise IngestError(
                folder,
                f"has slice positions drifting {worst:.1f} mm sideways across the series "
                "(gantry tilt or sheared stack)",
                "correct the tilt first (e.g. dcm2niix) and give the resulting NIfTI volume",
            )
    return items, along - along[0], normal


def _uniform_grid(positions: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """Target positions (uniform) for source ``positions``; whether resampling is needed."""
    if len(positions) < 2:
        return positions, 0.0, False
    steps = np.diff(positions)
    dz = float(np.median(steps))
    if np.max(np.abs(steps - dz)) <= SPACING_TOLERANCE * dz + 1e-3:
        mean = float(positions[-1] / (len(positions) - 1))
        return np.arange(len(positions)) * mean, mean, False
    n = int(np.floor(positions[-1] / dz + 1e-6)) + 1
    return np.arange(n) * dz, dz, True


def _resample_z(hu: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation of slices at ``source`` positions onto ``target`` positions (ascending)."""
    upper = np.clip(np.searchsorted(source, target, side="right"), 1, len(source) - 1)
    lower = upper - 1
    weight = np.clip((target - source[lower]) / (source[upper] - source[lower]), 0.0, 1.0)
    out = np.empty((len(target), *hu.shape[1:]), dtype=np.int16)
    for k, (lo, hi, w) in enumerate(zip(lower, upper, weight)):
        out[k] = np.rint((1.0 - w) * hu[lo] + w * hu[hi])
    return out


def read_series(
    folder: Path,
    *,
    selector: str | None = None,
    secret: str | None = None,
    max_gap: float = DEFAULT_MAX_GAP,
    scrubber: Scrubber | None = None,
    progress: bool = False,
) -> SeriesVolume:
    """Read, check and order one CT series from ``folder`` (see the module docstring)."""
    folder = Path(folder)
    notes: list[str] = []
    datasets = []
    non_images = 0
    learnt: set[tuple[str, str]] = set()
    for path in list_dicom_files(folder):
        ds = read_header(path, pixels=True, defer_size=DEFER_SIZE)
        key = (str(ds.get("SeriesInstanceUID", "")), str(ds.get("PatientID", "")))
        if scrubber is not None and key not in learnt:  # identities are per patient and series
            scrubber.learn(ds)
            learnt.add(key)
        if is_directory_record(ds):
            notes.append("skipped a DICOMDIR file")
            continue
        if "SeriesInstanceUID" not in ds or ("Rows" in ds and "PixelData" not in ds):
            raise IngestError(
                path,
                "is an incomplete DICOM file (it ends before its series UID or pixel data: cut short?)",
                "re-copy this file from the archive, or remove it",
            )
        if "PixelData" not in ds:
            non_images += 1  # structured reports, presentation states ... beside the slices
            continue
        datasets.append(Slice(path, ds, slice_header(ds)))
    if non_images:
        notes.append(f"skipped {non_images} non-image DICOM object(s)")
    if not datasets:
        raise IngestError(folder, "contains no DICOM image files", "check the path in the case sheet")
    items = _select_series(datasets, folder, selector, secret, notes)
    _check_slices(items)
    items, positions, normal = _order(items, folder, max_gap)

    first = items[0].header
    hu = np.empty((len(items), first.rows, first.columns), dtype=np.int16)
    for k, (path, ds, _) in enumerate(tqdm(items, desc="slices", unit="slice", disable=not progress, leave=False)):
        _to_hu(ds, path, hu[k])
        if "PixelData" in ds:
            del ds.PixelData  # keep headers only
    target, dz, resample = _uniform_grid(positions)
    if resample:
        steps = np.diff(positions)
        hu = _resample_z(hu, positions, target)
        notes.append(
            f"slice spacing varied ({steps.min():.2f}-{steps.max():.2f} mm): resampled linearly onto a "
            f"uniform {dz:.2f} mm grid ({len(positions)} -> {len(target)} slices)"
        )
    if len(items) == 1:
        dz = float(items[0].ds.get("SpacingBetweenSlices") or items[0].ds.get("SliceThickness") or 1.0)

    row_spacing, col_spacing = first.pixel_spacing
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    geometry = Geometry(
        spacing=(col_spacing, row_spacing, dz),
        origin=first.position,
        direction=tuple(np.column_stack([row, col, normal]).ravel().tolist()),
    )
    ds0 = items[0].ds
    syntax = UID(first.syntax) if first.syntax else None
    provenance: dict[str, str | int | float] = {
        "source_kind": "dicom",
        "n_slices": int(hu.shape[0]),
        "n_source_slices": len(items),
        "manufacturer": str(ds0.get("Manufacturer", "") or ""),
        "transfer_syntax": syntax.name if syntax is not None else "",
        "storage": "signed" if int(ds0.get("PixelRepresentation", 0) or 0) else "unsigned",
    }
    return SeriesVolume(
        hu=hu,
        geometry=geometry,
        files=[item.path for item in items],
        provenance=provenance,
        slice_uids=[item.header.sop_uid for item in items],
        source_positions=positions,
        series_uid=first.series_uid,
        notes=notes,
    )
