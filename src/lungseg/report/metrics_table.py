"""Evaluation tables for the report: summary per method (mean and bootstrap 95% CI), nodules (detection,
per-nodule segmentation, FROC), per case."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lungseg.evaluation.detection import DETECTION_METRICS, NODULE_METRICS
from lungseg.evaluation.metrics import METRICS
from lungseg.report import html

NAMES = {"dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall", "fscore": "F-score",
         "accuracy": "accuracy", "hd95_mm": "HD95 (mm)", "volume_diff_ml": "volume diff. (mL)",
         "nodule_dice": "nodule Dice", "nodule_iou": "nodule IoU", "nodule_volume_error_pct": "nodule volume error (%)"}
NO_NODULES = ("The test cases hold no reference nodule: sensitivity, the nodule Dice and IoU and the FROC are undefined "
              "and not reported. The voxel Dice of such a case is 1.0 whenever the prediction is empty too: it measures "
              "nothing, and only the false positives per scan say something about the method.")


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
    parts += nodule_tables(summary)
    parts.append(html.table(["method", "metric", "mean", "std", "median", "min", "max", "CI low", "CI high", "n",
                             "undefined"], details, caption="All statistics"))
    columns = [c for c in ("case_id", "method", *METRICS, *DETECTION_METRICS, *NODULE_METRICS) if rows and c in rows[0]]
    parts.append(html.table([NAMES.get(c, c.replace("_", " ")) for c in columns],
                            [[_number(r[c]) for c in columns] for r in rows], caption="Per case"))
    return html.page("Test-split metrics", *parts)


def _stat(stats: dict | None) -> str:
    return _with_ci(stats["mean"], stats["ci95"]) if stats else "–"


def nodule_tables(summary: dict) -> list[str]:
    """HTML parts for the nodule target: the no-nodule notice, the Nodules table and the FROC operating points."""
    methods = [m for m in summary if summary[m].get("detection")]
    if not methods:
        return []
    parts = []
    if any(summary[m].get("no_reference_nodules") for m in methods):
        parts.append(html.paragraph(NO_NODULES))
    rows = []
    for m in methods:
        d, n, f = summary[m]["detection"], summary[m].get("nodules") or {}, summary[m].get("froc") or {}
        rows.append([m, d["n_nodules"], d["n_detected"], _with_ci(d["sensitivity"], d["sensitivity_ci95"]),
                     _with_ci(d["false_positives_per_scan"], d["false_positives_per_scan_ci95"]),
                     _stat(n.get("dice")), _stat(n.get("iou")), _stat(n.get("volume_error_pct")),
                     _with_ci(n.get("voxel_iou_pooled"), n.get("voxel_iou_pooled_ci95")),
                     _with_ci(f.get("cpm"), f.get("cpm_ci95"))])
    parts.append(html.paragraph(
        "Nodules are 3-D connected components (26-connectivity). Sensitivity and false positives per scan are those of "
        "the predicted mask (a nodule is found when a predicted component touches it); Dice, IoU and volume error "
        "(mean absolute, % of the reference volume) are over the found nodules pooled across cases, each compared with "
        "the predicted voxels given to it; voxel IoU is pooled over the cases with nodules; CPM is the mean FROC "
        "sensitivity at 1/8 to 8 false positives per scan (from the probability maps). Bootstrap CIs resample cases."))
    parts.append(html.table(["method", "reference nodules", "detected", "sensitivity [95% CI]", "FP/scan [95% CI]",
                             "nodule Dice [95% CI]", "nodule IoU [95% CI]", "volume error (%) [95% CI]",
                             "voxel IoU, pooled [95% CI]", "CPM [95% CI]"], rows, caption="Nodules"))
    froc = [(m, summary[m]["froc"]) for m in methods if summary[m].get("froc")]
    if froc:
        rates = froc[0][1]["fp_per_scan"]
        parts.append(html.table(
            ["method", *(f"{r:g} FP/scan" for r in rates), "CPM", "max. sensitivity (at FP/scan)"],
            [[m, *(_with_ci(v, ci) for v, ci in zip(f["sensitivity"], f["ci95"])), _with_ci(f["cpm"], f["cpm_ci95"]),
              f"{f['max_sensitivity']:.3f} ({f['max_fp_per_scan']:.2f})"] for m, f in froc],
            caption="FROC: sensitivity at average false positives per scan [95% CI]"))
    return parts


def _number(text: str) -> object:
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text or None


def load(summary_path: Path, csv_path: Path) -> tuple[dict, list[dict[str, str]]]:
    return json.loads(Path(summary_path).read_text()), read_metrics_csv(csv_path)
