"""Which files are 2-D images: by suffix, or (no suffix) by the DICOM magic of a single file."""

from __future__ import annotations

from pathlib import Path

#: raster formats read with Pillow
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
#: single DICOM files (radiographs) read with pydicom
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
#: mask files besides images (a DICOM file is never taken for a mask)
MASK_SUFFIXES = RASTER_SUFFIXES


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _forced_header_has_pixels(path: Path) -> bool:
    """A file without preamble or file meta (old ACR-NEMA style) that pydicom reads with ``force`` as an image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except InvalidDicomError:
        return False
    except Exception:  # noqa: BLE001 - a probe: a forced read of a file that is not DICOM may fail in any way
        return False
    return "Rows" in ds and "Columns" in ds


def is_dicom_file(path: Path) -> bool:
    """A single DICOM file: by suffix, or a file without suffix with the ``DICM`` magic or a forced-readable image header."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    return not path.suffix and path.is_file() and (_has_dicom_magic(path) or _forced_header_has_pixels(path))


def is_image_file(path: str | Path) -> bool:
    """True for a file that ingest reads as one 2-D image (raster suffix, or a single DICOM file)."""
    path = Path(path)
    if path.is_dir():
        return False
    return path.suffix.lower() in RASTER_SUFFIXES or is_dicom_file(path)
