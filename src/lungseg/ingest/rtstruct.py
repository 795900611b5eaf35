"""DICOM RT Structure Set (RTSTRUCT) -> label volumes on a scan's grid, in physical space.

Reading: the structure set must reference the scan's series (``RTReferencedSeriesSequence``
SeriesInstanceUID); ROI names become labels through :mod:`lungseg.ingest.structure_map`. Each
``CLOSED_PLANAR`` contour (patient mm, LPS) is taken into the grid's continuous index space with the
inverse of the geometry (oblique and sheared grids included) and must lie in one slice plane of
the grid; it is matched to the nearest slice (within half the slice step). Contours parallel to each
other but not to the grid's slices (a gantry-tilted series resampled onto an orthogonal grid) are
rasterised on a grid of their own planes and resampled (nearest) onto the scan's, with a note.

Rasterising (per ROI and slice): a voxel is inside when its centre is inside the polygon (a scanline
fill in index space, :func:`fill_even_odd`); several contours on one slice combine by even-odd
parity, so a contour nested in another is a hole. Reported in the notes, never silently dropped: contours written twice
(counted once), contours on no slice of the series, contours between slices, contours clipped at
the image edge or lying wholly outside it, ROIs without contours and ROI names not mapped to a
label. A mapped ROI whose contours all miss the image is refused (drawn on another scan).

UIDs and names of people never reach notes or errors; ROI names do (they name anatomy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.label_objects import check_referenced_series, open_label_object
from lungseg.ingest.structure_map import Mapping, Structure, assign, combine_structures, parse_mapping

CONTOUR_DATA = 0x30060050
#: a contour counts as lying in one slice plane when its points are within this many slice steps of it
PLANE_TOLERANCE = 0.1
#: contours further than this fraction of the slice step from the nearest slice are noted
BETWEEN_SLICES = 0.25


@dataclass
class RoiContours:
    """The closed planar contours of one ROI, each an (n, 3) array of LPS mm points."""

    name: str
    contours: list[np.ndarray] = field(default_factory=list)
    other_types: int = 0  # POINT / OPEN_PLANAR contours and closed ones of under 3 points (not areas: left out)


_MAX_POWER = 22
_POWERS = 10.0 ** np.arange(-_MAX_POWER, _MAX_POWER + 1)
_OTHER = np.ones(256, dtype=bool)  # bytes other than those of plain decimals: digits . - + space and the separator
_OTHER[np.frombuffer(b"0123456789.-+ \\", dtype=np.uint8)] = False


def _parse_slowly(raw: bytes) -> np.ndarray:
    return np.array([float(v) for v in raw.split(b"\\") if v.strip()], dtype=float)


def parse_ds(raw: bytes) -> np.ndarray:
    """Decimal strings (``\\``-separated DS values, space-padded) as float64, vectorised.

    Plain decimals (sign, digits, one point) are parsed with numpy at a few ns per value; anything else
    (exponents, odd characters) goes through Python's ``float``. Results agree with ``float`` to 1e-12.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    if not len(buf) or np.bincount(buf, minlength=256)[_OTHER].any():
        return _parse_slowly(raw)
    sep, dot = buf == 92, buf == 46
    token = np.cumsum(sep, dtype=np.int32)
    n = int(token[-1]) + 1
    digit_at = np.flatnonzero((buf >= 48) & (buf <= 57)).astype(np.int32)
    digit_token = token[digit_at]
    ends = np.flatnonzero(np.diff(digit_token))  # the last digit of each value but the last
    dots = np.flatnonzero(dot).astype(np.int32)
    dot_token = token[dots]
    if len(digit_at) == 0 or len(ends) + 1 != n or digit_token[0] != 0 or (np.diff(dot_token) == 0).any():
        return _parse_slowly(raw)  # a value without digits, or with two points
    point = np.append(digit_at[ends], digit_at[-1]) + 1  # where each value's decimal point is, or would be
    point[dot_token] = dots
    power = point[digit_token] - digit_at
    power -= power > 0  # digits before the point: 10^(distance - 1); after it: 10^-distance
    if power.min() < -_MAX_POWER or power.max() > _MAX_POWER:
        return _parse_slowly(raw)
    values = np.bincount(digit_token, weights=(buf[digit_at] - 48) * _POWERS[power + _MAX_POWER], minlength=n)
    negative = token[buf == 45]
    values[negative] = -values[negative]
    return values


