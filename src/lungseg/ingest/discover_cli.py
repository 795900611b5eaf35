"""``lungseg discover ROOT -o cases.tsv``: find the axial CT series in a DICOM tree, write the case sheet.

Writes the case sheet (see :mod:`lungseg.ingest.discover` for its columns) and, beside it unless
``--skipped`` says otherwise, ``discovery_skipped.tsv`` (path, reason) listing scouts, non-axial,
non-CT, too-short series, unreadable files and label objects it could not attach. ``--luna16`` attaches a
LUNA16 annotations.csv to the series it has rows of; ``--diagnosis`` re-keys a clinical table keyed by
PatientID (e.g. TCIA's LIDC-IDRI diagnosis data saved as CSV) by patient pseudonym into
``diagnosis.tsv`` beside -o (``--diagnosis-out``). Case and patient IDs are keyed pseudonyms: the secret
comes from ``$LUNGSEG_PSEUDONYM_KEY`` (``--secret-env``) or ``--secret-file``; without one the command
refuses to run unless ``--allow-default-secret`` (public secret, demo data only). Exits 1 with a
message when no series qualifies (both tables are still written).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lungseg.ingest.discover import CASE_COLUMNS, DEFAULT_MIN_SLICES, SKIPPED_COLUMNS, discover, write_table
from lungseg.ingest.errors import IngestError
from lungseg.ingest.pseudonym import Scrubber, add_secret_arguments, resolve_secret, scrub_diagnostics

log = logging.getLogger("lungseg.discover")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="top folder of the DICOM tree (any depth)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="case sheet to write (TSV)")
    parser.add_argument("--skipped", type=Path, help="skipped-series table (default: discovery_skipped.tsv beside -o)")
    add_secret_arguments(parser)
    parser.add_argument(
        "--min-slices",
        type=int,
        default=DEFAULT_MIN_SLICES,
        help=f"fewest slices for a series to count as a scan (default {DEFAULT_MIN_SLICES})",
    )
    parser.add_argument(
        "--link-dir",
        type=Path,
        help="make LINK_DIR/<case_id>/ with one link per slice and point the sheet there "
        "(pseudonymous paths, one series per folder)",
    )
    parser.add_argument(
        "--luna16", type=Path, metavar="CSV", help="LUNA16 annotations.csv: attached to each series it has rows of"
    )
    parser.add_argument(
        "--diagnosis",
        type=Path,
        metavar="TABLE",
        help="CSV/TSV keyed by PatientID (e.g. TCIA's diagnosis data): written keyed by patient pseudonym",
    )
    parser.add_argument(
        "--diagnosis-patient-column",
        metavar="NAME",
        help="the table's patient ID column (default: the first whose name reads like 'patient id')",
    )
    parser.add_argument(
        "--diagnosis-out",
        type=Path,
        help="re-keyed table to write (default: diagnosis.tsv beside -o; without --diagnosis a header-only table)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scrub = Scrubber()
    scrub_diagnostics(scrub)
    if args.min_slices < 1:
        raise SystemExit("lungseg discover: --min-slices must be >= 1")
    secret = resolve_secret(args.secret_env, args.secret_file, args.allow_default_secret)
    found = discover(
        args.root,
        secret,
        min_slices=args.min_slices,
        link_dir=args.link_dir,
        progress=not args.no_progress,
        scrubber=scrub,
        luna16=args.luna16,
        diagnosis=args.diagnosis,
        diagnosis_patient_column=args.diagnosis_patient_column,
    )
    skipped_path = args.skipped or args.output.with_name("discovery_skipped.tsv")
    write_table(args.output, found.cases, CASE_COLUMNS)
    write_table(skipped_path, found.skipped, SKIPPED_COLUMNS)
    log.info("%d series -> %s; %d skipped -> %s", len(found.cases), args.output, len(found.skipped), skipped_path)
    for kind in ("lidc_xml", "luna16", "rtstruct", "seg"):
        log.info("%s attached to %d of %d series", kind, sum(1 for c in found.cases if c[kind]), len(found.cases))
    if found.diagnosis is None and args.diagnosis_out:  # the workflow's checkpoint always names this output
        write_table(args.diagnosis_out, [], ("patient_id",))
    if found.diagnosis is not None:
        diagnosis_path = args.diagnosis_out or args.output.with_name("diagnosis.tsv")
        write_table(diagnosis_path, found.diagnosis.rows, tuple(found.diagnosis.columns))
        log.info(
            "diagnosis: %d row(s) of archive patients -> %s; %d row(s) of other patients dropped; "
            "%d archive patient(s) without a row",
            len(found.diagnosis.rows),
            diagnosis_path,
            found.diagnosis.unmatched_rows,
            found.diagnosis.patients_without_row,
        )
    if not found.cases:
        raise IngestError(
            args.root,
            f"holds no axial CT series with >= {args.min_slices} slices ({len(found.skipped)} skipped)",
            f"see {skipped_path} for the reasons",
        )
    return 0
