"""Experiment comparison for the report: one table from ``lungseg compare``'s JSON, and a paired per-case plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.atomic import atomic_path  # noqa: E402
from lungseg.evaluation.compare import is_baseline  # noqa: E402
from lungseg.ingest.errors import IngestError  # noqa: E402
from lungseg.report import html  # noqa: E402
from lungseg.report.metrics_table import NAMES, _with_ci  # noqa: E402


def _signed(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{value:+.3f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def comparison_html(result: dict) -> str:
    """The comparison page: overview (Dice, paired difference, p, CV Dice, cost), every metric, CV folds."""
    reference, methods = result["reference"], result["methods"]
    boot, wilcoxon = result.get("bootstrap", {}), result.get("wilcoxon", {})
    overview = []
    for name, e in methods.items():
        dice = e["metrics"]["dice"]
        diff = (e.get("difference") or {}).get("dice") or {}
        cv = (e.get("cross_validation") or {}).get("pooled") or {}
        training = e.get("training") or {}
        overview.append([
            name if e["kind"] != "baseline" else f"{name} (baseline)", e["kind"], dice["n"],
            _with_ci(dice["mean"], dice["ci95"]),
            "reference" if e["kind"] == "reference" else _signed(diff.get("mean"), diff.get("ci95")) if diff else "–",
            _p(diff.get("wilcoxon_p")), diff.get("n_pairs"), e.get("folds"),
            _with_ci(cv.get("mean"), cv.get("ci95")) if cv else "–",
            _duration(training.get("wall_s")), training.get("gpu_hours"),
        ])
    detail = []
    for name, e in methods.items():
        for metric in result["metrics"]:
            s = e["metrics"][metric]
            d = (e.get("difference") or {}).get(metric) or {}
            detail.append([name, e["kind"], NAMES.get(metric, metric), _with_ci(s["mean"], s["ci95"]), s["n"],
                           s["n_undefined"], _signed(d.get("mean"), d.get("ci95")) if d else "–", _p(d.get("wilcoxon_p")),
                           d.get("n_pairs"), d.get("n_unpaired"), d.get("n_undefined")])
    folds = [[name, f["fold"], f["n"], f["dice"]]
             for name, e in methods.items() for f in ((e.get("cross_validation") or {}).get("folds") or [])]
    parts = [
        html.paragraph(
            f"All methods on the same {result.get('n_cases', '?')} test case(s). Mean over cases with its 95% "
            f"percentile-bootstrap confidence interval ({boot.get('samples', '?')} resamples of the cases, seed "
            f"{boot.get('seed', '?')}). The difference to the reference {reference} is paired: experiment minus "
            "reference over the cases both have, its interval resamples cases with the same indices for both "
            f"methods; p is the {wilcoxon.get('alternative', 'two-sided')} Wilcoxon signed-rank test "
            f"(zero_method={wilcoxon.get('zero_method', '?')}, scipy {wilcoxon.get('scipy', '?')}), not corrected for "
            "multiple comparisons. CV Dice: out-of-fold Dice pooled over the cross-validation's held-out cases "
            "(training data, not the test split). Wall time: summed over the experiment's training jobs (parallel "
            "jobs overlap); GPU-h: wall hours x GPUs per job. Baselines are not trained: no difference, CV or cost."),
        html.table(["method", "kind", "test cases", "mean Dice [95% CI]", f"Δ Dice vs {reference} [paired 95% CI]",
                    "Wilcoxon p", "pairs", "folds", "CV Dice [95% CI]", "training wall time (h:mm:ss)", "GPU-h"],
                   overview, caption="Experiments and baselines on the test split"),
        html.table(["method", "kind", "metric", "mean [95% CI]", "n", "undefined", f"Δ vs {reference} [paired 95% CI]",
                    "Wilcoxon p", "pairs", "unpaired", "undefined pairs"], detail, caption="Every metric"),
    ]
    if folds:
        parts.append(html.table(["experiment", "fold", "held-out cases", "Dice (mean)"], folds,
                                caption="Cross-validation: out-of-fold Dice per fold"))
    return html.page("Experiment comparison", *parts)


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def plot_paired(metrics_csv: Path, reference: str, output: Path, methods: list[str] | None = None,
                metric: str = "dice") -> list[str]:
    """Per-case ``metric`` of each method as dots, the dots of one case joined by a line; the reference first.

    ``methods`` defaults to every method of the table except the baselines (``all_background``, ``classical_*``).
    Returns the methods plotted, in order.
    """
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise IngestError(metrics_csv, "has no rows", "evaluate the test split first")
    case_column = "case_id" if "case_id" in rows[0] else "case"
    present = list(dict.fromkeys(r["method"] for r in rows))
    chosen = methods or sorted(m for m in present if not is_baseline(m))
    order = [reference, *(m for m in chosen if m != reference)]
    unknown = [m for m in order if m not in present]
    if unknown:
        raise IngestError(metrics_csv, f"has no rows of method(s) {unknown} (it has {present})",
                          "give --reference and --methods among the evaluated methods")
    cases = sorted({r[case_column] for r in rows if r["method"] in order})
    values = np.full((len(cases), len(order)), np.nan)
    index = {c: i for i, c in enumerate(cases)}
    for r in rows:
        if r["method"] in order and r.get(metric, "") not in ("", "nan"):
            values[index[r[case_column]], order.index(r["method"])] = float(r[metric])
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(order) + 1.5), 4.2), constrained_layout=True)
    for row in values:
        ax.plot(x, row, "-", color="grey", alpha=0.5, lw=1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j in range(len(order)):
        ax.plot(np.full(len(cases), x[j]), values[:, j], "o", ms=5, color=colors[j % len(colors)], alpha=0.85)
        column = values[:, j][np.isfinite(values[:, j])]
        if column.size:
            ax.plot([x[j] - 0.2, x[j] + 0.2], [column.mean()] * 2, "-", color="black", lw=2)
    ax.set_xticks(x, [f"{m}\n(reference)" if m == reference else m for m in order], rotation=0)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylabel(NAMES.get(metric, metric))
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"Per-case {NAMES.get(metric, metric)} on the test split ({len(cases)} case(s)); "
                 "lines join a case, bars = means", fontsize=9)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return order
