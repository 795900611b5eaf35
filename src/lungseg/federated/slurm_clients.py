"""Site clients as SLURM GPU jobs (``lungseg fl-run --launcher slurm``), submitted with submitit.

The executor is :func:`lungseg.cluster.sweep.make_executor`, sized as ``lungseg sweep`` sizes a one-GPU
run: partition, account, GPU type, CPUs per GPU, memory and time limit from the ``cluster`` section of
the workflow config (:func:`lungseg.cluster.sweep_cli.executor_options`), overridable on the command line.
Each job runs ``lungseg fl-client`` for one site with file paths only: the site's own case files, the
server's address file, ``ca.pem`` and the site's token file in the run folder. The token never appears
on a command line (sbatch's is ``sbatch <submitit script>``; the client's names the token *file*).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit

from lungseg.cluster.sweep import ExecutorOptions, RunSpec, last_error_line, make_executor

__all__ = ["ClientJob", "cancel_jobs", "client_executor_options", "configure_slurm", "submit_clients"]

#: states in which a client job has ended (sacct / squeue names, as submitit reports them)
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "INTERRUPTED", "FINISHED")


class ClientJob(submitit.helpers.Checkpointable):
    """What a client job runs: ``lungseg fl-client`` for one site, its output appended to ``log_path``
    (requeued by submitit on preemption or time limit; the client then joins the next round)."""

    def __call__(self, client_args: Sequence[str], log_path: str, threads: int) -> int:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        with open(log_path, "a") as log:
            log.write(f"# SLURM job {os.environ.get('SLURM_JOB_ID', '?')} on {os.environ.get('SLURMD_NODENAME', '?')}\n")
            log.flush()
            code = subprocess.call([sys.executable, "-m", "lungseg", "fl-client", *client_args], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        if code != 0:
            raise RuntimeError(f"lungseg fl-client exited with code {code}: {last_error_line(Path(log_path))} "
                               f"(log: {log_path})")
        return code


def configure_slurm(parser: argparse.ArgumentParser) -> None:
    """``lungseg fl-run`` options of the client jobs (defaults from the config's cluster section)."""
    where = parser.add_argument_group("client jobs with --launcher slurm (defaults from the cluster section)")
    where.add_argument("--cluster-config", type=Path, default=None, metavar="YAML",
                       help="workflow config with the cluster section (default: as the SLURM profiles: "
                            "$LUNGSEG_CONFIG, else config/config.yaml)")
    where.add_argument("--partition", default=None, help="partition of the client jobs (default: cluster.gpu_partition)")
    where.add_argument("--account", default=None, help="SLURM account (default: cluster.account)")
    where.add_argument("--gpu-type", default=None, help="GPU model, e.g. a100 (default: cluster.gpu_type)")
    where.add_argument("--cpus-per-client", type=int, default=None, metavar="N",
                       help="CPU cores per client job (default: cluster.train.cpus_per_gpu)")
    where.add_argument("--mem-gb", type=float, default=None, help="memory per client job (default: cluster.train.mem_mb)")
    where.add_argument("--timeout-min", type=int, default=None,
                       help="time limit per client job in minutes (default: cluster.train.runtime)")


def client_executor_options(args: argparse.Namespace) -> ExecutorOptions:
    """The client jobs' executor options, as ``lungseg sweep`` makes them (one GPU per job, on SLURM)."""
    from lungseg.cluster.settings import find_config_files
    from lungseg.cluster.sweep_cli import executor_options

    config = args.cluster_config or find_config_files([])[0]
    if not config.is_file():
        from lungseg.cluster.settings import ClusterConfigError

        raise ClusterConfigError(f"config file {config} not found: --launcher slurm takes the client jobs' partition "
                                 "and sizes from its cluster section (give --cluster-config, or set $LUNGSEG_CONFIG)")
    return executor_options(argparse.Namespace(
        config=config, no_gpus=False, executor="slurm", partition=args.partition, account=args.account,
        gpu_type=args.gpu_type, cpus_per_proc=args.cpus_per_client, mem_gb=args.mem_gb, timeout_min=args.timeout_min))


def submit_clients(client_args: Mapping[str, Sequence[str]], run_dir: str | Path, options: ExecutorOptions,
                   log=print) -> dict[str, Any]:
    """One job per site (``site -> fl-client arguments``); returns ``site -> submitit job``. A site whose
    job SLURM refuses is left out with a warning (the server then runs with the others, ``--min-clients``)."""
    run_dir = Path(run_dir)
    jobs: dict[str, Any] = {}
    for site, argv in client_args.items():
        executor = make_executor(run_dir / "submitit", options, RunSpec(name=site, values={}, nproc=1))
        executor.update_parameters(name=f"lungseg-fl-{site}"[:120])
        try:
            jobs[site] = executor.submit(ClientJob(), list(argv), str(run_dir / "logs" / f"{site}.log"),
                                         options.cpus_per_proc)
        except Exception as exc:  # sbatch refused (partition, account, limits): the others may still run
            log(f"warning: the client job of site {site} was not submitted: {str(exc).strip().splitlines()[-1:]}")
            continue
        log(f"site {site}: client job {jobs[site].job_id} on partition {options.partition or '(default)'}")
    return jobs


def job_state(job: Any) -> str:
    """The job's SLURM state (``UNKNOWN`` when SLURM cannot say)."""
    try:
        return str(job.state).split()[0]
    except Exception:  # sacct / squeue unavailable for a moment
        return "UNKNOWN"


def cancel_jobs(jobs: Mapping[str, Any], log=print) -> list[str]:
    """``scancel`` every job that has not ended; returns the cancelled job IDs."""
    cancelled = []
    for site, job in jobs.items():
        if job_state(job) in ENDED:
            continue
        try:
            job.cancel(check=False)
        except Exception as exc:  # scancel missing or failing: say so, do not hide the run's own outcome
            log(f"warning: scancel {job.job_id} (site {site}) failed: {exc}")
            continue
        cancelled.append(str(job.job_id))
    if cancelled:
        log(f"cancelled client job(s) {', '.join(cancelled)}")
    return cancelled
