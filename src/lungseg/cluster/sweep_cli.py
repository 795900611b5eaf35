"""``lungseg sweep``: a grid of training runs (e.g. model x GPUs x mode) through submitit.

On a SLURM cluster every run is a job on the GPU partition (names from the ``cluster`` section of
the config: partition, account, GPU type); elsewhere runs are local processes, one after another.
The table of all runs (wall time, images/s, final training loss, best validation Dice, or the
failure reason) is printed and written to OUT_DIR/sweep.csv; the exit code is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lungseg.cluster.settings import DEFAULT_CONFIG, ClusterConfigError, load_cluster_settings
from lungseg.cluster.sweep import (
    LAYOUT_KEYS,
    MANAGED_OPTIONS,
    ExecutorOptions,
    SweepError,
    check_grid_keys,
    expand_grid,
    format_table,
    parse_grid,
    run_sweep,
    write_table,
)

EPILOG = """\
grid keys: nproc (processes per node = GPUs per node on SLURM), nodes, and any lungseg train option
(arch, mode, epochs, lr, batch_size, ...). Options after -- go to every run.

examples:
  # scaling study: model x GPUs x mode on the GPU partition named in config/config.yaml
  lungseg sweep --train results/ingest/demo00{2,3,4}.h5 --val results/ingest/demo005.h5 --out-dir sweeps/scaling \\
      --grid arch=unet,dense_unet --grid nproc=1,2,4 --grid mode=ddp,fedavg -- --epochs 10
  # the same on this machine, one run after another
  lungseg sweep --executor local --train a.h5 b.h5 --val c.h5 --out-dir sweeps/try --grid nproc=1,2 -- --epochs 1
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    data = parser.add_argument_group("runs")
    data.add_argument("--train", nargs="+", required=True, metavar="CASE.h5", help="training cases (every run)")
    data.add_argument("--val", nargs="+", required=True, metavar="CASE.h5", help="validation cases (every run)")
    data.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                      help="runs/<run>/ (checkpoints, metrics, logs), submitit/ (job files) and sweep.csv")
    data.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                      help="one grid axis; repeat for more (the sweep is their product)")
    data.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: lungseg train options for every run")
    where = parser.add_argument_group("where (defaults from the cluster section of --config)")
    where.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                       help="auto: SLURM where sbatch is available, else local processes (default: auto)")
    where.add_argument("--config", type=Path, default=None, metavar="YAML",
                       help=f"workflow config with the cluster section (default: {DEFAULT_CONFIG} if present)")
    where.add_argument("--partition", default=None, help="SLURM partition (default: cluster.gpu_partition, "
                       "or cluster.cpu_partition with --no-gpus)")
    where.add_argument("--account", default=None, help="SLURM account (default: cluster.account)")
    where.add_argument("--gpu-type", default=None, help="GPU model, e.g. a100 (default: cluster.gpu_type)")
    where.add_argument("--no-gpus", action="store_true", help="request no GPUs (CPU partition, gloo)")
    where.add_argument("--cpus-per-proc", type=int, default=None, metavar="N",
                       help="CPU cores per training process (default: cluster.train.cpus_per_gpu, or 1)")
    where.add_argument("--mem-gb", type=float, default=None, help="memory per node (default: cluster.train.mem_mb)")
    where.add_argument("--timeout-min", type=int, default=None,
                       help="time limit per run in minutes (default: cluster.train.runtime, or 60)")
    where.add_argument("--max-parallel", type=int, default=None, metavar="N",
                       help="runs submitted at once (default: all on SLURM, 1 for local processes)")


def _train_option_names() -> set[str]:
    """Destinations of every ``lungseg train`` option (e.g. ``batch_size``)."""
    from lungseg.training.cli import configure as configure_train

    parser = argparse.ArgumentParser(add_help=False)
    configure_train(parser)
    return {action.dest for action in parser._actions if action.option_strings}


def _check_train_args(train_args: list[str]) -> None:
    for arg in train_args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name[2:].replace("-", "_") in MANAGED_OPTIONS + LAYOUT_KEYS:
            raise SweepError(f"{name} after --: the sweep sets it for every run (use --train/--val/--out-dir, "
                             "or --grid nproc=... for the processes)")


def executor_options(args: argparse.Namespace) -> ExecutorOptions:
    """Executor options from the command line, defaults from the config's cluster section."""
    config = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    cluster = load_cluster_settings([config]) if config is not None else None
    gpus = not args.no_gpus
    partition = args.partition or (cluster and (cluster.gpu_partition if gpus else cluster.cpu_partition)) or None
    mem_gb = args.mem_gb if args.mem_gb is not None else (cluster.train.mem_mb / 1024 if cluster else None)
    kind = {"auto": None, "slurm": "slurm", "local": "local"}[args.executor]
    if kind is None and shutil.which("sbatch") is None:
        kind = "local"
    return ExecutorOptions(
        cluster=kind,
        partition=partition,
        account=args.account or (cluster.account if cluster else None) or None,
        gpu_type=args.gpu_type if args.gpu_type is not None else (cluster.gpu_type if cluster else ""),
        gpus=gpus,
        cpus_per_proc=args.cpus_per_proc or (cluster.train.cpus_per_gpu if cluster else 1),
        mem_gb=mem_gb,
        timeout_min=args.timeout_min or (cluster.train.runtime if cluster else 60),
    )


def run(args: argparse.Namespace) -> int:
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        grid = parse_grid(args.grid)
        check_grid_keys(grid, _train_option_names())
        _check_train_args(train_args)
        specs = expand_grid(grid)
        options = executor_options(args)
    except (SweepError, ClusterConfigError) as exc:
        print(f"lungseg sweep: error: {exc}", file=sys.stderr)
        return 2
    common = ["--train", *args.train, "--val", *args.val, *train_args]
    max_parallel = args.max_parallel if args.max_parallel is not None else (1 if options.cluster == "local" else 0)
    where = options.cluster or "slurm"
    print(f"lungseg sweep: {len(specs)} run(s) on {where}"
          + (f" (partition {options.partition})" if where == "slurm" and options.partition else ""), flush=True)
    try:
        results = run_sweep(specs, args.out_dir, common, options, max_parallel=max_parallel,
                            log=lambda msg: print(f"lungseg sweep: {msg}", flush=True))
    except SweepError as exc:
        print(f"lungseg sweep: error: {exc}", file=sys.stderr)
        return 2
    keys = list(grid)
    table = args.out_dir / "sweep.csv"
    write_table(table, results, keys)
    print(format_table(results, keys))
    failed = [r for r in results if r.status != "ok"]
    print(f"lungseg sweep: {len(results) - len(failed)} ok, {len(failed)} failed; table: {table}")
    return 1 if failed else 0
