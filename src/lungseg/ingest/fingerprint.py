"""A cheap fingerprint of a scan folder, so that the workflow can list one folder instead of every slice.

The ingest rule takes a DICOM series folder as one input (its mtime changes when a file is added,
removed or renamed) and this fingerprint as a parameter (it changes when any file's size or mtime
changes, symbolic links followed): Snakemake reruns the case on either, as it did when each slice was an
input, without building 250 000 input objects for a 1000-case cohort. One ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import os


def _walk(folder: str, seen: set[str]):
    real = os.path.realpath(folder)
    if real in seen:  # a link cycle or a folder linked twice
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                yield from _walk(entry.path, seen)
            elif entry.is_file():
                info = entry.stat()
                yield entry.path, info.st_size, info.st_mtime_ns
        except OSError:  # vanished or dangling: the ingest job reports it
            yield entry.path, -1, -1


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """Hex digest over (path below ``folder``, size, mtime) of every non-hidden file; empty for no folder."""
    folder = str(folder)
    if not os.path.isdir(folder):
        return ""
    digest = hashlib.sha256()
    for path, size, mtime in _walk(folder, set()):
        digest.update(f"{os.path.relpath(path, folder)}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:32]
