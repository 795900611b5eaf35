"""The case sheet: one row per CT series (case) with its pseudonymous patient, scan folder and labels.

TSV columns: ``case_id`` and ``patient_id`` (pseudonyms, never identifiers from the headers),
``dicom`` (the series folder, or a volume file), optional ``label_<name>`` columns (mask volumes) and
any further columns (kept, e.g. a series selector written by ``lungseg discover``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from lungseg.atomic import write_text_atomic

REQUIRED_COLUMNS = ("case_id", "patient_id", "dicom")
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


class CaseSheetError(ValueError):
    """A case sheet that cannot be used; the message names the file, the row and the fix."""


def read_case_sheet(path: str | Path) -> dict[str, dict[str, str]]:
    """Rows of a case sheet keyed by case_id, checked for required columns, valid and unique IDs."""
    path = Path(path)
    if not path.is_file():
        raise CaseSheetError(f"case sheet {path} not found: write it (see config/cases.example.tsv) or set source: demo")
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = set(REQUIRED_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise CaseSheetError(f"case sheet {path} lacks column(s) {sorted(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}")
        cases: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            case = row["case_id"]
            if not CASE_ID_PATTERN.fullmatch(case or ""):
                raise CaseSheetError(f"case sheet {path}, line {line}: case_id {case!r} must be letters, digits, '_', '-', '.'")
            if case in cases:
                raise CaseSheetError(f"case sheet {path}, line {line}: case_id {case} appears twice")
            if not row["patient_id"] or not row["dicom"]:
                raise CaseSheetError(f"case sheet {path}, line {line}: patient_id and dicom must not be empty")
            cases[case] = {k: (v or "") for k, v in row.items()}
    if not cases:
        raise CaseSheetError(f"case sheet {path} has no cases")
    return cases


def write_case_sheet(path: str | Path, rows: Iterable[Mapping[str, str]]) -> None:
    """Write rows (dicts with at least the required columns) as a case sheet, atomically."""
    rows = list(rows)
    columns = list(REQUIRED_COLUMNS) + sorted({k for r in rows for k in r} - set(REQUIRED_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t", lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["case_id"]))
    write_text_atomic(path, buffer.getvalue())


def quarantined_cases(status_files: Iterable[str | Path]) -> set[str]:
    """Case IDs whose ingest status file says ``"status": "quarantined"``."""
    bad = set()
    for path in status_files:
        status = json.loads(Path(path).read_text())
        if status.get("status") != "ok":
            bad.add(str(status["case_id"]))
    return bad
