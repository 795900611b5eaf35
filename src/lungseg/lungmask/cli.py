"""``lungseg lung-mask``: classical lung mask of an ingested case, in the scan's own geometry."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lungseg.atomic import write_text_atomic
from lungseg.casefile import read_case
from lungseg.geometry import write_volume
from lungseg.lungmask.qa import lung_mask_qa
from lungseg.lungmask.seed001 import lung_mask_seed001

log = logging.getLogger("lungseg.lungmask")
METHODS = {"seed001": lung_mask_seed001}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", type=Path, help="ingested case HDF5 file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="mask volume to write (.nii.gz)")
    parser.add_argument("--qa", type=Path, help="write QA figures (volume, components, flags) as JSON here")
    parser.add_argument("--method", choices=sorted(METHODS), default="seed001", help="masking recipe")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    case = read_case(args.case, labels=False)
    mask = METHODS[args.method](case.image)
    write_volume(str(args.output), mask, case.geometry)
    qa = {"case_id": case.case_id, "method": args.method, **lung_mask_qa(mask, case.geometry)}
    if args.qa:
        write_text_atomic(args.qa, json.dumps(qa, indent=2) + "\n")
    log.info("case %s: %s lung mask %.0f mL, %d components%s", case.case_id, args.method, qa["volume_ml"],
             qa["n_components"], f" FLAGGED: {qa['flags']}" if qa["flags"] else "")
    return 0
