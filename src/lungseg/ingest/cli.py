"""``lungseg ingest``: one scan (DICOM folder, volume or 2-D image) + labels -> per-case HDF5 (the code the workflow runs).

A 2-D image (PNG, JPEG, TIFF, GIF, BMP, a DICOM radiograph) becomes a one-slice case with normalised
intensity (see :mod:`lungseg.images`); its masks come as ``--label NAME=MASK.png`` (``NAME_right`` +
``NAME_left`` are combined into NAME 1 right / 2 left, ``NAME_partN`` masks are added to NAME).

``lungseg ingest INPUT --case-id ID [--label NAME=PATH ...] [--lidc-xml FILE] [--luna16 CSV]
[--rtstruct FILE] [--seg FILE] [--structure-labels JSON] [--target-spacing X Y Z] [--series SELECTOR]
-o CASE.h5 [--status STATUS.json]``

Without ``--status`` bad input exits 1 with one line naming the file and the fix. With ``--status``
bad input is quarantined instead: STATUS.json records ``{"case_id", "status": "quarantined", "file",
"reason", "fix"}``, CASE.h5 is a placeholder without image (``lungseg.casefile.write_quarantined_case``)
and the command exits 0, so one bad series never stops the others. On success STATUS.json has
``"status": "ok"`` and a few figures (see :mod:`lungseg.ingest.quarantine`). Messages, logs and files
never carry patient identifiers or UIDs from the input (they are scrubbed).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from lungseg.casefile import write_case, write_quarantined_case
from lungseg.ingest.dicom_series import DEFAULT_MAX_GAP
from lungseg.ingest.errors import IngestError
from lungseg.ingest.lidc import DEFAULT_AGREEMENT
from lungseg.ingest.pseudonym import Scrubber, add_secret_arguments, resolve_secret, scrub_diagnostics
from lungseg.ingest.quarantine import ok_status, quarantined_status, write_status
from lungseg.ingest.scan import IngestOptions, ingest_scan

log = logging.getLogger("lungseg.ingest")


def _label_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. lung=lung.nii.gz), got {text!r}")
    return name, Path(path)


def _structure_labels(text: str) -> dict:
    """``--structure-labels``: a JSON object, or a JSON/YAML file holding one (ROI/segment names -> labels)."""
    import yaml

    from lungseg.ingest.structure_map import parse_mapping

    try:
        value = yaml.safe_load(Path(text).read_text()) if not text.lstrip().startswith("{") else json.loads(text)
        parse_mapping(value)
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as exc:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object {{label: [names]}} or {{label: {{value: [names]}}}}, or a file holding one ({exc})"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping of labels to ROI/segment names, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="DICOM series folder, a .nii/.nii.gz/.nrrd/.mha/.mhd volume, or a 2-D image "
                        "(.png/.jpg/.tif/.gif/.bmp, or a DICOM radiograph file)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="case HDF5 file to write")
    parser.add_argument("--case-id", required=True, help="pseudonymous case ID stored in the file (never a patient ID)")
    parser.add_argument(
        "--label",
        action="append",
        type=_label_arg,
        default=[],
        metavar="NAME=PATH",
        help="label mask to resample onto the scan grid (repeatable), e.g. lung=lung.nii.gz",
    )
    parser.add_argument("--lidc-xml", type=Path, help="LIDC-IDRI reader XML: per-reader masks, consensus nodule label")
    parser.add_argument(
        "--agreement",
        type=_fraction,
        default=DEFAULT_AGREEMENT,
        help=f"LIDC consensus: fraction of a nodule's readers that must agree (default {DEFAULT_AGREEMENT})",
    )
    parser.add_argument("--luna16", type=Path, metavar="CSV", help="LUNA16 annotations.csv: spherical nodule label")
    parser.add_argument(
        "--rtstruct", type=Path, metavar="FILE", help="RT Structure Set drawn on this series: contours -> labels (lung, tumour)"
    )
    parser.add_argument("--seg", type=Path, metavar="FILE", help="DICOM-SEG drawn on this series: segments -> labels")
    parser.add_argument(
        "--structure-labels",
        type=_structure_labels,
        metavar="JSON",
        help="ROI/segment names -> labels for --rtstruct/--seg, as JSON or a JSON/YAML file: {label: [names or globs]} "
        "or {label: {value: [...]}} (config ingest.structure_labels; default: lungs -> lung 1 right / 2 left, GTV* -> tumour)",
    )
    parser.add_argument(
        "--target-spacing",
        type=_positive,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="resample to this spacing in mm (linear image, nearest labels)",
    )
    parser.add_argument(
        "--max-gap",
        type=_positive,
        default=DEFAULT_MAX_GAP,
        help="refuse gaps wider than this many slice steps, resample over narrower irregularities "
        f"(default {DEFAULT_MAX_GAP}: a missing slice is refused)",
    )
    parser.add_argument(
        "--series",
        metavar="SELECTOR",
        help="pick one series of a folder holding several "
        "(the `series` column of `lungseg discover`; needs the same secret)",
    )
    add_secret_arguments(parser, "for --series")
    parser.add_argument(
        "--status",
        type=Path,
        metavar="STATUS.json",
        help="quarantine bad input: record it here, write a placeholder case file, exit 0",
    )
    parser.add_argument(
        "--compress-image",
        action="store_true",
        help="lzf-compress the image in the HDF5 (about half the size, about 3x slower ingest)",
    )
    parser.add_argument("--voi", choices=("apply", "ignore"), default="apply",
                        help="2-D DICOM images: apply their VOI LUT / window before normalising (default) or ignore it")
    parser.add_argument("--progress", action="store_true", help="progress bar over slices")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scrub = Scrubber()
    scrub_diagnostics(scrub)
    started = time.perf_counter()
    try:
        secret = resolve_secret(args.secret_env, args.secret_file, args.allow_default_secret) if args.series else None
        options = IngestOptions(
            labels=dict(args.label),
            lidc_xml=args.lidc_xml,
            luna16=args.luna16,
            rtstruct=args.rtstruct,
            seg=args.seg,
            structure_labels=args.structure_labels,
            target_spacing=tuple(args.target_spacing) if args.target_spacing else None,
            selector=args.series,
            secret=secret,
            max_gap=args.max_gap,
            agreement=args.agreement,
            progress=args.progress,
            voi=args.voi,
        )
        case = ingest_scan(args.case_id, args.input, options=options, scrubber=scrub)
    except IngestError as exc:
        clean = IngestError(scrub(exc.path), scrub(exc.reason), scrub(exc.fix))
        if args.status is None:
            raise clean from None
        write_quarantined_case(args.output, args.case_id, clean.path, clean.reason, clean.fix)
        write_status(args.status, quarantined_status(args.case_id, clean.path, clean.reason, clean.fix))
        log.warning("case %s quarantined: %s", args.case_id, clean)
        return 0
    write_case(args.output, case, compress_image=args.compress_image)
    if args.status is not None:
        write_status(args.status, ok_status(case, time.perf_counter() - started))
    z, y, x = case.image.shape
    log.info(
        "case %s: %d slices of %dx%d, spacing %s mm, labels %s -> %s",
        case.case_id,
        z,
        y,
        x,
        tuple(round(s, 3) for s in case.geometry.spacing),
        sorted(case.labels),
        scrub(str(args.output)),
    )
    for note in json.loads(str(case.provenance.get("ingest_notes", "[]"))):
        log.info("case %s: %s", case.case_id, scrub(note))
    return 0
