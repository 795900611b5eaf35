"""Patient-level train/val/test split and k-fold cross-validation folds, reproducible by seed.

All cases of one patient go to the same split (and fold). Patients are shuffled with a seeded
generator and cut by the requested fractions; val and test each get at least one patient when there
are three or more, and train always keeps at least one.

k-fold cross-validation (``split.folds`` = K > 1): the test patients are held out as with one fold
(``fractions[2]``); every other patient gets split ``train`` and a fold 0..K-1 (sizes differ by at most
one patient). Fold k's model trains on the other K-1 folds and validates on fold k, so each non-test
case is validated (and gets an out-of-fold prediction) exactly once. ``fractions[1]`` (val) is then
unused: each fold validates on its own patients.

Stratification (``split.stratify``): given each case's stratum (``True``: the case has the training
target label, ``False``: it has not, ``None``: unknown), a patient is positive when any of its cases
is, else unknown when any is unknown, else negative. Strata may also be graded levels (0 = negative,
1 = has the label, 2 = has a nodule its readers rate malignant: ``--stratify-malignancy``); a patient
then takes the highest level of its cases, and each level is dealt on its own, the highest first.
The test cut (and with one fold the val cut) then takes each stratum in proportion, and each
stratum's patients are dealt round-robin across the folds, so every fold gets a positive patient
when there are at least K positive non-test patients; with one fold, val and test each get a
positive patient when training would keep two or more (a swap with the last positive training
patient where proportions alone left them none).
With a single stratum (e.g. every case has a lung mask) the result is the unstratified one.

``split.tsv`` columns: ``case_id``, ``patient_id``, ``split`` and ``fold`` (0..K-1 for the non-test
cases when K > 1, empty otherwise).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from lungseg.atomic import write_text_atomic
from lungseg.cases import CaseSheetError, quarantined_cases, read_case_sheet

SPLITS = ("train", "val", "test")
#: a patient's stratum: minus its level (so that higher levels sort, and are dealt, first), or _UNKNOWN
_NEGATIVE, _UNKNOWN = 0, 99

#: case -> stratum: False / True (has the label) or a graded level 0, 1, 2...; None = unknown
CaseStrata = Mapping[str, bool | int | None]

#: case -> split ("train", "val", "test") and fold (None without k-fold, and for test cases)
SplitTable = Mapping[str, tuple[str, int | None]]


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


def check_folds(n_patients: int, fractions: Sequence[float], folds: int) -> None:
    """Raise ValueError (one line naming split.folds, the patient counts and the fix) when ``folds``
    cannot be cut from ``n_patients`` patients: K > 1 folds need K patients outside the test set."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"split.folds = {folds!r}; allowed: an integer >= 1 (1 = one train/val split)")
    n_test = split_counts(n_patients, fractions)[2]
    n_rest = n_patients - n_test
    if folds > 1 and folds > n_rest:
        fix = (f"set split.folds to at most {n_rest} (or 1: one train/val split)" if n_rest >= 2
               else "set split.folds: 1 (one train/val split)")
        raise ValueError(f"split.folds = {folds} needs {folds} patients outside the test set, but the cohort has "
                         f"{n_patients} patient(s) and {n_test} go to test (split.fractions {list(fractions)}), "
                         f"leaving {n_rest}; {fix}, or add patients")


def _ranked_patients(case_patients: Mapping[str, str], seed: int) -> list[str]:
    """Patients in the seeded random order every cut and fold starts from."""
    patients = sorted(set(case_patients.values()))
    order = np.random.default_rng(seed).permutation(len(patients))
    return [patients[i] for i in order]


def _patient_strata(case_patients: Mapping[str, str], strata: CaseStrata) -> dict[str, int]:
    """Patient -> stratum: its highest positive level if any case has one, else unknown if any case is
    unknown, else negative."""
    seen: dict[str, set[int]] = {}
    for case, patient in case_patients.items():
        value = strata.get(case)
        seen.setdefault(patient, set()).add(_UNKNOWN if value is None else -int(value))
    return {patient: min(kinds) if min(kinds) < _NEGATIVE else _UNKNOWN if _UNKNOWN in kinds else _NEGATIVE
            for patient, kinds in seen.items()}


def _interleaved(ranked: Sequence[str], patient_strata: Mapping[str, int]) -> list[str]:
    """``ranked`` reordered so that every window holds the strata in proportion: the j-th of a stratum's
    n patients (in ranked order) sits at (j + 0.5) / n. A single stratum keeps the ranked order."""
    groups: dict[int, list[str]] = {}
    for patient in ranked:
        groups.setdefault(patient_strata[patient], []).append(patient)
    rank = {p: i for i, p in enumerate(ranked)}
    keyed = [((j + 0.5) / len(group), rank[p], p) for group in groups.values() for j, p in enumerate(group)]
    return [p for _, _, p in sorted(keyed)]


