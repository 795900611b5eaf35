"""``lungseg plot-training``: loss and validation-Dice curves from a training metrics CSV."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungseg.atomic import atomic_path  # noqa: E402


def read_metrics(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no epochs yet; train first")
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def plot_training(metrics_csv: Path, output: Path) -> None:
    m = read_metrics(metrics_csv)
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax_loss.plot(m["epoch"], m["train_loss"], "o-", label="train")
    ax_loss.plot(m["epoch"], m["val_loss"], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss (BCE + Dice)", title="Loss")
    ax_loss.legend()
    ax_dice.plot(m["epoch"], m["val_dice"], "o-", color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Validation Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", type=Path, help="per-epoch metrics CSV written by `lungseg train`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")


def run(args: argparse.Namespace) -> int:
    plot_training(args.metrics, args.output)
    return 0
