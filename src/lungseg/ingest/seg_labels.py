"""DICOM Segmentation (DICOM-SEG) -> label volumes on a scan's grid, in physical space.

Read with pydicom: BINARY (1 bit, byte- or non-byte-aligned frames) and FRACTIONAL (a voxel is in
the segment when its value is at least half of ``MaximumFractionalValue``) segmentations. The SEG
must reference the scan's series (``ReferencedSeriesSequence``). Each frame is placed by its Plane
Position (``ImagePositionPatient``) and the Plane Orientation / Pixel Measures of the functional
groups: taken into the scan's continuous index space, it must be parallel to the scan's slices and is
matched to the nearest slice (within half the slice step), then sampled (nearest neighbour) onto
that slice's voxel centres, so a SEG on another pixel grid of the same frame of reference lands
right. A frame without a plane position is matched by the SOP instance it was derived from
(``DerivationImageSequence``) and must have the scan's rows and columns.

Segments become labels by ``SegmentLabel`` (then ``SegmentDescription``) through
:mod:`lungseg.ingest.structure_map`: segments mapped to one label value are united; segments mapped
to different values of one label must not overlap. Frames on no slice of the series, frames that fall
wholly outside the image and segments not mapped are reported in the notes; UIDs never are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy.ndimage import affine_transform

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.label_objects import check_referenced_series, open_label_object
from lungseg.ingest.structure_map import Mapping, Structure, assign, combine_structures, parse_mapping

#: a frame counts as parallel to the scan's slices when its corners are within this many slice steps of one plane
PLANE_TOLERANCE = 0.1


@dataclass
class SegFrame:
    segment: int
    pixels: np.ndarray  # bool (rows, cols)
    position: np.ndarray | None  # ImagePositionPatient (mm), None without a plane position
    orientation: np.ndarray | None  # ImageOrientationPatient (6)
    spacing: tuple[float, float] | None  # (between rows, between columns) mm
    source_uid: str  # SOP instance the frame was derived from ('' if none); never written


@dataclass
class SegObject:
    segments: dict[int, str]  # segment number -> name used for the mapping
    frames: list[SegFrame]
    fractional: bool


def _group(frame_groups: pydicom.Dataset | None, shared: pydicom.Dataset | None, sequence: str) -> pydicom.Dataset | None:
    for groups in (frame_groups, shared):
        if groups is not None and sequence in groups and len(groups[sequence].value):
            return groups[sequence].value[0]
    return None


def _source_uid(frame_groups: pydicom.Dataset | None) -> str:
    for derivation in (frame_groups or pydicom.Dataset()).get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            if source.get("ReferencedSOPInstanceUID"):
                return str(source.ReferencedSOPInstanceUID)
    return ""


def read_seg(path: Path, series_uid: str | None = None) -> SegObject:
    """Segments and frames of a DICOM-SEG file; refuses one that references another series than ``series_uid``."""
    path = Path(path)
    ds, obj = open_label_object(path, "seg")
    check_referenced_series(obj, series_uid)
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    if kind not in ("BINARY", "FRACTIONAL"):
        raise IngestError(path, f"has SegmentationType {kind}", "give a BINARY or FRACTIONAL segmentation")
    segments = {
        int(s.SegmentNumber): str(s.get("SegmentLabel") or s.get("SegmentDescription") or f"segment {s.SegmentNumber}")
        for s in ds.get("SegmentSequence", [])
    }
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for broken pixel data
        raise IngestError(path, f"has unreadable pixel data ({type(exc).__name__})", "re-export the segmentation") from exc
    n_frames = int(ds.get("NumberOfFrames", 1))
    pixels = pixels.reshape(n_frames, int(ds.Rows), int(ds.Columns))
    if kind == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255))
        pixels = pixels >= maximum / 2
    else:
        pixels = pixels > 0
    shared = ds["SharedFunctionalGroupsSequence"].value[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    frames = []
    for i in range(n_frames):
        groups = per_frame[i] if i < len(per_frame) else None
        identification = _group(groups, shared, "SegmentIdentificationSequence")
        segment = int(identification.ReferencedSegmentNumber) if identification is not None else 1
        position = _group(groups, shared, "PlanePositionSequence")
        orientation = _group(groups, shared, "PlaneOrientationSequence")
        measures = _group(groups, shared, "PixelMeasuresSequence")
        placed = position is not None and orientation is not None and measures is not None
        frames.append(
            SegFrame(
                segment=segment,
                pixels=pixels[i],
                position=np.asarray(position.ImagePositionPatient, dtype=float) if placed else None,
                orientation=np.asarray(orientation.ImageOrientationPatient, dtype=float) if placed else None,
                spacing=tuple(float(v) for v in measures.PixelSpacing) if placed else None,
                source_uid=_source_uid(groups),
            )
        )
    return SegObject(segments, frames, kind == "FRACTIONAL")


def _index_affine(frame: SegFrame, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(3x2 matrix, 3 offset) taking frame (column, row) indices to the scan's continuous (x, y, z) indices."""
    steps = np.c_[frame.orientation[:3] * frame.spacing[1], frame.orientation[3:] * frame.spacing[0]]  # mm per column, row
    to_index = np.linalg.inv(geometry.direction_matrix * np.asarray(geometry.spacing))
    return to_index @ steps, to_index @ (frame.position - np.asarray(geometry.origin))


