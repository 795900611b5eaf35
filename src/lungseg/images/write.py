"""A predicted mask (or probability map) of a 2-D image written as a raster file in the image's own pixel grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungseg.atomic import atomic_path

#: raster formats a mask can be written in (lossless only: no JPEG)
MASK_OUTPUT_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")


def is_raster_output(path: str | Path) -> bool:
    """True when ``path`` names a raster file (``lungseg predict -o mask.png``) rather than a volume."""
    return Path(path).suffix.lower() in MASK_OUTPUT_SUFFIXES


def write_mask_image(path: str | Path, mask: np.ndarray, *, binary_as_255: bool = True) -> None:
    """Write a one-slice (1, H, W) or (H, W) uint8 mask atomically; a 0/1 mask is written 0/255 (``binary_as_255``),
    other values (1 right / 2 left, a 0..255 probability map) as they are."""
    path = Path(path)
    if path.suffix.lower() not in MASK_OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: a mask is written as {', '.join(MASK_OUTPUT_SUFFIXES)} (lossless), not {path.suffix}")
    array = np.asarray(mask)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"{path}: a {array.shape[0]}-slice mask cannot be written as one 2-D image; write .nii.gz")
        array = array[0]
    array = array.astype(np.uint8)
    if binary_as_255 and array.max(initial=0) <= 1:
        array = array * np.uint8(255)
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="L").save(tmp, format={".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(),
                                                                                          path.suffix.lstrip(".").upper()))
