"""Graceful stop on SIGTERM / SIGUSR1 (what SLURM sends before a time limit or on preemption).

The handler only records the signal; the training loop checks :attr:`StopRequest.signum` between
steps (all-reduced: a signal to any training process stops all of them after the same step), writes a
checkpoint, records the stop in the file named by :data:`STOP_MARKER_ENV` and raises
:class:`TrainingInterrupted`; the command line then exits with :data:`REQUEUE_EXIT_CODE` so that a job
script (or ``lungseg train-guard``) can requeue the job, and the next start resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger("lungseg.train")

#: exit status of a run stopped by a signal after saving its checkpoint (sysexits EX_TEMPFAIL: retry)
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: environment variable naming the file in which a training stopped by a signal records the signal's
#: name once its checkpoint is written (set by ``lungseg train-guard``, passed on by torchrun)
STOP_MARKER_ENV = "LUNGSEG_STOP_MARKER"


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signum: int, checkpoint: str, epoch: int, step: int) -> None:
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}; resumable checkpoint "
            f"{checkpoint} written. Run the same command again to resume (exit code {REQUEUE_EXIT_CODE}: requeue)"
        )


class StopRequest:
    """Context manager: while active, SIGTERM / SIGUSR1 set :attr:`signum` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._unannounced = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        # only record: logging here could re-enter a log write the signal interrupted (a "Logging error" that
        # swallowed the run's last lines); the training loop announces it at its next check (adopt)
        if self.signum is None:
            self.signum = signum
            self._unannounced = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def adopt(self, signum: int) -> bool:
        """Take on ``signum``, the stop signal agreed over the training processes (0: none); whether to stop now.

        Only the agreed value decides, so that all processes stop after the same step: a signal that
        reaches this process after the agreement waits for the next one.
        """
        if self._unannounced:
            self._unannounced = False
            log.warning("received %s: stopping after the current step with a checkpoint", signal.Signals(self.signum).name)
        if signum and self.signum is None:
            self.signum = signum
        return signum > 0


def record_stop(signum: int) -> None:
    """Write the signal's name to the file named by ``$LUNGSEG_STOP_MARKER`` (nothing when unset).

    A process on another node than ``lungseg train-guard`` finds no folder for it there and writes nothing.
    """
    path = os.environ.get(STOP_MARKER_ENV)
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(signal.Signals(signum).name + "\n")
        os.replace(tmp, path)
    except FileNotFoundError:
        pass


def read_stop(path: str | os.PathLike[str]) -> str | None:
    """The signal name :func:`record_stop` wrote to ``path``; ``None`` when the training did not stop on one."""
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
