"""LUNA16 ``annotations.csv`` (seriesuid, coordX, coordY, coordZ, diameter_mm) -> spherical nodule masks.

Rows are matched to the scan by series UID: the DICOM SeriesInstanceUID, or for a ``.mhd``/``.raw``
volume its file name stem (LUNA16 names volumes by series UID). Centres are world (LPS, mm)
coordinates; every voxel whose centre lies within ``diameter_mm / 2`` of a centre is nodule. A scan
without rows is a valid negative case (empty mask, with a note). A centre outside the scan is
refused (wrong scan or wrong coordinate convention).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def _rows(path: Path) -> list[dict[str, str]]:
    """Every row of a LUNA16 annotations.csv, its columns checked."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise IngestError(
                    path,
                    f"lacks column(s) {sorted(missing)} of a LUNA16 annotations.csv",
                    "give LUNA16's annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm)",
                )
            return list(reader)
    except OSError as exc:
        raise IngestError(path, f"cannot be read ({exc.strerror})", "check the annotation path") from exc


def annotated_series(path: Path) -> set[str]:
    """The series UIDs that have at least one row (discovery attaches the file to those series)."""
    return {row["seriesuid"].strip() for row in _rows(Path(path))} - {""}


def read_annotations(path: Path, series_uid: str) -> list[tuple[np.ndarray, float]]:
    """(centre xyz mm, diameter mm) of every row of ``series_uid``."""
    path = Path(path)
    rows = [row for row in _rows(path) if row["seriesuid"].strip() == series_uid]
    out = []
    for row in rows:
        try:
            centre = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
            diameter = float(row["diameter_mm"])
        except ValueError as exc:
            raise IngestError(
                path,
                f"has a non-numeric coordinate or diameter in a row of this series ({exc})",
                "fix the row (numbers in mm)",
            ) from exc
        if not diameter > 0:
            raise IngestError(path, f"has a nodule of diameter {diameter} mm", "diameters must be positive (mm)")
        out.append((centre, diameter))
    return out


def sphere_masks(
    nodules: list[tuple[np.ndarray, float]], geometry: Geometry, shape: tuple[int, int, int], path: Path
) -> tuple[np.ndarray, list[dict]]:
    """uint8 (z, y, x) volume labelling each nodule's voxels with its number (1..N), and a table."""
    labels = np.zeros(shape, dtype=np.uint8)
    inverse = np.linalg.inv(geometry.direction_matrix * np.asarray(geometry.spacing))  # physical offset -> index
    table = []
    for number, (centre, diameter) in enumerate(nodules, start=1):
        index = inverse @ (centre - np.asarray(geometry.origin))  # continuous (x, y, z)
        if np.any(index < -0.5) or np.any(index > np.asarray(shape[::-1]) - 0.5):
            raise IngestError(
                path,
                f"places nodule {number} at ({', '.join(f'{v:.1f}' for v in centre)}) mm, outside this scan",
                "check that the annotations belong to this scan (world mm, LPS)",
            )
        radius = diameter / 2.0
        half = np.ceil(radius / np.asarray(geometry.spacing)).astype(int) + 1
        lo = np.maximum(np.floor(index).astype(int) - half, 0)
        hi = np.minimum(np.ceil(index).astype(int) + half, np.asarray(shape[::-1]) - 1)
        grid = np.stack(np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi)), indexing="ij"), axis=-1)
        distance = np.linalg.norm(geometry.index_to_physical(grid.reshape(-1, 3)) - centre, axis=1)
        inside = grid.reshape(-1, 3)[distance <= radius]
        labels[inside[:, 2], inside[:, 1], inside[:, 0]] = number
        table.append(
            {
                "nodule": number,
                "center_mm": [round(float(v), 2) for v in centre],
                "diameter_mm": diameter,
                "voxels": int(len(inside)),
            }
        )
    return labels, table


def luna16_labels(
    path: Path, series_uid: str, geometry: Geometry, shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[dict], list[str]]:
    """Nodule-numbered mask, nodule table and notes for the scan with ``series_uid``."""
    nodules = read_annotations(path, series_uid)
    labels, table = sphere_masks(nodules, geometry, shape, Path(path))
    notes = [] if nodules else ["LUNA16: no annotated nodule for this series (negative case)"]
    return labels, table, notes


def luna16_attrs(table: list[dict]) -> dict[str, str]:
    return {"luna16_nodules": json.dumps(table)}
