"""The lint gate of `make lint`, in the test suite so that CI enforces it: ruff on the Python code
(configured in pyproject.toml) and snakefmt on the Snakemake rules. (`snakemake --lint` runs in
tests/test_workflow.py on a finished demo run.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed: `pip install -e '.[test]'` installs it (make test does)")
    return path


def test_ruff_is_clean() -> None:
    proc = subprocess.run([tool("ruff"), "check", "src", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_rules_are_snakefmt_formatted() -> None:
    proc = subprocess.run([tool("snakefmt"), "--check", "--line-length", "120", "Snakefile", "workflow/rules"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
