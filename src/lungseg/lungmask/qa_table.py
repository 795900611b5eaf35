"""``lungseg lung-mask-qa``: collect the per-case lung-mask QA files into one TSV table."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from lungseg.atomic import write_text_atomic
from lungseg.ingest.errors import IngestError
from lungseg.lungmask.qa import COLUMNS

log = logging.getLogger("lungseg.lungmask")


def read_qa(path: Path) -> dict:
    """One QA JSON file (as written by ``lungseg lung-mask --qa``)."""
    try:
        row = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IngestError(path, f"is not a readable lung-mask QA file ({exc})", "re-run lungseg lung-mask --qa") from exc
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise IngestError(path, f"lacks QA field(s) {missing}", "re-run lungseg lung-mask --qa with this lungseg version")
    return row


def qa_table(rows: list[dict]) -> str:
    """TSV text: one line per case (sorted by case id), columns :data:`~lungseg.lungmask.qa.COLUMNS`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, delimiter="\t", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: str(r["case_id"])):
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})
    return out.getvalue()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("qa", type=Path, nargs="+", help="per-case QA JSON files of lungseg lung-mask")
    parser.add_argument("-o", "--output", type=Path, required=True, help="TSV table to write")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rows = [read_qa(p) for p in args.qa]
    write_text_atomic(args.output, qa_table(rows))
    flagged = [str(r["case_id"] or "-") for r in rows if not r["plausible"]]
    log.info("%d case(s), %d flagged%s", len(rows), len(flagged), f": {', '.join(flagged)}" if flagged else "")
    return 0
