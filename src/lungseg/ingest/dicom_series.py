"""Read one CT DICOM series into a Hounsfield-unit volume with its physical geometry.

- Files: every non-hidden file below the folder (recursively) except known non-DICOM kinds
  (annotation ``.xml``, ``.csv``, masks ...). Objects that are not image slices (DICOMDIR and other
  directory files, RTSTRUCT, RTPLAN, RTDOSE, SEG, SR, presentation states, raw data, anything
  without pixel data) and scouts/localizers are set aside with a note, as are image series of another
  modality beside a CT series. Two or more CT series in one folder need a selector
  (:func:`lungseg.ingest.pseudonym.series_selector`, written by ``lungseg discover``).
- Enhanced CT (one file, many frames; several files per series allowed): each frame is a slice, with
  its position, orientation, pixel spacing and rescale from the Per-Frame / Shared Functional Groups.
- Order: ImagePositionPatient projected on the slice normal, ascending (never file name or
  InstanceNumber).
- HU = RescaleSlope * stored + RescaleIntercept (signed or unsigned storage); PixelPaddingValue
  (and PixelPaddingRangeLimit) and values below -1024 HU (outside the field of view) become air
  (-1024); values above 3071 are clipped.
- Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg: JPEG lossless, JPEG-LS,
  JPEG 2000, RLE); a syntax without an installed decoder is refused with the package to install.
- Spacing: duplicate positions and gaps wider than ``max_gap`` x the median step (a missing slice
  with the default 1.5) are refused; smaller irregularities are fixed by linear resampling onto a
  uniform grid at the median step, and a note says so.
- Gantry tilt: slice positions drifting sideways (the stack sheared against the slice normal) are
  corrected as dcm2niix does: each slice is moved in its own plane (linear interpolation) to where its
  position puts it, onto an orthogonal grid (row, column, normal) widened to hold every slice; the
  tilt (``gantry_tilt_deg``) and the resampling are noted. Shears beyond ``MAX_TILT_DEG`` are refused.

Headers are read first with the pixel data deferred; pixel data are then read and converted slice by
slice, in z order, into one preallocated int16 volume, each file's raw bytes released once read,
so memory stays at about one volume per case.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID
from tqdm import tqdm

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.headers import (
    NON_DICOM_SUFFIXES,  # noqa: F401 - re-exported for older imports
    SliceHeader,
    frame_headers,
    header_problem,
    list_candidate_files,
    non_image_kind,
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
#: stacks sheared further than this from their slice normal are refused, not resampled (no gantry tilts that far)
MAX_TILT_DEG = 45.0


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


def _to_hu(
    ds: pydicom.Dataset, path: Path, out: np.ndarray, frame: int = 0, rescale: tuple[float, float] | None = None
) -> None:
    """One slice (frame ``frame`` of a multi-frame file) in HU into ``out`` (int16), padding and
    out-of-field-of-view values as air; ``rescale`` (slope, intercept) overrides the dataset's."""
    uid = UID(str(ds.file_meta.TransferSyntaxUID)) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        data = ds.PixelData
    except (AttributeError, OSError, EOFError) as exc:
        raise IngestError(path, "has no readable pixel data", "re-export this slice from the archive") from exc
    if data is None:
        raise IngestError(path, "has no pixel data", "re-export this slice from the archive")
    if uid is not None and uid.is_transfer_syntax and not uid.is_compressed:
        expected = _expected_bytes(ds) * frames
        if len(data) < expected:
            raise IngestError(
                path,
                f"has truncated pixel data ({len(data)} of {expected} bytes)",
                "re-copy this file from the archive (the copy was cut short)",
            )
    try:
        stored = _native_pixels(ds, uid, frame) if uid is not None else None
        if stored is None:
            stored = pixel_array(ds, index=frame) if frames > 1 else ds.pixel_array
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
            "use a single-frame or Enhanced CT series",
        )
    if rescale is None:
        rescale = (float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0))
    slope, intercept = rescale
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


def _native_pixels(ds: pydicom.Dataset, uid: UID, frame: int = 0) -> np.ndarray | None:
    """Little-endian uncompressed 16-bit slices (frame ``frame``) straight from the bytes (pydicom's general
    path is slower)."""
    if not uid.is_transfer_syntax or uid.is_compressed or not uid.is_little_endian:
        return None
    bits = int(ds.BitsStored)
    if int(ds.BitsAllocated) != 16 or int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.HighBit) != bits - 1:
        return None
    signed = bool(int(ds.PixelRepresentation))
    rows, cols = int(ds.Rows), int(ds.Columns)
    array = np.frombuffer(
        ds.PixelData, dtype="<i2" if signed else "<u2", count=rows * cols, offset=2 * rows * cols * frame
    ).reshape(rows, cols)
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
    frame: int = 0  # frame index in a multi-frame (Enhanced CT) file