def assign_splits(case_patients: Mapping[str, str], fractions: Sequence[float], seed: int,
                  strata: CaseStrata | None = None) -> dict[str, str]:
    """Map each case ID to 'train', 'val' or 'test', grouping cases by patient.

    ``strata`` (case -> has the target label, None = unknown; missing cases are unknown) makes the val
    and test cuts take each stratum in proportion; without it (or with a single stratum) the split is
    the plain seeded one.
    """
    ranked = _ranked_patients(case_patients, seed)
    n_train, n_val, _ = split_counts(len(ranked), fractions)
    order = _interleaved(ranked, _patient_strata(case_patients, strata)) if strata is not None else ranked
    patient_split = {}
    for rank, patient in enumerate(order):
        patient_split[patient] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    if strata is not None:
        _give_each_split_a_positive(patient_split, order, _patient_strata(case_patients, strata))
    return {case: patient_split[patient] for case, patient in sorted(case_patients.items())}


def _give_each_split_a_positive(patient_split: dict[str, str], order: Sequence[str], strata: Mapping[str, int]) -> None:
    """Where val or test got no positive patient although training has two or more, swap the last
    positive training patient (in ``order``) with that split's last non-positive patient: a model is
    then validated and tested on scans with the target (few nodule cases, small cohorts)."""
    for split in ("val", "test"):
        members = [p for p in order if patient_split[p] == split]
        donors = [p for p in order if patient_split[p] == "train" and strata[p] < _NEGATIVE]
        if not members or any(strata[p] < _NEGATIVE for p in members) or len(donors) < 2:
            continue
        patient_split[donors[-1]], patient_split[members[-1]] = split, "train"


def assign_folds(case_patients: Mapping[str, str], fractions: Sequence[float], seed: int, folds: int = 1,
                 strata: CaseStrata | None = None) -> dict[str, tuple[str, int | None]]:
    """Map each case ID to (split, fold). ``folds == 1``: :func:`assign_splits` with no folds.
    ``folds = K > 1``: test as with one fold; every other case ('train', fold 0..K-1), patient-grouped,
    seeded, fold sizes within one patient, each stratum dealt round-robin across the folds."""
    check_folds(len(set(case_patients.values())), fractions, folds)
    if folds == 1:
        return {case: (split, None) for case, split in assign_splits(case_patients, fractions, seed, strata).items()}
    ranked = _ranked_patients(case_patients, seed)
    n_test = split_counts(len(ranked), fractions)[2]
    patient_strata = _patient_strata(case_patients, strata) if strata is not None else dict.fromkeys(ranked, 0)
    order = _interleaved(ranked, patient_strata)
    test = set(order[len(order) - n_test:])
    rest = sorted((p for p in ranked if p not in test), key=lambda p: patient_strata[p])  # stable: ranked within
    patient_fold = {patient: i % folds for i, patient in enumerate(rest)}
    return {case: ("test", None) if patient in test else ("train", patient_fold[patient])
            for case, patient in sorted(case_patients.items())}


