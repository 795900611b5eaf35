"""The nodule classification page of the report: per experiment the test metrics (AUC with its patient-cluster
bootstrap CI, accuracy, balanced accuracy, sensitivity / specificity, Brier), the out-of-fold AUC and the
majority baseline; ROC curves, confusion matrices, a reliability plot, the paired comparison with the
reference, the test nodules with their predicted malignancy, and the training time per experiment.

Inputs: ``lungseg classification-metrics`` summaries, ``lungseg classification-compare``'s JSON, the test
prediction TSVs of ``lungseg classify`` and the training runs' ``metrics.csv``. Figures are PNGs embedded in
the page; no input path is written into it. An empty or one-class test set gets a note, not an error.
"""

from __future__ import annotations

import base64
import csv
import html as _html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.evaluation.classification import roc_curve  # noqa: E402
from lungseg.evaluation.classification_cli import TASKS, read_predictions, task_data, tasks_of  # noqa: E402
from lungseg.ingest.errors import IngestError  # noqa: E402
from lungseg.report import html  # noqa: E402
from lungseg.report.metrics_table import _with_ci  # noqa: E402

TASK_NAMES = {"image": "image (readers' malignancy)", "pathology": "pathology"}


def _figure(fig: plt.Figure, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure style=\"margin: 0 0 1.5em 0\"><img alt=\"{_html.escape(caption)}\" style=\"max-width: 100%\" "
            f"src=\"data:image/png;base64,{data}\"><figcaption>{_html.escape(caption)}</figcaption></figure>\n")


def _heading(text: str) -> str:
    return f"<h3>{_html.escape(text)}</h3>\n"


def _metrics(record: dict | None) -> dict:
    return (record or {}).get("metrics") or {}


def _classes(record: dict | None) -> str:
    if not record:
        return "–"
    c = record["classes"]
    return f"{record['n']} ({c['malignant']} malignant / {c['benign']} benign)"


def _excluded(record: dict | None) -> str:
    if not record or not record.get("excluded"):
        return "–"
    return ", ".join(f"{k} {v}" for k, v in record["excluded"].items())


def experiments_table(summaries: dict[str, dict]) -> str:
    rows = []
    for name, summary in summaries.items():
        for task, entry in summary["tasks"].items():
            test, pooled = entry["test"], (entry.get("out_of_fold") or {}).get("pooled")
            m, o, base = _metrics(test), _metrics(pooled), test.get("majority_baseline") or {}
            rows.append([name, TASK_NAMES.get(task, task), _classes(test), _excluded(test),
                         _with_ci(m.get("auc"), m.get("auc_ci95")), m.get("accuracy"), m.get("balanced_accuracy"),
                         m.get("sensitivity"), m.get("specificity"), m.get("brier"),
                         _with_ci(o.get("auc"), o.get("auc_ci95")), pooled["n"] if pooled else "–",
                         base.get("accuracy"), base.get("auc"), test.get("note") or ""])
    return html.table(["experiment", "task", "test nodules", "excluded", "test AUC [95% CI]", "accuracy",
                       "balanced accuracy", "sensitivity", "specificity", "Brier", "out-of-fold AUC [95% CI]",
                       "out-of-fold nodules", "majority accuracy", "majority AUC", "note"], rows,
                      caption="Test nodules (fold ensemble) and pooled out-of-fold predictions")


def folds_table(summaries: dict[str, dict]) -> str:
    rows = []
    for name, summary in summaries.items():
        for task, entry in summary["tasks"].items():
            for fold in (entry.get("out_of_fold") or {}).get("folds") or []:
                m = _metrics(fold)
                rows.append([name, TASK_NAMES.get(task, task), fold["fold"], _classes(fold),
                             _with_ci(m.get("auc"), m.get("auc_ci95")), m.get("accuracy"), m.get("balanced_accuracy"),
                             (fold.get("majority_baseline") or {}).get("accuracy"), fold.get("note") or ""])
    if not rows:
        return html.paragraph("No out-of-fold predictions were given.")
    return html.table(["experiment", "task", "fold", "nodules", "AUC [95% CI]", "accuracy", "balanced accuracy",
                       "majority accuracy", "note"], rows, caption="Cross-validation: each fold's held-out nodules")


def confusion_tables(summaries: dict[str, dict]) -> str:
    rows = []
    for name, summary in summaries.items():
        for task, entry in summary["tasks"].items():
            m = _metrics(entry["test"])
            if m.get("confusion_matrix"):
                (tn, fp), (fn, tp) = m["confusion_matrix"]
                rows.append([name, TASK_NAMES.get(task, task), m["threshold"], tn, fp, fn, tp])
    if not rows:
        return html.paragraph("No confusion matrix: no test nodule with a benign or malignant target.")
    return html.table(["experiment", "task", "threshold", "benign called benign", "benign called malignant",
                       "malignant called benign", "malignant called malignant"], rows,
                      caption="Confusion matrices on the test nodules (malignant when p >= threshold)")


