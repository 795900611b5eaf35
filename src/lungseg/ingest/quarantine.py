"""Per-case ingest status files and the quarantine table (``lungseg quarantine-table``).

``lungseg ingest ... --status STATUS.json`` writes one of::

    {"case_id": ..., "status": "ok", "n_slices": ..., "shape": [z, y, x], "spacing_mm": [x, y, z],
     "labels": {name: labelled voxels}, "notes": [...], "malignancy_medians": [...] (LIDC XML only),
     "seconds": ...}
    {"case_id": ..., "status": "quarantined", "file": ..., "reason": ..., "fix": ...}

(``file`` and ``reason`` are scrubbed: no patient identifiers, UIDs shown as ``<uid>``).
:func:`quarantine_rows` turns a list of them into the rows of ``quarantine.tsv`` (case, file, reason,
suggested fix); ``lungseg quarantine-table STATUS.json... -o quarantine.tsv [--require-ok]`` writes it
and, with ``--require-ok``, exits 1 with a message when no case was ingested.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lungseg.atomic import write_text_atomic
from lungseg.casefile import STATUS_OK, STATUS_QUARANTINED, CaseVolume
from lungseg.ingest.discover import write_table
from lungseg.ingest.errors import IngestError

QUARANTINE_COLUMNS = ("case", "file", "reason", "suggested fix")


def ok_status(case: CaseVolume, seconds: float) -> dict:
    return {
        "case_id": case.case_id,
        "status": STATUS_OK,
        "n_slices": int(case.image.shape[0]),
        "shape": [int(v) for v in case.image.shape],
        "spacing_mm": [round(float(v), 4) for v in case.geometry.spacing],
        "labels": {name: int((label > 0).sum()) for name, label in case.labels.items()},
        "notes": json.loads(str(case.provenance.get("ingest_notes", "[]"))),
        **_reader_ratings(case),
        "seconds": round(seconds, 3),
    }


def _reader_ratings(case: CaseVolume) -> dict:
    """``{"malignancy_medians": [...]}``: the readers' median malignancy rating (1-5, None when unrated) of each
    LIDC consensus nodule, for a split stratified by malignancy; nothing for a case without reader XML."""
    table = case.annotation_attrs.get("lidc_nodules")
    if table is None:
        return {}
    return {"malignancy_medians": [row.get("malignancy_median") for row in json.loads(table)]}


def quarantined_status(case_id: str, file: str, reason: str, fix: str) -> dict:
    return {"case_id": case_id, "status": STATUS_QUARANTINED, "file": file, "reason": reason, "fix": fix}


def write_status(path: Path, status: dict) -> None:
    write_text_atomic(path, json.dumps(status, indent=1) + "\n")


def read_status_json(path: Path) -> dict:
    try:
        status = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise IngestError(
            path, f"is not a readable status file ({exc})", "re-run `lungseg ingest ... --status`"
        ) from exc
    if (
        not isinstance(status, dict)
        or "case_id" not in status
        or status.get("status") not in (STATUS_OK, STATUS_QUARANTINED)
    ):
        raise IngestError(path, "is not a lungseg ingest status file", "re-run `lungseg ingest ... --status`")
    return status


def quarantine_rows(status_paths: list[Path]) -> list[dict[str, str]]:
    """Rows (case, file, reason, suggested fix) of the quarantined cases among ``status_paths``, by case."""
    rows = []
    for path in status_paths:
        status = read_status_json(path)
        if status["status"] == STATUS_QUARANTINED:
            rows.append(
                {
                    "case": str(status["case_id"]),
                    "file": str(status.get("file", "")),
                    "reason": str(status.get("reason", "")),
                    "suggested fix": str(status.get("fix", "")),
                }
            )
    return sorted(rows, key=lambda row: row["case"])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("status", nargs="+", type=Path, help="STATUS.json files written by `lungseg ingest --status`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="quarantine table to write (TSV)")
    parser.add_argument(
        "--require-ok",
        action="store_true",
        help="exit 1 with a message when no case was ingested (the table is still written)",
    )


def run(args: argparse.Namespace) -> int:
    rows = quarantine_rows(args.status)
    write_table(args.output, rows, QUARANTINE_COLUMNS)
    n_ok = len(args.status) - len(rows)
    print(f"{n_ok} case(s) ingested, {len(rows)} quarantined -> {args.output}", file=sys.stderr)
    if args.require_ok and n_ok == 0:
        raise IngestError(
            args.output,
            f"lists all {len(rows)} case(s) as quarantined: no case could be ingested",
            "fix the inputs named in the table (see its 'suggested fix' column)",
        )
    return 0
