"""Timing shared by the benchmark scripts: callables taking turns, best CPU and wall time of each."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_times(work: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """``{"cpu": {name: s}, "wall": {name: s}}``: the best of ``repeats`` rounds in which every callable
    runs once, in turn, so load changes on a shared machine hit all alike.

    CPU time (``time.process_time``, this process only) is the figure that counts on a shared machine:
    other processes do not inflate it as they inflate wall time.
    """
    cpu = {name: float("inf") for name in work}
    wall = dict(cpu)
    for _ in range(repeats):
        for name, fn in work.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[name] = min(cpu[name], time.process_time() - c0)
            wall[name] = min(wall[name], time.perf_counter() - w0)
    return {"cpu": cpu, "wall": wall}
