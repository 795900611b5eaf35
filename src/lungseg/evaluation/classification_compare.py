"""``lungseg classification-compare``: each classification experiment against a reference on the same test
nodules: the difference of the ROC AUC (experiment minus reference) per task both predict, with a paired
patient-cluster bootstrap 95 % CI and a two-sided bootstrap p-value (not corrected for multiple comparisons).

Every experiment's test TSV must hold the same nodules (case, nodule) of the same patients with the same
targets as the reference's; otherwise the comparison is refused with one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.evaluation.bootstrap import DEFAULT_SAMPLES
from lungseg.evaluation.classification import paired_auc_difference
from lungseg.evaluation.classification_cli import TASKS, read_predictions, tasks_of
from lungseg.ingest.errors import IngestError

FIX = "compare experiments whose test predictions cover the same test cases (one split, one label protocol)"


def _by_nodule(path: Path, rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        key = (row["case"], row["nodule"])
        if key in out:
            raise IngestError(path, f"holds case {key[0]} nodule {key[1]} twice", "concatenate each case's predictions once")
        out[key] = row
    return out


def check_same_test_set(path: Path, rows: dict, reference_path: Path, reference: dict) -> None:
    """IngestError (one line) unless ``rows`` and ``reference`` hold the same nodules, patients and targets."""
    differ = set(rows) ^ set(reference)
    if differ:
        raise IngestError(path, f"has a different test set than the reference {reference_path.name} "
                                f"({len(differ)} nodule(s) not in both)", FIX)
    for key, row in rows.items():
        for column in ("patient", "label", "pathology"):
            if row[column] != reference[key][column]:
                raise IngestError(path, f"has {column}={row[column]!r} for case {key[0]} nodule {key[1]}, the reference "
                                        f"{reference_path.name} {reference[key][column]!r}", FIX)


def _summary_of(summary: dict, task: str) -> dict[str, Any] | None:
    entry = summary.get("tasks", {}).get(task)
    if not entry:
        return None
    test = (entry.get("test") or {}).get("metrics") or {}
    pooled = ((entry.get("out_of_fold") or {}).get("pooled") or {}).get("metrics") or {}
    return {"test_auc": test.get("auc"), "test_auc_ci95": test.get("auc_ci95"), "test_accuracy": test.get("accuracy"),
            "out_of_fold_auc": pooled.get("auc"), "out_of_fold_auc_ci95": pooled.get("auc_ci95")}


def compare_classifiers(summaries: Sequence[str | Path], predictions: Sequence[str | Path], names: Sequence[str],
                        reference: str, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """The comparison JSON (see the module docstring)."""
    if not len(summaries) == len(predictions) == len(names):
        raise ValueError(f"give one summary and one test TSV per name: {len(summaries)} summaries, "
                         f"{len(predictions)} TSVs, {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names must differ, got {list(names)}")
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not among the names {list(names)}")
    loaded = {}
    for name, summary_path, path in zip(names, summaries, predictions):
        header, rows = read_predictions(path)
        loaded[name] = (Path(path), tasks_of(header), _by_nodule(Path(path), rows),
                        json.loads(Path(summary_path).read_text()))
    ref_path, ref_tasks, ref_rows, _ = loaded[reference]
    keys = sorted(ref_rows)
    for name, (path, _, rows, _) in loaded.items():
        if name != reference:
            check_same_test_set(path, rows, ref_path, ref_rows)
    result: dict[str, Any] = {
        "reference": reference, "n_nodules": len(keys), "n_patients": len({ref_rows[k]["patient"] for k in keys}),
        "tasks": [t for t in TASKS if t in ref_tasks],
        "bootstrap": {"samples": samples, "seed": seed, "level": 0.95, "resampling": "patients (cluster bootstrap), "
                      "the same draw for both experiments", "p_value": "two-sided, from the bootstrap differences"},
        "experiments": {},
    }
    for name, (path, tasks, rows, summary) in loaded.items():
        entry: dict[str, Any] = {"kind": "reference" if name == reference else "experiment", "tasks": {}}
        for task in tasks:
            record: dict[str, Any] = {"summary": _summary_of(summary, task), "difference": None}
            if name != reference and task in ref_tasks:
                target, column = TASKS[task]
                chosen = [k for k in keys if ref_rows[k][target].strip().lower() in ("benign", "malignant")]
                y = np.array([ref_rows[k][target].strip().lower() == "malignant" for k in chosen], dtype=np.int64)
                try:
                    p = np.array([float(rows[k][column]) for k in chosen])
                    r = np.array([float(ref_rows[k][column]) for k in chosen])
                except ValueError:
                    raise IngestError(path, f"has a {column} that is not a number", "rerun `lungseg classify`") from None
                record["difference"] = paired_auc_difference(y, p, r, [ref_rows[k]["patient"] for k in chosen],
                                                             samples=samples, seed=seed)
            entry["tasks"][task] = record
        result["experiments"][name] = entry
    return result


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--summaries", nargs="+", required=True, type=Path, metavar="SUMMARY.json",
                        help="`lungseg classification-metrics` output of each experiment")
    parser.add_argument("--test-predictions", nargs="+", required=True, type=Path, metavar="TEST.tsv",
                        help="each experiment's test predictions (`lungseg classify`), in the order of --summaries")
    parser.add_argument("--names", nargs="+", required=True, metavar="NAME", help="experiment names, same order")
    parser.add_argument("--reference", required=True, metavar="NAME", help="the experiment the others are compared with")
    parser.add_argument("--out", required=True, type=Path, metavar="COMPARISON.json", help="the comparison JSON to write")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"bootstrap resamples of the patients (default: {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    try:
        result = compare_classifiers(args.summaries, args.test_predictions, args.names, args.reference, args.samples, args.seed)
    except IngestError:
        raise
    except ValueError as exc:  # inconsistent arguments: one line
        print(f"lungseg classification-compare: error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0
