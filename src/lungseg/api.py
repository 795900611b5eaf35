"""lungseg's Python API: read a scan, mask its lungs, segment it with trained models, score masks.

Every function here calls the code behind the command-line tools, so the results are the same voxel
for voxel: :func:`lung_mask` is ``lungseg lung-mask``, :meth:`Segmenter.predict_file` is
``lungseg predict`` and :func:`metrics` gives the numbers of ``lungseg evaluate``. Masks are numpy
``(z, y, x)`` arrays on the scan's own grid. ``import lungseg`` stays light: torch is imported only
when a :class:`Segmenter` is made.

Example::

    import lungseg

    scan = lungseg.read_scan("patient01/dicom")          # DICOM folder, .nii.gz/.mha/.nrrd or ingested .h5
    lungs = lungseg.lung_mask(scan)                       # 1 right lung, 2 left lung
    lungseg.write_mask(lungs, scan.geometry, "lungs.nii.gz")
    model = lungseg.Segmenter("results/model/lung/model.pt")   # or a list of models: an ensemble
    pred = model.predict(scan)                            # uint8 0/1 on the scan's grid
    model.predict_file("patient02.nii.gz", "patient02_lung.nii.gz")  # written in that scan's geometry
    print(lungseg.metrics(pred, lungs, scan.geometry)["dice"])
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungseg.casefile import QuarantinedCaseError
from lungseg.geometry import Geometry, write_volume
from lungseg.ingest.errors import IngestError, quarantined_error
from lungseg.lungmask import cli as _lung_mask_cli
from lungseg.lungmask import io as _lung_mask_io

if TYPE_CHECKING:  # torch stays out of `import lungseg.api`
    import torch

__all__ = ["Geometry", "Scan", "Segmenter", "lung_mask", "metrics", "read_scan", "write_mask"]

PathLike = str | os.PathLike


@dataclass
class Scan(_lung_mask_io.Scan):
    """A CT scan: ``hu`` (int16 ``(z, y, x)`` Hounsfield units), its ``geometry`` (spacing, origin and
    direction, ITK/LPS) and ``case_id`` (pseudonymous id of an ingested case, ``""`` otherwise).

    Build one from an array with ``Scan(hu, Geometry(spacing_xyz, origin_xyz, direction_9))``.
    """

    case_id: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def read_scan(path: PathLike) -> Scan:
    """Read a DICOM series folder, a CT volume (NIfTI, NRRD, MHA) or an ingested case (``.h5``).

    The same reader as ``lungseg ingest``, ``lungseg lung-mask`` and ``lungseg predict``: HU as int16,
    geometry from the files. A bad input raises :class:`lungseg.ingest.errors.IngestError`.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(path, "does not exist", "give a DICOM series folder, a CT volume or an ingested .h5 case")
    try:
        scan = _lung_mask_io.read_input(path)
    except QuarantinedCaseError as exc:
        raise quarantined_error(path) from exc
    return Scan(scan.hu, scan.geometry, scan.case_id)


def _as_scan(scan: Scan | PathLike) -> Scan:
    return scan if isinstance(scan, _lung_mask_io.Scan) else read_scan(scan)


def default_lung_mask_method() -> str:
    """The method ``lungseg lung-mask`` uses when none is given."""
    parser = argparse.ArgumentParser()
    _lung_mask_cli.configure(parser)
    return parser.get_default("method")


def lung_mask(scan: Scan | PathLike, method: str | None = None) -> np.ndarray:
    """The classical (non-learned) lung mask of a scan, on its grid, exactly as ``lungseg lung-mask``.

    ``method`` defaults to the command's default (right lung 1, left lung 2); the other methods are
    the command's ``--method`` choices. A scan without lungs gives an empty mask, not an error.
    """
    scan = _as_scan(scan)
    method = method or default_lung_mask_method()
    return _lung_mask_cli.compute_mask(scan.hu, scan.geometry, method).mask


def write_mask(mask: np.ndarray, geometry: Geometry | Scan, path: PathLike) -> Path:
    """Write a ``(z, y, x)`` mask with ``geometry`` (or a scan's) to ``path`` (format by extension:
    ``.nii.gz``, ``.mha``, ``.nrrd``), atomically. Boolean masks are written as uint8."""
    geometry = geometry.geometry if isinstance(geometry, _lung_mask_io.Scan) else geometry
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    path = Path(path)
    write_volume(str(path), mask, geometry)
    return path


def metrics(prediction: np.ndarray, reference: np.ndarray, geometry: Geometry | Scan) -> dict[str, float]:
    """Overlap and surface metrics of two masks on one grid (non-zero = foreground), as ``lungseg evaluate``:
    ``dice``, ``iou``, ``precision``, ``recall``, ``fscore``, ``accuracy``, ``hd95_mm`` (mm, from the
    spacing) and ``volume_diff_ml`` (prediction minus reference). Conventions for empty masks:
    :mod:`lungseg.evaluation.metrics`."""
    from lungseg.evaluation.metrics import segmentation_metrics

    geometry = geometry.geometry if isinstance(geometry, _lung_mask_io.Scan) else geometry
    return segmentation_metrics(np.asarray(prediction), np.asarray(reference), geometry)


