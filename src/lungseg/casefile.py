"""The per-case HDF5 file: the one contract between ingest and every later stage.

Layout (version 1)::

    /                 attrs: format="lungseg-case", format_version=1, case_id (pseudonymous),
                             lungseg_version, spacing (3 x float64, mm, x/y/z),
                             origin (3 x float64, LPS mm), direction (9 x float64, row-major),
                             plus free-form provenance attrs (never patient identifiers)
    /image            int16 (z, y, x) Hounsfield units; slices ordered along the slice normal;
                      chunked one slice per chunk, lzf-compressed
    /labels/<name>    uint8 (z, y, x) on the image grid, e.g. labels/lung (1 = left/right lungs,
                      or 1/2 when sides are split), labels/nodule (0/1)

Everything is written atomically (temporary file + rename).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from lungseg import __version__
from lungseg.atomic import atomic_path
from lungseg.geometry import Geometry

FORMAT = "lungseg-case"
FORMAT_VERSION = 1


@dataclass
class CaseVolume:
    case_id: str
    image: np.ndarray  # int16 HU, (z, y, x)
    geometry: Geometry
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, str | int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"case {self.case_id}: image must be (z, y, x), got shape {self.image.shape}")
        for name, label in self.labels.items():
            if label.shape != self.image.shape:
                raise ValueError(
                    f"case {self.case_id}: label '{name}' has shape {label.shape}, "
                    f"image has {self.image.shape}; resample the label onto the image grid first"
                )


def _slice_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape[1:])


def write_case(path: str | Path, case: CaseVolume) -> None:
    """Write ``case`` to ``path`` atomically (see the module docstring for the layout)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["case_id"] = case.case_id
        f.attrs["lungseg_version"] = __version__
        for key, value in case.geometry.as_attrs().items():
            f.attrs[key] = value
        for key, value in case.provenance.items():
            f.attrs[key] = value
        f.create_dataset(
            "image",
            data=np.asarray(case.image, dtype=np.int16),
            chunks=_slice_chunks(case.image.shape),
            compression="lzf",
        )
        group = f.create_group("labels")
        for name, label in case.labels.items():
            group.create_dataset(
                name,
                data=np.asarray(label, dtype=np.uint8),
                chunks=_slice_chunks(label.shape),
                compression="lzf",
            )


def open_case(path: str | Path) -> h5py.File:
    """Open a case file read-only (for lazy slice access); checks the format marker."""
    f = h5py.File(path, "r")
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise ValueError(f"{path} is not a lungseg case file (format attr missing); re-run `lungseg ingest`")
    return f


def read_geometry(path: str | Path) -> Geometry:
    with open_case(path) as f:
        return Geometry.from_attrs(f.attrs)


def read_case(path: str | Path, labels: bool = True) -> CaseVolume:
    """Read a whole case file into memory."""
    with open_case(path) as f:
        geometry = Geometry.from_attrs(f.attrs)
        label_arrays = {name: ds[()] for name, ds in f["labels"].items()} if labels else {}
        reserved = {"format", "format_version", "case_id", "lungseg_version", "spacing", "origin", "direction"}
        provenance = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items() if k not in reserved}
        return CaseVolume(
            case_id=str(f.attrs["case_id"]),
            image=f["image"][()],
            geometry=geometry,
            labels=label_arrays,
            provenance=provenance,
        )
