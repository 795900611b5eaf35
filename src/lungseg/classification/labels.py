"""Class labels of nodules: readers' malignancy ratings -> benign / malignant / indeterminate, and pathology.

Rating protocol (LIDC's usual one, configurable): the median of the readers' malignancy ratings (1-5, those
given; a reader without a rating does not count) is ``benign`` when <= ``benign_max`` (default 2),
``malignant`` when >= ``malignant_min`` (default 4), ``indeterminate`` in between (3, or 2.5 / 3.5 with the
defaults); ``""`` when no reader rated the nodule. Whether indeterminate nodules are left out or kept as a third
class is the trainer's choice (``indeterminate``: ``exclude`` | ``class``); the table always holds the word.

Pathology (patient level, pathology-confirmed): ``benign`` | ``malignant`` | ``""`` (unknown), from a case-sheet
column ``pathology`` or a diagnosis table coded as TCIA's LIDC-IDRI diagnosis data ("Diagnosis at the Patient
Level": 0 unknown, 1 benign or non-malignant disease, 2 malignant primary lung cancer, 3 malignant metastatic).
Any other value is refused with one line naming the file, the value and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.ingest.errors import IngestError

BENIGN, MALIGNANT, INDETERMINATE, UNLABELLED = "benign", "malignant", "indeterminate", ""
INDETERMINATE_CHOICES = ("exclude", "class")
#: case-sheet column read first for the patient-level pathology
PATHOLOGY_COLUMN = "pathology"
#: header of TCIA's diagnosis table (its line breaks folded): "Diagnosis at the Patient Level 0=Unknown 1=..."
TCIA_DIAGNOSIS_HEADER = re.compile(r"diagnosis\s+at\s+the\s+patient\s+level", re.IGNORECASE)
#: accepted pathology values (case-insensitive, surrounding blanks ignored) -> benign / malignant / "" (unknown)
PATHOLOGY_VALUES = {
    "": UNLABELLED, "unknown": UNLABELLED, "0": UNLABELLED,
    "benign": BENIGN, "1": BENIGN,
    "malignant": MALIGNANT, "2": MALIGNANT, "3": MALIGNANT,
}


@dataclass(frozen=True)
class LabelProtocol:
    """Median rating -> class (see the module docstring)."""

    benign_max: float = 2.0
    malignant_min: float = 4.0
    indeterminate: str = "exclude"  # for the trainer: leave indeterminate nodules out, or keep them as a class

    def __post_init__(self) -> None:
        if not 1 <= self.benign_max < self.malignant_min <= 5:
            raise ValueError(
                f"label protocol: need 1 <= benign_max < malignant_min <= 5, got {self.benign_max} and {self.malignant_min}"
            )
        if self.indeterminate not in INDETERMINATE_CHOICES:
            raise ValueError(f"label protocol: indeterminate must be one of {INDETERMINATE_CHOICES}, got {self.indeterminate!r}")

    def label(self, median: float | None) -> str:
        """The class word of a median rating (``""`` for None: nobody rated the nodule)."""
        if median is None:
            return UNLABELLED
        if median <= self.benign_max:
            return BENIGN
        if median >= self.malignant_min:
            return MALIGNANT
        return INDETERMINATE

    def classes(self) -> tuple[str, ...]:
        """The training classes, in index order."""
        return (BENIGN, MALIGNANT) if self.indeterminate == "exclude" else (BENIGN, INDETERMINATE, MALIGNANT)


def median_rating(ratings: Sequence[int | None]) -> float | None:
    """Median of the ratings given (None entries ignored); None when there are none."""
    known = [r for r in ratings if r is not None]
    return float(np.median(known)) if known else None


def parse_pathology(value: str | None, *, source: str | Path, column: str) -> str:
    """``benign`` | ``malignant`` | ``""`` from a sheet or diagnosis-table cell; an :class:`IngestError` otherwise."""
    text = (value or "").strip().lower()
    if text.endswith(".0") and text[:-2].isdigit():  # a spreadsheet saved its codes as numbers (2.0)
        text = text[:-2]
    if text in PATHOLOGY_VALUES:
        return PATHOLOGY_VALUES[text]
    raise IngestError(
        source,
        f"column {column!r} holds the pathology value {value!r}",
        "use benign, malignant or leave it empty (TCIA codes: 0 unknown, 1 benign, 2 primary / 3 metastatic malignant)",
    )


def diagnosis_column(header: Sequence[str], column: str | None = None) -> str | None:
    """The pathology column of a diagnosis table: ``column`` if given (None if absent), else TCIA's patient-level
    diagnosis header, else a column named ``pathology``; None when there is none."""
    if column:
        return column if column in header else None
    tcia = [name for name in header if TCIA_DIAGNOSIS_HEADER.search(name)]
    if tcia:
        return tcia[0]
    return PATHOLOGY_COLUMN if PATHOLOGY_COLUMN in header else None


def case_pathology(
    row: Mapping[str, str],
    diagnosis: Mapping[str, Mapping[str, str]] | None = None,
    *,
    column: str | None = None,
    sheet: str | Path = "case sheet",
    diagnosis_path: str | Path = "diagnosis table",
) -> str:
    """The pathology of one case: its case-sheet cell (``column``, default ``pathology``) when not empty, else the
    diagnosis-table row of its patient (``diagnosis``: patient_id -> row; column by :func:`diagnosis_column`)."""
    sheet_column = column or PATHOLOGY_COLUMN
    value = parse_pathology(row.get(sheet_column, ""), source=sheet, column=sheet_column)
    if value or not diagnosis:
        return value
    patient_row = diagnosis.get(row.get("patient_id", ""))
    if patient_row is None:
        return UNLABELLED
    name = diagnosis_column(list(patient_row), column)
    return parse_pathology(patient_row.get(name, ""), source=diagnosis_path, column=name) if name else UNLABELLED
