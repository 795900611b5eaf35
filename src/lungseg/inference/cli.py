"""``lungseg predict``: mask one study with a trained model; the mask is written in the scan's own geometry.

The study may be an ingested case (``.h5``), a DICOM series folder or a CT volume (NIfTI, NRRD, MHA);
DICOM folders and volumes go through the same reader as ``lungseg ingest``, so a study that fails
ingest fails here with the same one-line message.

``--model`` may be given several times (e.g. the k fold models of a cross-validation): the mask is then
the mean of the models' foreground probabilities (each after its own test-time flips) thresholded at
0.5, followed by the same post-processing. The models must segment the same label and have been
trained on the same region of interest. One model gives exactly the single-model mask.

A 2-D image (PNG, JPEG, TIFF, a DICOM radiograph; see :mod:`lungseg.images`) is read as ingest reads it
(a one-slice study with normalised intensity); ``-o mask.png`` (or .tif/.bmp/.gif) writes the mask in
the image's own pixel grid, 0/255, and ``--probabilities map.png`` the map as 0..255 grey.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from lungseg.casefile import read_case
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.images.write import is_raster_output, write_mask_image
from lungseg.inference.model import load_ensemble
from lungseg.inference.postprocess import classical_lung_mask, keep_largest_components, restrict_to
from lungseg.inference.predict import FLIPS, model_roi, predict_probabilities
from lungseg.ingest.errors import IngestError
from lungseg.ingest.scan import read_scan

log = logging.getLogger("lungseg.predict")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="ingested case (.h5), DICOM series folder, CT volume (.nii.gz, .mha, ...), "
                        "or a 2-D image (.png, .jpg, .tif, DICOM radiograph)")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="model file written by `lungseg train` (model.pt); repeat it for an ensemble: the mean of "
                             "the models' foreground probabilities is thresholded (same label and region of interest)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="mask to write: a volume (.nii.gz, .mha, ...) or, for a one-slice study, a 2-D image (.png, .tif)")
    parser.add_argument("--probabilities", type=Path, default=None, metavar="PATH",
                        help="also write the foreground probability map (uint8, round(255 p); the mask is p > 0.5 before "
                             "post-processing), e.g. for an FROC analysis of nodule detections")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default: 16)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="torch device of the network: cpu (default; the workflow predicts on CPU nodes), cuda, "
                             "cuda:1, or auto (cuda when one is available)")
    parser.add_argument("--flips", choices=list(FLIPS), default="none",
                        help="test-time flips averaged with the plain prediction: x = left-right, y = front-back, "
                             "xy = both and their combination (default: none)")
    parser.add_argument("--lung-mask", default=None, metavar="PATH|auto",
                        help="keep only voxels inside this lung mask (a volume on the scan's grid, e.g. from "
                             "`lungseg lung-mask`), or 'auto' to compute the classical lung mask here")
    parser.add_argument("--roi-mask", default="auto", metavar="PATH|auto",
                        help="for a model trained on a region of interest (`lungseg train --roi crop|mask`): a mask of "
                             "that region on the scan's grid, or 'auto' (default) for the classical lung mask; "
                             "ignored for models trained on whole slices")
    parser.add_argument("--largest-components", type=int, default=0, metavar="N",
                        help="keep only the N largest 3-D connected components (0 = keep all; 2 suits lungs)")


def probability_bytes(probabilities: np.ndarray) -> np.ndarray:
    """The probability map as written: uint8 ``round(255 p)`` (readers divide by 255)."""
    return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)


def _load_study(path: Path) -> tuple[np.ndarray, Geometry, str]:
    """HU volume, geometry and a pseudonymous name of the study (never a patient identifier)."""
    if not path.exists():
        raise IngestError(path, "does not exist", "give a DICOM series folder, a CT volume or an ingested .h5 case")
    if path.suffix == ".h5":
        try:
            case = read_case(path, labels=False)
        except (OSError, ValueError, KeyError) as exc:
            raise IngestError(path, f"is not a readable lungseg case file ({exc})",
                              "re-run `lungseg ingest` or pass the DICOM folder") from exc
        return case.image, case.geometry, case.case_id
    hu, geometry, _ = read_scan(path)
    return hu, geometry, "input study"


def _region(spec: str, hu: np.ndarray, geometry: Geometry, computed: dict[str, np.ndarray]) -> np.ndarray:
    """A mask on the scan's grid: read from ``spec``, or the classical lung mask for ``auto`` (computed once)."""
    if spec == "auto":
        if "auto" not in computed:
            computed["auto"] = classical_lung_mask(hu, geometry)
        return computed["auto"]
    path = Path(spec)
    try:
        region, region_geometry = read_volume(str(path))
    except RuntimeError as exc:
        raise IngestError(path, "cannot be read as a mask volume", "give a NIfTI/NRRD/MHA mask or 'auto'") from exc
    same = region.shape == hu.shape and all(
        np.allclose(getattr(region_geometry, k), getattr(geometry, k), atol=1e-3) for k in ("spacing", "origin", "direction"))
    if not same:
        raise IngestError(path, f"is not on the scan's grid (shape {region.shape} vs {hu.shape})",
                          "give a mask of this scan (lungseg lung-mask writes it in the scan's geometry) or 'auto'")
    return region


