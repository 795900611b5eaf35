"""``lungseg train-scaling``: the same data and epochs as one process, DDP over N processes and FedAvg
with N clients (seed 000 Table 5; seed 002 Table 1), measured in one go; a CSV table and a plot.

Each configuration is a fresh run of ``lungseg train`` in its own folder under ``--out-dir``
(``single``: one process; ``ddp``: ``torchrun --nproc_per_node=N``; ``fedavg``: the same with
``--mode fedavg``, one local epoch per round, IID partitions). Every process is one "device" with
``--threads-per-process`` CPU threads (default 1: one core), as seed 000 compares one GPU with four;
the per-process batch size is the same, so DDP's global batch is N times larger. Columns: wall time of the whole command (process start included),
training time (sum of epoch times), mean training images/s, speed-up of the training time over the
single process, final training loss and validation Dice (last epoch) and the best validation Dice.

Settings of every run: ``--train-config FILE`` (a ``lungseg train --config`` settings file, e.g. the
workflow's :func:`lungseg.training.rule_args.scaling_train_settings`; its mode / federated settings are
dropped, the study sets those per run), then ``--train-args``; ``--epochs`` and the threads are the study's.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from lungseg.atomic import atomic_path

log = logging.getLogger("lungseg.scaling")

FIELDS = ("mode", "processes", "batch_per_process", "global_batch", "epochs", "wall_s", "train_s", "images_per_s",
          "speedup", "final_train_loss", "final_val_dice", "best_val_dice")
MODES = ("single", "ddp", "fedavg")

EPILOG = """\
example:
  lungseg train-scaling --train a.h5 b.h5 --val c.h5 --out-dir results/scaling/runs --nproc 2 --epochs 2 \\
      --table results/scaling/scaling.csv --plot results/scaling/scaling.png
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--train", nargs="*", required=True, metavar="CASE.h5", help="training case files")
    parser.add_argument("--val", nargs="*", required=True, metavar="CASE.h5", help="validation case files")
    parser.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="one run folder per mode (replaced)")
    parser.add_argument("--table", type=Path, required=True, metavar="CSV", help="the scaling table to write")
    parser.add_argument("--plot", type=Path, required=True, metavar="PNG", help="the scaling figure to write")
    parser.add_argument("--nproc", type=int, default=2, metavar="N", help="processes of DDP / clients of FedAvg (default: 2)")
    parser.add_argument("--epochs", type=int, default=2, metavar="N", help="epochs of every run (default: 2)")
    parser.add_argument("--threads-per-process", type=int, default=1, metavar="N",
                        help="CPU threads of each training process, i.e. of one 'device' (default: 1)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="runs to make (default: all)")
    parser.add_argument("--train-config", type=Path, default=None, metavar="FILE",
                        help="training settings file for every run (as `lungseg train --config`; mode, local_epochs, "
                             "fed_partition and fed_fractions in it are ignored: the study sets them)")
    parser.add_argument("--train-args", default="", metavar="'ARGS'",
                        help="further `lungseg train` options for every run, e.g. '--arch unet --image-size 128 --lr 0.002'")


def _command(mode: str, nproc: int, common: list[str]) -> list[str]:
    if mode == "single":
        return [sys.executable, "-m", "lungseg", "train", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
    extra = ["--mode", "fedavg", "--local-epochs", "1", "--fed-partition", "iid"] if mode == "fedavg" else []
    return [*torchrun, "-m", "lungseg", "train", *common, *extra]


def _run_child(cmd: list[str], logf) -> int:  # noqa: ANN001 - an open text file
    """Run one training command; a SIGTERM / SIGINT of this study stops it too (no orphaned runs)."""
    child = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)

    def stop(signum: int, _frame: object) -> None:
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _read_rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _study_settings(train_config: Path, out_dir: Path) -> tuple[list[str], int]:
    """``--config`` of every run: the settings file without what the study sets per run (written to
    ``out_dir/train_settings.json``), and its batch size per process."""
    from lungseg.training.config import TrainConfig, load_settings
    from lungseg.training.rule_args import SCALING_OWN, write_train_settings

    settings = {k: v for k, v in load_settings(train_config).items() if k not in SCALING_OWN}
    batch = TrainConfig.from_mapping(settings, source=f"settings file {train_config}").batch_size
    path = out_dir / "train_settings.json"
    write_train_settings(settings, path)
    return ["--config", str(path)], batch


def run_study(train: list[str], val: list[str], out_dir: Path, nproc: int, epochs: int, threads_per_process: int,
              modes: list[str], train_args: list[str],
              train_config: Path | None = None) -> tuple[list[dict[str, object]], dict[str, list[dict[str, float]]]]:
    """Run every mode; returns the table rows and each run's per-epoch metrics."""
    if nproc < 2:
        raise ValueError(f"--nproc must be >= 2 to compare with a single process, got {nproc}")
    if threads_per_process < 1:
        raise ValueError(f"--threads-per-process must be >= 1, got {threads_per_process}")
    if not train or not val:
        raise ValueError("need training and validation cases (--train / --val are empty); check the split")
    config_args, batch = _study_settings(train_config, out_dir) if train_config is not None else ([], None)
    if "--batch-size" in train_args:
        batch = int(train_args[train_args.index("--batch-size") + 1])
    elif batch is None:
        from lungseg.training.config import TrainConfig

        batch = TrainConfig().batch_size
    rows: list[dict[str, object]] = []
    curves: dict[str, list[dict[str, float]]] = {}
    for mode in modes:
        run_dir = out_dir / mode
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh measurement, never a resumed one
        run_dir.mkdir(parents=True)
        processes = 1 if mode == "single" else nproc
        common = ["--train", *train, "--val", *val, "--out-dir", str(run_dir), "--epochs", str(epochs),
                  "--threads", str(threads_per_process * processes), *config_args, *train_args]
        cmd = _command(mode, nproc, common)
        log.info("%s: %s", mode, " ".join(cmd[:8]) + " ...")
        t0 = time.perf_counter()
        with open(run_dir / "run.log", "w") as logf:
            returncode = _run_child(cmd, logf)
        wall = time.perf_counter() - t0
        if returncode != 0:
            raise RuntimeError(f"the {mode} run failed (exit {returncode}); see {run_dir / 'run.log'}")
        epochs_rows = _read_rows(run_dir / "metrics.csv")
        curves[mode] = epochs_rows
        rows.append({
            "mode": mode, "processes": processes, "batch_per_process": batch,
            "global_batch": batch * processes if mode == "ddp" else batch, "epochs": epochs, "wall_s": wall,
            "train_s": sum(r["epoch_seconds"] for r in epochs_rows),
            "images_per_s": sum(r["images_per_s"] for r in epochs_rows) / len(epochs_rows),
            "final_train_loss": epochs_rows[-1]["train_loss"], "final_val_dice": epochs_rows[-1]["val_dice"],
            "best_val_dice": max(r["val_dice"] for r in epochs_rows),
        })
        log.info("%s: %.1f s wall, %.1f img/s, final train loss %.4f, val Dice %.4f", mode, wall,
                 rows[-1]["images_per_s"], rows[-1]["final_train_loss"], rows[-1]["final_val_dice"])
    base = next((r["train_s"] for r in rows if r["mode"] == "single"), None)
    for r in rows:
        r["speedup"] = base / r["train_s"] if base else float("nan")
    return rows, curves


def write_table(path: Path, rows: list[dict[str, object]]) -> None:
    fmt = {"wall_s": "{:.2f}", "train_s": "{:.2f}", "images_per_s": "{:.2f}", "speedup": "{:.3f}",
           "final_train_loss": "{:.5f}", "final_val_dice": "{:.5f}", "best_val_dice": "{:.5f}"}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow([fmt[k].format(r[k]) if k in fmt else r[k] for k in FIELDS])


def plot_study(path: Path, rows: list[dict[str, object]], curves: dict[str, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['mode']}\n({r['processes']} proc)" for r in rows]
    colors = {"single": "tab:blue", "ddp": "tab:orange", "fedavg": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.bar(labels, [r["wall_s"] for r in rows], color=[colors[r["mode"]] for r in rows], alpha=0.45, label="wall (whole command)")
    ax.bar(labels, [r["train_s"] for r in rows], color=[colors[r["mode"]] for r in rows], label="training epochs")
    ax.set(ylabel="seconds", title="Time for the same data and epochs")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.bar(labels, [r["images_per_s"] for r in rows], color=[colors[r["mode"]] for r in rows])
    for i, r in enumerate(rows):
        ax.annotate(f"x{r['speedup']:.2f}", (i, r["images_per_s"]), ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="training images / s", title="Throughput (x = speed-up of training time)")
    for mode, series in curves.items():
        epochs = [r["epoch"] for r in series]
        axes[1, 0].plot(epochs, [r["train_loss"] for r in series], "o-", color=colors[mode], label=mode)
        axes[1, 1].plot(epochs, [r["val_dice"] for r in series], "o-", color=colors[mode], label=mode)
    axes[1, 0].set(xlabel="epoch", ylabel="training loss", title="Training loss")
    axes[1, 1].set(xlabel="epoch", ylabel="Dice", title="Validation Dice", ylim=(0, 1))
    for a in axes[1]:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        rows, curves = run_study(args.train, args.val, args.out_dir, args.nproc, args.epochs, args.threads_per_process,
                                 args.modes, args.train_args.split(), args.train_config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    write_table(args.table, rows)
    plot_study(args.plot, rows, curves)
    return 0
