"""lungseg: chest CT (DICOM) to lung / nodule segmentation models, predictions, metrics and a report.

The Python API (:mod:`lungseg.api`) is available at the top level, loaded on first use so that
``import lungseg`` stays light (no torch)::

    import lungseg
    scan = lungseg.read_scan("patient01/dicom")
    lungs = lungseg.lung_mask(scan)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: names of :mod:`lungseg.api` re-exported here (kept equal to ``lungseg.api.__all__`` by a test)
_API = ("Geometry", "Scan", "Segmenter", "lung_mask", "metrics", "read_scan", "write_mask")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("lungseg.api"), name)
    if name == "api":
        return importlib.import_module("lungseg.api")
    raise AttributeError(f"module 'lungseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