def write_split(path: Path, case_patients: Mapping[str, str], splits: Mapping[str, str],
                folds: Mapping[str, int | None] | None = None) -> None:
    """split.tsv: case_id, patient_id, split, fold (empty where a case has none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["case_id", "patient_id", "split", "fold"])
    for case in sorted(splits):
        fold = (folds or {}).get(case)
        writer.writerow([case, case_patients[case], splits[case], "" if fold is None else fold])
    write_text_atomic(path, buffer.getvalue())


def read_split(path: Path) -> dict[str, str]:
    """case -> split ('train', 'val' or 'test')."""
    with open(path, newline="") as f:
        return {row["case_id"]: row["split"] for row in csv.DictReader(f, delimiter="\t")}


def read_split_table(path: Path) -> dict[str, tuple[str, int | None]]:
    """case -> (split, fold); fold is None for test cases, without k-fold, and in files without the column."""
    with open(path, newline="") as f:
        return {row["case_id"]: (row["split"], int(row["fold"]) if (row.get("fold") or "").strip() else None)
                for row in csv.DictReader(f, delimiter="\t")}


def count_folds(table: SplitTable) -> int:
    """Number of folds a split table was cut into (1 when it has no fold column values)."""
    folds = {fold for _, fold in table.values() if fold is not None}
    return max(folds) + 1 if folds else 1


def fold_cases(table: SplitTable, fold: int, folds: int) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of ``fold``: with ``folds == 1`` (fold 0) the train and val
    splits; with K > 1 the non-test cases of the other folds, and those of fold ``fold``."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} does not exist with split.folds = {folds}; allowed: 0 to {folds - 1}")
    found = count_folds(table)
    if found != folds:
        raise ValueError(f"the split table has {found} fold(s) but split.folds = {folds}; "
                         f"re-run `lungseg split --folds {folds}`")
    if folds == 1:
        return (sorted(c for c, (s, _) in table.items() if s == "train"),
                sorted(c for c, (s, _) in table.items() if s == "val"))
    train = sorted(c for c, (s, f) in table.items() if s != "test" and f is not None and f != fold)
    return train, out_of_fold_cases(table, fold)


def out_of_fold_cases(table: SplitTable, fold: int) -> list[str]:
    """The validation cases of ``fold`` (those fold ``fold``'s model predicts out of fold): the val
    split when the table has no folds (fold 0 only)."""
    if count_folds(table) == 1:
        if fold != 0:
            raise ValueError(f"fold {fold} does not exist: the split table has no folds (only fold 0)")
        return sorted(c for c, (s, _) in table.items() if s == "val")
    return sorted(c for c, (s, f) in table.items() if s != "test" and f == fold)


def label_strata(status_files: Iterable[str | Path], label: str) -> dict[str, bool | None]:
    """case -> whether its ingest status counts foreground voxels of ``label`` (``labels[label] > 0``);
    None when the status has no count for it (quarantined, or the label missing)."""
    statuses = [json.loads(Path(path).read_text()) for path in status_files]
    return {str(status["case_id"]): _has_label(status, label) for status in statuses}


def _has_label(status: Mapping, label: str) -> bool | None:
    """Whether an ingest status counts foreground voxels of ``label``; None when it has no count for it."""
    count = (status.get("labels") or {}).get(label) if status.get("status") == "ok" else None
    return None if count is None else count > 0


def malignancy_strata(status_files: Iterable[str | Path], label: str, malignant_min: float) -> dict[str, int | None]:
    """case -> graded stratum: 2 when one of its nodules has a readers' median malignancy rating >=
    ``malignant_min`` (``malignancy_medians`` of its ingest status: LIDC reader XML), else 1 when it has
    label ``label``, else 0; None when unknown (as :func:`label_strata`)."""
    strata: dict[str, int | None] = {}
    for path in status_files:
        status = json.loads(Path(path).read_text())
        has_label = _has_label(status, label)
        medians = [m for m in status.get("malignancy_medians") or [] if m is not None]
        malignant = status.get("status") == "ok" and any(m >= malignant_min for m in medians)
        strata[str(status["case_id"])] = 2 if malignant else None if has_label is None else int(has_label)
    return strata


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=Path, required=True, help="case sheet (TSV with case_id, patient_id, ...)")
    parser.add_argument("--status", type=Path, nargs="*", default=[],
                        help="ingest status JSON files; quarantined cases are left out of every split")
    parser.add_argument("--fractions", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--folds", type=int, default=1,
                        help="k-fold cross-validation: K > 1 gives every non-test case a fold 0..K-1 (default 1: "
                             "one train/val split)")
    parser.add_argument("--stratify-label", metavar="NAME", default=None,
                        help="stratify the test cut and the folds by whether a case has label NAME "
                             "(labels[NAME] > 0 in its --status file; no status: unknown stratum)")
    parser.add_argument("--stratify-malignancy", metavar="MIN", type=float, default=None,
                        help="with --stratify-label: also keep apart the cases with a nodule whose readers' median "
                             "malignancy rating (LIDC reader XML, in --status) is >= MIN, so that every fold gets "
                             "malignant nodules (the classifiers' cross-validation)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="TSV file: case_id, patient_id, split, fold")


def run(args: argparse.Namespace) -> int:
    sheet = read_case_sheet(args.cases)
    excluded = quarantined_cases(args.status)
    case_patients = {case: row["patient_id"] for case, row in sheet.items() if case not in excluded}
    if not case_patients:
        raise CaseSheetError(f"no case of {args.cases} passed ingest ({len(excluded)} quarantined); "
                             "see the quarantine table for each reason and fix")
    if excluded:
        print(f"left out {len(excluded)} quarantined case(s): {', '.join(sorted(excluded))}")
    try:
        check_folds(len(set(case_patients.values())), args.fractions, args.folds)
    except ValueError as exc:
        raise CaseSheetError(str(exc)) from None
    if args.stratify_malignancy is not None and not args.stratify_label:
        raise SystemExit("lungseg split: error: --stratify-malignancy needs --stratify-label (the nodule label)")
    strata = (malignancy_strata(args.status, args.stratify_label, args.stratify_malignancy)
              if args.stratify_malignancy is not None else
              label_strata(args.status, args.stratify_label) if args.stratify_label else None)
    table = assign_folds(case_patients, args.fractions, args.seed, args.folds, strata)
    splits = {case: split for case, (split, _) in table.items()}
    write_split(args.output, case_patients, splits, {case: fold for case, (_, fold) in table.items()})
    counts = {s: sum(v == s for v in splits.values()) for s in SPLITS}
    print(f"split {len(splits)} cases: {counts} -> {args.output}")
    if args.folds > 1:
        sizes = [sum(f == k for _, f in table.values()) for k in range(args.folds)]
        print(f"{args.folds} folds of the non-test cases: {sizes} cases")
    if strata is not None:
        positive = sorted(c for c in splits if strata.get(c))
        print(f"stratified by label {args.stratify_label}: {len(positive)} of {len(splits)} cases have it")
        if args.stratify_malignancy is not None:
            rated = sorted(c for c in splits if strata.get(c) == 2)
            print(f"and by malignancy (median rating >= {args.stratify_malignancy:g}): {len(rated)} case(s) with a "
                  "malignant nodule")
            if args.folds > 1:
                per_fold = [sum(strata.get(c) == 2 and f == k for c, (_, f) in table.items()) for k in range(args.folds)]
                print(f"cases with a malignant nodule per fold: {per_fold}")
    return 0