RegionSpec = str | os.PathLike | np.ndarray | None


class Segmenter:
    """Trained lungseg model(s) (``model.pt`` files written by ``lungseg train``) applied to scans, as
    ``lungseg predict``.

    Several model files form an ensemble: the mean of their foreground probabilities is thresholded
    (they must segment the same label with the same region of interest). The options are the
    command's, with its defaults: ``flips`` (``none``, ``x``, ``y``, ``xy``: test-time flips),
    ``batch_size`` (slices per forward pass), ``lung_mask`` (keep only voxels inside it: a mask array,
    a mask file or ``"auto"`` for the classical lung mask; default none), ``roi_mask`` (for a model
    trained on a region of interest: that region's mask, or ``"auto"`` = the classical lung mask;
    ignored for whole-slice models) and ``largest_components`` (keep the N largest 3-D components;
    0 = all). ``device`` is a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    """

    def __init__(
        self,
        model_paths: PathLike | Sequence[PathLike],
        device: str = "cpu",
        flips: str = "none",
        batch_size: int = 16,
        lung_mask: RegionSpec = None,
        roi_mask: RegionSpec = "auto",
        largest_components: int = 0,
        progress: bool = False,
    ) -> None:
        from lungseg.inference.model import load_ensemble
        from lungseg.inference.predict import FLIPS

        paths = [model_paths] if isinstance(model_paths, (str, os.PathLike)) else list(model_paths)
        if not paths:
            raise ValueError("give at least one model file")
        if flips not in FLIPS:
            raise ValueError(f"unknown flip mode {flips!r}; valid: {', '.join(FLIPS)}")
        if batch_size < 1 or largest_components < 0:
            raise ValueError("batch_size must be >= 1 and largest_components >= 0")
        self.model_paths = [Path(p) for p in paths]
        models, metas = load_ensemble(self.model_paths)
        self.models: list[torch.nn.Module] = [m.to(device) for m in models]
        self.metas: list[dict] = list(metas)
        self.device = device
        self.flips = flips
        self.batch_size = batch_size
        self.lung_mask = lung_mask
        self.roi_mask = roi_mask
        self.largest_components = largest_components
        self.progress = progress

    @property
    def label(self) -> str:
        """The label the model(s) segment (e.g. ``lung``, ``nodule``)."""
        return str(self.metas[0].get("label", ""))

    def _region(self, spec: RegionSpec, scan: Scan, computed: dict[str, np.ndarray]) -> np.ndarray:
        if isinstance(spec, np.ndarray):
            if spec.shape != scan.hu.shape:
                raise ValueError(f"mask shape {spec.shape} differs from the scan's {scan.hu.shape}")
            return spec
        from lungseg.inference.cli import _region  # the command's reading and grid check of a mask / 'auto'

        return _region(str(spec), scan.hu, scan.geometry, computed)

    def _roi(self, scan: Scan, computed: dict[str, np.ndarray]) -> np.ndarray | None:
        from lungseg.inference.cli import _roi_mask
        from lungseg.inference.predict import model_roi

        if model_roi(self.metas[0])["mode"] == "none":
            return None
        if isinstance(self.roi_mask, np.ndarray):
            return self._region(self.roi_mask, scan, computed)
        spec = argparse.Namespace(roi_mask=str(self.roi_mask))
        return _roi_mask(spec, self.model_paths[0], self.metas[0], scan.hu, scan.geometry, computed)

    def predict(self, scan: Scan | PathLike) -> np.ndarray:
        """The uint8 0/1 mask of a scan (or a scan's path) on the scan's grid."""
        from lungseg.inference.postprocess import keep_largest_components, restrict_to
        from lungseg.inference.predict import predict_volume

        scan = _as_scan(scan)
        computed: dict[str, np.ndarray] = {}  # the classical lung mask, computed at most once
        mask = predict_volume(self.models, self.metas, scan.hu, batch_size=self.batch_size, flips=self.flips,
                              progress=self.progress, roi_mask=self._roi(scan, computed), spacing=scan.geometry.spacing)
        if self.lung_mask is not None:
            mask = restrict_to(mask, self._region(self.lung_mask, scan, computed))
        if self.largest_components:
            mask = keep_largest_components(mask, self.largest_components)
        return mask

    def predict_file(self, input: PathLike, output: PathLike) -> np.ndarray:  # noqa: A002 - the command's word
        """Read ``input`` (as :func:`read_scan`), predict, write the mask to ``output`` in the input's own
        geometry (as ``lungseg predict INPUT -o OUTPUT``) and return it."""
        scan = read_scan(input)
        mask = self.predict(scan)
        write_mask(mask, scan.geometry, output)
        return mask
