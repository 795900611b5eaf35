"""`lungseg diagnosis-evaluate`: detections matched to reference nodules within their radius, nearest first, each
once; detection counts, false positives per case and the malignancy AUC on the hits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lungseg.classification.diagnosis_evaluation import evaluate, match_case
from lungseg.classification.nodule_table import COLUMNS as TABLE_COLUMNS
from lungseg.cli import main


def reference(case: str, patient: str, rows: list[tuple[float, float, float, float, str]]) -> list[dict]:
    """Nodule-table rows: (x, y, z, diameter, label)."""
    out = []
    for k, (x, y, z, d, label) in enumerate(rows, start=1):
        row = dict.fromkeys(TABLE_COLUMNS, "")
        row.update(case=case, patient=patient, nodule=k, centre_x_mm=x, centre_y_mm=y, centre_z_mm=z, diameter_mm=d,
                   volume_mm3=1.0, readers="1", ratings="4", median_rating=4, label=label, at_edge="false", source="lidc")
        out.append(row)
    return out


def detections(rows: list[tuple[float, float, float, float, float]]) -> list[dict[str, str]]:
    """Diagnosis rows: (x, y, z, diameter, p_malignant)."""
    return [{"study": "s", "nodule": str(k), "centre_x_mm": str(x), "centre_y_mm": str(y), "centre_z_mm": str(z),
             "diameter_mm": str(d), "p_malignant": str(p)} for k, (x, y, z, d, p) in enumerate(rows, start=1)]


def write_tsv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(TABLE_COLUMNS), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_hits_lie_within_the_radius_nearest_first_and_once():
    ref = reference("c1", "p1", [(0, 0, 0, 10, "malignant"), (30, 0, 0, 4, "benign")])
    det = detections([(4, 0, 0, 9, 0.9), (1, 0, 0, 9, 0.8), (32.5, 0, 0, 4, 0.1), (60, 0, 0, 5, 0.5)])
    # both of the first two detections are within 5 mm of nodule 1: the nearer one (index 1) wins; (32.5): 2.5 > 2 mm
    assert match_case(ref, det) == [(0, 1, 1.0)]


def test_summary_and_the_cli(tmp_path: Path):
    cases = [("c1", "p1", [(0, 0, 0, 10, "malignant"), (30, 0, 0, 8, "benign")], [(1, 0, 0, 9, 0.9), (31, 0, 0, 7, 0.2)]),
             ("c2", "p2", [(0, 0, 0, 12, "benign"), (50, 50, 0, 6, "indeterminate")],
              [(0, 1, 0, 12, 0.3), (50, 50, 1, 6, 0.5), (90, 0, 0, 5, 0.7)])]
    diagnoses, tables = [], []
    for case, patient, ref, det in cases:
        tables.append(write_tsv(tmp_path / f"{case}.nodules.tsv", reference(case, patient, ref)))
        diagnoses.append(write_tsv(tmp_path / f"{case}.diagnosis.tsv", detections(det)))
    summary, matches = evaluate(diagnoses, tables, samples=50)
    assert (summary["reference_nodules"], summary["detected_nodules"], summary["hits"]) == (4, 5, 4)
    assert summary["sensitivity"] == 1.0 and summary["false_positives_per_case"] == 0.5
    assert summary["matched_with_label"] == 3  # the indeterminate hit has no label for the AUC
    assert summary["classification"]["auc"] == 1.0  # malignant 0.9 above benign 0.2 and 0.3
    assert [m["label"] for m in matches] == ["malignant", "benign", "benign", "indeterminate"]
    out, match_file = tmp_path / "evaluation.json", tmp_path / "matches.tsv"
    argv = ["diagnosis-evaluate", "--diagnoses", *map(str, diagnoses), "--tables", *map(str, tables), "--out", str(out),
            "--matches", str(match_file), "--samples", "50"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["hits"] == 4
    assert len(match_file.read_text().splitlines()) == 5


def test_one_class_among_the_hits_leaves_the_auc_undefined(tmp_path: Path):
    table = write_tsv(tmp_path / "c.nodules.tsv", reference("c", "p", [(0, 0, 0, 10, "malignant")]))
    diagnosis = write_tsv(tmp_path / "d.tsv", detections([(0, 0, 0, 10, 0.9)]))
    summary, _ = evaluate([diagnosis], [table], samples=10)
    assert summary["classification"] is None and "one class" in summary["note"]
