"""``lungseg image-lung-mask CASE.h5 -o mask.nii.gz``: the classical lung mask of a 2-D image case.

``--method radiograph_otsu`` (default) is the plain Otsu recipe of :mod:`lungseg.images.baseline`
(1 right, 2 left); ``--method none`` writes an empty mask and says so in the QA (no classical lung
mask and no classical baseline; the workflow then evaluates no ``classical_*`` method). The mask
NIfTI, the mask HDF5 (format ``lungseg-lungmask``) and the QA JSON have the layout of ``lungseg
lung-mask``; the QA's ``*_ml`` figures of a one-slice case are those of a 1 mm slab (area in cm² / 10).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from lungseg import __version__
from lungseg.atomic import write_text_atomic
from lungseg.casefile import QuarantinedCaseError, create_h5, read_case
from lungseg.geometry import write_volume
from lungseg.images.baseline import radiograph_lung_mask
from lungseg.ingest.errors import IngestError, quarantined_error
from lungseg.lungmask.io import DATASET, FORMAT, FORMAT_VERSION
from lungseg.lungmask.qa import lung_mask_qa

log = logging.getLogger("lungseg.images")
METHODS = ("radiograph_otsu", "none")
LABEL_VALUES = {"radiograph_otsu": "0 background, 1 right lung, 2 left lung", "none": "0 background (no classical mask)"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="ingested 2-D image case (.h5)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="mask volume to write (.nii.gz)")
    parser.add_argument("--method", choices=METHODS, default="radiograph_otsu",
                        help="radiograph_otsu: Otsu threshold inside the body, two largest regions (1 right, 2 left); "
                             "none: an empty mask (no classical baseline)")
    parser.add_argument("--h5", type=Path, help="also write the mask as HDF5 (dataset lung_mask + geometry attrs)")
    parser.add_argument("--qa", type=Path, help="write QA figures as JSON here")


def _flags(mask: np.ndarray, method: str, notes: list[str]) -> list[str]:
    if method == "none":
        return []
    flags = [n for n in notes if "not 2" in n or "no lung" in n]
    if mask.any() and not ((mask == 1).any() and (mask == 2).any()):
        flags.append("only one side found")
    return flags


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        case = read_case(args.input, labels=False)
    except QuarantinedCaseError as exc:
        raise quarantined_error(args.input, "image") from exc
    if case.image.shape[0] != 1:
        raise IngestError(args.input, f"has {case.image.shape[0]} slices, not one 2-D image",
                          "use `lungseg lung-mask` for CT volumes")
    if args.method == "none":
        mask, notes = np.zeros(case.image.shape, np.uint8), ["lung_mask.method none: no classical lung mask"]
    else:
        plane, notes = radiograph_lung_mask(case.image[0])
        mask = plane[None]
    write_volume(str(args.output), mask, case.geometry)
    if args.h5:
        with create_h5(args.h5) as f:
            f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, case_id=case.case_id, method=args.method,
                           label_values=LABEL_VALUES[args.method], lungseg_version=__version__)
            for key, value in case.geometry.as_attrs().items():
                f.attrs[key] = value
            f.create_dataset(DATASET, data=mask, chunks=(1, *mask.shape[1:]), compression="lzf")
    qa = {"case_id": case.case_id, "method": args.method, **lung_mask_qa(mask, case.geometry, notes)}
    flags = _flags(mask, args.method, notes)
    qa.update(flags="; ".join(flags), plausible=not flags,
              notes="; ".join([*notes, "2-D image: *_ml are a 1 mm slab (area in cm2 / 10)"]))
    if args.qa:
        write_text_atomic(args.qa, json.dumps(qa, indent=2) + "\n")
    log.info("case %s: %s lung mask, %d pixels (right %d, left %d)%s", case.case_id, args.method, int((mask > 0).sum()),
             int((mask == 1).sum()), int((mask == 2).sum()), f"; FLAGGED: {qa['flags']}" if qa["flags"] else "")
    return 0
