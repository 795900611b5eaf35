"""``lungseg evaluate``: metrics of one case's predictions (and the all-background baseline)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.casefile import open_case
from lungseg.evaluation.detection import detection_counts
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


def evaluate_case(case_path: Path, label: str, predictions: dict[str, Path], detection: bool = False,
                  fold: int | None = None, baseline: bool = True) -> list[dict]:
    """One row per method (plus the all-background baseline unless ``baseline`` is false) with every metric
    (and nodule detection counts); with ``fold`` (an out-of-fold evaluation of a cross-validation) every
    row also has ``"fold": fold``."""
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
    fold_column = {} if fold is None else {"fold": int(fold)}
    return [{"case_id": case_id, "label": label, "method": m, **fold_column, **segmentation_metrics(mask, reference, geometry),
             **(detection_counts(mask, reference) if detection else {})}
            for m, mask in masks.items()]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", type=Path, required=True, help="ingested case HDF5 file holding the reference label")
    parser.add_argument("--label", default="lung", help="reference label name in the case file (default: lung)")
    parser.add_argument("--pred", action="append", type=_method_arg, default=[], metavar="METHOD=PATH",
                        help="predicted mask volume of a method (repeatable)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help=f"leave out the {BASELINE} row (the workflow evaluates the baselines once per case, "
                             "apart from the experiments)")
    parser.add_argument("--detection", action="store_true",
                        help="also count nodules found (connected components matched by overlap) and false positives")
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
    rows = evaluate_case(args.case, args.label, dict(args.pred), detection=args.detection, fold=args.fold,
                         baseline=args.baseline)
    # JSON has no NaN: write null, read back as NaN by the aggregator
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    write_text_atomic(args.output, json.dumps(clean, indent=2) + "\n")
    for row in rows:
        log.info("case %s %s: Dice %.4f IoU %.4f HD95 %.2f mm", row["case_id"], row["method"], row["dice"], row["iou"],
                 row["hd95_mm"])
        if args.detection:
            log.info("case %s %s: %d of %d nodule(s) found, %d false positive component(s)", row["case_id"],
                     row["method"], row["n_detected"], row["n_nodules"], row["n_false_positives"])
    return 0
