"""keep_freed_memory: glibc serves large blocks from the heap (no mmap per block) once applied; the user's own
malloc settings and the opt-out are respected."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only (Linux)")

# In a fresh process: apply (or not), then count the mmapped blocks (mallinfo2().hblks) before and after
# malloc(8 MiB); glibc's default serves that with mmap, the raised threshold from the heap.
PROBE = """
import ctypes, sys
from lungseg.training.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
applied = keep_freed_memory()
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
print(applied, libc.mallinfo2().hblks - before)
"""


def probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LUNGSEG_KEEP_FREED_MEMORY")}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    applied, new_mmapped_blocks = proc.stdout.split()
    return applied, int(new_mmapped_blocks)


def test_applied_large_blocks_come_from_the_heap() -> None:
    assert probe() == ("True", 0)


def test_opt_out_leaves_glibc_default() -> None:
    assert probe(LUNGSEG_KEEP_FREED_MEMORY="0") == ("False", 1)


def test_the_users_own_malloc_setting_is_kept() -> None:
    assert probe(MALLOC_MMAP_THRESHOLD_=str(1 << 20)) == ("False", 1)