def _place(frame: SegFrame, geometry: Geometry, shape: tuple[int, int, int], uid_to_slice: dict[str, int],
           tally: Counter) -> tuple[int, np.ndarray] | None:
    """(slice index, bool plane on the scan's rows x columns) of one frame, or None (counted in ``tally``)."""
    n_slices, rows, cols = shape
    if frame.position is None:
        k = uid_to_slice.get(frame.source_uid)
        if k is None:
            tally["unplaced"] += 1
            return None
        if frame.pixels.shape != (rows, cols):
            tally["unplaced"] += 1
            return None
        return k, frame.pixels
    matrix, offset = _index_affine(frame, geometry)
    f_rows, f_cols = frame.pixels.shape
    corners = np.array([[0, 0], [f_cols - 1, 0], [0, f_rows - 1], [f_cols - 1, f_rows - 1]], dtype=float)
    z = (corners @ matrix.T + offset)[:, 2]
    if np.ptp(z) > 2 * PLANE_TOLERANCE:
        tally["oblique"] += 1
        return None
    k = int(np.rint(z.mean()))
    if not 0 <= k < n_slices:
        tally["off_grid"] += 1
        return None
    # scan (row=y, col=x) -> frame (row, col): invert the in-plane 2x2 affine, axes swapped to (row, col) order
    in_plane = np.linalg.inv(matrix[:2])  # (x, y) -> (column, row)
    swap = np.array([[0, 1], [1, 0]])
    sample = swap @ in_plane @ swap
    start = swap @ (-in_plane @ offset[:2])
    plane = affine_transform(frame.pixels.astype(np.uint8), sample, offset=start, output_shape=(rows, cols), order=0,
                             mode="constant", cval=0).astype(bool)
    if frame.pixels.any() and not plane.any():
        tally["outside"] += 1
    return k, plane


def read_seg_labels(
    path: Path,
    geometry: Geometry,
    shape: tuple[int, int, int],
    series_uid: str | None = None,
    mapping: Mapping | dict | str | None = None,
    uid_to_slice: dict[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Label volumes (uint8, (z, y, x)) of a DICOM-SEG on a scan's grid, and the notes for the case status.

    ``series_uid``: the scan's SeriesInstanceUID (None skips the reference check); ``mapping``: segment
    names -> labels (None: the defaults of :mod:`lungseg.ingest.structure_map`); ``uid_to_slice``: the
    scan's SOPInstanceUIDs -> slice index, for frames without a plane position.
    """
    path = Path(path)
    seg = read_seg(path, series_uid)
    names = list(seg.segments.values())
    assigned, notes = assign(names, parse_mapping(mapping), path, "segment")
    if seg.fractional:
        notes.append("FRACTIONAL segmentation: voxels at or above half the maximum fractional value kept")
    structures = []
    for number, name in seg.segments.items():
        if name not in assigned:
            continue
        label, value = assigned[name]
        tally: Counter = Counter()
        mask = np.zeros(shape, dtype=bool)
        frames = [f for f in seg.frames if f.segment == number]
        for frame in frames:
            placed = _place(frame, geometry, shape, uid_to_slice or {}, tally)
            if placed is not None:
                mask[placed[0]] |= placed[1]
        frame_notes = _notes(name, tally)
        notes += frame_notes
        if not mask.any():
            if any(f.pixels.any() for f in frames):
                why = f" ({'; '.join(n.split(': ', 1)[1] for n in frame_notes)})" if frame_notes else ""
                raise IngestError(path, f"segment {name}: none of its voxels falls inside the scan{why}",
                                  "give the DICOM-SEG drawn on this series")
            notes.append(f"segment {name}: empty")
        structures.append(Structure.cropped(name, label, value, mask))
    if not structures:
        return {}, notes
    labels, overlap_notes = combine_structures(structures, shape, path, "segment")
    return labels, notes + overlap_notes


def _notes(name: str, tally: Counter) -> list[str]:
    texts = {
        "off_grid": "lie on no slice of the series (left out)",
        "outside": "fall wholly outside the image (left out)",
        "oblique": "are not parallel to the scan's slices (left out)",
        "unplaced": "have no plane position and no source slice of this series with its size (left out)",
    }
    return [f"segment {name}: {tally[key]} frame(s) {text}" for key, text in texts.items() if tally[key]]
