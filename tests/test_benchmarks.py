"""The benchmark scripts (run on demand, not in CI) at least import and parse their options."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("bench_*.py"))


def test_every_benchmark_is_found():
    assert {p.name for p in SCRIPTS} >= {"bench_ingest.py", "bench_lungmask.py", "bench_training.py", "bench_inference.py",
                                         "bench_fanout.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_help(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
