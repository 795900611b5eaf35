"""``lungseg lung-mask``: classical lung-parenchyma mask of a scan, written in the scan's own geometry.

INPUT is an ingested case (.h5), a DICOM series folder or any ITK-readable volume. A scan without
lungs (all air, all tissue, abdomen only) or a single slice gives an empty or partial mask and a
QA flag, not an error.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.casefile import QuarantinedCaseError
from lungseg.geometry import Geometry, write_volume
from lungseg.ingest.errors import quarantined_error
from lungseg.lungmask.default import LungMaskResult, Threshold3DParams, lung_mask_threshold_3d
from lungseg.lungmask.io import read_input, write_mask_h5
from lungseg.lungmask.methods import DEFAULT_METHOD, DEPRECATED_METHODS, METHODS, resolve_method
from lungseg.lungmask.qa import lung_mask_qa
from lungseg.lungmask.seed001 import lung_mask_per_slice_otsu

log = logging.getLogger("lungseg.lungmask")
#: settings of the threshold_3d method exposed on the command line (all in mm)
MM_OPTIONS = ("working_mm", "closing_mm", "closing_z_mm", "airway_wall_mm")


def compute_mask(hu: np.ndarray, geometry: Geometry, method: str = DEFAULT_METHOD,
                 params: Threshold3DParams | None = None) -> LungMaskResult:
    """The lung mask of ``method`` (``threshold_3d``: 0/1 right/2 left; ``per_slice_otsu``: 0/1; the deprecated
    names ``default`` / ``seed001`` are mapped with a DeprecationWarning)."""
    method = resolve_method(method)
    if method == "threshold_3d":
        return lung_mask_threshold_3d(hu, geometry, params or Threshold3DParams())
    return LungMaskResult(lung_mask_per_slice_otsu(hu))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="ingested case (.h5), DICOM series folder, or CT volume (.nii.gz, .nrrd, .mha)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="mask volume to write (.nii.gz), in the input's geometry")
    parser.add_argument("--method", choices=[*METHODS, *DEPRECATED_METHODS], default=DEFAULT_METHOD,
                        metavar="{" + ",".join(METHODS) + "}",
                        help="; ".join(f"{name}: {what}" for name, what in METHODS.items())
                        + f" (default {DEFAULT_METHOD}; the old names "
                        + ", ".join(f"{old} = {new}" for old, new in DEPRECATED_METHODS.items())
                        + " are deprecated)")
    parser.add_argument("--qa", type=Path, help="write QA figures (volume, right/left, components, flags) as JSON here")
    parser.add_argument("--h5", type=Path, help="also write the mask as HDF5 (dataset lung_mask + geometry attrs)")
    parser.add_argument("--case-id", help="pseudonymous id for the QA and HDF5 (default: the case file's id; none for raw scans)")
    defaults = Threshold3DParams()
    for name in MM_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name), metavar="MM",
                            help=f"threshold_3d: {_field_help(name)} (default {getattr(defaults, name)})")


def _field_help(name: str) -> str:
    return {
        "working_mm": "in-plane block size of the coarse working grid",
        "closing_mm": "in-radius of the closing rolled along the pleura (juxta-pleural nodules up to about twice this)",
        "closing_z_mm": "gaps along z up to twice this long are bridged",
        "airway_wall_mm": "airway wall removed around the lumen",
    }[name]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.method = resolve_method(args.method, where="--method")
    try:
        scan = read_input(args.input)
    except QuarantinedCaseError as exc:
        raise quarantined_error(args.input) from exc
    params = Threshold3DParams(**{name: getattr(args, name) for name in MM_OPTIONS})
    result = compute_mask(scan.hu, scan.geometry, args.method, params)
    case_id = args.case_id if args.case_id is not None else scan.case_id
    write_volume(str(args.output), result.mask, scan.geometry)
    if args.h5:
        write_mask_h5(args.h5, result.mask, scan.geometry, case_id, args.method)
    qa = {"case_id": case_id, "method": args.method, **lung_mask_qa(result.mask, scan.geometry, result.notes)}
    if args.qa:
        write_text_atomic(args.qa, json.dumps(qa, indent=2) + "\n")
    log.info("case %s: %s lung mask %.0f mL (right %.0f, left %.0f), %d component(s)%s", case_id or "-", args.method,
             qa["volume_ml"], qa["right_ml"], qa["left_ml"], qa["n_components"],
             f"; FLAGGED: {qa['flags']}" if qa["flags"] else "")
    return 0
