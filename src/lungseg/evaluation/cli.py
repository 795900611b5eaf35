"""``lungseg evaluate``: metrics of one case's predictions (and the all-background baseline).

With ``--detection`` (nodule target) also nodule-level detection, per-nodule segmentation quality and,
for a method given a probability map (``--probabilities METHOD=PATH``), the FROC candidates; see
:mod:`lungseg.evaluation.detection`."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.casefile import open_case
from lungseg.evaluation.detection import (
    DEFAULT_CANDIDATE_THRESHOLD,
    detection_counts,
    find_candidates,
    label_nodules,
    match_nodules,
)
from lungseg.evaluation.metrics import segmentation_metrics
from lungseg.geometry import Geometry, read_volume
from lungseg.ingest.errors import IngestError

log = logging.getLogger("lungseg.evaluate")
BASELINE = "all_background"


def _method_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected METHOD=PATH (e.g. unet=pred.nii.gz), got {text!r}")
    return name, Path(path)


def _same_grid(a: Geometry, b: Geometry) -> bool:
    return all(np.allclose(getattr(a, k), getattr(b, k), atol=1e-3) for k in ("spacing", "origin", "direction"))


def read_probabilities(path: Path, case_path: Path, shape: tuple, geometry: Geometry) -> tuple[np.ndarray, float]:
    """A probability map on the case's grid as (array, scale): uint8 (any integer type) holds round(255 p),
    scale 255; a float map holds p in [0, 1], scale 1."""
    fix = ("give the map `lungseg predict` writes next to the mask (<case>.probabilities.nii.gz: uint8, 255 * p, "
           "on the mask's grid) or a float volume of p in [0, 1] on that grid")
    try:
        volume, prob_geometry = read_volume(str(path))
    except RuntimeError as exc:
        raise IngestError(path, f"cannot be read as a probability map ({str(exc).strip().splitlines()[-1]})", fix) from exc
    if volume.shape != shape or not _same_grid(prob_geometry, geometry):
        raise IngestError(path, f"is not on the grid of {case_path} (shape {volume.shape} vs {shape})", fix)
    if np.issubdtype(volume.dtype, np.integer):
        low, high, scale = 0, 255, 255.0
    elif np.issubdtype(volume.dtype, np.floating):
        low, high, scale = 0.0, 1.0 + 1e-6, 1.0
    else:
        raise IngestError(path, f"has voxel type {volume.dtype}, not a probability", fix)
    if volume.size and (not np.isfinite(volume.min()) or volume.min() < low or volume.max() > high):
        raise IngestError(path, f"has values {volume.min()}..{volume.max()} outside the probability range "
                                f"({'0-255' if scale == 255 else '0-1'} for a {volume.dtype} map)", fix)
    return volume, scale


def evaluate_case(case_path: Path, label: str, predictions: dict[str, Path], detection: bool = False,
                  fold: int | None = None, baseline: bool = True, probabilities: dict[str, Path] | None = None,
                  candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD) -> list[dict]:
    """One row per method (plus the all-background baseline unless ``baseline`` is false) with every metric;
    with ``fold`` (an out-of-fold evaluation of a cross-validation) every row also has ``"fold": fold``.

    With ``detection``: the nodule detection counts, the per-nodule metrics of
    :func:`lungseg.evaluation.detection.match_nodules` (``nodule_dice``, ``nodule_iou``,
    ``nodule_volume_error_pct``, and the JSON-only ``nodules`` and ``voxels``) and, for a method with a
    probability map in ``probabilities``, its FROC ``candidates`` and the ``candidate_threshold``."""
    probabilities = probabilities or {}
    unknown = sorted(set(probabilities) - set(predictions))
    if unknown:
        raise ValueError(f"probability maps of method(s) {unknown} without a predicted mask")
    if probabilities and not detection:
        raise ValueError("probability maps are only used for nodule detection (FROC candidates)")
    with open_case(case_path) as f:
        if label not in f["labels"]:
            raise IngestError(case_path, f"has no reference label '{label}' (it has {sorted(f['labels'])})",
                              "give the case a label mask at ingest or evaluate another target")
        reference = f["labels"][label][()]
        geometry = Geometry.from_attrs(f.attrs)
        case_id = str(f.attrs["case_id"])
    masks = {BASELINE: np.zeros_like(reference)} if baseline else {}
    for method, path in predictions.items():
        mask, pred_geometry = read_volume(str(path))
        if mask.shape != reference.shape or not _same_grid(pred_geometry, geometry):
            raise IngestError(path, f"is not on the grid of {case_path} (shape {mask.shape} vs {reference.shape})",
                              "write predictions in the scan's own geometry (lungseg predict does)")
        masks[method] = mask
    maps = {m: read_probabilities(p, case_path, reference.shape, geometry) for m, p in probabilities.items()}
    fold_column = {} if fold is None else {"fold": int(fold)}
    spacing_zyx = tuple(float(v) for v in geometry.spacing[::-1])
    ref_labels, n_ref = label_nodules(reference) if detection else (None, 0)
    rows = []
    for m, mask in masks.items():
        row = {"case_id": case_id, "label": label, "method": m, **fold_column,
               **segmentation_metrics(mask, reference, geometry)}
        if detection:
            row.update(detection_counts(mask, reference))
            row.update(match_nodules(mask, ref_labels, n_ref, spacing_zyx))
            if m in maps:
                volume, scale = maps[m]
                row["candidate_threshold"] = float(candidate_threshold)
                row["candidates"] = find_candidates(volume, ref_labels, candidate_threshold, scale=scale)
        rows.append(row)
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", type=Path, required=True, help="ingested case HDF5 file holding the reference label")
    parser.add_argument("--label", default="lung", help="reference label name in the case file (default: lung)")
    parser.add_argument("--pred", action="append", type=_method_arg, default=[], metavar="METHOD=PATH",
                        help="predicted mask volume of a method (repeatable)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help=f"leave out the {BASELINE} row (the workflow evaluates the baselines once per case, "
                             "apart from the experiments)")
    parser.add_argument("--detection", action="store_true",
                        help="also count nodules found (connected components matched by overlap) and false positives, "
                             "and score each found nodule's segmentation (Dice, IoU, volume error)")
    parser.add_argument("--probabilities", action="append", type=_method_arg, default=[], metavar="METHOD=PATH",
                        help="probability map of a --pred method (uint8 255*p as `lungseg predict` writes it, or "
                             "float 0-1; repeatable); with --detection its FROC candidates are stored")
    parser.add_argument("--candidate-threshold", type=float, default=DEFAULT_CANDIDATE_THRESHOLD, metavar="P",
                        help="FROC candidates: 26-connected regions of probability >= P, scored by their maximum "
                             f"(default: {DEFAULT_CANDIDATE_THRESHOLD}; lowest operating point of the FROC)")
    parser.add_argument("--fold", type=int, default=None, metavar="K",
                        help="cross-validation fold whose held-out case this is: adds \"fold\": K to every row "
                             "(out-of-fold metrics; `lungseg aggregate` keeps it as a column)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file with one row per method")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.fold is not None and args.fold < 0:
        raise SystemExit("lungseg evaluate: error: --fold must be >= 0")
    if not args.pred and not args.baseline:
        raise SystemExit("lungseg evaluate: error: nothing to evaluate: give --pred METHOD=PATH or drop --no-baseline")
    probabilities = dict(args.probabilities)
    unknown = sorted(set(probabilities) - {name for name, _ in args.pred})
    if unknown:
        raise SystemExit(f"lungseg evaluate: error: --probabilities names method(s) {unknown} without a "
                         "--pred METHOD=PATH: give each probability map the METHOD name of its mask")
    if probabilities and not args.detection:
        raise SystemExit("lungseg evaluate: error: --probabilities is used for the FROC candidates of --detection: "
                         "add --detection (nodule target) or drop --probabilities")
    if not 0.0 < args.candidate_threshold <= 1.0:
        raise SystemExit("lungseg evaluate: error: --candidate-threshold must be in (0, 1]")
    rows = evaluate_case(args.case, args.label, dict(args.pred), detection=args.detection, fold=args.fold,
                         baseline=args.baseline, probabilities=probabilities,
                         candidate_threshold=args.candidate_threshold)
    # JSON has no NaN: write null, read back as NaN by the aggregator
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    write_text_atomic(args.output, json.dumps(clean, indent=2) + "\n")
    for row in rows:
        log.info("case %s %s: Dice %.4f IoU %.4f HD95 %.2f mm", row["case_id"], row["method"], row["dice"], row["iou"],
                 row["hd95_mm"])
        if args.detection:
            log.info("case %s %s: %d of %d nodule(s) found, %d false positive component(s)", row["case_id"],
                     row["method"], row["n_detected"], row["n_nodules"], row["n_false_positives"])
            if row["n_detected"]:
                log.info("case %s %s: nodule Dice %.4f IoU %.4f, volume error %.1f%%", row["case_id"], row["method"],
                         row["nodule_dice"], row["nodule_iou"], row["nodule_volume_error_pct"])
            if "candidates" in row:
                log.info("case %s %s: %d FROC candidate(s) at p >= %g", row["case_id"], row["method"],
                         len(row["candidates"]), row["candidate_threshold"])
    return 0
