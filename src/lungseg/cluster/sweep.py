"""Training sweeps with submitit: a grid of ``lungseg train`` runs, one job each, one metrics table.

Each grid point becomes one submitit job (SLURM through ``AutoExecutor``, or local processes) with
one task per node; each task starts ``torchrun`` for its node (``--standalone`` on one node, c10d
rendezvous on the job's first node across several). The job returns the run's summary (wall time,
images/s, final training loss, best validation Dice) read from its ``metrics.csv``; a run that fails
is reported with its reason instead of stopping the sweep. A preempted or timed-out SLURM job is
requeued by submitit and ``lungseg train`` resumes from the run's checkpoint.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from lungseg.experiments import grid_point_name  # the naming experiments' grid points share

#: grid keys that shape the job rather than being passed to ``lungseg train``
LAYOUT_KEYS = ("nproc", "nodes")
#: ``lungseg train`` options the sweep sets itself for every run
MANAGED_OPTIONS = ("train", "val", "out_dir", "model_out", "metrics_out", "threads")
TABLE_FIELDS = ("run", "status", "job_id", "wall_s", "epochs", "images_per_s", "final_train_loss",
                "best_val_dice", "error")


class SweepError(ValueError):
    """A sweep specification that cannot run (message names the option and the fix)."""


@dataclass(frozen=True)
class RunSpec:
    """One grid point: its name, the values of the grid keys and the process layout."""

    name: str
    values: dict[str, str]
    nproc: int = 1
    nodes: int = 1
    train_args: tuple[str, ...] = ()


@dataclass
class RunResult:
    """One row of the sweep table."""

    spec: RunSpec
    status: str  # ok | failed
    job_id: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def row(self, keys: Sequence[str]) -> dict[str, Any]:
        row = {"run": self.spec.name, **{k: self.spec.values.get(k, "") for k in keys},
               "status": self.status, "job_id": self.job_id, "error": self.error}
        for name in ("wall_s", "epochs", "images_per_s", "final_train_loss", "best_val_dice"):
            row[name] = self.summary.get(name, "")
        return row


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["arch=unet,dense_unet", "nproc=1,2"]`` -> ``{"arch": ["unet", "dense_unet"], "nproc": ["1", "2"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key or not values.strip():
            raise SweepError(f"--grid {item!r}: write KEY=V1,V2,... (e.g. --grid arch=unet,dense_unet)")
        if key in grid:
            raise SweepError(f"--grid {key} given twice; list all its values in one --grid {key}=...")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def check_grid_keys(grid: Mapping[str, Sequence[str]], train_options: Iterable[str]) -> None:
    """Every grid key is a layout key or a ``lungseg train`` option the sweep does not set itself."""
    known = set(train_options)
    for key in grid:
        if key in LAYOUT_KEYS:
            continue
        if key in MANAGED_OPTIONS:
            raise SweepError(f"--grid {key}: the sweep sets --{key.replace('_', '-')} itself for every run")
        if key not in known:
            raise SweepError(f"--grid {key}: lungseg train has no option --{key.replace('_', '-')} "
                             f"(see lungseg train --help; layout keys: {', '.join(LAYOUT_KEYS)})")
    for key in LAYOUT_KEYS:
        for value in grid.get(key, ()):
            if not value.isdigit() or int(value) < 1:
                raise SweepError(f"--grid {key}={value}: must be a positive integer")


def expand_grid(grid: Mapping[str, Sequence[str]]) -> list[RunSpec]:
    """Cartesian product of the grid, in the given key order; names like ``arch-unet_nproc-2``."""
    keys = list(grid)
    specs = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        values = dict(zip(keys, combo))
        args: list[str] = []
        for key, value in values.items():
            if key not in LAYOUT_KEYS:
                args += [f"--{key.replace('_', '-')}", value]
        name = grid_point_name(values) or "run"
        specs.append(RunSpec(name=name, values=values, nproc=int(values.get("nproc", 1)),
                             nodes=int(values.get("nodes", 1)), train_args=tuple(args)))
    if len({s.name for s in specs}) != len(specs):
        raise SweepError("two grid points get the same run name; use values that differ in letters or digits")
    return specs


def summarize_metrics(path: Path) -> dict[str, Any]:
    """Summary of a ``metrics.csv`` written by ``lungseg train`` (one row per epoch)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no epoch rows")

    def column(name: str) -> list[float]:
        out = []
        for row in rows:
            try:
                value = float(row.get(name) or "nan")
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                out.append(value)
        return out

    ips, loss, dice, seconds = column("images_per_s"), column("train_loss"), column("val_dice"), column("epoch_seconds")
    return {
        "epochs": len(rows),
        "images_per_s": round(sum(ips) / len(ips), 2) if ips else "",
        "final_train_loss": round(loss[-1], 5) if loss else "",
        "best_val_dice": round(max(dice), 5) if dice else "",
        "train_seconds": round(sum(seconds), 2) if seconds else "",
    }


def torchrun_command(spec: RunSpec, node_rank: int, head: str, job_id: str) -> list[str]:
    """This node's torchrun (module form, so no console script has to be on PATH)."""
    base = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={spec.nproc}"]
    if spec.nodes == 1:
        return [*base, "--standalone", "--nnodes=1"]
    from lungseg.cluster.launch import rendezvous_port

    return [*base, f"--nnodes={spec.nodes}", f"--node_rank={node_rank}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={head}:{rendezvous_port(job_id)}", f"--rdzv_id=lungseg-sweep-{job_id}"]