def _contour_bytes(item: pydicom.Dataset) -> bytes:
    """ContourData as DS text (raw, as read; rebuilt from the values of a dataset made in memory)."""
    raw = item.get_item(CONTOUR_DATA)
    if raw is None:
        return b""
    if isinstance(raw.value, bytes):
        return raw.value.strip(b" \0")
    values = raw.value if isinstance(raw.value, MultiValue | list | tuple) else [raw.value]
    return "\\".join(repr(float(v)) for v in values).encode()


def read_rtstruct(
    path: Path, series_uid: str | None, wanted: Callable[[list[str]], set[str]] | None = None
) -> list[RoiContours]:
    """The ROIs of an RTSTRUCT file with their contours; refuses one that references another series.

    ``wanted``: given the ROI names, those whose contours to read (None: all); the others come without contours.
    """
    path = Path(path)
    ds, obj = open_label_object(path, "rtstruct")
    check_referenced_series(obj, series_uid)
    names = {int(r.ROINumber): str(r.get("ROIName", f"ROI {r.ROINumber}")) for r in ds.get("StructureSetROISequence", [])}
    rois = {number: RoiContours(name) for number, name in names.items()}
    for roi_contour in ds.get("ROIContourSequence", []):
        number = int(roi_contour.get("ReferencedROINumber", -1))
        rois.setdefault(number, RoiContours(f"ROI {number}"))
    all_names = [r.name for r in rois.values()]
    chosen = set(all_names) if wanted is None else wanted(all_names)
    owners, texts = [], []
    for roi_contour in ds.get("ROIContourSequence", []):
        roi = rois[int(roi_contour.get("ReferencedROINumber", -1))]
        if roi.name not in chosen:
            continue
        for item in roi_contour.get("ContourSequence", []):
            if str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                roi.other_types += 1
                continue
            if text := _contour_bytes(item):
                owners.append(roi)
                texts.append(text)
    if texts:  # one vectorised parse of every contour's numbers
        try:
            values = parse_ds(b"\\".join(texts))
        except ValueError as exc:
            raise IngestError(path, f"has a malformed ContourData value ({exc})", "re-export the structure set") from exc
        counts = [t.count(b"\\") + 1 for t in texts]
        if len(values) != sum(counts):
            raise IngestError(path, "has a malformed ContourData value (an empty number)", "re-export the structure set")
        for roi, numbers in zip(owners, np.split(values, np.cumsum(counts)[:-1])):
            if len(numbers) >= 9:  # a polygon needs 3 points
                roi.contours.append(numbers[: len(numbers) // 3 * 3].reshape(-1, 3))
            else:
                roi.other_types += 1
    return list(rois.values())


@dataclass
class _Tally:
    duplicates: int = 0
    off_grid: list[float] = field(default_factory=list)  # z (mm) of contours on no slice
    between: int = 0
    clipped: int = 0
    outside: int = 0
    tiny: int = 0
    not_planar: int = 0  # contours not in one plane (left out)
    own_planes: bool = False  # contours parallel to each other but not to the grid's slices (resampled)


def _physical_to_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """LPS mm (n, 3) -> continuous (x, y, z) indices (the inverse of ``Geometry.index_to_physical``)."""
    matrix = geometry.direction_matrix * np.asarray(geometry.spacing)  # columns: index steps in mm
    return (points - np.asarray(geometry.origin)) @ np.linalg.inv(matrix).T


def rasterise_roi(
    roi: RoiContours, geometry: Geometry, shape: tuple[int, int, int], tally: _Tally, *, other_planes: bool = True
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Bool mask of one ROI cropped to its box, and the box's (z, y, x) offset on the grid: per slice, the
    even-odd parity of its contours' voxel-centre fills (:func:`fill_even_odd`, all slices in one pass).

    Contours not parallel to the grid's slices (a tilted acquisition on a resampled grid) are rasterised on
    their own planes and resampled (:func:`_own_planes`) unless ``other_planes`` is False.
    """
    n_slices, rows, cols = shape
    empty = np.zeros((0, 0, 0), dtype=bool), (0, 0, 0)
    if not roi.contours:
        return empty
    lengths = np.array([len(c) for c in roi.contours])
    starts = np.cumsum(lengths) - lengths
    index = _physical_to_index(geometry, np.concatenate(roi.contours))
    x, y, z = index[:, 0], index[:, 1], index[:, 2]
    following = np.arange(1, len(x) + 1)
    following[starts + lengths - 1] = starts
    area = 0.5 * np.add.reduceat(x * y[following] - y * x[following], starts)
    z_mean = np.add.reduceat(z, starts) / lengths
    z_spread = np.maximum.reduceat(z, starts) - np.minimum.reduceat(z, starts)
    lo_x, hi_x = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)
    lo_y, hi_y = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
    nearest = np.rint(z_mean).astype(int)
    tilted = other_planes and np.any(z_spread > 2 * PLANE_TOLERANCE)
    if tilted and (own := _own_planes(roi, geometry, shape, tally)) is not None:
        return own
    seen: set[tuple[int, bytes]] = set()
    kept: list[np.ndarray] = []
    slices: list[int] = []
    for i, points in enumerate(roi.contours):
        k = int(nearest[i])
        if z_spread[i] > 2 * PLANE_TOLERANCE:
            tally.not_planar += 1
            continue
        if not 0 <= k < n_slices or abs(z_mean[i] - k) > 0.5:
            tally.off_grid.append(float(points[:, 2].mean()))
            continue
        key = (k, points.tobytes())
        if key in seen:
            tally.duplicates += 1
            continue
        seen.add(key)
        if abs(z_mean[i] - k) > BETWEEN_SLICES:
            tally.between += 1
        if hi_x[i] < -0.5 or hi_y[i] < -0.5 or lo_x[i] > cols - 0.5 or lo_y[i] > rows - 0.5:
            tally.outside += 1
            continue
        if lo_x[i] < -0.5 or lo_y[i] < -0.5 or hi_x[i] > cols - 0.5 or hi_y[i] > rows - 0.5:
            tally.clipped += 1
        if abs(area[i]) < 1.0:
            tally.tiny += 1
        kept.append(index[starts[i]:starts[i] + lengths[i], :2])
        slices.append(k)
    if not kept:
        return empty
    filled = _fill_edges(kept, np.asarray(slices), rows, cols)
    return filled if filled is not None else empty


def _own_planes(
    roi: RoiContours, geometry: Geometry, shape: tuple[int, int, int], tally: _Tally
) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """Contours parallel to each other but not to the grid's slices: rasterised on a grid of their own planes
    (in-plane step half the scan's pixel, plane step the contours' spacing), then resampled (nearest) onto the scan."""
    import SimpleITK as sitk

    points = np.concatenate(roi.contours)
    centred = roi.contours[int(np.argmax([len(c) for c in roi.contours]))]
    centred = centred - centred.mean(axis=0)
    normal = np.cross(centred, np.roll(centred, -1, axis=0)).sum(axis=0)  # Newell: area-weighted normal
    if not np.linalg.norm(normal):
        return None
    normal /= np.linalg.norm(normal)
    u = geometry.direction_matrix[:, 0] - normal * (geometry.direction_matrix[:, 0] @ normal)
    if np.linalg.norm(u) < 1e-3:
        u = geometry.direction_matrix[:, 1] - normal * (geometry.direction_matrix[:, 1] @ normal)
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    frame = np.c_[u, v, normal]
    local = points @ frame
    planes = np.unique(np.round([c @ normal for c in [c.mean(axis=0) for c in roi.contours]], 2))
    step = float(np.median(np.diff(planes))) if len(planes) > 1 else geometry.spacing[2]
    pixel = min(geometry.spacing[:2]) / 2  # finer than the scan: the nearest resampling adds its own half voxel
    lo = local.min(axis=0) - [pixel, pixel, 0]
    own_shape = (int(round((local[:, 2].max() - lo[2]) / step)) + 1,
                 int(np.ceil((local[:, 1].max() - lo[1]) / pixel)) + 2, int(np.ceil((local[:, 0].max() - lo[0]) / pixel)) + 2)
    own = Geometry((pixel, pixel, step), tuple(float(c) for c in frame @ lo), tuple(float(c) for c in frame.ravel()))
    own_tally = _Tally()
    mask, offset = rasterise_roi(roi, own, own_shape, own_tally, other_planes=False)
    if own_tally.not_planar == len(roi.contours) or not mask.any():
        return None
    tally.duplicates += own_tally.duplicates
    tally.tiny += own_tally.tiny
    tally.not_planar += own_tally.not_planar
    tally.own_planes = True
    full = np.zeros(own_shape, dtype=np.uint8)
    full[tuple(slice(o, o + n) for o, n in zip(offset, mask.shape))] = mask
    reference = geometry.to_sitk(np.zeros(shape, dtype=np.uint8))
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(own.to_sitk(full), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ).astype(bool)
    if not resampled.any():
        tally.outside += len(roi.contours)
        return np.zeros((0, 0, 0), dtype=bool), (0, 0, 0)
    box = [np.flatnonzero(resampled.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]] for axis in range(3)]
    return resampled[tuple(slice(a, b + 1) for a, b in box)], tuple(int(a) for a, _ in box)


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Bool (rows, cols) image of the voxel centres inside an odd number of the (x, y) index-space polygons.

    Scanline fill: each edge crossing row ``r`` at ``x`` toggles the parity of the centres at or right of ``x``;
    edges count on the half-open row range ``[min y, max y)`` so that a vertex on a row is crossed once
    (a centre on the left or top edge is inside, on the right or bottom edge outside: areas add up).
    """
    out = np.zeros(shape, dtype=bool)
    filled = _fill_edges(polygons, np.zeros(len(polygons), dtype=int), *shape)
    if filled is not None:
        box, (_, row, col) = filled
        out[row:row + box.shape[1], col:col + box.shape[2]] = box[0]
    return out


#: crossings are counted on blocks of at most this many voxels (bounds the memory of a large structure)
_BLOCK_VOXELS = 1 << 22


def _fill_edges(
    polygons: list[np.ndarray], slices: np.ndarray, rows: int, cols: int
) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """:func:`fill_even_odd` of polygons on several slices at once: (bool box, its (z, y, x) offset), or None."""
    lengths = np.array([len(p) for p in polygons])
    points = np.concatenate(polygons)
    following = np.arange(1, len(points) + 1)
    ends = np.cumsum(lengths)
    following[ends - 1] = ends - lengths  # each polygon closes on its first point
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = x0[following], y0[following]
    first = np.clip(np.ceil(np.minimum(y0, y1)), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, rows).astype(np.int64)
    counts = stop - first
    edge = np.repeat(np.arange(len(x0)), counts)
    if not len(edge):
        return None
    row = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts)
    slope = (x1 - x0) / np.where(y1 == y0, 1.0, y1 - y0)
    column = np.clip(np.ceil(x0[edge] + (row - y0[edge]) * slope[edge]).astype(np.int64), 0, cols)
    k = np.repeat(slices, lengths)[edge]
    z0, r0, c0 = int(k.min()), int(row.min()), int(column.min())
    depth, height, width = int(k.max()) + 1 - z0, int(row.max()) + 1 - r0, int(column.max()) - c0
    if width <= 0:
        return None
    mask = np.zeros((depth, height, width), dtype=bool)
    order = np.argsort(k, kind="stable")
    k, row, column = k[order] - z0, row[order] - r0, column[order] - c0
    step = max(1, _BLOCK_VOXELS // (height * (width + 1)))
    bounds = np.searchsorted(k, np.arange(0, depth + step, step))
    for block, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if lo == hi:
            continue
        start = block * step
        n = min(step, depth - start)
        flat = ((k[lo:hi] - start) * height + row[lo:hi]) * (width + 1) + column[lo:hi]
        toggles = np.zeros(n * height * (width + 1), dtype=np.int32)
        at, times = np.unique(flat, return_counts=True)
        toggles[at[times % 2 == 1]] = 1  # two crossings at one centre cancel
        # parity of the crossings at or left of each centre; every row holds an even number of crossings (the
        # last column takes those right of the image), so one running sum over all rows is right
        np.cumsum(toggles, out=toggles)
        np.bitwise_and(toggles, 1, out=toggles)
        mask[start:start + n] = toggles.reshape(n, height, width + 1)[..., :width]
    return mask, (z0, r0, c0)


def _notes(name: str, tally: _Tally, step: float) -> list[str]:
    notes = []
    if tally.duplicates:
        notes.append(f"{name}: {tally.duplicates} contour(s) written twice, counted once")
    if tally.off_grid:
        z = sorted(tally.off_grid)
        notes.append(f"{name}: {len(z)} contour(s) at z {z[0]:.1f}..{z[-1]:.1f} mm lie on no slice of the series (left out)")
    if tally.between:
        notes.append(f"{name}: {tally.between} contour(s) lie between slices (over {BETWEEN_SLICES:g} of the "
                     f"{step:.2f} mm step off), put on the nearest")
    if tally.clipped:
        notes.append(f"{name}: {tally.clipped} contour(s) reach beyond the image, clipped at its edge")
    if tally.outside:
        notes.append(f"{name}: {tally.outside} contour(s) lie wholly outside the image (left out)")
    if tally.tiny:
        notes.append(f"{name}: {tally.tiny} contour(s) smaller than a voxel (may cover no voxel centre)")
    if tally.not_planar:
        notes.append(f"{name}: {tally.not_planar} contour(s) not planar or not parallel to the others (left out)")
    if tally.own_planes:
        notes.append(f"{name}: contours not parallel to the scan's slices (a tilted or oblique acquisition on another "
                     "grid): rasterised on their own planes, resampled (nearest) onto the scan")
    return notes


def read_rtstruct_labels(
    path: Path,
    geometry: Geometry,
    shape: tuple[int, int, int],
    series_uid: str | None = None,
    mapping: Mapping | dict | str | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Label volumes (uint8, (z, y, x), e.g. ``lung`` 1 right / 2 left, ``tumour``) of an RTSTRUCT on a scan's grid.

    ``series_uid``: the scan's SeriesInstanceUID (a structure set referencing another series is refused;
    None skips the check). ``mapping``: ROI names -> labels (see :mod:`lungseg.ingest.structure_map`;
    None: the defaults). Returns the labels and the notes for the case status.
    """
    path = Path(path)
    mapping = parse_mapping(mapping)
    found: dict[str, tuple[str, int]] = {}
    notes: list[str] = []

    def mapped(names: list[str]) -> set[str]:  # only the mapped ROIs' contours are parsed
        table, assign_notes = assign(names, mapping, path, "ROI")
        found.update(table)
        notes.extend(assign_notes)
        return set(table)

    rois = read_rtstruct(path, series_uid, mapped)
    structures = []
    for roi in rois:
        if roi.name not in found:
            continue
        label, value = found[roi.name]
        if roi.other_types:
            notes.append(f"{roi.name}: {roi.other_types} point, open or under-3-point contour(s) left out (not areas)")
        if not roi.contours:
            notes.append(f"{roi.name}: no closed contour (left out)")
            continue
        tally = _Tally()
        mask, offset = rasterise_roi(roi, geometry, shape, tally)
        roi_notes = _notes(roi.name, tally, geometry.spacing[2])
        notes += roi_notes
        if not mask.any():
            why = f" ({'; '.join(n.split(': ', 1)[1] for n in roi_notes)})" if roi_notes else ""
            raise IngestError(
                path,
                f"ROI {roi.name}: none of its {len(roi.contours)} contour(s) covers a voxel of the scan{why}",
                "give the RTSTRUCT drawn on this series",
            )
        structures.append(Structure(roi.name, label, value, mask, offset))
    if not structures:
        return {}, notes
    labels, overlap_notes = combine_structures(structures, shape, path, "ROI")
    return labels, notes + overlap_notes
