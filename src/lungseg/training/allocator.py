"""Keep freed memory in the process for CPU training (glibc's malloc).

A PyTorch step on CPU allocates its activations and gradients afresh and frees them at the end. glibc serves
blocks above its mmap threshold (dynamic, from 128 KiB) with ``mmap`` and gives them back with ``munmap``, and
trims the heap's free top back to the system: every step then faults its working set in again, page by page.
On a 2-core machine that made ResNet18 training on 32 x 32 patches about 1.5x slower than with the memory kept
(``benchmarks/bench_classifier.py``; see docs/benchmarks.md). Raising both thresholds keeps freed blocks for the
next step; the process's resident memory stays at its peak instead of shrinking between steps, which suits a job
that runs one model on its node. Sliding-window inference gained nothing measurable from it, so only training
applies it.

Applied once per process, only with glibc (Linux), and not where the user tuned malloc already: a
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES`` setting, or another allocator in
``LD_PRELOAD`` (jemalloc, tcmalloc) is left as it is. ``LUNGSEG_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest on 64-bit: larger blocks are still mmapped
TRIM_THRESHOLD_BYTES = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring); True when they are
    raised now or were by an earlier call, False when left alone (not glibc, turned off, or tuned by the user)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("LUNGSEG_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in USER_SETTINGS) or any(
            lib in os.environ.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        log.debug("malloc tuned by the environment: left as it is")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
    if done:
        log.debug("glibc malloc keeps freed memory (mmap threshold %d MiB, trim threshold %d MiB)",
                  MMAP_THRESHOLD_BYTES >> 20, TRIM_THRESHOLD_BYTES >> 20)
    return done
