"""Mask files of 2-D images -> uint8 labels on the image's pixel grid.

Accepted mask files (PNG, GIF, TIFF, BMP; JPEG only if its values stay exact):

* grey masks whose values are a subset of {0, 255} or {0, 1} -> 0/1; of {0, 1, 2} -> kept (1 right, 2 left);
* bilevel (mode ``1``) masks -> 0/1;
* palette (GIF/PNG ``P``) and RGB(A) masks whose used colours are black and at most one other colour
  (white, or any single colour) -> 0/1; more colours are refused (a label map with colours per class
  needs converting first); alpha is dropped.

Any other value set (anti-aliased edges, 0..255 grey) is refused with a line naming the file.

Label names given to ingest (``--label NAME=MASK``, sheet columns ``label_NAME``) combine as follows:
``NAME_right`` + ``NAME_left`` -> ``NAME`` with 1 = right, 2 = left (the patient's sides: on a PA
radiograph the patient's right lung is on the image's left); ``NAME_partN`` masks (several masks per
image, e.g. ``_mask`` and ``_mask_1`` files) are added to ``NAME`` (their union).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lungseg.ingest.errors import IngestError

_SIDE = re.compile(r"^(?P<name>.+)_(?P<side>right|left)$")
_PART = re.compile(r"^(?P<name>.+)_part\d+$")
_ALLOWED = ({0, 255}, {0, 1}, {0, 1, 2})


def _refuse(path: Path, reason: str) -> IngestError:
    return IngestError(path, reason, "give a mask with values 0/1 or 0/255 (black/white), the size of its image")


def _colour_mask(path: Path, rgb: np.ndarray) -> np.ndarray:
    flat = rgb.reshape(-1, rgb.shape[-1])
    colours = np.unique(flat, axis=0)
    others = [c for c in colours if c.any()]
    if len(others) > 1:
        shown = ", ".join(str(tuple(int(v) for v in c)) for c in colours[:4])
        raise _refuse(path, f"is a colour mask with {len(colours)} colours ({shown}{', ...' if len(colours) > 4 else ''}), "
                            "more than black and one foreground colour")
    return rgb.any(axis=-1).astype(np.uint8)


def _values(array: np.ndarray) -> list[int]:
    """The distinct values of an integer mask (a histogram for 8-bit masks: several times faster than np.unique)."""
    if array.dtype == np.uint8:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=256)).tolist()
    return np.unique(array).tolist()


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as uint8 (H, W) 0/1 (or 0/1/2 when it holds sides); ``shape``: the image's (H, W), checked."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "does not exist", "check the mask path")
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise _refuse(path, f"holds {im.n_frames} frames (a 3-D mask given to the 2-D image source)")
            im.load()
            mode = im.mode
            if mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except IngestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise IngestError(path, f"cannot be read as a mask image ({type(exc).__name__}: {exc})",
                          "re-export the mask as PNG") from None
    if array.ndim == 3:
        mask = _colour_mask(path, array)
    elif array.dtype == bool:
        mask = array.astype(np.uint8)
    else:
        values = set(_values(array))
        if not any(values <= allowed for allowed in _ALLOWED):
            shown = sorted(values)
            raise _refuse(path, f"has values {shown[:6]}{' ...' if len(shown) > 6 else ''} outside the label set "
                                "0/1, 0/255 or 0/1/2 (anti-aliased or a grey image?)")
        mask = (array > 0).astype(np.uint8) if values <= {0, 255} else array.astype(np.uint8)
    if shape is not None and mask.shape != tuple(shape):
        raise IngestError(path, f"is {mask.shape[1]}x{mask.shape[0]} pixels, its image {shape[1]}x{shape[0]}",
                          "give the mask drawn on this image (same width and height)")
    return mask


def combine_labels(masks: dict[str, np.ndarray], paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Label name -> mask after combining ``NAME_right``/``NAME_left`` and ``NAME_partN`` (module docstring)."""
    out: dict[str, np.ndarray] = {}
    notes: list[str] = []
    sides: dict[str, dict[str, str]] = {}
    for name in sorted(masks):
        side, part = _SIDE.match(name), _PART.match(name)
        if side:
            sides.setdefault(side["name"], {})[side["side"]] = name
        elif part:
            base = part["name"]
            part_mask = (masks[name] > 0).astype(np.uint8)
            out[base] = np.maximum(out[base], part_mask) if base in out else part_mask
            notes.append(f"label {base}: mask {name} added (union of several masks)")
        else:
            out[name] = np.maximum(out[name], masks[name]) if name in out else masks[name]
    for base, names in sides.items():
        if set(names) != {"right", "left"}:
            missing = ({"right", "left"} - set(names)).pop()
            raise IngestError(paths[next(iter(names.values()))], f"has no {missing} counterpart for label {base}",
                              f"give both {base}_right and {base}_left masks, or one {base} mask")
        right, left = masks[names["right"]] > 0, masks[names["left"]] > 0
        overlap = int((right & left).sum())
        if overlap:
            raise IngestError(paths[names["left"]], f"overlaps the right mask in {overlap} pixels",
                              "give right and left masks that do not overlap")
        if base in out:
            raise IngestError(paths[names["right"]], f"label {base} given both whole and as right/left masks",
                              "give either one mask or the right/left pair")
        out[base] = (right * 1 + left * 2).astype(np.uint8)
        notes.append(f"label {base}: right and left masks combined (1 right, 2 left)")
    return out, notes
