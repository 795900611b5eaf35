"""Per-case distribution plot: one panel per metric, a box per method with every case as a dot."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.atomic import atomic_path  # noqa: E402

PANELS = (("dice", "Dice"), ("iou", "IoU"), ("hd95_mm", "HD95 (mm)"), ("volume_diff_ml", "volume difference (mL)"))


def _values(rows: list[dict[str, str]], method: str, metric: str) -> np.ndarray:
    out = [float(r[metric]) for r in rows if r["method"] == method and r.get(metric, "") not in ("", "nan")]
    return np.asarray(out, dtype=float)


def plot_distribution(metrics_csv: Path, output: Path) -> None:
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{metrics_csv} has no rows; evaluate the test split first")
    methods = sorted({r["method"] for r in rows})
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.6 * len(PANELS), 3.6), constrained_layout=True)
    for ax, (metric, title) in zip(axes, PANELS):
        data = [_values(rows, m, metric) for m in methods]
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.plot(i + rng.uniform(-0.15, 0.15, d.size), d, "o", ms=4, alpha=0.7, color="tab:blue")
            if not d.size:
                ax.text(i, 0.5, "undefined", transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="grey")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    n_cases = len({r["case_id"] for r in rows})
    fig.suptitle(f"Per-case metrics on the test split ({n_cases} case(s)); dots = cases", fontsize=10)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
