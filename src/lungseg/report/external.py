"""The external test set page: every method's metrics on the internal test set and on the external set side by side
(Dice, IoU; for nodules sensitivity, false positives per scan, nodule IoU and CPM), one sentence that states the gap
of the reference experiment, the external set's per-case metrics and the overlays of its predictions.

It reads the two ``summary.json`` files of ``lungseg aggregate`` (``results/metrics/summary.json`` and
``results/external/<name>/metrics/summary.json``); a method or a metric missing from either side is shown as a dash,
never dropped, so that a gap is not hidden by leaving a row out.
"""

from __future__ import annotations

import base64
import csv
import html as _html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lungseg.report import html

#: (key, name, lower is better) of the rows of the side-by-side table; nodule rows only where a summary has them
OVERLAP = (("dice", "Dice", False), ("iou", "IoU", False))
DETECTION = (("sensitivity", "sensitivity", False), ("fp_per_scan", "FP/scan", True),
             ("nodule_iou", "nodule IoU", False), ("cpm", "CPM", False))
#: per-case columns of the external set's table (those present in its metrics.csv)
CASE_COLUMNS = ("case_id", "method", "dice", "iou", "n_nodules", "n_detected", "n_false_positives", "nodule_iou")
Stat = tuple[float | None, Sequence[float] | None]


def _metric(key: str) -> Callable[[Mapping], Stat]:
    def get(method: Mapping) -> Stat:
        stats = (method.get("metrics") or {}).get(key) or {}
        return stats.get("mean"), stats.get("ci95")
    return get


def _detection(method: Mapping, value: str, ci: str) -> Stat:
    d = method.get("detection") or {}
    return d.get(value), d.get(ci)


def _pooled(method: Mapping, key: str) -> Stat:
    stats = (method.get("nodules") or {}).get(key) or {}
    return stats.get("mean"), stats.get("ci95")


GETTERS: dict[str, Callable[[Mapping], Stat]] = {
    "dice": _metric("dice"),
    "iou": _metric("iou"),
    "sensitivity": lambda m: _detection(m, "sensitivity", "sensitivity_ci95"),
    "fp_per_scan": lambda m: _detection(m, "false_positives_per_scan", "false_positives_per_scan_ci95"),
    "nodule_iou": lambda m: _pooled(m, "iou"),
    "cpm": lambda m: ((m.get("froc") or {}).get("cpm"), (m.get("froc") or {}).get("cpm_ci95")),
}