def _roi_mask(args: argparse.Namespace, model_path: Path, meta: dict, hu: np.ndarray, geometry: Geometry,
              computed: dict[str, np.ndarray]) -> np.ndarray | None:
    roi = model_roi(meta)
    if roi["mode"] == "none":
        return None
    if args.roi_mask == "auto" and roi["label"] not in ("lung", ""):
        raise IngestError(model_path, f"was trained on a '{roi['label']}' region, which 'auto' (a lung mask) cannot give",
                          f"pass --roi-mask with a '{roi['label']}' mask of this scan")
    return _region(args.roi_mask, hu, geometry, computed)


def resolve_device(name: str) -> torch.device:
    """``--device``: a torch device; ``auto`` is cuda when available; a CUDA device without CUDA is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SystemExit(f"lungseg predict: error: --device {name!r} is not a torch device (cpu, cuda, cuda:1, auto)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"lungseg predict: error: --device {name} but this machine has no usable CUDA device; use cpu or auto")
    return device


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.batch_size < 1 or args.largest_components < 0 or (args.threads is not None and args.threads < 1):
        raise SystemExit("lungseg predict: error: --batch-size and --threads must be >= 1, --largest-components >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    # fail fast on a wrong model or models that cannot be averaged, before reading the study
    models, metas = load_ensemble(args.model)
    device = resolve_device(args.device)
    models = [m.to(device) for m in models]
    meta = metas[0]
    hu, geometry, name = _load_study(args.input)
    computed: dict[str, np.ndarray] = {}
    roi_mask = _roi_mask(args, args.model[0], meta, hu, geometry, computed)
    start = time.perf_counter()
    probabilities = predict_probabilities(list(models), list(metas), hu, batch_size=args.batch_size, flips=args.flips,
                                          roi_mask=roi_mask, spacing=geometry.spacing)
    seconds = time.perf_counter() - start
    mask = (probabilities > 0.5).astype(np.uint8)
    if args.lung_mask:
        lung = _region(args.lung_mask, hu, geometry, computed)
        mask = restrict_to(mask, lung)
        probabilities = np.where(lung > 0, probabilities, np.float32(0))
    if args.largest_components:
        mask = keep_largest_components(mask, args.largest_components)
    for path, array, binary in ((args.probabilities, probability_bytes(probabilities), False), (args.output, mask, True)):
        if path is not None and is_raster_output(path):
            if hu.shape[0] != 1:
                raise IngestError(path, f"is a 2-D image file but the study has {hu.shape[0]} slices", "write a .nii.gz volume")
            write_mask_image(path, array, binary_as_255=binary)
        elif path is not None:
            write_volume(str(path), array, geometry)
    log.info("%s: %d slices of %dx%d, %d %s model(s) (roi %s), flips %s, %s, %d threads: inference %.2f s (%.1f ms/slice); "
             "%d voxels -> %s", name, *hu.shape, len(models), meta.get("label", "?"), model_roi(meta)["mode"], args.flips,
             device, torch.get_num_threads(), seconds,
             1000 * seconds / max(hu.shape[0], 1), int(mask.sum()), args.output)
    return 0
