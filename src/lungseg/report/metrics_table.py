"""Evaluation tables for the report: summary per method (mean and bootstrap 95% CI), detection, per case."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lungseg.evaluation.detection import DETECTION_METRICS
from lungseg.evaluation.metrics import METRICS
from lungseg.report import html

NAMES = {"dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall", "fscore": "F-score",
         "accuracy": "accuracy", "hd95_mm": "HD95 (mm)", "volume_diff_ml": "volume diff. (mL)"}


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics_html(summary: dict, rows: list[dict[str, str]]) -> str:
    methods = list(summary)
    overview = [[m, summary[m]["n_cases"], *(_with_ci(summary[m]["metrics"][k]["mean"], summary[m]["metrics"][k]["ci95"])
                                             for k in METRICS)] for m in methods]
    details = [[m, NAMES[k], s["mean"], s["std"], s["median"], s["min"], s["max"],
                *(s["ci95"] or [None, None]), s["n"], s["n_undefined"]]
               for m in methods for k, s in summary[m]["metrics"].items() if k in NAMES]
    boot = next(iter(summary.values()))["bootstrap"] if summary else {}
    parts = [
        html.paragraph(f"Mean over test cases with its 95% bootstrap confidence interval in brackets "
                       f"({boot.get('samples', '?')} resamples of the cases, seed {boot.get('seed', '?')}); "
                       "undefined values (empty masks) are skipped and counted."),
        html.table(["method", "cases", *(NAMES[k] for k in METRICS)], overview, caption="Summary: mean [95% CI]"),
    ]
    detection = [[m, d["n_nodules"], d["n_detected"], _with_ci(d["sensitivity"], d["sensitivity_ci95"]),
                  _with_ci(d["false_positives_per_scan"], d["false_positives_per_scan_ci95"])]
                 for m in methods if (d := summary[m].get("detection"))]
    if detection:
        parts.append(html.table(["method", "reference nodules", "detected", "sensitivity [95% CI]",
                                 "false positives per scan [95% CI]"], detection, caption="Nodule-level detection"))
    parts.append(html.table(["method", "metric", "mean", "std", "median", "min", "max", "CI low", "CI high", "n",
                             "undefined"], details, caption="All statistics"))
    columns = [c for c in ("case_id", "method", *METRICS, *DETECTION_METRICS) if rows and c in rows[0]]
    parts.append(html.table([NAMES.get(c, c.replace("_", " ")) for c in columns],
                            [[_number(r[c]) for c in columns] for r in rows], caption="Per case"))
    return html.page("Test-split metrics", *parts)


def _number(text: str) -> object:
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text or None


def load(summary_path: Path, csv_path: Path) -> tuple[dict, list[dict[str, str]]]:
    return json.loads(Path(summary_path).read_text()), read_metrics_csv(csv_path)
