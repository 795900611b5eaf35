"""``lungseg aggregate``: per-case metric rows -> one CSV table and a JSON summary per method.

Per method and metric: mean, std, median, min, max and a seeded percentile-bootstrap 95% CI of the
mean over cases (NaNs skipped and counted). With nodule detection rows (``lungseg evaluate
--detection``) also the pooled sensitivity (all detected / all reference nodules) and false positives
per scan, each with a bootstrap CI over cases; with per-nodule rows the segmentation quality of the
detected nodules pooled over cases (``nodules``), with FROC candidates the FROC (``froc``, see
:mod:`lungseg.evaluation.froc`), and ``no_reference_nodules: true`` when the cases hold no nodule at all
(sensitivity, nodule metrics and FROC are then undefined, and a voxel Dice of 1 only says that an empty
prediction matched an empty reference).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.evaluation.bootstrap import DEFAULT_SAMPLES, bootstrap_ci, bootstrap_ratio_ci
from lungseg.evaluation.detection import DETECTION_METRICS, NODULE_METRICS
from lungseg.evaluation.froc import froc_summary
from lungseg.evaluation.metrics import METRICS


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


def _describe(values: np.ndarray, ci: tuple[float, float] | None) -> dict:
    """Mean, std, median, min, max (None where undefined), the given CI and the count of ``values``."""
    return {
        "mean": float(values.mean()) if values.size else None,
        "std": float(values.std(ddof=1)) if values.size > 1 else None,
        "median": float(np.median(values)) if values.size else None,
        "min": float(values.min()) if values.size else None,
        "max": float(values.max()) if values.size else None,
        "ci95": list(ci) if ci else None,
        "n": int(values.size),
    }


def _metric_stats(values: np.ndarray, samples: int, seed: int) -> dict:
    finite = values[np.isfinite(values)]
    return {**_describe(finite, bootstrap_ci(finite, samples=samples, seed=seed)),
            "n_undefined": int(values.size - finite.size)}


def _detection_summary(subset: list[dict], samples: int, seed: int) -> dict:
    nodules = np.asarray([r["n_nodules"] for r in subset], dtype=float)
    detected = np.asarray([r["n_detected"] for r in subset], dtype=float)
    false_pos = np.asarray([r["n_false_positives"] for r in subset], dtype=float)
    fp_ci = bootstrap_ci(false_pos, samples=samples, seed=seed)
    sens_ci = bootstrap_ratio_ci(detected, nodules, samples=samples, seed=seed)
    return {
        "n_nodules": int(nodules.sum()),
        "n_detected": int(detected.sum()),
        "sensitivity": float(detected.sum() / nodules.sum()) if nodules.sum() else None,
        "sensitivity_ci95": list(sens_ci) if sens_ci else None,
        "false_positives_per_scan": float(false_pos.mean()),
        "false_positives_per_scan_ci95": list(fp_ci) if fp_ci else None,
    }


def _pooled_stats(per_case: list[list[float]], samples: int, seed: int) -> dict:
    """Statistics of values pooled over cases (e.g. the Dice of every detected nodule); the CI of the pooled
    mean resamples cases (each bringing all its values)."""
    pooled = np.asarray([v for values in per_case for v in values], dtype=float)
    sums = np.asarray([float(np.sum(values)) for values in per_case])
    counts = np.asarray([len(values) for values in per_case], dtype=float)
    return _describe(pooled, bootstrap_ratio_ci(sums, counts, samples=samples, seed=seed) if pooled.size else None)


def _nodule_summary(subset: list[dict], samples: int, seed: int) -> dict:
    found = [[n for n in r["nodules"] if n["detected"]] for r in subset]
    out = {
        "n_nodules": sum(len(r["nodules"]) for r in subset),
        "n_detected": sum(len(f) for f in found),
        "dice": _pooled_stats([[n["dice"] for n in f] for f in found], samples, seed),
        "iou": _pooled_stats([[n["iou"] for n in f] for f in found], samples, seed),
        "volume_error_pct": _pooled_stats([[abs(n["volume_error_pct"]) for n in f] for f in found], samples, seed),
    }
    # voxel overlap pooled over the cases with nodules: sum TP / sum (TP + FP + FN), no 1.0 of empty masks
    with_nodules = [r["voxels"] for r in subset if r["nodules"] and "voxels" in r]
    tp = np.asarray([v["tp"] for v in with_nodules], dtype=float)
    union = np.asarray([v["tp"] + v["fp"] + v["fn"] for v in with_nodules], dtype=float)
    ci = bootstrap_ratio_ci(tp, union, samples=samples, seed=seed)
    out.update({
        "n_cases_with_nodules": len(with_nodules),
        "voxel_iou_pooled": float(tp.sum() / union.sum()) if union.sum() else None,
        "voxel_iou_pooled_ci95": list(ci) if ci else None,
        "voxel_dice_pooled": float(2 * tp.sum() / (union.sum() + tp.sum())) if union.sum() else None,
    })
    return out


def summarise(rows: list[dict], samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict[str, dict]:
    """Per method: statistics of every metric over cases (see the module docstring)."""
    summary: dict[str, dict] = {}
    for method in sorted({r["method"] for r in rows}):
        subset = [r for r in rows if r["method"] == method]
        stats = {m: _metric_stats(np.asarray([r[m] for r in subset], dtype=float), samples, seed) for m in METRICS}
        summary[method] = {
            "n_cases": len(subset),
            "metrics": stats,
            "bootstrap": {"samples": samples, "seed": seed, "level": 0.95, "method": "percentile, cases resampled"},
        }
        if all("n_nodules" in r for r in subset):
            detection = summary[method]["detection"] = _detection_summary(subset, samples, seed)
            if not detection["n_nodules"]:
                summary[method]["no_reference_nodules"] = True
            if all("nodules" in r for r in subset):
                summary[method]["nodules"] = _nodule_summary(subset, samples, seed)
            with_candidates = [r for r in subset if "candidates" in r]
            if with_candidates and len(with_candidates) != len(subset):
                missing = sorted(r["case_id"] for r in subset if "candidates" not in r)
                raise ValueError(f"method {method!r} has FROC candidates for {len(with_candidates)} of {len(subset)} "
                                 f"case(s) (none for {missing[:5]}): evaluate every case with its --probabilities map")
            froc = froc_summary([(r["candidates"], r["n_nodules"]) for r in with_candidates], samples, seed)
            if froc is not None:
                thresholds = sorted({r.get("candidate_threshold") for r in with_candidates} - {None})
                summary[method]["froc"] = {**froc, "candidate_threshold": thresholds[0] if len(thresholds) == 1 else thresholds}
    return summary


def rows_to_csv(rows: list[dict]) -> str:
    """One line per row; a ``fold`` column (after ``method``) when rows have one (``lungseg evaluate --fold``)."""
    buffer = io.StringIO()
    detection = [m for m in (*DETECTION_METRICS, *NODULE_METRICS) if any(m in r for r in rows)]
    fold = ["fold"] if any("fold" in r for r in rows) else []
    fields = ["case_id", "label", "method", *fold, *METRICS, *detection]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r["method"], r.get("fold", -1), r["case_id"])):
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="per-case metric JSON files from `lungseg evaluate`")
    parser.add_argument("--csv", type=Path, required=True, help="table with one row per case and method")
    parser.add_argument("--json", type=Path, required=True, help="summary statistics per method")
    parser.add_argument("--bootstrap-samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"bootstrap resamples for the 95%% CIs (default: {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    if args.bootstrap_samples < 1:
        raise SystemExit("lungseg aggregate: error: --bootstrap-samples must be >= 1")
    rows = load_rows(args.inputs)
    try:
        summary = summarise(rows, samples=args.bootstrap_samples, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"lungseg aggregate: error: {exc}") from exc
    write_text_atomic(args.csv, rows_to_csv(rows))
    write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    for method, s in summary.items():
        dice = s["metrics"]["dice"]
        ci = f" (95% CI {dice['ci95'][0]:.4f}-{dice['ci95'][1]:.4f})" if dice["ci95"] else ""
        mean = f"{dice['mean']:.4f}" if dice["mean"] is not None else "undefined"
        print(f"{method}: mean Dice {mean}{ci} over {s['n_cases']} case(s)")
        if s.get("no_reference_nodules"):
            print(f"{method}: the cases hold no reference nodule: sensitivity, nodule metrics and FROC are undefined")
        if s.get("froc"):
            print(f"{method}: FROC CPM {s['froc']['cpm']:.4f} over {s['froc']['n_scans']} scan(s), "
                  f"{s['froc']['n_nodules']} nodule(s)")
    return 0
