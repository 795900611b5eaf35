"""``lungseg image-sheet ROOT -o cases.tsv``: a 2-D image dataset (folder layout or sheet) -> the case sheet.

ROOT is the dataset's top folder (layouts ``paired_folders``, ``class_folders``, ``left_right``, or ``auto``)
or a CSV/TSV sheet with an ``image`` column; see :mod:`lungseg.images.layouts` for the layouts and columns.
Writes the case sheet and, beside it unless ``--skipped`` says otherwise, ``image_skipped.tsv`` (path,
reason): images without a mask, masks without an image, 3-D volumes, duplicates. Case and patient IDs
are keyed hashes (the pseudonym secret, as for ``lungseg discover``); ingest then reads each image with
``lungseg ingest IMAGE --label NAME=MASK``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lungseg.cases import write_case_sheet
from lungseg.images.layouts import LAYOUTS, SKIPPED_COLUMNS, LayoutOptions, image_sheet
from lungseg.ingest.discover import write_table
from lungseg.ingest.pseudonym import add_secret_arguments, resolve_secret

log = logging.getLogger("lungseg.image_sheet")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="top folder of the image dataset, or a CSV/TSV sheet with an 'image' column")
    parser.add_argument("-o", "--output", type=Path, required=True, help="case sheet (TSV) to write")
    parser.add_argument("--skipped", type=Path, help="table of skipped files and why (default: image_skipped.tsv beside -o)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="folder layout (default: auto-detected)")
    parser.add_argument("--label", default="lung", help="label name of the masks (default: lung)")
    parser.add_argument("--mask-suffix", help="suffix of mask stems after the image stem, e.g. _mask "
                        "(default: any of _mask, -mask, _seg, _label, _gt ..., optionally numbered)")
    parser.add_argument("--image-dir", help="image folder below ROOT (default: found by name: images, image, img, CXR_png ...)")
    parser.add_argument("--mask-dir", help="mask folder below ROOT (default: found by name: masks, mask, labels, y, gt ...)")
    parser.add_argument("--right-dir", help="left_right: folder of right-lung masks below ROOT (default: a folder named *right*)")
    parser.add_argument("--left-dir", help="left_right: folder of left-lung masks below ROOT (default: a folder named *left*)")
    parser.add_argument("--patient-pattern", metavar="REGEX",
                        help="regex with a named group 'patient' matched on each image path below ROOT, e.g. "
                             "'(?P<patient>[0-9]+)_[0-9]+\\.png'")
    parser.add_argument("--patient-column", help="sheet column holding the patient (default: 'patient' if present)")
    add_secret_arguments(parser, "for case and patient pseudonyms")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    secret = resolve_secret(args.secret_env, args.secret_file, args.allow_default_secret)
    options = LayoutOptions(
        layout=args.layout,
        label=args.label,
        mask_suffix=args.mask_suffix,
        image_dir=args.image_dir,
        mask_dir=args.mask_dir,
        right_dir=args.right_dir,
        left_dir=args.left_dir,
        patient_pattern=args.patient_pattern,
        patient_column=args.patient_column,
    )
    sheet = image_sheet(args.root, secret, options)
    skipped = args.skipped or args.output.with_name("image_skipped.tsv")
    if sheet.cases:
        write_case_sheet(args.output, sheet.cases)
    else:
        write_table(args.output, [], ("case_id", "patient_id", "dicom"))
    write_table(skipped, sheet.skipped, SKIPPED_COLUMNS)
    for line in sheet.warnings:
        log.warning("%s", line)
    log.info("layout %s: %d case(s), %d skipped (%s) -> %s", sheet.layout, len(sheet.cases), len(sheet.skipped), skipped,
             args.output)
    return 0