def _defined(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _with_ci(stat: Stat) -> str:
    value, ci = stat
    if not _defined(value):
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _n_cases(summary: Mapping, method: str | None) -> int:
    if method in summary:
        return int(summary[method].get("n_cases", 0))
    return max((int(s.get("n_cases", 0)) for s in summary.values()), default=0)


def rows_of(summary_internal: Mapping, summary_external: Mapping) -> list[tuple[str, str, str]]:
    """(method, metric key, metric name) of the table: every method of either summary, Dice and IoU, and the
    detection metrics where either summary has nodule detection for that method."""
    methods = list(dict.fromkeys([*summary_internal, *summary_external]))
    rows = []
    for method in methods:
        sides = [s[method] for s in (summary_internal, summary_external) if method in s]
        keys = list(OVERLAP)
        if any(side.get("detection") for side in sides):
            keys += list(DETECTION)
        rows += [(method, key, name) for key, name, _ in keys]
    return rows


def comparison_rows(summary_internal: Mapping, summary_external: Mapping) -> list[list[object]]:
    """One row per method and metric: internal [CI], external [CI], external − internal."""
    out = []
    for method, key, name in rows_of(summary_internal, summary_external):
        internal = GETTERS[key](summary_internal[method]) if method in summary_internal else (None, None)
        external = GETTERS[key](summary_external[method]) if method in summary_external else (None, None)
        gap = external[0] - internal[0] if _defined(internal[0]) and _defined(external[0]) else None
        out.append([method, name, _with_ci(internal), _with_ci(external), None if gap is None else f"{gap:+.3f}"])
    return out


def _phrase(name: str, internal: float | None, external: float | None, lower_is_better: bool) -> str | None:
    if not _defined(internal) and not _defined(external):
        return None
    if not _defined(external):
        return f"{name} undefined on the external set (against {internal:.3f} on the internal test set)"
    if not _defined(internal):
        return f"{name} {external:.3f} on the external set (undefined on the internal test set)"
    diff = external - internal
    if abs(diff) < 5e-4:
        verdict = "the same"
    else:
        better = diff < 0 if lower_is_better else diff > 0
        verdict = f"{abs(diff):.3f} {'higher' if diff > 0 else 'lower'}, {'better' if better else 'worse'}"
    return f"{name} {external:.3f} on the external set against {internal:.3f} on the internal test set ({verdict})"


def gap_sentence(summary_internal: Mapping, summary_external: Mapping, reference: str, name: str) -> str:
    """One sentence: the reference experiment's metrics on the external set against the internal test set."""
    method = reference if reference in summary_external else next(
        (m for m in summary_external if m in summary_internal), None)
    n_int, n_ext = _n_cases(summary_internal, method), _n_cases(summary_external, method)
    head = (f"External test set {name!r}: {n_ext} case(s); internal test set: {n_int} case(s). ")
    if method is None:
        return head + "No method was evaluated on both sets, so there is no gap to state."
    both = [s[method] for s in (summary_internal, summary_external) if method in s]
    keys = list(OVERLAP) + (list(DETECTION) if any(side.get("detection") for side in both) else [])
    phrases = []
    for key, label, lower in keys:
        internal = GETTERS[key](summary_internal[method])[0] if method in summary_internal else None
        external = GETTERS[key](summary_external[method])[0]
        phrase = _phrase(label, internal, external, lower)
        if phrase:
            phrases.append(phrase)
    who = method if method == reference else f"{method} (the reference {reference} was not evaluated on both sets)"
    text = head + f"The gap of {who}: " + ("; ".join(phrases) if phrases else "no metric is defined on both sets") + "."
    if n_ext < 5:
        text += (f" With {n_ext} external case(s) the confidence intervals are wide (or, with one case, undefined): "
                 "read the gap as a measurement of these scans, not of a population.")
    return text


def _overlay_figure(label: str, png: Path) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (f"<figure style=\"margin: 0 0 1.5em 0\"><img alt=\"{_html.escape(label)}\" style=\"max-width: 100%\" "
            f"src=\"data:image/png;base64,{data}\"><figcaption>{_html.escape(label)}</figcaption></figure>\n")


def _case_rows(path: Path | None) -> tuple[list[str], list[list[object]]]:
    if path is None or not Path(path).is_file():
        return [], []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in CASE_COLUMNS if rows and c in rows[0]]
    return columns, [[_number(r[c]) for c in columns] for r in rows]


def _number(text: str) -> object:
    try:
        return float(text) if "." in text or "e" in text.lower() or text in ("nan", "inf") else int(text)
    except ValueError:
        return text or None


def external_html(summary_internal: Mapping, summary_external: Mapping, name: str, reference: str,
                  label: str = "lung", overlays: Sequence[tuple[str, Path]] = (),
                  external_csv: Path | None = None) -> str:
    """The whole page (see the module docstring); ``overlays`` are (caption, PNG) pairs, embedded in the page."""
    parts = [
        html.paragraph(gap_sentence(summary_internal, summary_external, reference, name)),
        html.paragraph(
            f"Every method's mean over cases with its 95% bootstrap confidence interval, on the internal test set "
            f"(the cohort's held-out test cases) and on the external test set {name!r} (another case sheet, predicted "
            f"by the same models and evaluated against its own reference {label!r} label). The last column is "
            "external − internal; a dash: undefined (e.g. no reference nodule) or not evaluated on that set."
            + (" Sensitivity and FP/scan are those of the predicted masks, nodule IoU is over the found nodules, "
               "CPM is the mean FROC sensitivity at 1/8 to 8 false positives per scan." if label == "nodule" else "")),
        html.table(["method", "metric", "internal test set", f"external: {name}", "external − internal"],
                   comparison_rows(summary_internal, summary_external),
                   caption="Internal vs external test set: mean [95% CI]"),
    ]
    for side, summary in (("internal test set", summary_internal), (f"external test set {name!r}", summary_external)):
        if any(s.get("no_reference_nodules") for s in summary.values()):
            parts.append(html.paragraph(
                f"The {side} holds no reference nodule: its sensitivity, nodule IoU and CPM are undefined, and a voxel "
                "Dice of 1.0 there only says that an empty prediction met an empty reference; compare the false "
                "positives per scan instead."))
    columns, rows = _case_rows(external_csv)
    if rows:
        parts.append(html.table([c.replace("_", " ") for c in columns], rows,
                                caption=f"Per case on the external test set {name!r}"))
    if overlays:
        parts.append(html.paragraph(f"Predictions on the external cases: reference {label!r} green, prediction red, "
                                    "agreement yellow (one montage per experiment and case)."))
        parts += [_overlay_figure(caption, png) for caption, png in overlays]
    return html.page(f"External test set: {name}", *parts)


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
