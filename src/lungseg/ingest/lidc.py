"""LIDC-IDRI reader XML -> per-reader nodule masks, a consensus mask, small-nodule points, malignancy.

Reading (``LidcReadMessage``, namespace optional): each ``readingSession`` is one reader (numbered
1, 2, ... in file order; radiologist IDs are not kept). Per reader:

- ``unblindedReadNodule`` with contours (nodules >= 3 mm): each ``roi`` is matched to a slice by
  ``imageSOP_UID``, falling back to ``imageZposition`` (within a quarter slice step) when the UID is
  not in the series (re-anonymised copies); ROIs on slices that are not in the series are dropped.
  The ``edgeMap`` outline (x = column, y = row) is rasterised with LIDC's inclusion semantics as
  pylidc does: pixels strictly inside the outline, the outline pixels themselves excluded;
  ``inclusion=FALSE`` ROIs cut holes. ``characteristics/malignancy`` (1-5) is kept per reader.
- nodules whose ROIs are all single points (< 3 mm) and ``nonNodule`` loci are reported as points.

Nodules: the readers' marks are grouped into physical nodules as pylidc's ``cluster_annotations``
does (connected components of marks whose outlines come within one slice step, tightened until no
nodule holds two marks of one reader). Consensus: a voxel belongs to a nodule when at least
``agreement`` (default 0.5) of the marks of that nodule include it (pylidc's ``consensus``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist
from skimage.draw import polygon

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

DEFAULT_AGREEMENT = 0.5
MAX_READERS = 8  # per-reader masks are stored as bits of one uint8 volume
Z_MATCH_FRACTION = 0.25  # imageZposition fallback: within this fraction of the slice step


@dataclass
class Roi:
    z: float
    sop_uid: str
    inclusion: bool
    xy: np.ndarray  # (n, 2) integer (x = column, y = row)


@dataclass
class Mark:
    reader: int  # 1-based
    kind: str  # "nodule" (outlined), "small" (< 3 mm point), "non-nodule" (point)
    rois: list[Roi]
    malignancy: int | None = None


@dataclass
class SliceMap:
    """How ROIs find slices of the ingested grid."""

    uid_to_slice: dict[str, int]  # SOPInstanceUID -> slice index on the grid
    z_values: np.ndarray  # world z (mm) of each grid slice
    step: float  # slice step (mm)

    def index(self, roi: Roi) -> int | None:
        if roi.sop_uid in self.uid_to_slice:
            return self.uid_to_slice[roi.sop_uid]
        if len(self.z_values) == 0:
            return None
        k = int(np.argmin(np.abs(self.z_values - roi.z)))
        return k if abs(self.z_values[k] - roi.z) <= Z_MATCH_FRACTION * max(self.step, 1e-3) else None


@dataclass
class LidcResult:
    readers: np.ndarray  # uint8 (z, y, x): bit r set where reader r+1 outlined a nodule
    nodules: np.ndarray  # uint8 (z, y, x): consensus voxels labelled with their nodule number (1..N)
    nodule_table: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def consensus(self) -> np.ndarray:
        return (self.nodules > 0).astype(np.uint8)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element | None, default: str = "") -> str:
    return (el.text or default).strip() if el is not None else default


def _xy(el: ET.Element, tag: str) -> np.ndarray:
    pts = [
        (int(float(_text(_child(e, "xCoord"), "nan"))), int(float(_text(_child(e, "yCoord"), "nan"))))
        for e in _children(el, tag)
    ]
    return np.asarray(pts, dtype=int).reshape(-1, 2)


def _roi(el: ET.Element) -> Roi:
    return Roi(
        z=float(_text(_child(el, "imageZposition"), "nan")),
        sop_uid=_text(_child(el, "imageSOP_UID")),
        inclusion=_text(_child(el, "inclusion"), "TRUE").upper() != "FALSE",
        xy=_xy(el, "edgeMap"),
    )


def parse_lidc_xml(path: Path) -> list[list[Mark]]:
    """The marks of each reader (list per reader, in file order)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise IngestError(
            path, f"is not well-formed XML ({exc})", "re-download the LIDC-IDRI XML of this series"
        ) from exc
    except OSError as exc:
        raise IngestError(path, f"cannot be read ({exc.strerror})", "check the annotation path") from exc
    sessions = [el for el in root.iter() if _local(el.tag) == "readingSession"]
    if _local(root.tag) != "LidcReadMessage" or not sessions:
        raise IngestError(
            path,
            "is not an LIDC-IDRI read message (no LidcReadMessage/readingSession)",
            "give the LIDC-IDRI reader XML of this series",
        )
    if len(sessions) > MAX_READERS:
        raise IngestError(
            path,
            f"has {len(sessions)} reading sessions (at most {MAX_READERS} supported)",
            "split the reads into several XML files",
        )
    readers: list[list[Mark]] = []
    try:
        for number, session in enumerate(sessions, start=1):
            marks = []
            for nodule in _children(session, "unblindedReadNodule"):
                rois = [_roi(r) for r in _children(nodule, "roi")]
                characteristics = _child(nodule, "characteristics")
                malignancy = _text(_child(characteristics, "malignancy")) if characteristics is not None else ""
                small = all(len(r.xy) <= 1 for r in rois)
                marks.append(
                    Mark(
                        number, "small" if small else "nodule", rois, int(malignancy) if malignancy.isdigit() else None
                    )
                )
            for non in _children(session, "nonNodule"):
                roi = Roi(
                    z=float(_text(_child(non, "imageZposition"), "nan")),
                    sop_uid=_text(_child(non, "imageSOP_UID")),
                    inclusion=True,
                    xy=_xy(non, "locus"),
                )
                marks.append(Mark(number, "non-nodule", [roi]))
            readers.append(marks)
    except ValueError as exc:
        raise IngestError(
            path, f"has a malformed value ({exc})", "re-download the LIDC-IDRI XML of this series"
        ) from exc
    return readers


