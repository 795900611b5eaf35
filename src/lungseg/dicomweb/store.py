"""``lungseg dicomweb-store --url URL FILE...``: store DICOM objects (the DICOM-SEG exports) in a PACS.

Each file is sent with STOW-RS, then looked up again with QIDO-RS (by its study, series and SOP
instance UIDs) so that a server that answered 200 but did not keep the object is caught. ``--receipt``
writes a small JSON receipt (server URL, and per file its path, SOP class and whether it was found
again): no UID or patient value, so it can live in ``results/`` and make the workflow's store step run
once per file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from lungseg.atomic import write_text_atomic
from lungseg.dicomweb.client import DicomwebError, Pacs
from lungseg.dicomweb.retrieve import add_connection_arguments, pacs_from_args


@dataclass(frozen=True)
class Stored:
    file: str
    sop_class: str  # its name, e.g. "Segmentation Storage"
    found_by_qido: bool


def read_object(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DicomwebError(f"{path}: not a readable DICOM file ({type(exc).__name__}): give the .dcm files to store") from None


def store_files(pacs: Pacs, paths: Sequence[Path]) -> list[Stored]:
    """STOW-RS each file, then find it again with QIDO-RS; a :class:`DicomwebError` if one is not found."""
    stored = []
    for path in paths:
        ds = read_object(Path(path))
        what = f"{Path(path).name}"
        pacs.store([ds], what=what)
        found = pacs.has_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, what=what)
        if not found:
            raise DicomwebError(f"{what}: {pacs.url} accepted it (STOW-RS) but a query (QIDO-RS) does not find it")
        stored.append(Stored(str(path), UID(str(ds.SOPClassUID)).name, found))
    return stored


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE", help="DICOM files to store (e.g. exports/*/*.seg.dcm)")
    parser.add_argument("--receipt", type=Path, help="JSON receipt to write once every file is stored and found again")


def run(args: argparse.Namespace) -> int:
    try:
        pacs = pacs_from_args(args)
        stored = store_files(pacs, args.files)
    except DicomwebError as exc:
        print(f"lungseg dicomweb-store: error: {exc}", file=sys.stderr)
        return 1
    if args.receipt:
        receipt = {"url": pacs.url, "stored": [asdict(s) for s in stored]}
        write_text_atomic(args.receipt, json.dumps(receipt, indent=1) + "\n")
    print(f"stored {len(stored)} object(s) on {pacs.url}; each found again by QIDO-RS")
    return 0
