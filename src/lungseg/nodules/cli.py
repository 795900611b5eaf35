"""``lungseg nodule-baseline``: the classical (training-free) nodule segmentation of a scan, in its own geometry.

INPUT is an ingested case (.h5), a DICOM series folder or a CT volume, read as ``lungseg lung-mask`` reads it;
``--lung-mask`` is that scan's lung mask on the same grid (what ``lungseg lung-mask`` writes). The method is
:mod:`lungseg.nodules.classical`. The mask is the probability map thresholded at 0.5; the probability map is
written as uint8 ``round(255 p)``, the pipeline's format for probability maps.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.casefile import QuarantinedCaseError
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.ingest.errors import IngestError, quarantined_error
from lungseg.lungmask.io import read_input
from lungseg.nodules.classical import NoduleBaselineParams, NoduleCandidate, classical_nodule_candidates, paint_scores

log = logging.getLogger("lungseg.nodules")
FIX_GRID = "give the lung mask of this scan: `lungseg lung-mask INPUT -o MASK` writes it on the scan's grid"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="ingested case (.h5), DICOM series folder, or CT volume (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--lung-mask", type=Path, required=True, metavar="PATH",
                        help="lung mask of the same scan on its grid (> 0 = lung), e.g. from `lungseg lung-mask`")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="MASK",
                        help="nodule mask to write (.nii.gz, uint8 0/1: score >= 0.5), in the input's geometry")
    parser.add_argument("--probabilities", type=Path, metavar="PROB",
                        help="also write the per-voxel score (uint8, round(255 p); 0 outside candidates) here")
    parser.add_argument("--candidates", type=Path, metavar="JSON",
                        help="also write every candidate (score, centre in LPS mm, diameter, shape) as JSON, for an FROC")
    defaults = NoduleBaselineParams()
    parser.add_argument("--shell-mm", type=float, default=defaults.shell_mm, metavar="MM",
                        help="dilate the lung mask by this much first, for masks that carve juxta-pleural nodules out "
                             f"(default {defaults.shell_mm}: `lungseg lung-mask` keeps them)")


def read_lung_mask(path: Path, shape: tuple[int, ...], geometry: Geometry) -> np.ndarray:
    """The lung mask at ``path``; an :class:`IngestError` unless it is on the scan's grid."""
    try:
        mask, mask_geometry = read_volume(str(path))
    except RuntimeError as exc:
        raise IngestError(path, "cannot be read as a mask volume", FIX_GRID) from exc
    if mask.shape != tuple(shape):
        raise IngestError(path, f"is not on the scan's grid (shape {mask.shape}, the scan's {tuple(shape)})", FIX_GRID)
    for key in ("spacing", "origin", "direction"):
        theirs, ours = getattr(mask_geometry, key), getattr(geometry, key)
        if not np.allclose(theirs, ours, atol=1e-3):
            raise IngestError(path, f"is not on the scan's grid ({key} {_fmt(theirs)}, the scan's {_fmt(ours)})", FIX_GRID)
    return mask


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def candidate_table(candidates: list[NoduleCandidate], geometry: Geometry) -> list[dict]:
    """One JSON-able row per candidate: score, peak and mask centre in LPS mm, size and shape figures."""
    rows = []
    for c in candidates:
        centre_zyx = np.argwhere(c.mask).mean(axis=0) + [b.start for b in c.box]
        rows.append({
            "score": round(c.score, 4),
            "centre_lps_mm": [round(float(v), 2) for v in geometry.index_to_physical(centre_zyx[::-1])],
            "peak_lps_mm": [round(float(v), 2) for v in geometry.index_to_physical(np.asarray(c.peak_zyx[::-1]))],
            "diameter_mm": round(c.diameter_mm, 2),
            "elongation": round(c.elongation, 3),
            "contrast_hu": round(c.contrast_hu, 1),
            "threshold_hu": round(c.threshold_hu, 1),
            "dot_hu": round(c.dot_hu, 1),
            "wall_contact": round(c.wall_contact, 3),
            "closed": c.closed,
            "n_voxels": int(c.mask.sum()),
        })
    return rows


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.shell_mm < 0:
        raise SystemExit("lungseg nodule-baseline: error: --shell-mm must be >= 0")
    try:
        scan = read_input(args.input)
    except QuarantinedCaseError as exc:
        raise quarantined_error(args.input) from exc
    lung = read_lung_mask(args.lung_mask, scan.hu.shape, scan.geometry)
    start = time.perf_counter()
    params = NoduleBaselineParams(shell_mm=args.shell_mm)
    candidates = classical_nodule_candidates(scan.hu, lung, scan.geometry.spacing, params)
    probabilities = paint_scores(candidates, scan.hu.shape)
    seconds = time.perf_counter() - start
    mask = (probabilities >= 0.5).astype(np.uint8)
    write_volume(str(args.output), mask, scan.geometry)
    if args.probabilities:
        write_volume(str(args.probabilities), np.rint(255 * probabilities).astype(np.uint8), scan.geometry)
    if args.candidates:
        write_text_atomic(args.candidates, json.dumps(candidate_table(candidates, scan.geometry), indent=1) + "\n")
    kept = sum(c.score >= 0.5 for c in candidates)
    log.info("case %s: %d candidates, %d with score >= 0.5 (%d voxels) in %.1f s -> %s", scan.case_id or "-",
             len(candidates), kept, int(mask.sum()), seconds, args.output)
    return 0
