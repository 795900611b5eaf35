"""Worst and best test cases of a method as overlay montages (reference green, prediction red, agreement yellow).

Cases are ranked by one per-case metric (Dice by default). Each montage has one row per case; the
worst cases show the slices with the most disagreeing voxels (where the model fails), the best cases
slices spread over the mask's extent.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.atomic import atomic_path  # noqa: E402
from lungseg.casefile import open_case  # noqa: E402
from lungseg.geometry import read_volume  # noqa: E402
from lungseg.report.overlay import overlay_rgb, pick_slices  # noqa: E402

LOWER_IS_BETTER = {"hd95_mm"}


def rank_cases(
    rows: list[dict[str, str]], method: str, metric: str, n: int
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """``(worst, best)``: up to ``n`` ``(case_id, value)`` each, worst first / best first; undefined values rank worst."""
    scored = []
    for r in rows:
        if r["method"] == method:
            value = float(r[metric]) if r.get(metric, "") not in ("", "nan") else math.nan
            scored.append((r["case_id"], value))
    if not scored:
        raise ValueError(f"no per-case rows for method {method!r}; methods present: {sorted({r['method'] for r in rows})}")
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0  # ascending key = best first
    best = sorted(scored, key=lambda cv: (math.isnan(cv[1]), sign * cv[1] if not math.isnan(cv[1]) else 0.0, cv[0]))
    return list(reversed(best))[:n], best[:n]


def error_slices(reference: np.ndarray, prediction: np.ndarray, n: int) -> list[int]:
    """The ``n`` slices with the most voxels where reference and prediction disagree (z order)."""
    errors = ((reference > 0) != (prediction > 0)).sum(axis=(1, 2))
    if not errors.any():
        return pick_slices(reference, prediction, n)
    top = np.argsort(-errors, kind="stable")[:n]
    return sorted(int(z) for z in top if errors[z] > 0)


def plot_cases(cases: list[tuple[str, float]], files: dict[str, tuple[Path, Path]], label: str, metric: str,
               title: str, output: Path, n_slices: int = 5, by_error: bool = False) -> None:
    """One montage row per case; ``files`` maps case_id -> (case HDF5, predicted mask)."""
    fig, axes = plt.subplots(max(len(cases), 1), n_slices, figsize=(2.3 * n_slices, 2.5 * max(len(cases), 1)),
                             squeeze=False, constrained_layout=True)
    for row, (case_id, value) in zip(axes, cases):
        case_path, pred_path = files[case_id]
        with open_case(case_path) as f:
            hu, reference = f["image"][()], f["labels"][label][()]
        prediction, _ = read_volume(str(pred_path))
        slices = (error_slices if by_error else pick_slices)(reference, prediction, n_slices)
        for ax, z in zip(row, slices):
            ax.imshow(overlay_rgb(hu[z], reference[z], prediction[z]), interpolation="nearest")
            ax.set_title(f"{case_id} slice {z}", fontsize=8)
        row[0].set_ylabel(f"{case_id}\n{metric} {value:.3f}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.suptitle(f"{title} ({label}): reference green, prediction red, agreement yellow", fontsize=10)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def plot_extremes(metrics_csv: Path, pairs: list[tuple[Path, Path]], label: str, worst_out: Path, best_out: Path,
                  method: str = "unet", metric: str = "dice", n_cases: int = 3, n_slices: int = 5) -> None:
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    files = {}
    for case_path, pred_path in pairs:
        with open_case(case_path) as f:
            files[str(f.attrs["case_id"])] = (Path(case_path), Path(pred_path))
    worst, best = rank_cases([r for r in rows if r["case_id"] in files], method, metric, n_cases)
    plot_cases(worst, files, label, metric, f"Worst {len(worst)} case(s) of {method} by {metric}", worst_out, n_slices,
               by_error=True)
    plot_cases(best, files, label, metric, f"Best {len(best)} case(s) of {method} by {metric}", best_out, n_slices)
