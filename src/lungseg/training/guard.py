"""``lungseg train-guard``: run a training command so that a preempted / time-limited job can requeue.

``lungseg train-guard [--requeue] -- torchrun ... -m lungseg train ...`` (or ``-- lungseg launch ...``)
runs the command. SIGTERM, SIGUSR1 or SIGINT to this process (``sbatch --signal=B:USR1@120`` targets
it) is passed on to the command once, as SIGTERM; torchrun forwards SIGTERM and SIGUSR1 to the
training processes (the guard adds SIGUSR1 to torchrun's ``PET_SIGNALS_TO_HANDLE``). Whichever
process of the job gets the signal (``scancel`` and the time limit reach all of them), the training
processes stop after the same step, write a checkpoint and record the stop in the file the guard
names in ``$LUNGSEG_STOP_MARKER``. The guard then exits with 75 (EX_TEMPFAIL: requeue; the next start
resumes from the checkpoint) and one line, with ``--requeue`` after ``scontrol requeue $SLURM_JOB_ID``.
The command's stderr passes through as it comes, except torchrun's report of a stop (its error lines
and closing traceback). Without a stop it exits with the command's own status. No torch import here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lungseg.training.preemption import REQUEUE_EXIT_CODE, STOP_MARKER_ENV, read_stop

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
#: torchrun's default signals to handle plus SIGUSR1, which would otherwise kill it and orphan the workers
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
TRACEBACK = b"Traceback (most recent call last):"
ELASTIC_ERROR = re.compile(rb"E\d{4} .*torch/distributed/elastic/")  # torchrun's "failed (exitcode: 75)" lines

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


class StopReportFilter:
    """Copies the command's stderr as it comes; once the run has stopped, drops torchrun's report of
    the stop: its elastic error lines, and everything from a traceback on."""

    def __init__(self, out: BinaryIO, stopped: Callable[[], bool]) -> None:
        self.out, self.stopped = out, stopped
        self.held = b""  # the start of a line after the stop, until its end shows whether it is kept
        self.line: str | None = None  # the current line: "keep", "drop" or "rest" (drop to the end); None: not begun

    def write(self, data: bytes) -> None:
        for piece in re.split(rb"(?<=\n)", data):
            if piece:
                self._piece(piece)
        self.out.flush()

    def close(self) -> None:
        """The stream has ended: decide on a held last line without a newline."""
        if self.held:
            self._piece(b"", last=True)
        self.out.flush()

    def _piece(self, piece: bytes, last: bool = False) -> None:
        if self.line is None:
            self.held += piece
            stopped = self.stopped()
            if stopped and not (last or self.held.endswith(b"\n")):
                return
            self.line = self._verdict(self.held) if stopped else "keep"
            piece, self.held = self.held, b""
        if self.line == "keep":
            self.out.write(piece)
        if piece.endswith(b"\n") and self.line != "rest":
            self.line = None

    @staticmethod
    def _verdict(line: bytes) -> str:
        return "rest" if line.startswith(TRACEBACK) else "drop" if ELASTIC_ERROR.match(line) else "keep"


def run_guarded(command: list[str], requeue: bool = False) -> int:
    """Run ``command``; 75 if a signal stopped it (see module doc), else its exit status."""
    with tempfile.TemporaryDirectory(prefix="lungseg-train-guard-") as tmp:
        marker = Path(tmp) / "stopped"
        env = {**os.environ, STOP_MARKER_ENV: str(marker),
               "PET_SIGNALS_TO_HANDLE": os.environ.get("PET_SIGNALS_TO_HANDLE", TORCHRUN_SIGNALS)}
        child = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
        received: list[int] = []

        def forward(signum: int, _frame: object) -> None:
            received.append(signum)
            if len(received) == 1 and child.poll() is None:  # once: a second SIGTERM would cut torchrun's shutdown short
                child.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        try:
            report = StopReportFilter(sys.stderr.buffer, lambda: bool(received) or marker.exists())
            while data := os.read(child.stderr.fileno(), 65536):
                report.write(data)
            report.close()
            rc = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            child.stderr.close()
        stop = read_stop(marker)
    if rc == 0 or not (received or stop):
        return 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell reports it
    job = os.environ.get("SLURM_JOB_ID")
    if requeue and job and shutil.which("scontrol"):
        subprocess.run(["scontrol", "requeue", job], check=False)
    name = signal.Signals(received[0]).name if received else stop
    resume = ("the training wrote its checkpoint in --out-dir: the same command resumes it" if stop else
              "the same command resumes the run from the checkpoint in --out-dir, if it wrote one")
    print(f"lungseg train-guard: stopped by {name}; {resume} (exit {REQUEUE_EXIT_CODE}"
          f"{', job requeued' if requeue and job else ''})", file=sys.stderr, flush=True)
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
