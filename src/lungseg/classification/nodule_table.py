"""The reference nodules of a case file, as table rows (one per nodule; row i <-> patch i).

Source, the first a case has (never several, which would list a nodule twice):

1. ``lidc``: ``/annotations/lidc_nodules`` (the readers' consensus, voxel = nodule number) with its JSON table
   (readers, their malignancy ratings); a nodule whose consensus holds no voxel is left out with a warning
2. ``luna16``: ``/annotations/luna16_nodules`` with its table (centre and diameter as LUNA16 states them)
3. ``label``: ``/labels/nodule``, split into 26-connected components numbered in z, y, x order (no ratings)

Centre: the mean position of the nodule's voxels in LPS mm (LUNA16: its stated centre). Diameter: the
equivalent-sphere diameter of those voxels, ``(6 V / pi)^(1/3)`` (LUNA16: its stated diameter). Volume: voxel
count x voxel volume (mm^3).

TSV columns: see :data:`COLUMNS`. ``readers`` and ``ratings`` are comma-separated and aligned (a reader who gave
no rating leaves an empty item: ``"4,,5"``); both ``""`` when unknown. ``median_rating`` is a float or ``""``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from lungseg.atomic import write_text_atomic
from lungseg.classification.labels import LabelProtocol, median_rating
from lungseg.geometry import Geometry

COLUMNS = (
    "case", "patient", "nodule", "centre_x_mm", "centre_y_mm", "centre_z_mm", "diameter_mm", "volume_mm3",
    "readers", "ratings", "median_rating", "label", "pathology", "at_edge", "source",
)
SOURCES = ("lidc", "luna16", "label")


@dataclass
class ReferenceNodule:
    """One reference nodule of a case, before its patch is cut."""

    nodule: int
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    source: str
    readers: list[int] = field(default_factory=list)
    ratings: list[int | None] = field(default_factory=list)


def _centres_and_counts(labels: np.ndarray, numbers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per number: mean (z, y, x) index of its voxels and their count (count 0: no voxel); several numbers are
    measured in their bounding boxes (``ndimage.find_objects``), not over the whole volume each."""
    numbers = [int(n) for n in numbers]
    centres, counts = np.zeros((len(numbers), 3)), np.zeros(len(numbers), dtype=int)
    if len(numbers) == 1:  # one nodule's slab: a plain scan is cheaper than find_objects
        voxels = np.nonzero(labels == numbers[0])
        counts[0] = len(voxels[0])
        centres[0] = [v.mean() if len(v) else 0.0 for v in voxels]
        return centres, counts
    boxes = ndimage.find_objects(labels, max_label=max(numbers, default=0)) if numbers else []
    for i, number in enumerate(numbers):
        box = boxes[number - 1] if 0 < number <= len(boxes) else None
        if box is None:
            continue
        voxels = np.nonzero(labels[box] == number)
        counts[i] = len(voxels[0])
        centres[i] = [v.mean() + b.start for v, b in zip(voxels, box)]
    return centres, counts


def _from_label_map(labels: np.ndarray, numbers: Sequence[int], geometry: Geometry) -> list[tuple[int, tuple, float, float]]:
    """(number, centre mm, equivalent-sphere diameter, volume) of each number that has voxels."""
    centres, counts = _centres_and_counts(labels, numbers)
    voxel_mm3 = float(np.prod(geometry.spacing))
    out = []
    for number, centre_zyx, count in zip(numbers, centres, counts):
        if count == 0:
            continue
        volume = count * voxel_mm3
        centre = tuple(float(v) for v in geometry.index_to_physical(centre_zyx[::-1]))
        out.append((int(number), centre, (6.0 * volume / math.pi) ** (1.0 / 3.0), volume))
    return out


