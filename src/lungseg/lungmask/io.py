"""Inputs and outputs of ``lungseg lung-mask``: scans in, masks (NIfTI / HDF5) and QA out.

The mask HDF5 file (format ``lungseg-lungmask``, version 1)::

    /                 attrs: format, format_version, case_id (pseudonymous, may be empty), method,
                             label_values ("0 background, 1 right lung, 2 left lung" or "0, 1 lung"),
                             lungseg_version, spacing / origin / direction (as in the case file)
    /lung_mask        uint8 (z, y, x) on the scan's grid, one chunk per slice, lzf-compressed
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lungseg import __version__
from lungseg.casefile import FORMAT as CASE_FORMAT
from lungseg.casefile import create_h5, read_case
from lungseg.geometry import Geometry
from lungseg.lungmask.methods import resolve_method

FORMAT = "lungseg-lungmask"
FORMAT_VERSION = 1
DATASET = "lung_mask"
LABEL_VALUES = {
    "threshold_3d": "0 background, 1 right lung, 2 left lung",
    "per_slice_otsu": "0 background, 1 lung",
}


@dataclass
class Scan:
    hu: np.ndarray  #: int16 (z, y, x) Hounsfield units
    geometry: Geometry
    case_id: str  #: pseudonymous id of an ingested case, "" for a raw scan


def _is_case_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() in (".h5", ".hdf5")):
        return False
    with h5py.File(path, "r") as f:
        return f.attrs.get("format") == CASE_FORMAT


def read_input(path: Path) -> Scan:
    """An ingested case (.h5), a DICOM series folder or an ITK-readable volume (NIfTI, NRRD, MHA)."""
    path = Path(path)
    if _is_case_file(path):
        case = read_case(path, labels=False)
        return Scan(case.image, case.geometry, case.case_id)
    from lungseg.ingest.scan import read_scan  # imported here: pulls in the DICOM stack

    hu, geometry, _ = read_scan(path)
    return Scan(hu, geometry, "")


def write_mask_h5(path: Path, mask: np.ndarray, geometry: Geometry, case_id: str, method: str) -> None:
    """Write the mask and its geometry to ``path`` atomically (layout in the module docstring)."""
    method = resolve_method(method)
    with create_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["case_id"] = case_id
        f.attrs["method"] = method
        f.attrs["label_values"] = LABEL_VALUES[method]
        f.attrs["lungseg_version"] = __version__
        for key, value in geometry.as_attrs().items():
            f.attrs[key] = value
        f.create_dataset(DATASET, data=np.asarray(mask, dtype=np.uint8), chunks=(1, *mask.shape[1:]),
                         compression="lzf")


def read_mask_h5(path: Path) -> tuple[np.ndarray, Geometry, dict]:
    """The mask, its geometry and the file's attributes."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a lungseg lung-mask file (format attr missing)")
        attrs = {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in f.attrs.items()}
        return f[DATASET][()], Geometry.from_attrs(f.attrs), attrs