def _empty_axes(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def roc_figure(name: str, predictions: list[dict[str, str]], tasks: list[str], summary: dict, source: Path) -> str:
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 4.0), constrained_layout=True,
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        data = task_data(predictions, task, source)
        y, p = data["y"], data["p"]
        ax.set_title(TASK_NAMES.get(task, task), fontsize=9)
        if not len(y) or y.min() == y.max():
            _empty_axes(ax, "no ROC: " + ("no benign or malignant nodule" if not len(y) else
                                          f"one class only ({len(y)} {'malignant' if y[0] else 'benign'})"))
            continue
        fpr, tpr, _ = roc_curve(y, p)
        m = _metrics(summary["tasks"].get(task, {}).get("test"))
        label = f"AUC {_with_ci(m.get('auc'), m.get('auc_ci95'))}"
        ax.plot(fpr, tpr, "-", lw=2, label=label)  # straight segments: ties between classes are diagonal
        if m.get("sensitivity") is not None and m.get("specificity") is not None:
            ax.plot(1 - m["specificity"], m["sensitivity"], "o", color="black", ms=5, label=f"p >= {m['threshold']:g}")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if not tasks:
        _empty_axes(axes[0][0], "no task predicted")
    return _figure(fig, f"{name}: ROC on the test nodules (dot: the operating point at the threshold)")


