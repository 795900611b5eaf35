"""A truly full disk (a 2 MB tmpfs): one clear error naming the file, no leftover temporary file, no crash.

HDF5 writes run in a subprocess: a failed HDF5 write used to crash the interpreter at exit (exit 139).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lungseg.atomic import DiskFullError, temporary_path
from lungseg.geometry import Geometry, write_volume
from lungseg.training import checkpoint
from lungseg.training.checkpoint import save_checkpoint

LUNGSEG = [sys.executable, "-m", "lungseg"]
GEOM = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
MB = 1_000_000


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB file system (tmpfs) at ``tmp_path/small``."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({exc}); needs root and mount permission")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {done.stderr.strip()} (needs root and mount permission)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def _lungseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LUNGSEG, *args], capture_output=True, text=True, timeout=120)


def test_ingest_onto_a_full_disk_fails_the_job_with_one_line(small_disk, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    write_volume(str(scan), _noise((24, 256, 256)), GEOM)  # 3.1 MB of image: does not fit
    output, status = small_disk / "c1.h5", tmp_path / "c1.json"
    proc = _lungseg("ingest", str(scan), "--case-id", "c1", "-o", str(output), "--status", str(status))
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"lungseg ingest: error: no space left on device writing {output}: about 3.2 MB needed, "
                      f"2.1 MB free on {small_disk}; free space or point results: elsewhere"]
    assert "Traceback" not in proc.stderr
    assert not status.exists()  # a full disk is not the case's fault: no quarantine
    assert list(small_disk.iterdir()) == []


def test_a_failed_hdf5_write_neither_crashes_nor_leaves_its_temporary(small_disk):
    # compressed data passes the free-space check (its size is unknown up front) and fills the disk while written
    script = textwrap.dedent(f"""
        import numpy as np
        from lungseg.casefile import CaseVolume, write_case
        from lungseg.geometry import Geometry
        from lungseg.lungmask.io import write_mask_h5
        geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        image = np.random.default_rng(0).integers(-1000, 1000, (24, 256, 256)).astype(np.int16)
        try:
            write_case({str(small_disk / 'c1.h5')!r}, CaseVolume("c1", image, geometry), compress_image=True)
        except OSError as exc:
            print(type(exc).__name__, exc)
        mask = np.random.default_rng(1).integers(0, 256, (48, 256, 256)).astype(np.uint8)
        try:
            write_mask_h5({str(small_disk / 'm1.h5')!r}, mask, geometry, "c1", "default")
        except OSError as exc:
            print(type(exc).__name__, exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("c1.h5", "m1.h5")):
        assert line.startswith(f"DiskFullError no space left on device writing {small_disk / name}: about ")
        needed = float(line.split("about ")[1].split(" MB")[0])
        assert needed > 2.1  # what the whole file needed, not what fitted
    assert list(small_disk.iterdir()) == []


def test_checkpoint_that_does_not_fit(small_disk, monkeypatch):
    target = small_disk / "model.pt"
    state = {"state_dict": {"w": torch.zeros(1_000_000)}, "epoch": 3}  # 4 MB
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(target, state)
    assert str(info.value).startswith(f"no space left on device writing {target}: about 4.1 MB needed, 2.1 MB free")
    monkeypatch.setattr(checkpoint, "saved_size_estimate", lambda _state: 0)  # torch finds out while writing
    with pytest.raises(DiskFullError, match=rf"^no space left on device writing {target}: more than 2.\d MB needed"):
        save_checkpoint(target, state)
    assert list(small_disk.iterdir()) == []
    save_checkpoint(target, {"w": torch.zeros(1000)})  # what fits is written
    assert checkpoint.load_checkpoint(target)["w"].shape == (1000,)


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.nii", "mask.nrrd"])
def test_volume_that_does_not_fit_is_not_written_truncated(small_disk, name):
    target = small_disk / name
    with pytest.raises(DiskFullError, match=f"^no space left on device writing {target}: more than"):
        write_volume(str(target), _noise((40, 256, 256)), GEOM)  # 5.2 MB, incompressible
    assert list(small_disk.iterdir()) == []


def test_rerun_removes_the_temporary_of_a_killed_write(small_disk, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    write_volume(str(scan), _noise((8, 256, 256)), GEOM)  # 1 MB
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    stale = temporary_path(small_disk / "c1.h5", pid=killed.pid)
    stale.write_bytes(os.urandom(1_500_000))  # what a killed ingest left: no room for the rerun
    proc = _lungseg("ingest", str(scan), "--case-id", "c1", "-o", str(small_disk / "c1.h5"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in small_disk.iterdir()] == ["c1.h5"]
