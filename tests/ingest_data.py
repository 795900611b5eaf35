"""Small DICOM series for the ingest tests: demo slices, edited with pydicom into good and bad inputs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate

from lungseg.demo.cohort import DemoCase, write_demo_case

SEED = 11
SLICES = 12
SIZE = 48
INSTANCE_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def demo_case(root: Path, case_id: str = "demo001", slices: int = SLICES, size: int = SIZE) -> DemoCase:
    return write_demo_case(case_id, root, SEED, n_slices=slices, size=size)


def copy_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def slice_files(folder: Path) -> list[Path]:
    """The files of a demo series sorted by z (ascending ImagePositionPatient z)."""
    files = sorted(Path(folder).glob("*.dcm"))
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def edit(files: list[Path], change: Callable[[pydicom.Dataset, int], None]) -> None:
    """Apply ``change(ds, index)`` to each file and save it in place."""
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        change(ds, k)
        ds.save_as(path, enforce_file_format=True)


def identifiers(folder: Path) -> set[str]:
    """Instance UIDs of every file of a series (values that must never leave the DICOM files)."""
    out = set()
    for path in Path(folder).rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.update(str(ds.get(k)) for k in INSTANCE_UID_KEYWORDS if ds.get(k))
        out.add(str(ds.file_meta.MediaStorageSOPInstanceUID))
    return out


def encapsulate_frames(ds: pydicom.Dataset, frames: list[bytes], syntax: str) -> None:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


def jpeg_lossless_encode(ds: pydicom.Dataset) -> bytes:
    """JPEG lossless (process 14, selection value 1) of one slice's stored values, via imagecodecs."""
    import imagecodecs

    stored = ds.pixel_array
    return imagecodecs.jpeg8_encode(
        stored.view(np.uint16), lossless=True, predictor=1, bitspersample=int(ds.BitsStored)
    )
