"""``lungseg train-scaling``: the scaling study (Hu, Distributed U-net, Table 5; Luo, Multiple GPUs-based
distributed learning, Table 1): the same data and
epochs trained as one process, as DDP over N processes and as FedAvg with N clients, for several N.

Two steps, so that every run is a job of its own (the workflow's rule ``scaling_run``, one per mode
and N, then rule ``scaling``):

* ``lungseg train-scaling run --mode MODE --devices N ...``: one run, a fresh ``lungseg train`` in
  ``--out-dir`` (``single``: one process, N = 1; ``ddp``: ``torchrun --nproc_per_node=N``;
  ``fedavg``: the same with ``--mode fedavg``, one local epoch per round, IID partitions). It writes
  that run's ``metrics.csv`` (per epoch, from ``lungseg train``), ``run.log`` (its output) and
  ``run.json``: wall time of the whole command (process start included), training time (sum of epoch
  times), mean training images/s, final training loss, final and best validation Dice, batch sizes.
* ``lungseg train-scaling table --runs DIR/run.json ...``: the runs of one study side by side, a CSV
  table with the speed-up of the training time over the single-process run and the efficiency
  (speed-up / N), and a figure (time, throughput and speed-up vs device count per mode, final
  validation Dice and training loss of every run, per-epoch curves).

Every process is one "device" with ``--threads-per-process`` CPU threads (default 1: one core), as
seed 000 compares one GPU with four; the per-process batch size is the same, so DDP's global batch is
N times larger. Settings of a run: ``--train-config FILE`` (a ``lungseg train --config`` settings
file, e.g. the workflow's :func:`lungseg.training.rule_args.scaling_train_settings`; its mode /
federated settings are dropped, the study sets those per run), then ``--train-args``; ``--epochs``
and the threads are the study's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lungseg.atomic import atomic_path, write_text_atomic

log = logging.getLogger("lungseg.scaling")

MODES = ("single", "ddp", "fedavg")
#: the record of one run, written last into its folder
RUN_RECORD = "run.json"
#: what ``run`` measures and records (besides the study key); the table adds speedup and efficiency
RUN_FIELDS = ("mode", "devices", "batch_per_process", "global_batch", "epochs", "threads_per_process", "wall_s",
              "train_s", "images_per_s", "final_train_loss", "final_val_dice", "best_val_dice")
FIELDS = ("mode", "devices", "batch_per_process", "global_batch", "epochs", "threads_per_process", "wall_s", "train_s",
          "images_per_s", "speedup", "efficiency", "final_train_loss", "final_val_dice", "best_val_dice")

EPILOG = """\
examples:
  # one run each (the workflow runs these as separate jobs: rule scaling_run)
  lungseg train-scaling run --mode single --devices 1 --train a.h5 b.h5 --val c.h5 \\
      --out-dir results/scaling/runs/single-1 --epochs 2 --train-config settings.json
  lungseg train-scaling run --mode ddp --devices 2 --train a.h5 b.h5 --val c.h5 \\
      --out-dir results/scaling/runs/ddp-2 --epochs 2 --train-config settings.json
  # the study's table and figure (rule scaling)
  lungseg train-scaling table --runs results/scaling/runs/*/run.json \\
      --table results/scaling/scaling.csv --plot results/scaling/scaling.png
"""


class ScalingError(ValueError):
    """Bad study input (one line naming the run, file or option)."""


# ---------------------------------------------------------------- the runs of a study


def study_runs(devices: Iterable[int]) -> list[tuple[str, int]]:
    """(mode, N) of every run of a study over ``devices``: the single-process run (N = 1, the baseline of
    the speed-up; DDP / FedAvg over one process are the same run), then DDP and FedAvg for each N > 1."""
    counts = sorted({int(n) for n in devices})
    if not counts or counts[0] < 1:
        raise ScalingError(f"scaling devices must be positive integers, got {list(devices)}")
    return [("single", 1)] + [(mode, n) for n in counts if n > 1 for mode in ("ddp", "fedavg")]


def run_name(mode: str, devices: int) -> str:
    """Folder name of one run: ``single-1``, ``ddp-2``, ``fedavg-4``."""
    return f"{mode}-{devices}"


def _command(mode: str, nproc: int, common: list[str]) -> list[str]:
    if mode == "single":
        return [sys.executable, "-m", "lungseg", "train", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
    extra = ["--mode", "fedavg", "--local-epochs", "1", "--fed-partition", "iid"] if mode == "fedavg" else []
    return [*torchrun, "-m", "lungseg", "train", *common, *extra]


def _run_child(cmd: list[str], logf) -> int:  # noqa: ANN001 - an open text file
    """Run one training command; a SIGTERM / SIGINT of this process stops it too (no orphaned runs)."""
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
    """``--config`` of a run: the settings file without what the study sets per run (written to
    ``out_dir/train_settings.json``), and its batch size per process."""
    from lungseg.training.config import TrainConfig, load_settings
    from lungseg.training.rule_args import SCALING_OWN, write_train_settings

    settings = {k: v for k, v in load_settings(train_config).items() if k not in SCALING_OWN}
    batch = TrainConfig.from_mapping(settings, source=f"settings file {train_config}").batch_size
    path = out_dir / "train_settings.json"
    write_train_settings(settings, path)
    return ["--config", str(path)], batch


def study_key(train: Sequence[str], val: Sequence[str], epochs: int, threads_per_process: int,
              settings: object, train_args: Sequence[str]) -> str:
    """12 hex digits naming a study: what every one of its runs shares (cases, epochs, threads, settings).
    ``table`` refuses to put runs of different studies side by side."""
    text = json.dumps({"train": list(train), "val": list(val), "epochs": epochs, "threads": threads_per_process,
                       "settings": settings, "train_args": list(train_args)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prepare_run_dir(run_dir: Path) -> None:
    """A fresh folder (a measurement is never resumed); only an empty folder or an earlier run's is removed."""
    if run_dir.exists():
        if not run_dir.is_dir():
            raise ScalingError(f"--out-dir {run_dir} is a file, not a folder")
        if any(run_dir.iterdir()) and not (run_dir / "run.log").exists():
            raise ScalingError(f"--out-dir {run_dir} holds files but no run.log of an earlier scaling run; "
                               "refusing to delete it (give an empty or new folder)")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_one(mode: str, devices: int, train: Sequence[str], val: Sequence[str], out_dir: Path, epochs: int,
            threads_per_process: int, train_args: Sequence[str] = (), train_config: Path | None = None) -> dict[str, Any]:
    """One run of the study in ``out_dir`` (replaced): ``lungseg train`` as ``mode`` over ``devices``
    processes. Writes ``out_dir/run.json`` last and returns it (:data:`RUN_FIELDS`, ``study``, ...)."""
    if mode not in MODES:
        raise ScalingError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "single" and devices != 1:
        raise ScalingError(f"--mode single runs on one device; got --devices {devices} (DDP / FedAvg take N >= 2)")
    if mode != "single" and devices < 2:
        raise ScalingError(f"--mode {mode} needs --devices >= 2 (over one device it is the single run), got {devices}")
    if threads_per_process < 1:
        raise ScalingError(f"--threads-per-process must be >= 1, got {threads_per_process}")
    if epochs < 1:
        raise ScalingError(f"--epochs must be >= 1, got {epochs}")
    if not train or not val:
        raise ScalingError("need training and validation cases (--train / --val are empty); check the split")
    train_args = list(train_args)
    out_dir = Path(out_dir)
    _prepare_run_dir(out_dir)
    logf = open(out_dir / "run.log", "w")  # noqa: SIM115 - closed below; it marks the folder as a run's
    try:
        settings: object = None
        config_args: list[str] = []
        batch = None
        if train_config is not None:
            config_args, batch = _study_settings(Path(train_config), out_dir)
            settings = json.loads((out_dir / "train_settings.json").read_text())
        if "--batch-size" in train_args:
            batch = int(train_args[train_args.index("--batch-size") + 1])
        elif batch is None:
            from lungseg.training.config import TrainConfig

            batch = TrainConfig().batch_size
        common = ["--train", *train, "--val", *val, "--out-dir", str(out_dir), "--epochs", str(epochs),
                  "--threads", str(threads_per_process * devices), *config_args, *train_args]
        cmd = _command(mode, devices, common)
        log.info("%s over %d device(s): %s ...", mode, devices, " ".join(cmd[:8]))
        load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        returncode = _run_child(cmd, logf)
        wall = time.perf_counter() - t0
    finally:
        logf.close()
    if returncode != 0:
        tail = _log_tail(out_dir / "run.log")
        raise RuntimeError(f"the {run_name(mode, devices)} run failed (exit {returncode}); see {out_dir / 'run.log'}"
                           + (f"; its last lines:\n{tail}" if tail else ""))
    epochs_rows = _read_rows(out_dir / "metrics.csv")
    record: dict[str, Any] = {
        "mode": mode, "devices": devices, "batch_per_process": batch,
        "global_batch": batch * devices if mode == "ddp" else batch, "epochs": epochs,
        "threads_per_process": threads_per_process, "wall_s": wall,
        "train_s": sum(r["epoch_seconds"] for r in epochs_rows),
        "images_per_s": sum(r["images_per_s"] for r in epochs_rows) / len(epochs_rows),
        "final_train_loss": epochs_rows[-1]["train_loss"], "final_val_dice": epochs_rows[-1]["val_dice"],
        "best_val_dice": max(r["val_dice"] for r in epochs_rows),
        "study": study_key(train, val, epochs, threads_per_process, settings, train_args),
        "train_cases": len(train), "val_cases": len(val), "metrics": "metrics.csv",
        # the machine as the run found it: other jobs sharing its cores slow every mode differently
        "cpu_count": os.cpu_count(), "load_before": load_before,
    }
    write_text_atomic(out_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    log.info("%s: %.1f s wall, %.1f s training, %.1f img/s, final train loss %.4f, val Dice %.4f",
             run_name(mode, devices), wall, record["train_s"], record["images_per_s"], record["final_train_loss"],
             record["final_val_dice"])
    return record


# ---------------------------------------------------------------- the table of a study


def read_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The ``run.json`` records of ``paths``, with ``curve`` (per-epoch rows of their metrics.csv, if present)."""
    runs = []
    for path in map(Path, paths):
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise ScalingError(f"run record {path} not found; run `lungseg train-scaling run` first") from None
        except json.JSONDecodeError as exc:
            raise ScalingError(f"run record {path} is not JSON ({exc}); run that run again") from None
        missing = [k for k in RUN_FIELDS if k not in record]
        if missing:
            raise ScalingError(f"run record {path} lacks {', '.join(missing)}; run that run again")
        metrics = path.parent / record.get("metrics", "metrics.csv")
        record["curve"] = _read_rows(metrics) if metrics.is_file() else []
        record["source"] = str(path)
        runs.append(record)
    return runs


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the table: the runs ordered by device count then mode, each with ``speedup`` (training time
    of the single-process run / this run's) and ``efficiency`` (speedup / devices); NaN without a
    single-process run. Raises :class:`ScalingError` for runs of different studies or a run twice."""
    if not runs:
        raise ScalingError("no runs given (--runs is empty)")
    studies = {r.get("study") for r in runs}
    if len(studies) > 1:
        raise ScalingError("the runs are of different studies (other cases, epochs, threads or settings): "
                           + ", ".join(f"{r.get('source', run_name(r['mode'], r['devices']))}: {r.get('study')}"
                                       for r in runs) + "; run them again with the same settings")
    seen: set[tuple[str, int]] = set()
    for r in runs:
        key = (r["mode"], int(r["devices"]))
        if key in seen:
            raise ScalingError(f"run {run_name(*key)} is given twice")
        seen.add(key)
    singles = [r for r in runs if r["mode"] == "single"]
    base = float(singles[0]["train_s"]) if singles else float("nan")
    if not singles:
        log.warning("no single-process run: speed-up and efficiency are NaN")
    order = {m: i for i, m in enumerate(MODES)}
    rows = []
    for r in sorted(runs, key=lambda r: (int(r["devices"]), order.get(r["mode"], len(order)))):
        row = {k: r[k] for k in RUN_FIELDS}
        row["devices"] = int(row["devices"])
        train_s = float(row["train_s"])
        row["speedup"] = base / train_s if train_s > 0 else float("nan")
        row["efficiency"] = row["speedup"] / row["devices"]
        rows.append(row)
    return rows


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fmt = {"wall_s": "{:.2f}", "train_s": "{:.2f}", "images_per_s": "{:.2f}", "speedup": "{:.3f}",
           "efficiency": "{:.3f}", "final_train_loss": "{:.5f}", "final_val_dice": "{:.5f}", "best_val_dice": "{:.5f}"}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow([fmt[k].format(float(r[k])) if k in fmt else r[k] for k in FIELDS])


COLORS = {"single": "black", "ddp": "tab:orange", "fedavg": "tab:green"}


def _by_mode(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Series per mode over device count; DDP and FedAvg start at the single-process run (N = 1)."""
    single = [r for r in rows if r["mode"] == "single"]
    series = {m: sorted((r for r in rows if r["mode"] == m), key=lambda r: r["devices"]) for m in MODES}
    for mode in ("ddp", "fedavg"):
        if series[mode]:
            series[mode] = single + series[mode]
    return {m: s for m, s in series.items() if s}


def plot_study(path: Path, rows: Sequence[dict[str, Any]], curves: dict[str, list[dict[str, float]]] | None = None) -> None:
    """Time, throughput and speed-up vs device count per mode; final validation Dice (and training loss)
    of every run; per-epoch training loss and validation Dice (``curves``: run name -> metrics rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curves or {}
    series = _by_mode(rows)
    counts = sorted({r["devices"] for r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)

    ax = axes[0, 0]
    for mode, s in series.items():
        x = [r["devices"] for r in s]
        ax.plot(x, [r["train_s"] for r in s], "o-", color=COLORS[mode], label=f"{mode}: training epochs")
        ax.plot(x, [r["wall_s"] for r in s], "o--", color=COLORS[mode], alpha=0.5, label=f"{mode}: whole command")
    ax.set(xlabel="devices (processes / clients)", ylabel="seconds", title="Time for the same data and epochs")

    ax = axes[0, 1]
    single = next((r for r in rows if r["mode"] == "single"), None)
    for mode, s in series.items():
        ax.plot([r["devices"] for r in s], [r["images_per_s"] for r in s], "o-", color=COLORS[mode], label=mode)
    if single is not None:
        ax.plot(counts, [single["images_per_s"] * n for n in counts], ":", color="grey", label="linear")
    ax.set(xlabel="devices (processes / clients)", ylabel="training images / s", title="Throughput")

    ax = axes[0, 2]
    for mode, s in series.items():
        ax.plot([r["devices"] for r in s], [r["speedup"] for r in s], "o-", color=COLORS[mode], label=mode)
        for r in s:
            if r["mode"] != "single" and math.isfinite(r["efficiency"]):
                ax.annotate(f"{r['efficiency']:.0%}", (r["devices"], r["speedup"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8, color=COLORS[mode])
    ax.plot(counts, counts, ":", color="grey", label="linear")
    ax.set(xlabel="devices (processes / clients)", ylabel="speed-up of training time over 1 process",
           title="Speed-up (labels: efficiency = speed-up / N)")
    for a in axes[0]:
        a.set_xticks(counts)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)

    ax = axes[1, 0]
    labels = [run_name(r["mode"], r["devices"]) for r in rows]
    bars = ax.bar(labels, [r["final_val_dice"] for r in rows], color=[COLORS[r["mode"]] for r in rows], alpha=0.8)
    ax.plot(labels, [r["best_val_dice"] for r in rows], "k_", markersize=18, label="best epoch")
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['final_val_dice']:.3f}\nloss {r['final_train_loss']:.3f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set(ylabel="Dice", ylim=(0, 1.15), title="Final validation Dice (and training loss) per run")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=7)

    for name, series_rows in curves.items():
        mode = name.split("-", 1)[0]
        epochs = [r["epoch"] for r in series_rows]
        style = dict(color=COLORS.get(mode, "grey"), label=name, marker="o", markersize=3)
        axes[1, 1].plot(epochs, [r["train_loss"] for r in series_rows], **style)
        axes[1, 2].plot(epochs, [r["val_dice"] for r in series_rows], **style)
    axes[1, 1].set(xlabel="epoch (round)", ylabel="training loss", title="Training loss per epoch")
    axes[1, 2].set(xlabel="epoch (round)", ylabel="Dice", title="Validation Dice per epoch", ylim=(0, 1))
    for a in axes[1, 1:]:
        a.grid(alpha=0.3)
        if curves:
            a.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def make_table(run_records: Sequence[Path], table: Path, plot: Path) -> list[dict[str, Any]]:
    """Read the runs, write the table and the figure; returns the rows."""
    runs = read_runs(run_records)
    rows = aggregate(runs)
    write_table(table, rows)
    plot_study(plot, rows, {run_name(r["mode"], int(r["devices"])): r["curve"] for r in runs if r["curve"]})
    return rows


# ---------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    one = sub.add_parser("run", help="one run of the study: MODE over N devices, in its own folder",
                         description="One run of the scaling study: a fresh `lungseg train` as MODE over N processes "
                                     "in --out-dir (replaced), recorded in --out-dir/run.json.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    one.add_argument("--mode", required=True, choices=MODES,
                     help="single: one process (--devices 1); ddp: torchrun over N processes; fedavg: N clients")
    one.add_argument("--devices", type=int, required=True, metavar="N",
                     help="processes of DDP / clients of FedAvg (>= 2); 1 for --mode single")
    one.add_argument("--train", nargs="*", required=True, metavar="CASE.h5", help="training case files")
    one.add_argument("--val", nargs="*", required=True, metavar="CASE.h5", help="validation case files")
    one.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                     help="the run's folder (replaced): metrics.csv, run.log, run.json, model")
    one.add_argument("--epochs", type=int, default=2, metavar="N", help="epochs of the run (default: 2)")
    one.add_argument("--threads-per-process", type=int, default=1, metavar="N",
                     help="CPU threads of each training process, i.e. of one 'device' (default: 1)")
    one.add_argument("--train-config", type=Path, default=None, metavar="FILE",
                     help="training settings file (as `lungseg train --config`; mode, local_epochs, "
                          "fed_partition and fed_fractions in it are ignored: the study sets them)")
    one.add_argument("--train-args", default="", metavar="'ARGS'",
                     help="further `lungseg train` options, e.g. '--arch unet --image-size 128 --lr 0.002'")

    table = sub.add_parser("table", help="the runs of one study side by side: CSV table and figure",
                           description="The runs of one scaling study side by side: a CSV table with speed-up (training "
                                       "time of the single-process run / the run's) and efficiency (speed-up / N), "
                                       "and a figure.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    table.add_argument("--runs", nargs="+", required=True, type=Path, metavar="RUN.json",
                       help="run records written by `lungseg train-scaling run` (DIR/run.json)")
    table.add_argument("--table", type=Path, required=True, metavar="CSV", help="the scaling table to write")
    table.add_argument("--plot", type=Path, required=True, metavar="PNG", help="the scaling figure to write")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.action == "run":
            run_one(args.mode, args.devices, args.train, args.val, args.out_dir, args.epochs, args.threads_per_process,
                    args.train_args.split(), args.train_config)
        else:
            make_table(args.runs, args.table, args.plot)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    return 0
