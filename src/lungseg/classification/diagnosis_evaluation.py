"""``lungseg diagnosis-evaluate``: the test cases' diagnoses (``lungseg diagnose``) against their reference nodules.

Per case, each reference nodule of the nodule table (``lungseg nodule-patches``) is matched to the nearest
detected nodule whose centre lies within the reference nodule's radius (LUNA16's hit criterion; each detection
and each reference nodule is matched once, nearest pairs first). Reported (JSON): reference nodules, detections,
hits, detection sensitivity, false positives per case, and, on the matched nodules whose reference label is
benign or malignant, the classification metrics of the detection's ``p_malignant`` against that label
(:func:`lungseg.evaluation.classification.classification_summary`, AUC CI by a patient-level bootstrap), with
the detected diameter against the reference diameter (mean absolute difference). Per-nodule matches go to an
optional TSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.classification.nodule_table import read_nodule_table
from lungseg.ingest.errors import IngestError

CENTRE = ("centre_x_mm", "centre_y_mm", "centre_z_mm")
MATCH_COLUMNS = ("case", "patient", "reference_nodule", "detected_nodule", "distance_mm", "reference_diameter_mm",
                 "detected_diameter_mm", "label", "p_malignant")


def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except OSError as exc:
        raise IngestError(path, f"cannot be read ({exc.strerror or exc})", "pass the nodules.tsv of `lungseg diagnose`") from None


def match_case(reference: Sequence[dict[str, Any]], detected: Sequence[dict[str, str]]) -> list[tuple[int, int, float]]:
    """(reference index, detection index, distance mm) of the hits: nearest pairs first, a detection within the
    reference nodule's radius, each side matched once."""
    pairs = []
    for i, ref in enumerate(reference):
        centre = np.array([float(ref[k]) for k in CENTRE])
        radius = float(ref["diameter_mm"]) / 2.0
        for j, det in enumerate(detected):
            distance = float(np.linalg.norm(centre - np.array([float(det[k]) for k in CENTRE])))
            if distance <= radius:
                pairs.append((distance, i, j))
    used_ref: set[int] = set()
    used_det: set[int] = set()
    hits = []
    for distance, i, j in sorted(pairs):
        if i not in used_ref and j not in used_det:
            used_ref.add(i)
            used_det.add(j)
            hits.append((i, j, distance))
    return hits


def evaluate(diagnoses: Sequence[str | Path], tables: Sequence[str | Path], threshold: float = 0.5,
             samples: int = 2000, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The summary and the per-match rows of the cases (``diagnoses[i]`` and ``tables[i]`` are one case's)."""
    from lungseg.evaluation.classification import classification_summary, json_ready

    if len(diagnoses) != len(tables):
        raise ValueError(f"{len(diagnoses)} diagnoses but {len(tables)} nodule tables; give one of each per case")
    n_ref = n_det = n_hit = 0
    matches: list[dict[str, str]] = []
    y, p, clusters, size_error = [], [], [], []
    for diagnosis, table in zip(diagnoses, tables):
        reference = read_nodule_table(table)
        detected = _read_tsv(Path(diagnosis))
        if detected and "p_malignant" not in detected[0]:
            raise IngestError(diagnosis, "has no p_malignant column (a pathology-only classifier)",
                              "diagnose with a classifier of the readers' malignancy (cls_task image or both)")
        hits = match_case(reference, detected)
        n_ref, n_det, n_hit = n_ref + len(reference), n_det + len(detected), n_hit + len(hits)
        for i, j, distance in hits:
            ref, det = reference[i], detected[j]
            size_error.append(abs(float(det["diameter_mm"]) - float(ref["diameter_mm"])))
            matches.append({"case": str(ref["case"]), "patient": str(ref["patient"]), "reference_nodule": str(ref["nodule"]),
                            "detected_nodule": det["nodule"], "distance_mm": f"{distance:.2f}",
                            "reference_diameter_mm": f"{float(ref['diameter_mm']):.2f}",
                            "detected_diameter_mm": f"{float(det['diameter_mm']):.2f}", "label": str(ref["label"]),
                            "p_malignant": det["p_malignant"]})
            if ref["label"] in ("benign", "malignant"):
                y.append(int(ref["label"] == "malignant"))
                p.append(float(det["p_malignant"]))
                clusters.append(str(ref["patient"]))
    cases = len(diagnoses)
    summary: dict[str, Any] = {
        "cases": cases, "reference_nodules": n_ref, "detected_nodules": n_det, "hits": n_hit,
        "sensitivity": n_hit / n_ref if n_ref else None,
        "false_positives_per_case": (n_det - n_hit) / cases if cases else None,
        "diameter_mean_abs_difference_mm": float(np.mean(size_error)) if size_error else None,
        "matched_with_label": len(y), "hit_criterion": "detected centre within the reference nodule's radius",
    }
    if len(set(y)) == 2:
        summary["classification"] = classification_summary(y, p, threshold, samples=samples, seed=seed, clusters=clusters)
    else:
        summary["classification"] = None
        summary["note"] = (f"AUC undefined: the matched nodules with a benign or malignant label hold "
                           f"{'no' if not y else 'one'} class{'es' if not y else ''}")
    return json_ready(summary), matches


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--diagnoses", nargs="+", required=True, type=Path, metavar="NODULES.tsv",
                        help="each test case's nodules.tsv of `lungseg diagnose`")
    parser.add_argument("--tables", nargs="+", required=True, type=Path, metavar="CASE.nodules.tsv",
                        help="the same cases' nodule tables (`lungseg nodule-patches`), in the same order")
    parser.add_argument("--out", required=True, type=Path, metavar="SUMMARY.json", help="the summary")
    parser.add_argument("--matches", type=Path, default=None, metavar="MATCHES.tsv", help="one row per hit")
    parser.add_argument("--threshold", type=float, default=0.5, help="malignancy probability called malignant")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap samples of the AUC CI (default: 2000)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        summary, matches = evaluate(args.diagnoses, args.tables, args.threshold, args.samples, args.seed)
    except (KeyError, ValueError) as exc:
        raise IngestError(args.diagnoses[0], f"does not fit its nodule table ({exc})",
                          "pass each case's nodules.tsv of `lungseg diagnose` and its <case>.nodules.tsv, in one order") from None
    if args.matches is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MATCH_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(matches)
        write_text_atomic(args.matches, buffer.getvalue())
    write_text_atomic(args.out, json.dumps(summary, indent=2) + "\n")
    return 0
