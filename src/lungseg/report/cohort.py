"""Cohort table: one row per case (split, grid, spacing, reference label sizes), from the case files only.

Reads attributes and labels, never the image, and shows only pseudonymous case IDs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from lungseg.casefile import open_case
from lungseg.report import html

_FULL = np.ones((3, 3, 3), dtype=bool)


def read_splits(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["case_id"]: row["split"] for row in csv.DictReader(f, delimiter="\t")}


def case_row(path: Path) -> dict[str, object]:
    """Facts about one case file: grid, spacing, field of view, label volumes (mL) and nodule count."""
    with open_case(path) as f:
        z, y, x = f["image"].shape
        spacing = np.asarray(f.attrs["spacing"], dtype=float)
        row: dict[str, object] = {
            "case": str(f.attrs["case_id"]),
            "source": str(f.attrs.get("source_kind", "")),
            "slices": int(z),
            "matrix": f"{y}×{x}",
            "pixel_mm": float(spacing[0]),
            "slice_mm": float(spacing[2]),
            "extent_z_mm": float(spacing[2] * z),
        }
        voxel_ml = float(np.prod(spacing)) / 1000.0
        for name, ds in sorted(f["labels"].items()):
            mask = ds[()] > 0
            row[f"{name}_ml"] = float(mask.sum() * voxel_ml)
            if name == "nodule":
                row["nodules"] = int(ndimage.label(mask, structure=_FULL)[1])
    return row


def cohort_html(case_paths: list[Path], split_path: Path) -> str:
    splits = read_splits(split_path)
    rows = [case_row(p) for p in case_paths]
    for row in rows:
        row["split"] = splits.get(str(row["case"]), "–")
    keys = ["case", "split", "source", "slices", "matrix", "pixel_mm", "slice_mm", "extent_z_mm"]
    keys += sorted({k for r in rows for k in r} - set(keys))
    headers = [k.replace("_mm", " (mm)").replace("_ml", " (mL)").replace("_", " ") for k in keys]
    per_split = {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "val", "test")}
    summary = [[s, n] for s, n in per_split.items()] + [["total", len(rows)]]
    spacing = np.asarray([[r["pixel_mm"], r["slice_mm"]] for r in rows], dtype=float)
    note = (f"{len(rows)} cases; pixel spacing {spacing[:, 0].min():.3f}-{spacing[:, 0].max():.3f} mm, "
            f"slice spacing {spacing[:, 1].min():.2f}-{spacing[:, 1].max():.2f} mm." if rows else "No cases.")
    return html.page(
        "Cohort",
        html.paragraph(note),
        html.table(["split", "cases"], summary, caption="Cases per split (by patient)"),
        html.table(headers, [[r.get(k) for k in keys] for r in sorted(rows, key=lambda r: str(r["case"]))],
                   caption="Cases"),
    )
