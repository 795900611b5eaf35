"""``lungseg plot-overlay``: axial montage with reference (green), prediction (red), agreement (yellow)."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.atomic import atomic_path  # noqa: E402
from lungseg.casefile import open_case  # noqa: E402
from lungseg.geometry import read_volume  # noqa: E402

WINDOW = (-1000.0, 400.0)  # lung-friendly display window (HU)


def overlay_rgb(hu: np.ndarray, reference: np.ndarray, prediction: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB image of one slice: grey CT, reference-only green, prediction-only red, both yellow."""
    grey = np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    ref, pred = reference > 0, prediction > 0
    colours = {(True, False): (0, 1, 0), (False, True): (1, 0, 0), (True, True): (1, 1, 0)}
    for (r, p), colour in colours.items():
        sel = (ref == r) & (pred == p)
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(colour)
    return rgb


def pick_slices(reference: np.ndarray, prediction: np.ndarray, n: int) -> list[int]:
    """n slices evenly spread over the z range where either mask is present (or the whole scan)."""
    present = np.flatnonzero((reference > 0).any(axis=(1, 2)) | (prediction > 0).any(axis=(1, 2)))
    lo, hi = (present[0], present[-1]) if present.size else (0, reference.shape[0] - 1)
    return sorted(set(np.linspace(lo, hi, n).round().astype(int).tolist()))


def plot_overlay(case_path: Path, pred_path: Path, label: str, output: Path, n_slices: int = 6) -> None:
    with open_case(case_path) as f:
        hu, reference, case_id = f["image"][()], f["labels"][label][()], str(f.attrs["case_id"])
    prediction, _ = read_volume(str(pred_path))
    slices = pick_slices(reference, prediction, n_slices)
    fig, axes = plt.subplots(1, len(slices), figsize=(2.6 * len(slices), 2.9), constrained_layout=True)
    for ax, z in zip(np.atleast_1d(axes), slices):
        ax.imshow(overlay_rgb(hu[z], reference[z], prediction[z]), interpolation="nearest")
        ax.set_title(f"slice {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{case_id} ({label}): reference green, prediction red, agreement yellow", fontsize=10)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", type=Path, required=True, help="ingested case HDF5 (image + reference label)")
    parser.add_argument("--pred", type=Path, required=True, help="predicted mask volume in the scan's geometry")
    parser.add_argument("--label", default="lung", help="reference label name")
    parser.add_argument("--slices", type=int, default=6, help="number of axial slices in the montage")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")


def run(args: argparse.Namespace) -> int:
    plot_overlay(args.case, args.pred, args.label, args.output, args.slices)
    return 0
