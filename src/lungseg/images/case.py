"""One 2-D image + its masks -> a one-slice case (the per-case HDF5 contract of :mod:`lungseg.casefile`).

The image becomes ``/image`` int16 (1, H, W) with the normalised intensity 0..1000 of
:mod:`lungseg.images.read` (attribute ``intensity = "normalised_0_1000"``, never Hounsfield units);
the geometry is spacing (x, y, 1.0) mm, origin 0 and identity direction (``spacing_known = 0`` and
spacing 1.0 when the file gave none); masks become ``/labels/<name>`` (1, H, W) (see
:mod:`lungseg.images.masks` for the accepted files and how right/left and several masks combine).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lungseg.casefile import CaseVolume
from lungseg.geometry import Geometry
from lungseg.images.masks import combine_labels, read_mask
from lungseg.images.read import read_image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def image_geometry(spacing_xy: tuple[float, float]) -> Geometry:
    """The geometry of a one-slice image case: in-plane spacing, 1 mm thick, origin 0, identity direction."""
    return Geometry(spacing=(float(spacing_xy[0]), float(spacing_xy[1]), 1.0), origin=(0.0, 0.0, 0.0), direction=IDENTITY)


def ingest_image(case_id: str, image_path: str | Path, labels: dict[str, Path] | None = None, *,
                 voi: str = "apply") -> CaseVolume:
    """Read ``image_path`` and its masks (label name -> file) into a one-slice :class:`CaseVolume`."""
    image = read_image(image_path, voi=voi)
    shape = image.pixels.shape
    paths = {name: Path(p) for name, p in (labels or {}).items()}
    masks = {name: read_mask(path, shape) for name, path in paths.items()}
    combined, notes = combine_labels(masks, paths)
    provenance = {"source_kind": "image2d", "n_slices": 1, **image.provenance}
    if image.spacing is None:
        notes.append("pixel spacing unknown: 1.0 mm assumed (distances such as HD95 are in pixels)")
    if notes:
        provenance["ingest_notes"] = json.dumps(notes)
    return CaseVolume(
        case_id=case_id,
        image=image.pixels[None],
        geometry=image_geometry(image.spacing_xy),
        labels={name: mask[None].astype(np.uint8) for name, mask in combined.items()},
        provenance=provenance,
    )
