"""Patient-level train/val/test split, reproducible by seed.

All cases of one patient go to the same split. Patients are shuffled with a seeded generator and
cut by the requested fractions; val and test each get at least one patient when there are three
or more, and train always keeps at least one.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.cases import CaseSheetError, quarantined_cases, read_case_sheet

SPLITS = ("train", "val", "test")


def split_counts(n_patients: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Number of patients in (train, val, test)."""
    if n_patients < 1:
        raise ValueError("cannot split an empty cohort: no cases were found")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    n_val, n_test = (int(round(f * n_patients)) for f in fractions[1:])
    if n_patients >= 3:
        n_val, n_test = (max(1, n) if f > 0 else n for n, f in ((n_val, fractions[1]), (n_test, fractions[2])))
    while n_val + n_test > n_patients - 1 and (n_val or n_test):  # keep one patient for training
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_patients - n_val - n_test, n_val, n_test


def assign_splits(case_patients: Mapping[str, str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Map each case ID to 'train', 'val' or 'test', grouping cases by patient."""
    patients = sorted(set(case_patients.values()))
    order = np.random.default_rng(seed).permutation(len(patients))
    n_train, n_val, _ = split_counts(len(patients), fractions)
    patient_split = {}
    for rank, index in enumerate(order):
        patient_split[patients[index]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return {case: patient_split[patient] for case, patient in sorted(case_patients.items())}


def write_split(path: Path, case_patients: Mapping[str, str], splits: Mapping[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["case_id", "patient_id", "split"])
    for case in sorted(splits):
        writer.writerow([case, case_patients[case], splits[case]])
    write_text_atomic(path, buffer.getvalue())


def read_split(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["case_id"]: row["split"] for row in csv.DictReader(f, delimiter="\t")}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=Path, required=True, help="case sheet (TSV with case_id, patient_id, ...)")
    parser.add_argument("--status", type=Path, nargs="*", default=[],
                        help="ingest status JSON files; quarantined cases are left out of every split")
    parser.add_argument("--fractions", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("-o", "--output", type=Path, required=True, help="TSV file: case_id, patient_id, split")


def run(args: argparse.Namespace) -> int:
    sheet = read_case_sheet(args.cases)
    excluded = quarantined_cases(args.status)
    case_patients = {case: row["patient_id"] for case, row in sheet.items() if case not in excluded}
    if not case_patients:
        raise CaseSheetError(f"no case of {args.cases} passed ingest ({len(excluded)} quarantined); "
                             "see the quarantine table for each reason and fix")
    if excluded:
        print(f"left out {len(excluded)} quarantined case(s): {', '.join(sorted(excluded))}")
    splits = assign_splits(case_patients, args.fractions, args.seed)
    write_split(args.output, case_patients, splits)
    counts = {s: sum(v == s for v in splits.values()) for s in SPLITS}
    print(f"split {len(splits)} cases: {counts} -> {args.output}")
    return 0
