"""``lungseg classification-metrics``: metrics of nodule malignancy predictions (``lungseg classify`` TSVs)
per cross-validation fold, pooled out-of-fold, and on the test nodules, as one JSON file.

Per task whose probability column the TSVs have, the **image** task (target: ``label``, the readers'
class; ``indeterminate`` and unlabelled rows are left out and counted) and the **pathology** task (target:
``pathology``; empty rows left out and counted): n, classes, patients, the metrics of
``lungseg.evaluation.classification.classification_summary`` at ``--threshold`` (accuracy, balanced
accuracy, ROC AUC with a patient-cluster bootstrap 95 % CI, sensitivity, specificity, confusion matrix,
Brier score, reliability bins) and the majority-class baseline. A set with one class only or no rows is
not an error: its AUC is null and ``note`` says why. Nodules of one patient are correlated, so the CI
resamples patients with all their nodules (cluster bootstrap), not nodules.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.classification.labels import BENIGN, MALIGNANT
from lungseg.evaluation.bootstrap import DEFAULT_SAMPLES
from lungseg.evaluation.classification import classification_summary
from lungseg.ingest.errors import IngestError

#: task -> (target column, probability column of ``lungseg classify``: its PROBABILITY_COLUMNS, not imported to
#: keep torch out of this command); the malignancy tasks only (a candidate classifier is measured by the FROC)
TASKS = {"image": ("label", "p_malignant"), "pathology": ("pathology", "p_pathology_malignant")}
REQUIRED = ("case", "patient", "nodule", "label", "pathology")
TARGET = {BENIGN: 0, MALIGNANT: 1}


def read_predictions(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a ``lungseg classify`` TSV (or several concatenated); an IngestError naming the file
    when it is missing, has no header or lacks a needed column."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "does not exist", "pass prediction TSVs written by `lungseg classify`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
        header = list(reader.fieldnames or [])
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise IngestError(path, f"lacks the column(s) {missing}", "pass prediction TSVs written by `lungseg classify`")
    if not any(column in header for _, column in TASKS.values()):
        raise IngestError(path, f"has no probability column ({', '.join(c for _, c in TASKS.values())})",
                          "pass prediction TSVs written by `lungseg classify`")
    return header, rows


def tasks_of(header: Sequence[str]) -> list[str]:
    """The tasks whose probability column ``header`` holds."""
    return [task for task, (_, column) in TASKS.items() if column in header]


def task_data(rows: Sequence[dict[str, str]], task: str, source: str | Path = "predictions") -> dict[str, Any]:
    """Targets (1 = malignant), probabilities, patients and nodule keys of the rows with a benign / malignant
    target for ``task``; ``excluded`` counts the other rows by their target value (``unlabelled`` for empty)."""
    target_column, prob_column = TASKS[task]
    y, p, patients, keys, excluded = [], [], [], [], Counter()
    for row in rows:
        value = (row.get(target_column) or "").strip().lower()
        if value not in TARGET:
            excluded[value or "unlabelled"] += 1
            continue
        text = (row.get(prob_column) or "").strip()
        try:
            prob = float(text)
        except ValueError:
            raise IngestError(source, f"has {prob_column}={text!r} for case {row['case']} nodule {row['nodule']}",
                              "rerun `lungseg classify`: probabilities are numbers in 0..1") from None
        if not 0.0 <= prob <= 1.0:
            raise IngestError(source, f"has {prob_column}={prob} outside 0..1", "rerun `lungseg classify`")
        y.append(TARGET[value])
        p.append(prob)
        patients.append(row["patient"])
        keys.append((row["case"], row["nodule"]))
    return {"y": np.asarray(y, dtype=np.int64), "p": np.asarray(p, dtype=np.float64), "patients": patients,
            "keys": keys, "excluded": dict(sorted(excluded.items())), "rows": len(rows)}


def majority_baseline(y: np.ndarray) -> dict[str, Any] | None:
    """The constant predictor of the set's own majority class (an upper bound for any constant guess): its
    accuracy, balanced accuracy 0.5 and AUC 0.5 (one score for all); None without rows."""
    if not len(y):
        return None
    positives = int(y.sum())
    majority = MALIGNANT if positives > len(y) - positives else BENIGN
    return {"predicts": majority, "accuracy": max(positives, len(y) - positives) / len(y), "balanced_accuracy": 0.5,
            "auc": 0.5 if 0 < positives < len(y) else None}


def set_metrics(data: dict[str, Any], threshold: float, samples: int, seed: int) -> dict[str, Any]:
    """The JSON record of one set of predictions (see the module docstring)."""
    y, p = data["y"], data["p"]
    positives = int(y.sum())
    record: dict[str, Any] = {
        "rows": data["rows"], "n": int(len(y)), "classes": {BENIGN: int(len(y) - positives), MALIGNANT: positives},
        "patients": len(set(data["patients"])), "excluded": data["excluded"], "note": None,
        "metrics": None, "majority_baseline": majority_baseline(y),
    }
    if not len(y):
        record["note"] = "no benign or malignant nodule: no metrics"
        return record
    record["metrics"] = classification_summary(y, p, threshold=threshold, samples=samples, seed=seed,
                                               clusters=data["patients"])
    if positives in (0, len(y)):
        only = MALIGNANT if positives else BENIGN
        record["note"] = f"one class only ({len(y)} {only}): AUC, its CI and one of sensitivity / specificity undefined"
    return record


def classification_metrics(out_of_fold: Sequence[str | Path], test: str | Path, threshold: float = 0.5,
                           samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """The summary JSON of the out-of-fold TSVs (fold i = position i) and the test TSV."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in 0..1, got {threshold}")
    test_header, test_rows = read_predictions(test)
    folds = [read_predictions(path) for path in out_of_fold]
    tasks = tasks_of(test_header)
    for path, (header, _) in zip(out_of_fold, folds):
        if tasks_of(header) != tasks:
            raise IngestError(path, f"has predictions for task(s) {tasks_of(header)}, the test TSV for {tasks}",
                              "pass the out-of-fold and test predictions of one experiment")
    result: dict[str, Any] = {
        "threshold": threshold, "folds": len(folds), "tasks": {},
        "bootstrap": {"samples": samples, "seed": seed, "level": 0.95, "resampling": "patients (cluster bootstrap)"},
        "baseline": "majority class of the set itself (constant score: AUC 0.5)",
    }
    for task in tasks:
        per_fold = []
        pooled: dict[str, Any] = {"y": [], "p": [], "patients": [], "keys": [], "excluded": Counter(), "rows": 0}
        for index, (path, (_, rows)) in enumerate(zip(out_of_fold, folds)):
            data = task_data(rows, task, path)
            per_fold.append({"fold": index, **set_metrics(data, threshold, samples, seed)})
            for key in ("y", "p"):
                pooled[key].extend(data[key].tolist())
            pooled["patients"] += data["patients"]
            pooled["keys"] += data["keys"]
            pooled["excluded"].update(data["excluded"])
            pooled["rows"] += data["rows"]
        pooled.update(y=np.asarray(pooled["y"], dtype=np.int64), p=np.asarray(pooled["p"], dtype=np.float64),
                      excluded=dict(sorted(pooled["excluded"].items())))
        target, column = TASKS[task]
        result["tasks"][task] = {
            "target": target, "probability": column,
            "out_of_fold": {"folds": per_fold, "pooled": set_metrics(pooled, threshold, samples, seed) if folds else None},
            "test": set_metrics(task_data(test_rows, task, test), threshold, samples, seed),
        }
    return result


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out-of-fold", nargs="*", default=[], type=Path, metavar="FOLD.tsv",
                        help="out-of-fold predictions of `lungseg classify`, one TSV per fold in fold order (fold i = "
                             "position i); several cases concatenated with one header")
    parser.add_argument("--test", required=True, type=Path, metavar="TEST.tsv", help="the fold ensemble's test predictions")
    parser.add_argument("--out", required=True, type=Path, metavar="SUMMARY.json", help="the metrics JSON to write")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability called malignant (default: 0.5)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"bootstrap resamples of the patients (default: {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    try:
        result = classification_metrics(args.out_of_fold, args.test, args.threshold, args.samples, args.seed)
    except IngestError:
        raise
    except ValueError as exc:  # inconsistent arguments: one line
        print(f"lungseg classification-metrics: error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0