def _select_series(
    slices: list[Slice], folder: Path, selector: str | None, secret: str | None, notes: list[str]
) -> list[Slice]:
    """The slices of the one CT image series in ``slices`` (by selector when several); scouts/localizers,
    and image series of other modalities beside a CT series, are set aside with a note."""
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
        notes.append(f"set aside {n_scouts} scout/localizer image(s)")
    ct = {uid: items for uid, items in kept.items() if items[0].header.modality == "CT"}
    if ct and len(ct) < len(kept):
        other = Counter(items[0].header.modality or "unknown" for uid, items in kept.items() if uid not in ct)
        n_other = sum(len(items) for uid, items in kept.items() if uid not in ct)
        notes.append(f"set aside {n_other} image(s) of another modality ({', '.join(sorted(other))})")
        kept = ct
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
    "multi-frame": "export the series as Enhanced CT or as single-frame (classic) CT images",
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


class Stack(NamedTuple):
    """Slices sorted along the normal, their positions along it (mm, from the first) and their sideways
    offsets (mm along the row and column directions, from the first; all zero unless tilted)."""

    items: list[Slice]
    positions: np.ndarray
    normal: np.ndarray
    sideways: np.ndarray


def _order(items: list[Slice], folder: Path, max_gap: float) -> Stack:
    """Sort along the normal; refuse duplicates, wide gaps and shears beyond a gantry tilt."""
    first = items[0].header
    normal = np.asarray(orientation_normal(first.orientation))
    points = np.asarray([item.header.position for item in items])
    along = points @ normal
    order = np.argsort(along, kind="stable")
    items = [items[i] for i in order]
    points, along = points[order], along[order]
    sideways = np.zeros((len(items), 2))
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
        row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
        drift = offsets - np.outer(offsets @ normal, normal)
        if float(np.max(np.linalg.norm(drift, axis=1))) > MAX_DRIFT_PIXELS * min(first.pixel_spacing):
            sideways = np.column_stack([drift @ row, drift @ col])
            angle = abs(tilt_angle(sideways, along))
            if angle > MAX_TILT_DEG:
                raise IngestError(
                    folder,
                    f"has slice positions sheared {angle:.0f} deg away from the slice normal (more than a gantry "
                    f"tilt of {MAX_TILT_DEG:.0f} deg: a mixed or reformatted stack?)",
                    "give the series as acquired, one series per folder, or correct it first (e.g. dcm2niix) and "
                    "give the resulting NIfTI volume",
                )
    return Stack(items, along - along[0], normal, sideways)


def tilt_angle(sideways: np.ndarray, positions: np.ndarray) -> float:
    """Gantry tilt (deg) of a stack: its sideways shift against its extent along the normal, signed by the
    shift along the column direction (the usual tilt axis) or, failing that, along the row direction."""
    shift = sideways[-1] - sideways[0]
    extent = float(positions[-1] - positions[0])
    angle = float(np.degrees(np.arctan2(np.linalg.norm(shift), extent)))
    axis = 1 if abs(shift[1]) >= abs(shift[0]) else 0
    return angle if shift[axis] >= 0 else -angle


