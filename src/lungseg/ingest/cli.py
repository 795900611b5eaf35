"""``lungseg ingest``: one scan (DICOM folder or volume) + label masks -> per-case HDF5."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lungseg.casefile import write_case
from lungseg.ingest.scan import ingest_scan

log = logging.getLogger("lungseg.ingest")


def _label_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. lung=lung.nii.gz), got {text!r}")
    return name, Path(path)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="DICOM series folder, or a .nii/.nii.gz/.nrrd/.mha/.mhd volume")
    parser.add_argument("-o", "--output", type=Path, required=True, help="case HDF5 file to write")
    parser.add_argument("--case-id", required=True, help="pseudonymous case ID stored in the file (never a patient ID)")
    parser.add_argument("--label", action="append", type=_label_arg, default=[], metavar="NAME=PATH",
                        help="label mask to resample onto the scan grid (repeatable), e.g. lung=lung.nii.gz")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    case = ingest_scan(args.case_id, args.input, dict(args.label))
    write_case(args.output, case)
    z, y, x = case.image.shape
    log.info("case %s: %d slices of %dx%d, spacing %s mm, labels %s -> %s",
             case.case_id, z, y, x, tuple(round(s, 3) for s in case.geometry.spacing), sorted(case.labels), args.output)
    return 0