def reliability_figure(summaries: dict[str, dict], tasks: list[str]) -> str:
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 4.0), constrained_layout=True,
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        drawn = False
        for i, (name, summary) in enumerate(summaries.items()):
            bins = _metrics((summary["tasks"].get(task) or {}).get("test")).get("reliability") or []
            points = [(b["mean_prob"], b["fraction_positive"], b["count"]) for b in bins if b["count"]]
            if points:
                x, f, n = zip(*points)
                ax.plot(x, f, "o-", color=f"C{i % 10}", label=name, ms=4)
                drawn = True
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set_title(TASK_NAMES.get(task, task), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("mean predicted probability (bin)")
        ax.set_ylabel("fraction malignant")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no test nodule with a target", ha="center", va="center", fontsize=8)
    if not tasks:
        _empty_axes(axes[0][0], "no task predicted")
    return _figure(fig, "Reliability on the test nodules: observed fraction malignant per probability bin (10 bins); "
                        "the diagonal is perfect calibration")


def _signed(d: dict) -> str:
    if d.get("difference") is None:
        return "–"
    ci = d.get("ci95")
    return f"{d['difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{d['difference']:+.3f}"


def comparison_table(comparison: dict | None) -> str:
    if not comparison:
        return html.paragraph("No comparison: a single experiment.")
    reference, rows = comparison["reference"], []
    for name, entry in comparison["experiments"].items():
        for task, record in entry["tasks"].items():
            d = record.get("difference")
            if d is None:
                continue
            rows.append([name, TASK_NAMES.get(task, task), d["n"], d["patients"], d["auc"], d["auc_reference"],
                         _signed(d), "–" if d.get("p_value") is None else f"{d['p_value']:.3g}"])
    boot = comparison.get("bootstrap", {})
    text = (f"Each experiment against the reference {reference} on the same {comparison.get('n_nodules', '?')} test "
            f"nodules of {comparison.get('n_patients', '?')} patients: AUC difference (experiment minus reference) with "
            f"a paired patient-cluster bootstrap 95% CI ({boot.get('samples', '?')} resamples, seed {boot.get('seed', '?')}; "
            "each resample draws patients with all their nodules and scores both experiments on it) and a two-sided "
            "bootstrap p-value, not corrected for multiple comparisons.")
    if not rows:
        return html.paragraph(text) + html.paragraph("No experiment besides the reference shares a task with it.")
    return html.paragraph(text) + html.table(
        ["experiment", "task", "nodules", "patients", "AUC", f"AUC {reference}", f"Δ AUC vs {reference} [95% CI]",
         "p"], rows, caption="Paired comparison with the reference on the test nodules")


def nodule_table(predictions: dict[str, list[dict[str, str]]], tasks: dict[str, list[str]]) -> str:
    merged: dict[tuple[str, str], dict[str, str]] = {}
    for rows in predictions.values():
        for row in rows:
            merged.setdefault((row["case"], row["nodule"]), row)
    columns = [(name, task) for name in predictions for task in tasks[name]]
    lookup = {name: {(r["case"], r["nodule"]): r for r in rows} for name, rows in predictions.items()}
    body = []
    for key in sorted(merged, key=lambda k: (k[0], _number(k[1]))):
        row = merged[key]
        cells: list[object] = [row["case"], row["patient"], _number(row["nodule"]), _number(row.get("diameter_mm", "")),
                               row.get("at_edge", ""), row["label"] or "unlabelled", row["pathology"] or "–"]
        for name, task in columns:
            cells.append(_number((lookup[name].get(key) or {}).get(TASKS[task][1], "")))
        body.append(cells)
    if not body:
        return html.paragraph("The test cases hold no nodule.")
    headers = ["case", "patient", "nodule", "diameter (mm)", "at edge", "label", "pathology",
               *(f"p malignant: {name} ({task})" for name, task in columns)]
    return html.table(headers, body, caption="Test nodules with the predicted probability of malignancy")


def _number(text: str | None) -> object:
    try:
        value = float(text or "")
    except ValueError:
        return text or None
    return int(value) if value.is_integer() and "." not in (text or "") else value


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def training_table(metrics: Sequence[tuple[str, Path]]) -> str:
    if not metrics:
        return html.paragraph("No training metrics were given.")
    runs: dict[str, list[list[dict[str, str]]]] = {}
    for name, path in metrics:
        if not Path(path).is_file():
            raise IngestError(path, "does not exist", "pass the training runs' metrics.csv")
        with open(path, newline="") as f:
            runs.setdefault(name, []).append(list(csv.DictReader(f)))
    rows = []
    for name, tables in runs.items():
        seconds = [v for t in tables for v in _floats(t, "epoch_seconds")]
        speed = [v for t in tables for v in _floats(t, "images_per_s")]
        rows.append([name, len(tables), sum(len(t) for t in tables), _mean(seconds), _mean(speed),
                     float(sum(seconds)) if seconds else None])
    return html.table(["experiment", "training runs", "epochs", "mean epoch (s)", "mean images/s", "summed epochs (s)"],
                      rows, caption="Training time (the processes of a run are in the experiment's name)")


def _floats(rows: list[dict[str, str]], column: str) -> list[float]:
    out = []
    for row in rows:
        try:
            value = float(row.get(column) or "nan")
        except ValueError:
            continue
        if math.isfinite(value):
            out.append(value)
    return out


def classification_html(summaries: dict[str, dict], test_predictions: dict[str, Path], comparison: dict | None = None,
                        training_metrics: Sequence[tuple[str, Path]] = ()) -> str:
    """The page (see the module docstring); ``summaries`` and ``test_predictions`` keyed by experiment name."""
    if list(summaries) != list(test_predictions):
        raise ValueError(f"summaries {list(summaries)} and test predictions {list(test_predictions)} name different experiments")
    predictions, tasks = {}, {}
    for name, path in test_predictions.items():
        header, rows = read_predictions(path)
        predictions[name], tasks[name] = rows, tasks_of(header)
    all_tasks = [t for t in TASKS if any(t in v for v in tasks.values())]
    first = next(iter(summaries.values()), {})
    boot = first.get("bootstrap", {})
    parts = [
        html.paragraph(
            "Binary malignancy: targets benign (0) / malignant (1); indeterminate and unlabelled nodules are left out "
            "and counted. Image task: the readers' class (label); pathology task: the patient-level pathology. Test: "
            "the fold ensemble on the held-out test patients; out-of-fold: each fold's model on its held-out nodules, "
            f"pooled. AUC 95% CIs: percentile bootstrap over patients ({boot.get('samples', '?')} resamples, seed "
            f"{boot.get('seed', '?')}; a patient's nodules stay together). Majority baseline: the constant guess of the "
            "set's own majority class."),
        _heading("Experiments"), experiments_table(summaries), folds_table(summaries),
        _heading("ROC curves (test)"),
        *(roc_figure(name, predictions[name], tasks[name], summaries[name], test_predictions[name]) for name in summaries),
        _heading("Confusion matrices (test)"), confusion_tables(summaries),
        _heading("Calibration (test)"), reliability_figure(summaries, all_tasks),
        _heading("Paired comparison"), comparison_table(comparison),
        _heading("Test nodules"), nodule_table(predictions, tasks),
        _heading("Training time"), training_table(training_metrics),
    ]
    return html.page("Nodule malignancy classification", *parts)


def load(summary_paths: Sequence[Path], prediction_paths: Sequence[Path], names: Sequence[str],
         comparison_path: Path | None, training_paths: Sequence[Path], training_names: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments of :func:`classification_html` from the command's paths; ValueError on unequal lists."""
    if not len(summary_paths) == len(prediction_paths) == len(names):
        raise ValueError(f"give one summary and one test TSV per name: {len(summary_paths)} summaries, "
                         f"{len(prediction_paths)} TSVs, {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names must differ, got {list(names)}")
    if len(training_paths) != len(training_names):
        raise ValueError(f"give one --training-names entry per --training-metrics file: {len(training_names)} names, "
                         f"{len(training_paths)} files")
    return {"summaries": {n: json.loads(Path(p).read_text()) for n, p in zip(names, summary_paths)},
            "test_predictions": dict(zip(names, map(Path, prediction_paths))),
            "comparison": json.loads(Path(comparison_path).read_text()) if comparison_path else None,
            "training_metrics": list(zip(training_names, map(Path, training_paths)))}
