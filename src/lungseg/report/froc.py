"""FROC figure: sensitivity against average false positives per scan (log2 axis, 1/8 to 8), one line per
method with its bootstrap 95% band, the LUNA16 operating points marked. Without FROC data (the lung
target, no probability maps, or no reference nodule) a small figure says why, so that the report has it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.atomic import atomic_path  # noqa: E402
from lungseg.evaluation.froc import FP_RATES  # noqa: E402


def _why_empty(summary: dict) -> str:
    if not any(s.get("detection") for s in summary.values()):
        return "no FROC: no nodule detection in this evaluation (lung target)"
    if any(s.get("no_reference_nodules") for s in summary.values()):
        return "no FROC: the test cases hold no reference nodule"
    return "no FROC: no nodule probability maps were evaluated"


def plot_froc(summary_path: Path, output: Path) -> bool:
    """Write the FROC figure of ``summary.json`` (``lungseg aggregate``) to ``output``; False when there was
    no FROC to draw (the figure then says so)."""
    summary = json.loads(Path(summary_path).read_text())
    curves = {m: s["froc"] for m, s in summary.items() if s.get("froc")}
    if not curves:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, _why_empty(summary), ha="center", va="center", fontsize=9)
        with atomic_path(output) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.6), constrained_layout=True)
    for i, (method, f) in enumerate(sorted(curves.items())):
        color = f"C{i % 10}"
        curve = f["curve"]
        x = np.asarray(curve["fp_per_scan"], dtype=float)
        ax.plot(x, curve["sensitivity"], color=color, lw=2, label=f"{method} (CPM {f['cpm']:.3f}, {f['n_nodules']} nodules)")
        low = np.asarray([np.nan if v is None else v for v in curve["ci95_low"]], dtype=float)
        high = np.asarray([np.nan if v is None else v for v in curve["ci95_high"]], dtype=float)
        if np.isfinite(low).any():
            ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
        ax.plot(f["fp_per_scan"], f["sensitivity"], "o", color=color, ms=4)
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0], FP_RATES[-1])
    ax.set_xticks(FP_RATES, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    n_scans = max(f["n_scans"] for f in curves.values())
    ax.set_title(f"FROC on the test split ({n_scans} scans); band = 95% bootstrap CI over scans", fontsize=9)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True