class TrainingRun(submitit.helpers.Checkpointable):
    """The function a sweep job runs (picklable; requeued by submitit on preemption / timeout)."""

    def __call__(self, spec: RunSpec, run_dir: str, common_args: Sequence[str], threads: int) -> dict[str, Any] | None:
        env = submitit.JobEnvironment()
        node, hosts = env.node, env.hostnames or [socket.gethostname()]
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / f"train.node{node}.log"
        command = [*torchrun_command(spec, node, hosts[0], str(env.job_id)), "-m", "lungseg", "train",
                   *common_args, *spec.train_args, "--out-dir", str(out), "--threads", str(threads)]
        started = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(f"# {' '.join(command)}\n")
            log.flush()
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        wall = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"lungseg train exited with code {code}: {last_error_line(log_path)} (log: {log_path})")
        if node != 0:
            return None
        return {"wall_s": round(wall, 2), **summarize_metrics(out / "metrics.csv")}


def _child_env() -> dict[str, str]:
    """The job's environment without the variables submitit and SLURM set for this task's rank,
    which torchrun sets itself for its processes."""
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def last_error_line(log_path: Path) -> str:
    """The most telling line of a failed training log (the last ERROR / exception line)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if " ERROR " in ln]  # lungseg's own one-line reasons first
    errors = errors or [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)
                        and "ChildFailedError" not in ln]
    chosen = errors[-1] if errors else (lines[-1] if lines else "empty log")
    return chosen.split(" ERROR ", 1)[-1][-300:]


def short_error(exc: BaseException) -> str:
    """One line for the table from a job's exception (submitit wraps remote tracebacks)."""
    text = str(exc)
    match = re.findall(r"RuntimeError: (lungseg train exited.*)", text)
    if match:
        return match[-1].strip()[:400]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:400]


@dataclass
class ExecutorOptions:
    """Where and how big each job is (GPUs per node = processes per node when ``gpus`` is set)."""

    cluster: str | None = None  # None: submitit picks (slurm where sbatch exists), or "slurm" / "local"
    partition: str | None = None
    account: str | None = None
    gpu_type: str = ""
    gpus: bool = True
    cpus_per_proc: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60


def make_executor(folder: Path, options: ExecutorOptions, spec: RunSpec) -> submitit.AutoExecutor:
    """A submitit executor sized for one run: one task per node, ``nproc`` CPUs x ``cpus_per_proc``."""
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    params: dict[str, Any] = {
        "name": f"lungseg-sweep-{spec.name}"[:120],
        "timeout_min": options.timeout_min,
        "nodes": spec.nodes,
        "tasks_per_node": 1,
        "cpus_per_task": spec.nproc * options.cpus_per_proc,
    }
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if executor.cluster == "slurm":
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.account:
            params["slurm_account"] = options.account
        if options.gpus:
            # --gpus-per-node=[TYPE:]N; CUDA_VISIBLE_DEVICES then names this job's GPUs
            kind = f"{options.gpu_type}:" if options.gpu_type else ""
            params["slurm_additional_parameters"] = {"gpus_per_node": f"{kind}{spec.nproc}"}
    elif executor.cluster == "local" and spec.nodes > 1:
        raise SweepError(f"run {spec.name}: {spec.nodes} nodes need SLURM; the local executor has one node")
    executor.update_parameters(**params)
    return executor


def run_sweep(specs: Sequence[RunSpec], out_dir: Path, common_args: Sequence[str], options: ExecutorOptions,
              max_parallel: int = 0, poll_s: float = 2.0, log=print) -> list[RunResult]:
    """Submit every run (at most ``max_parallel`` at once; 0 = all), wait, collect one result each."""
    out_dir = Path(out_dir)
    folder = out_dir / "submitit"
    limit = max_parallel if max_parallel > 0 else len(specs)
    pending = list(specs)
    running: list[tuple[RunSpec, Any]] = []
    results: dict[str, RunResult] = {}
    while pending or running:
        while pending and len(running) < limit:
            spec = pending.pop(0)
            executor = make_executor(folder, options, spec)
            threads = spec.nproc * options.cpus_per_proc
            job = executor.submit(TrainingRun(), spec, str(out_dir / "runs" / spec.name), list(common_args), threads)
            log(f"submitted {spec.name} as {executor.cluster} job {job.job_id}")
            running.append((spec, job))
        still = []
        for spec, job in running:
            if not job.done():
                still.append((spec, job))
                continue
            results[spec.name] = collect(spec, job)
            log(f"{spec.name}: {results[spec.name].status}" +
                (f" ({results[spec.name].error})" if results[spec.name].error else ""))
        running = still
        if running:
            time.sleep(poll_s)
    return [results[s.name] for s in specs]


def collect(spec: RunSpec, job: Any) -> RunResult:
    """The finished job's summary, or its failure reason."""
    try:
        summary = job.result()
    except Exception as exc:  # submitit raises FailedJobError / UncompletedJobError with the remote reason
        return RunResult(spec, "failed", str(job.job_id), error=short_error(exc))
    return RunResult(spec, "ok", str(job.job_id), summary=summary or {})


def write_table(path: Path, results: Sequence[RunResult], keys: Sequence[str]) -> None:
    """The sweep table as CSV (written atomically)."""
    from lungseg.atomic import atomic_path

    fields = ["run", *keys, *TABLE_FIELDS[1:]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for result in results:
            writer.writerow(result.row(keys))


def format_table(results: Sequence[RunResult], keys: Sequence[str]) -> str:
    """The sweep table as aligned text for the terminal."""
    fields = ["run", *keys, "status", "job_id", "wall_s", "images_per_s", "final_train_loss", "best_val_dice", "error"]
    rows = [[str(r.row(keys)[f]) for f in fields] for r in results]
    widths = [max(len(f), *(len(row[i]) for row in rows)) if rows else len(f) for i, f in enumerate(fields)]
    lines = ["  ".join(f.ljust(w) for f, w in zip(fields, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
