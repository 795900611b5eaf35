"""Atomic file output: write to a temporary sibling, then rename over the target.

A killed job never leaves a half-written file under the final name, so Snakemake (and users)
only ever see complete outputs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the suffixes so writers that dispatch on extension (SimpleITK, h5py) still work
    tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}{''.join(target.suffixes) or ''}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