def _bounded(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The slab of slices holding any labelled voxel, and its first slice (cheap centre-of-mass on big scans)."""
    any_z = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if not len(any_z):
        return labels[:0], 0
    return labels[any_z[0]:any_z[-1] + 1], int(any_z[0])


def reference_nodules(case: h5py.File, geometry: Geometry) -> list[ReferenceNodule]:
    """The reference nodules of an open case file (see the module docstring for the sources)."""
    annotations = case.get("annotations")
    if annotations is not None and "lidc_nodules" in annotations and "lidc_nodules" in annotations.attrs:
        return _lidc_nodules(annotations, geometry, case.filename, _on_source_grid(case))
    if annotations is not None and "luna16_nodules" in annotations and "luna16_nodules" in annotations.attrs:
        return _luna16_nodules(annotations)
    if "labels" in case and "nodule" in case["labels"]:
        return _label_nodules(case["labels/nodule"][()], geometry)
    return []


def _shifted(geometry: Geometry, first_slice: int) -> Geometry:
    origin = geometry.index_to_physical(np.array([0.0, 0.0, float(first_slice)]))
    return Geometry(geometry.spacing, tuple(float(v) for v in origin), geometry.direction)


def _on_source_grid(case: h5py.File) -> bool:
    """Whether the image is on the scan's own grid (no target-spacing resampling): LIDC slice numbers hold."""
    attrs = case.attrs
    if "source_shape" not in attrs:
        return True
    return tuple(int(v) for v in attrs["source_shape"]) == case["image"].shape and all(
        np.allclose(attrs[f"source_{k}"], attrs[k]) for k in ("spacing", "origin", "direction"))


def _lidc_nodules(annotations: h5py.Group, geometry: Geometry, filename: str, on_source_grid: bool) -> list[ReferenceNodule]:
    """LIDC consensus nodules; on the scan's own grid each is measured on the slices its table row names only
    (reading the whole lzf-compressed map costs more than everything else together on a 512 x 512 scan)."""
    table = json.loads(annotations.attrs["lidc_nodules"])
    dataset = annotations["lidc_nodules"]
    whole: tuple[np.ndarray, int] | None = None
    out = []
    for row in table:
        number = int(row["nodule"])
        if on_source_grid and len(row.get("slices") or []) == 2:
            first, last = max(int(row["slices"][0]), 0), min(int(row["slices"][1]), dataset.shape[0] - 1)
            slab = dataset[first:last + 1]
        else:
            whole = whole if whole is not None else _bounded(dataset[()])
            slab, first = whole
        measured = _from_label_map(slab, [number], _shifted(geometry, first))
        if not measured:
            print(f"lungseg nodule-patches: warning: {filename}: LIDC nodule {number} has no consensus voxel "
                  "(readers' outlines do not overlap enough); left out of the table", file=sys.stderr)
            continue
        _, centre, diameter, volume = measured[0]
        ratings = [None if r is None else int(r) for r in row.get("malignancy", [])]
        out.append(ReferenceNodule(number, centre, diameter, volume, "lidc", [int(r) for r in row.get("readers", [])], ratings))
    return out


def _luna16_nodules(annotations: h5py.Group) -> list[ReferenceNodule]:
    table = json.loads(annotations.attrs["luna16_nodules"])  # the stated centre and diameter are the reference
    out = []
    for row in table:
        diameter = float(row["diameter_mm"])
        volume = math.pi / 6.0 * diameter ** 3
        centre = tuple(float(v) for v in row["center_mm"])
        out.append(ReferenceNodule(int(row["nodule"]), centre, diameter, volume, "luna16"))
    return out


def _label_nodules(label: np.ndarray, geometry: Geometry) -> list[ReferenceNodule]:
    components, n = ndimage.label(label > 0, structure=np.ones((3, 3, 3), bool))
    return [ReferenceNodule(number, centre, diameter, volume, "label")
            for number, centre, diameter, volume in _from_label_map(components, range(1, n + 1), geometry)]


def table_row(
    case: str, patient: str, nodule: ReferenceNodule, protocol: LabelProtocol, pathology: str, at_edge: bool
) -> dict[str, str]:
    """One TSV row (strings) of a nodule."""
    median = median_rating(nodule.ratings)
    return {
        "case": case, "patient": patient, "nodule": str(nodule.nodule),
        **{f"centre_{axis}_mm": f"{v:.2f}" for axis, v in zip("xyz", nodule.centre_mm)},
        "diameter_mm": f"{nodule.diameter_mm:.2f}", "volume_mm3": f"{nodule.volume_mm3:.1f}",
        "readers": ",".join(str(r) for r in nodule.readers),
        "ratings": ",".join("" if r is None else str(r) for r in nodule.ratings) if any(
            r is not None for r in nodule.ratings) else "",
        "median_rating": "" if median is None else f"{median:g}",
        "label": protocol.label(median), "pathology": pathology,
        "at_edge": "true" if at_edge else "false", "source": nodule.source,
    }


def write_nodule_table(path: str | Path, rows: Iterable[dict[str, str]]) -> None:
    """Write rows as the nodule TSV (header always, even with no rows), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _ints(text: str) -> list[int | None]:
    return [int(v) if v.strip() else None for v in text.split(",")] if text.strip() else []


def read_nodule_table(path: str | Path) -> list[dict]:
    """Rows of a nodule TSV with typed values: nodule int, centre / diameter / volume float, readers list[int],
    ratings list[int | None], median_rating float | None, at_edge bool; the other columns strings."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a nodule table: column(s) {sorted(missing)} missing; run `lungseg nodule-patches`")
        rows = []
        for row in reader:
            rows.append({
                **row,
                "nodule": int(row["nodule"]),
                **{k: float(row[k]) for k in ("centre_x_mm", "centre_y_mm", "centre_z_mm", "diameter_mm", "volume_mm3")},
                "readers": [int(r) for r in _ints(row["readers"]) if r is not None],
                "ratings": _ints(row["ratings"]),
                "median_rating": float(row["median_rating"]) if row["median_rating"] else None,
                "at_edge": row["at_edge"] == "true",
            })
        return rows


def concatenate_tables(inputs: Iterable[str | Path], output: str | Path) -> int:
    """Concatenate per-case nodule TSVs (same columns) into ``output``; returns the number of rows."""
    rows = []
    for path in inputs:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise ValueError(f"{path} is not a nodule table (columns {reader.fieldnames}); run `lungseg nodule-patches`")
            rows.extend(reader)
    write_nodule_table(output, rows)
    return len(rows)


def configure(parser: argparse.ArgumentParser) -> None:
    """``lungseg nodule-table OUT.tsv CASE.nodules.tsv ...``"""
    parser.add_argument("output", type=Path, help="nodule table to write (results/nodules/nodules.tsv)")
    parser.add_argument("tables", type=Path, nargs="*", help="per-case nodule tables (<case>.nodules.tsv), in this order")


def run(args: argparse.Namespace) -> int:
    try:
        n = concatenate_tables(args.tables, args.output)
    except ValueError as exc:
        raise SystemExit(f"lungseg nodule-table: error: {exc}") from None
    print(f"{n} nodule(s) of {len(args.tables)} case(s) -> {args.output}")
    return 0
