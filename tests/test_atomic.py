"""Atomic writes without a real full disk: stale temporaries, the free-space check, write errors."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import sys
import types

import pytest

from lungseg import cli
from lungseg.atomic import (
    DiskFullError,
    atomic_path,
    remove_stale_temporaries,
    temporary_path,
    write_text_atomic,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _usage(free: int) -> object:
    return lambda _path: shutil._ntuple_diskusage(10**12, 10**12 - free, free)  # noqa: SLF001


def test_stale_temporaries_of_the_target_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "demo002.nii.gz"
    stale = temporary_path(target, pid=_dead_pid())
    assert stale.name.startswith(".demo002.nii.tmp") and stale.name.endswith(".nii.gz")
    stale.write_bytes(b"half a scan")
    other_target = temporary_path(tmp_path / "demo003.nii.gz", pid=_dead_pid())
    other_target.write_bytes(b"someone else's")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert not stale.exists()
    assert other_target.exists()  # only temporaries of the target being written


def test_a_live_writers_temporary_is_kept(tmp_path):
    target = tmp_path / "model.pt"
    own = temporary_path(target)
    own.write_bytes(b"mine")
    assert remove_stale_temporaries(target) == []
    assert own.exists()
    own.unlink()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = temporary_path(target, pid=writer.pid)
        live.write_bytes(b"being written")
        write_text_atomic(target, "x")
        assert live.exists()
    finally:
        writer.kill()
        writer.wait()
    write_text_atomic(target, "y")  # the writer is gone: its temporary is stale now
    assert not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", _usage(free=300_000))
    target = tmp_path / "results" / "c1.h5"
    with pytest.raises(DiskFullError) as info, atomic_path(target, expected_bytes=5_000_000):
        pytest.fail("the block must not run without space for the file")
    message = str(info.value)
    assert message.startswith(f"no space left on device writing {target}: about 5.0 MB needed, 0.3 MB free on /")
    assert message.endswith("free space or point results: elsewhere")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []


def test_enospc_during_the_write_is_one_clear_error(tmp_path):
    target = tmp_path / "c1.h5"
    with pytest.raises(DiskFullError, match=rf"^no space left on device writing {target}: more than"), \
            atomic_path(target) as tmp:
        tmp.write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert list(tmp_path.iterdir()) == []


def test_a_library_error_on_a_full_disk_is_reported_as_full(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError, match="iostream error"), atomic_path(target):
        raise RuntimeError("basic_ios::clear: iostream error")  # plenty of space: not a disk problem
    monkeypatch.setattr(shutil, "disk_usage", _usage(free=4096))
    with pytest.raises(DiskFullError, match=f"writing {target}: 0.0 MB free on "), atomic_path(target):
        raise RuntimeError("basic_ios::clear: iostream error")
    with pytest.raises(ValueError), atomic_path(target):  # not a write error
        raise ValueError("bad value")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_error_survives_pickling(tmp_path):
    with pytest.raises(DiskFullError) as info, atomic_path(tmp_path / "x.txt"):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert "disk quota exceeded" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, DiskFullError) and str(again) == str(info.value)


@pytest.mark.parametrize("error", [
    DiskFullError(errno.ENOSPC, "no space left on device writing out/x.h5: about 3 MB needed", "out/x.h5"),
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/x.dcm"),  # a writer outside atomic_path
])
def test_cli_prints_one_line_for_a_full_disk(monkeypatch, capsys, error):
    def run(_args):
        raise error

    module = types.SimpleNamespace(configure=lambda parser: None, run=run)
    monkeypatch.setitem(sys.modules, "fake_writer", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_writer", "writes a file"))
    assert cli.main(["fake"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("lungseg fake: error: no space left on device writing out/x.")

    def fail_otherwise(_args):
        raise FileNotFoundError(errno.ENOENT, "missing", "x")

    monkeypatch.setattr(module, "run", fail_otherwise)
    with pytest.raises(FileNotFoundError):  # other errors are not taken for a full disk
        cli.main(["fake"])
