"""A per-patient clinical table keyed by DICOM PatientID (e.g. TCIA's LIDC-IDRI diagnosis data),
re-keyed by discovery to the patients' pseudonyms.

The table is CSV or TSV (a spreadsheet saved as either). The patient column is the one named in the
settings, else the first whose header reads like "patient id" ("TCIA Patient ID", "PatientID",
"patient_id"). Its values are replaced by the keyed patient pseudonyms that the case sheet uses;
rows of patients not in the archive are dropped (counted, never written); every other cell is copied,
scrubbed of identifying header values and UIDs. Header names lose their line breaks.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lungseg.ingest.errors import IngestError
from lungseg.ingest.pseudonym import patient_pseudonym

PATIENT_HEADER = re.compile(r"patient[\s_-]*id", re.IGNORECASE)


@dataclass
class DiagnosisTable:
    columns: list[str]  # "patient_id" first
    rows: list[dict[str, str]]
    unmatched_rows: int  # rows of patients not in the archive (dropped)
    patients_without_row: int  # archive patients the table does not mention


def _clean_header(name: str) -> str:
    return " ".join((name or "").split())


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(
            path, f"cannot be read as a text table ({exc})", "save the spreadsheet as CSV or TSV (UTF-8)"
        ) from exc
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text.split("\n", 1)[0]) else ","
    table = [row for row in csv.reader(text.splitlines(keepends=True), delimiter=delimiter) if any(c.strip() for c in row)]
    if not table:
        raise IngestError(path, "is empty", "give the table with a header row")
    return [_clean_header(h) for h in table[0]], table[1:]


def pseudonymise_diagnosis(
    path: Path,
    secret: str,
    archive_patients: Iterable[str],
    *,
    patient_column: str | None = None,
    scrub: Callable[[str], str] = str,
) -> DiagnosisTable:
    """The table at ``path`` keyed by patient pseudonyms, restricted to ``archive_patients`` (raw PatientIDs)."""
    path = Path(path)
    header, body = _read(path)
    if patient_column:
        wanted = _clean_header(patient_column)
        if wanted not in header:
            raise IngestError(path, f"has no column {wanted!r} (columns: {header})", "set discover.diagnosis_patient_column")
        key = header.index(wanted)
    else:
        matches = [i for i, name in enumerate(header) if PATIENT_HEADER.search(name)]
        if not matches:
            raise IngestError(
                path, f"has no patient ID column (columns: {header})", "name it in discover.diagnosis_patient_column"
            )
        key = matches[0]
    patients = {p.strip() for p in archive_patients}
    others = [name or f"column {i + 1}" for i, name in enumerate(header) if i != key]
    columns = ["patient_id", *others]
    rows, unmatched, seen = [], 0, set()
    for cells in body:
        cells = cells + [""] * (len(header) - len(cells))
        patient = cells[key].strip()
        if patient not in patients:
            unmatched += 1
            continue
        seen.add(patient)
        values = [scrub(c.strip()) for i, c in enumerate(cells[: len(header)]) if i != key]
        rows.append({"patient_id": patient_pseudonym(secret, patient), **dict(zip(others, values))})
    rows.sort(key=lambda r: r["patient_id"])
    return DiagnosisTable(columns, rows, unmatched, len(patients - seen))
