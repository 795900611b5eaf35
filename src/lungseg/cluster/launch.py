"""``lungseg launch``: start ``lungseg train`` (or any torchrun target) on one or several SLURM nodes.

One node: ``torchrun --standalone --nproc_per_node=P ...``. Several nodes (inside the SLURM job of
the train rule, ``cluster.train.nodes > 1``): ``srun`` starts one ``torchrun`` per node, which meet
through c10d rendezvous on the first node of the allocation and start P processes each.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

EPILOG = """\
examples:
  lungseg launch --nodes 1 --nproc-per-node 2 -- -m lungseg train --train a.h5 --val b.h5 --out-dir run
  # inside a 4-node SLURM job (sbatch --nodes=4 --gpus-per-node=4 ...):
  lungseg launch --nodes 4 --nproc-per-node 4 -- -m lungseg train --train a.h5 --val b.h5 --out-dir run
"""


class LaunchError(RuntimeError):
    """The launch cannot work here (printed as one line by the CLI)."""


@dataclass(frozen=True)
class Allocation:
    """The nodes of a SLURM job and its CPUs per node."""

    job_id: str
    nodes: tuple[str, ...]
    cpus_per_node: int


def torchrun_prefix(nodes: int, nproc_per_node: int) -> str:
    """Shell prefix (ending before ``-m lungseg train``) for the train rule.

    One node: plain ``torchrun --standalone``; several: ``lungseg launch --nodes N ... --``.
    """
    if nodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nodes and nproc_per_node must be >= 1, got {nodes}, {nproc_per_node}")
    if nodes == 1:
        return f"torchrun --standalone --nnodes=1 --nproc_per_node={nproc_per_node}"
    return f"lungseg launch --nodes {nodes} --nproc-per-node {nproc_per_node} --"


def rendezvous_port(job_id: str, base: int = 20000) -> int:
    """A port derived from the job id, so that jobs sharing a node do not collide."""
    return base + int(job_id) % 20000 if job_id.isdigit() else base + 9500


def _scontrol(*args: str) -> str:
    if shutil.which("scontrol") is None:
        raise LaunchError("scontrol not found: multi-node launch needs the SLURM client commands on PATH")
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LaunchError(f"scontrol {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def parse_job_record(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output -> {key: value}."""
    fields = {}
    for token in text.split():
        key, eq, value = token.partition("=")
        if eq and key not in fields:
            fields[key] = value
    return fields


def current_allocation(env: Mapping[str, str] | None = None) -> Allocation:
    """Nodes and CPUs of the SLURM job this process runs in (asks slurmctld: Snakemake's SLURM job
    step hides SLURM_JOB_NODELIST from the rule's shell)."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        raise LaunchError("a multi-node launch must run inside a SLURM job (SLURM_JOB_ID is not set): "
                          "submit it with sbatch, or run the workflow with --profile profiles/slurm")
    record = parse_job_record(_scontrol("show", "job", "-o", job_id))
    nodelist = env.get("SLURM_JOB_NODELIST") or record.get("NodeList", "")
    if not nodelist or nodelist == "(null)":
        raise LaunchError(f"SLURM job {job_id} has no node list yet (scontrol show job {job_id})")
    nodes = tuple(_scontrol("show", "hostnames", nodelist).split())
    num_cpus = int(record.get("NumCPUs", "0") or 0)
    return Allocation(job_id=job_id, nodes=nodes, cpus_per_node=max(1, num_cpus // max(1, len(nodes))))


def srun_torchrun_command(alloc: Allocation, nodes: int, nproc_per_node: int, target: Sequence[str],
                          port: int | None = None) -> list[str]:
    """``srun`` one ``torchrun`` per node with c10d rendezvous on the allocation's first node."""
    if nodes > len(alloc.nodes):
        raise LaunchError(f"{nodes} nodes requested but SLURM job {alloc.job_id} has {len(alloc.nodes)} "
                          f"({','.join(alloc.nodes)}); set cluster.train.nodes to the allocation's size")
    port = port or rendezvous_port(alloc.job_id)
    return [
        "srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
        f"--cpus-per-task={alloc.cpus_per_node}", "--kill-on-bad-exit=1",
        "torchrun", f"--nnodes={nodes}", f"--nproc_per_node={nproc_per_node}",
        "--rdzv_backend=c10d", f"--rdzv_endpoint={alloc.nodes[0]}:{port}", f"--rdzv_id=lungseg-{alloc.job_id}",
        *target,
    ]


def standalone_command(nproc_per_node: int, target: Sequence[str]) -> list[str]:
    return ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc_per_node}", *target]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes to train on (default: 1)")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="P",
                        help="processes per node, one per GPU (default: 1)")
    parser.add_argument("--launcher", choices=("auto", "standalone", "srun"), default="auto",
                        help="auto: srun when --nodes > 1, else torchrun --standalone (default: auto)")
    parser.add_argument("--port", type=int, default=None, help="rendezvous port (default: derived from the job id)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("target", nargs=argparse.REMAINDER,
                        help="after --: what torchrun starts, e.g. -m lungseg train ...")


def run(args: argparse.Namespace) -> int:
    try:
        command = build_command(args)
    except LaunchError as exc:
        print(f"lungseg launch: error: {exc}", file=sys.stderr)
        return 1
    print(f"lungseg launch: {shlex.join(command)}", flush=True)
    if args.dry_run:
        return 0
    os.execvp(command[0], command)
    return 1  # not reached


def build_command(args: argparse.Namespace) -> list[str]:
    """The torchrun (or srun torchrun) command line for the parsed arguments."""
    target = args.target[1:] if args.target[:1] == ["--"] else args.target
    if not target:
        raise LaunchError("nothing to launch: give the torchrun target after --, e.g. -- -m lungseg train ...")
    if args.nodes < 1 or args.nproc_per_node < 1:
        raise LaunchError(f"--nodes and --nproc-per-node must be >= 1, got {args.nodes}, {args.nproc_per_node}")
    use_srun = args.launcher == "srun" or (args.launcher == "auto" and args.nodes > 1)
    if use_srun:
        return srun_torchrun_command(current_allocation(), args.nodes, args.nproc_per_node, target, args.port)
    return standalone_command(args.nproc_per_node, target)
