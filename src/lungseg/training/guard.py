"""``lungseg train-guard``: run a training command so that a preempted / time-limited job can requeue.

``lungseg train-guard [--requeue] -- torchrun ... -m lungseg train ...`` (or ``-- lungseg launch ...``)
starts the command and passes SIGTERM, SIGUSR1 and SIGINT (what SLURM sends before a time limit or on
preemption; ``sbatch --signal=B:USR1@120`` targets this process) on to it as SIGTERM, which torchrun
forwards to the training processes; they write a checkpoint and stop. torchrun itself then exits
with 1; this guard exits with 75 instead (EX_TEMPFAIL: requeue; the next start resumes from the
checkpoint), with ``--requeue`` after ``scontrol requeue $SLURM_JOB_ID``. Without a signal it exits
with the command's own status. This module does not import torch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys

from lungseg.training.preemption import REQUEUE_EXIT_CODE

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

EPILOG = """\
examples:
  lungseg train-guard -- torchrun --standalone --nproc_per_node=2 -m lungseg train --train a.h5 --val b.h5 --out-dir run
  sbatch --signal=B:USR1@120 --requeue --wrap \\
      "lungseg train-guard --requeue -- lungseg launch --nodes 2 --nproc-per-node 4 -- -m lungseg train ..."
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--requeue", action="store_true",
                        help="when stopped by a signal inside a SLURM job: `scontrol requeue` the job before exiting 75")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the training command")


def run_guarded(command: list[str], requeue: bool = False) -> int:
    """Run ``command``; forward stop signals to it as SIGTERM; 75 if a signal stopped it (see module doc)."""
    child = subprocess.Popen(command)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        rc = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc == 0 or not received:
        return 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell reports it
    job = os.environ.get("SLURM_JOB_ID")
    if requeue and job and shutil.which("scontrol"):
        subprocess.run(["scontrol", "requeue", job], check=False)
    print(f"lungseg train-guard: stopped by {signal.Signals(received[0]).name}; the checkpoint in --out-dir "
          f"resumes the run (exit {REQUEUE_EXIT_CODE}{', job requeued' if requeue and job else ''})", file=sys.stderr)
    return REQUEUE_EXIT_CODE


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("lungseg train-guard: error: give the training command after --, e.g. -- torchrun ... -m lungseg train ...",
              file=sys.stderr)
        return 2
    try:
        return run_guarded(command, args.requeue)
    except FileNotFoundError as exc:
        print(f"lungseg train-guard: error: cannot start {command[0]!r}: {exc.strerror}; is it on PATH?", file=sys.stderr)
        return 1