def _roi_mask(roi: Roi, shape: tuple[int, int]) -> np.ndarray:
    """Pixels strictly inside the outline (outline pixels excluded, as pylidc and the LIDC convention)."""
    mask = np.zeros(shape, dtype=bool)
    if len(roi.xy) >= 3:
        rr, cc = polygon(roi.xy[:, 1], roi.xy[:, 0], shape)
        mask[rr, cc] = True
    inside = (roi.xy[:, 1] >= 0) & (roi.xy[:, 1] < shape[0]) & (roi.xy[:, 0] >= 0) & (roi.xy[:, 0] < shape[1])
    mask[roi.xy[inside, 1], roi.xy[inside, 0]] = False
    return mask


def _mark_masks(mark: Mark, slices: SliceMap, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Slice index -> 2-D mask of one outlined nodule (inclusion ROIs first, then exclusions)."""
    masks: dict[int, np.ndarray] = {}
    for roi in sorted(mark.rois, key=lambda r: not r.inclusion):
        k = slices.index(roi)
        if k is None:
            continue
        current = masks.setdefault(k, np.zeros(shape, dtype=bool))
        region = _roi_mask(roi, shape)
        if roi.inclusion:
            current |= region
        else:
            current &= ~region
            current[roi.xy[:, 1].clip(0, shape[0] - 1), roi.xy[:, 0].clip(0, shape[1] - 1)] = False
    return masks


def _outline_points_mm(mark: Mark, slices: SliceMap, geometry: Geometry) -> np.ndarray:
    pts = [np.c_[roi.xy, np.full(len(roi.xy), k)] for roi in mark.rois if (k := slices.index(roi)) is not None]
    return geometry.index_to_physical(np.vstack(pts).astype(float)) if pts else np.zeros((0, 3))


def cluster_marks(
    marks: list[Mark], points_mm: list[np.ndarray], tol: float, factor: float = 0.9, min_tol: float = 0.1
) -> list[list[int]]:
    """Group marks of different readers that outline the same nodule (pylidc's 'min' distance clustering)."""
    n = len(marks)
    if n == 0:
        return []
    distance = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            distance[i, j] = distance[j, i] = cdist(points_mm[i], points_mm[j]).min()
    while True:
        _, labels = connected_components(distance <= tol, directed=False)
        groups = [list(np.flatnonzero(labels == g)) for g in np.unique(labels)]
        clash = any(len({marks[i].reader for i in g}) < len(g) for g in groups)
        if not clash or tol * factor < min_tol:
            return groups
        tol *= factor


def rasterise_lidc(
    path: Path, geometry: Geometry, shape: tuple[int, int, int], slices: SliceMap, agreement: float = DEFAULT_AGREEMENT
) -> LidcResult:
    """Per-reader and consensus nodule masks of an LIDC XML on the (z, y, x) grid (see module docstring)."""
    if not 0.0 < agreement <= 1.0:
        raise ValueError(f"agreement must be in (0, 1], got {agreement}")
    readers = parse_lidc_xml(path)
    plane = shape[1:]
    marks = [m for reader in readers for m in reader]
    n_rois = sum(len(m.rois) for m in marks)
    outlined, masks, outline_mm, dropped = [], [], [], 0
    for mark in (m for m in marks if m.kind == "nodule"):
        mark_masks = _mark_masks(mark, slices, plane)
        if not mark_masks:
            dropped += 1
            continue
        outlined.append(mark)
        masks.append(mark_masks)
        outline_mm.append(_outline_points_mm(mark, slices, geometry))
    points = []
    for mark in (m for m in marks if m.kind != "nodule"):
        for roi in mark.rois:
            k = slices.index(roi)
            if k is None or not len(roi.xy):
                continue
            col, row = (int(v) for v in roi.xy.mean(axis=0).round())
            position = geometry.index_to_physical(np.array([[col, row, k]], dtype=float))[0]
            points.append(
                {
                    "reader": mark.reader,
                    "kind": mark.kind,
                    "slice": k,
                    "row": row,
                    "col": col,
                    "position_mm": [round(float(v), 2) for v in position],
                }
            )
    if n_rois and not outlined and not points:
        raise IngestError(
            path,
            f"has {n_rois} ROI(s), but none falls on a slice of this series "
            "(no imageSOP_UID or imageZposition matches)",
            "give the LIDC XML of this very series",
        )

    reader_bits = np.zeros(shape, dtype=np.uint8)
    nodules = np.zeros(shape, dtype=np.uint8)
    groups = cluster_marks(outlined, outline_mm, tol=slices.step or geometry.spacing[2])
    # number nodules by mean outline z, as pylidc sorts its clusters
    groups.sort(key=lambda g: float(np.mean([outline_mm[i][:, 2].mean() for i in g])))
    table = []
    for number, group in enumerate(groups, start=1):
        group_slices = sorted({k for i in group for k in masks[i]})
        voxels = 0
        for k in group_slices:
            stack = np.stack([masks[i].get(k, np.zeros(plane, dtype=bool)) for i in group])
            for i, layer in zip(group, stack):
                reader_bits[k][layer] |= np.uint8(1 << (outlined[i].reader - 1))
            consensus = stack.mean(axis=0) >= agreement
            nodules[k][consensus & (nodules[k] == 0)] = number
            voxels += int(consensus.sum())
        ratings = [outlined[i].malignancy for i in group]
        known = [r for r in ratings if r is not None]
        table.append(
            {
                "nodule": number,
                "readers": [outlined[i].reader for i in group],
                "malignancy": ratings,
                "malignancy_median": float(np.median(known)) if known else None,
                "slices": [group_slices[0], group_slices[-1]],
                "consensus_voxels": voxels,
                "outlines_complete": all(slices.index(r) is not None for i in group for r in outlined[i].rois),
            }
        )
    notes = []
    if dropped:
        notes.append(f"LIDC: {dropped} outlined nodule mark(s) lie on slices not in this series")
    return LidcResult(reader_bits, nodules, table, points, notes)


def lidc_attrs(result: LidcResult) -> dict[str, str]:
    """JSON attributes stored on ``/annotations`` of the case file."""
    return {"lidc_nodules": json.dumps(result.nodule_table), "lidc_points": json.dumps(result.points)}
