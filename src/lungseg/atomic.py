"""Atomic file output: write to a temporary sibling, then rename over the target.

A killed job never leaves a half-written file under the final name, so Snakemake (and users)
only ever see complete outputs. The temporary file is ``.{stem}.tmp{pid}{suffixes}`` next to the
target; one left behind by a killed (SIGKILL, node loss) or crashed writer is removed the next time
the same target is written (the job's rerun), unless its pid is a live process on this host.
Snakemake runs one job per output (and locks the working directory), so no live writer of the same
target runs elsewhere; the pid check only protects concurrent writers on this host (a reused pid just
keeps the file until a later write).

A full disk gives one :class:`DiskFullError` naming the file, the space needed and the space free,
whatever the writer raised (ENOSPC/EDQUOT, or a library's own error while the disk is full).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("lungseg.atomic")

#: the file system counts as full below this many free bytes (after a failed or suspect write)
NEARLY_FULL_BYTES = 1 << 20
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SPACE_MESSAGES = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))  # libraries that drop the errno keep its text


class DiskFullError(OSError):
    """No space left on device while writing a file; ``str()`` is the one-line message for the user."""

    def __str__(self) -> str:
        return str(self.strerror)


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes free to this user on the file system holding ``folder``."""
    return shutil.disk_usage(folder).free


def nearly_full(folder: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``folder`` has less than :data:`NEARLY_FULL_BYTES` free."""
    return free_bytes(folder) < NEARLY_FULL_BYTES


def _mount_point(folder: Path) -> Path:
    path = Path(os.path.realpath(folder))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _megabytes(n_bytes: int) -> str:
    mb = n_bytes / 1e6
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"


def _existing_folder(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full_error(
    target: str | os.PathLike[str],
    *,
    needed_bytes: int = 0,
    needed_is_lower_bound: bool = False,
    quota: bool = False,
) -> DiskFullError:
    """The :class:`DiskFullError` for ``target`` (free space measured now, on the target's file system)."""
    target = Path(target)
    folder = _existing_folder(target.parent)
    mount = _mount_point(folder)
    parts = []
    if needed_bytes > 0:
        parts.append(f"{'more than' if needed_is_lower_bound else 'about'} {_megabytes(needed_bytes)} needed")
    if not quota:
        parts.append(f"{_megabytes(free_bytes(folder))} free on {mount}")
    what = "no space left on device (disk quota exceeded)" if quota else "no space left on device"
    details = f": {', '.join(parts)}" if parts else ""
    message = f"{what} writing {target}{details}; free space or point results: elsewhere"
    return DiskFullError(errno.EDQUOT if quota else errno.ENOSPC, message, str(target))


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def space_errno(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``exc`` (or an exception it chains) says the disk or quota is full, else None."""
    for link in _exception_chain(exc):
        if isinstance(link, OSError) and link.errno in _SPACE_ERRNOS:
            return link.errno
        if isinstance(link, (OSError, RuntimeError)) and any(text in str(link) for text in _SPACE_MESSAGES):
            return errno.EDQUOT if os.strerror(errno.EDQUOT) in str(link) else errno.ENOSPC
    return None


def as_disk_full_error(exc: BaseException) -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` when it is one or says the disk is full (ENOSPC/EDQUOT), else None."""
    if isinstance(exc, DiskFullError):
        return exc
    code = space_errno(exc)
    if code is None:
        return None
    filename = next((link.filename for link in _exception_chain(exc) if getattr(link, "filename", None)), None)
    return disk_full_error(filename or "output", quota=code == errno.EDQUOT)


def temporary_path(target: Path, pid: int | None = None) -> Path:
    """The temporary sibling that process ``pid`` (default: this one) writes ``target`` through."""
    # keep the suffixes so writers that dispatch on extension (SimpleITK, h5py) still work
    return target.with_name(f".{target.stem}.tmp{os.getpid() if pid is None else pid}{''.join(target.suffixes)}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files of ``target`` left by writers that are no longer running; returns them."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.stem)}\.tmp(\d+){re.escape(''.join(target.suffixes))}")
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(target.parent) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if not match or entry.is_dir(follow_symlinks=False):
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
                log.info("removed %s, left by an earlier write of %s that did not finish", entry.path, target)
    return removed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write_failed_for_space(exc: BaseException, tmp: Path, expected_bytes: int) -> int | None:
    """ENOSPC/EDQUOT when the write failed for lack of space (said so, or the disk is full now), else None."""
    code = space_errno(exc)
    if code is not None or not isinstance(exc, (OSError, RuntimeError)):
        return code
    try:
        free = free_bytes(tmp.parent)
    except OSError:
        return None
    return errno.ENOSPC if free < max(NEARLY_FULL_BYTES, expected_bytes - _size(tmp)) else None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, expected_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    Stale temporaries of ``target`` are removed first. ``expected_bytes`` (an estimate of the file's
    size) is checked against the free space before the block runs. Lack of space, before or during
    the block, raises :class:`DiskFullError`; the temporary file never stays behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    if expected_bytes > 0 and free_bytes(target.parent) < expected_bytes:
        raise disk_full_error(target, needed_bytes=expected_bytes)
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except DiskFullError:
        raise
    except Exception as exc:
        code = _write_failed_for_space(exc, tmp, expected_bytes)
        if code is None:
            raise
        # the writer's own figure (DeferredErrorFile), else what it wrote before failing (a lower bound)
        size_needed = max((getattr(link, "bytes_needed", 0) for link in _exception_chain(exc)), default=0)
        written = size_needed or _size(tmp)
        traceback.clear_frames(exc.__traceback__)  # release the failed writer's open file before measuring
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise disk_full_error(
            target,
            needed_bytes=max(expected_bytes, written),
            needed_is_lower_bound=written > expected_bytes and not size_needed,
            quota=code == errno.EDQUOT,
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class DeferredErrorFile(io.FileIO):
    """A new binary file that records its first write error and lets the writer finish as if it had succeeded.

    For libraries left broken by a failed write (HDF5 crashes at exit after one): they finish cleanly,
    then :meth:`raise_deferred_error` raises the error. Writes after the error only move the position.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, "w+")
        self.deferred_error: OSError | None = None
        self.bytes_needed = 0  #: the file's full size: the end of the furthest write, done or skipped

    def write(self, data) -> int:  # noqa: ANN001 - any bytes-like object
        view = memoryview(data).cast("B")
        size, start = view.nbytes, self.tell()
        self.bytes_needed = max(self.bytes_needed, start + size)
        if self.deferred_error is None:
            try:
                while view.nbytes:  # a raw write may be partial (the disk filling up)
                    written = super().write(view)
                    if not written:
                        raise OSError(errno.EIO, "write wrote nothing", self.name)
                    view = view[written:]
                return size
            except OSError as exc:
                self.deferred_error = exc
        self.seek(start + size)
        return size

    def truncate(self, size: int | None = None) -> int:
        try:
            return super().truncate(size)
        except OSError as exc:
            self.deferred_error = self.deferred_error or exc
            return self.tell() if size is None else size

    def raise_deferred_error(self) -> None:
        """Raise the first write error, if there was one (with ``bytes_needed``: the size the file needed)."""
        if self.deferred_error is not None:
            self.deferred_error.bytes_needed = self.bytes_needed
            raise self.deferred_error


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