def _untilt(hu: np.ndarray, sideways: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Each slice moved in its plane to where its positions say it lies (bilinear interpolation), onto one
    orthogonal grid that covers all of them (air elsewhere): the gantry-tilt correction of dcm2niix.

    ``sideways``: per slice (mm along row, mm along column); ``spacing``: (along row, along column) mm.
    Returns the volume and the grid's offset from the first slice's origin (mm along row, column)."""
    low = sideways.min(axis=0)
    shifts = np.round((sideways - low) / np.asarray(spacing, dtype=float), 4)  # pixels (x, y) to move by, >= 0
    extra = np.ceil(shifts.max(axis=0) - 1e-6).astype(int)
    shape = (hu.shape[1] + int(extra[1]), hu.shape[2] + int(extra[0]))
    out = np.empty((hu.shape[0], *shape), dtype=np.int16)
    for k in range(hu.shape[0]):
        out[k] = np.clip(np.rint(_shifted(hu[k], shifts[k, 1], shifts[k, 0], shape)), AIR_HU, MAX_HU)
    return out, low


def _shifted(image: np.ndarray, dy: float, dx: float, shape: tuple[int, int]) -> np.ndarray:
    """``out[j, i] = image(j - dy, i - dx)`` (bilinear, air outside ``image``) on a grid of ``shape``."""
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    out = np.zeros(shape, dtype=np.float32)
    canvas = np.empty(shape, dtype=np.float32)
    for oy, wy in ((iy, 1.0 - fy), (iy + 1, fy)):
        for ox, wx in ((ix, 1.0 - fx), (ix + 1, fx)):
            if wy * wx < 1e-6:
                continue
            canvas.fill(AIR_HU)
            rows, cols = min(image.shape[0], shape[0] - oy), min(image.shape[1], shape[1] - ox)
            canvas[oy : oy + rows, ox : ox + cols] = image[:rows, :cols]
            out += np.float32(wy * wx) * canvas
    return out


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


def _set_aside_note(kinds: Counter) -> str:
    """'set aside 2 non-image object(s) beside the slices: RTSTRUCT, SEG' (kind names, never UIDs)."""
    listed = ", ".join(f"{kind}" + (f" x{n}" if n > 1 else "") for kind, n in sorted(kinds.items()))
    return f"set aside {sum(kinds.values())} non-image object(s) beside the slices: {listed}"


def _read_slices(folder: Path, scrubber: Scrubber | None, notes: list[str]) -> list[Slice]:
    """Every image slice (every frame of an Enhanced CT file) below ``folder``, non-image objects set aside."""
    slices = []
    aside: Counter = Counter()
    learnt: set[tuple[str, str]] = set()
    for path in list_dicom_files(folder):
        ds = read_header(path, pixels=True, defer_size=DEFER_SIZE)
        key = (str(ds.get("SeriesInstanceUID", "")), str(ds.get("PatientID", "")))
        if scrubber is not None and key not in learnt:  # identities are per patient and series
            scrubber.learn(ds)
            learnt.add(key)
        kind = non_image_kind(ds)
        if kind is not None:
            aside[kind] += 1
            continue
        if "SeriesInstanceUID" not in ds or ("Rows" in ds and "PixelData" not in ds):
            raise IngestError(
                path,
                "is an incomplete DICOM file (it ends before its series UID or pixel data: cut short?)",
                "re-copy this file from the archive, or remove it",
            )
        header = slice_header(ds)
        if header.enhanced and header.frames > 1:
            slices += [Slice(path, ds, frame, k) for k, frame in enumerate(frame_headers(ds))]
        else:
            slices.append(Slice(path, ds, header))
    if aside:
        notes.append(_set_aside_note(aside))
    if not slices:
        raise IngestError(folder, "contains no DICOM image files", "check the path in the case sheet")
    return slices


def _read_pixels(items: list[Slice], progress: bool) -> np.ndarray:
    """The HU volume of ``items`` (in their order); each file's pixel data released once fully read."""
    first = items[0].header
    hu = np.empty((len(items), first.rows, first.columns), dtype=np.int16)
    remaining = Counter(id(item.ds) for item in items)
    for k, item in enumerate(tqdm(items, desc="slices", unit="slice", disable=not progress, leave=False)):
        _to_hu(item.ds, item.path, hu[k], item.frame, item.header.rescale)
        remaining[id(item.ds)] -= 1
        if not remaining[id(item.ds)] and "PixelData" in item.ds:
            del item.ds.PixelData  # keep headers only
    return hu


def ordered_slices(
    folder: Path,
    *,
    selector: str | None = None,
    secret: str | None = None,
    max_gap: float = DEFAULT_MAX_GAP,
    scrubber: Scrubber | None = None,
    notes: list[str] | None = None,
) -> Stack:
    """The slices of one CT series of ``folder`` found, checked and ordered along the normal, headers only
    (pixel data not decoded): what :func:`read_series` reads and what an export must reference."""
    notes = [] if notes is None else notes
    items = _select_series(_read_slices(Path(folder), scrubber, notes), Path(folder), selector, secret, notes)
    _check_slices(items)
    return _order(items, Path(folder), max_gap)


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
    stack = ordered_slices(folder, selector=selector, secret=secret, max_gap=max_gap, scrubber=scrubber, notes=notes)
    items, positions, normal = stack.items, stack.positions, stack.normal
    first = items[0].header
    row_spacing, col_spacing = first.pixel_spacing
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    hu = _read_pixels(items, progress)
    origin = np.asarray(first.position, dtype=float)
    provenance_tilt: dict[str, float] = {}
    if np.any(stack.sideways):
        angle = tilt_angle(stack.sideways, positions)
        size = hu.shape[1:]
        hu, offset = _untilt(hu, stack.sideways, (col_spacing, row_spacing))
        origin = origin + offset[0] * row + offset[1] * col
        notes.append(
            f"gantry tilt {angle:.1f} deg (from the slice positions): each slice moved in its plane onto an "
            f"orthogonal grid (linear), {size[0]}x{size[1]} -> {hu.shape[1]}x{hu.shape[2]} pixels"
        )
        provenance_tilt = {"gantry_tilt_deg": round(angle, 2)}
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

    geometry = Geometry(
        spacing=(col_spacing, row_spacing, dz),
        origin=tuple(float(v) for v in origin),
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
        **({"enhanced_ct_files": len({item.path for item in items})} if first.enhanced else {}),
        **provenance_tilt,
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
