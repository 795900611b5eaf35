import pytest

from lungseg.split import assign_splits, read_split, split_counts, write_split


def test_counts_80_10_10():
    assert split_counts(10, [0.8, 0.1, 0.1]) == (8, 1, 1)
    assert split_counts(8, [0.8, 0.1, 0.1]) == (6, 1, 1)
    assert split_counts(3, [0.8, 0.1, 0.1]) == (1, 1, 1)
    assert split_counts(2, [0.8, 0.1, 0.1]) == (2, 0, 0)
    assert split_counts(100, [0.7, 0.2, 0.1]) == (70, 20, 10)


@pytest.mark.parametrize("fractions", [[0.5, 0.5], [0.8, 0.1, 0.2], [1.2, -0.1, -0.1]])
def test_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_counts(10, fractions)


def test_no_patient_in_two_splits_and_reproducible():
    # 40 patients with 1-3 cases each
    cases = {f"c{i:03d}": f"p{i % 40:02d}" for i in range(90)}
    a = assign_splits(cases, [0.8, 0.1, 0.1], seed=7)
    b = assign_splits(cases, [0.8, 0.1, 0.1], seed=7)
    c = assign_splits(cases, [0.8, 0.1, 0.1], seed=8)
    assert a == b
    assert a != c
    patient_splits = {}
    for case, split in a.items():
        patient_splits.setdefault(cases[case], set()).add(split)
    assert all(len(s) == 1 for s in patient_splits.values())
    per_split = {s: {cases[c] for c in a if a[c] == s} for s in ("train", "val", "test")}
    assert [len(per_split[s]) for s in ("train", "val", "test")] == [32, 4, 4]


def test_split_file_round_trip(tmp_path):
    cases = {"a": "p1", "b": "p2", "c": "p3", "d": "p1"}
    splits = assign_splits(cases, [0.8, 0.1, 0.1], seed=0)
    write_split(tmp_path / "split.tsv", cases, splits)
    assert read_split(tmp_path / "split.tsv") == splits
    assert splits["a"] == splits["d"]


def _sheet(tmp_path, n=6):
    from lungseg.cases import write_case_sheet

    rows = [{"case_id": f"c{i}", "patient_id": f"p{i // 2}", "dicom": f"/data/c{i}"} for i in range(n)]
    write_case_sheet(tmp_path / "cases.tsv", rows)
    return tmp_path / "cases.tsv"


def _status(tmp_path, case, status):
    import json

    path = tmp_path / f"{case}.status.json"
    path.write_text(json.dumps({"case_id": case, "status": status}))
    return str(path)


def test_cli_leaves_quarantined_cases_out(tmp_path):
    from lungseg.cli import main

    sheet = _sheet(tmp_path)
    statuses = [_status(tmp_path, f"c{i}", "quarantined" if i == 4 else "ok") for i in range(6)]
    assert main(["split", "--cases", str(sheet), "--status", *statuses, "-o", str(tmp_path / "split.tsv")]) == 0
    splits = read_split(tmp_path / "split.tsv")
    assert sorted(splits) == ["c0", "c1", "c2", "c3", "c5"]


def test_cli_fails_clearly_when_no_case_is_good(tmp_path, capsys):
    from lungseg.cli import main

    sheet = _sheet(tmp_path, n=2)
    statuses = [_status(tmp_path, f"c{i}", "quarantined") for i in range(2)]
    assert main(["split", "--cases", str(sheet), "--status", *statuses, "-o", str(tmp_path / "split.tsv")]) == 1
    assert "no case" in capsys.readouterr().err and not (tmp_path / "split.tsv").exists()


def test_case_sheet_errors_name_the_line(tmp_path):
    from lungseg.cases import CaseSheetError, read_case_sheet

    (tmp_path / "bad.tsv").write_text("case_id\tpatient_id\tdicom\nc1\tp1\t/x\nc1\tp2\t/y\n")
    with pytest.raises(CaseSheetError, match="line 3: case_id c1 appears twice"):
        read_case_sheet(tmp_path / "bad.tsv")
    (tmp_path / "cols.tsv").write_text("case_id\tdicom\nc1\t/x\n")
    with pytest.raises(CaseSheetError, match="patient_id"):
        read_case_sheet(tmp_path / "cols.tsv")


# ---------------------------------------------------------------- k-fold cross-validation

from lungseg.split import (  # noqa: E402
    assign_folds,
    check_folds,
    count_folds,
    fold_cases,
    out_of_fold_cases,
    read_split_table,
)

#: 40 patients with 1-3 cases each
COHORT = {f"c{i:03d}": f"p{i % 40:02d}" for i in range(90)}


def _patients_of(table, cases=COHORT):
    return {cases[c] for c in table}


def test_folds_group_patients_and_validate_each_case_once():
    table = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=7, folds=5)
    patient_folds = {}
    for case, (split, fold) in table.items():
        patient_folds.setdefault(COHORT[case], set()).add((split, fold))
    assert all(len(s) == 1 for s in patient_folds.values())  # no patient in two folds (or splits)
    test = sorted(c for c, (s, _) in table.items() if s == "test")
    assert test and all(table[c][1] is None for c in test)
    assert {s for s, _ in table.values()} == {"train", "test"}
    validated = [c for k in range(5) for c in out_of_fold_cases(table, k)]
    assert sorted(validated) == sorted(c for c in table if c not in test)  # each non-test case in one fold
    sizes = [len({COHORT[c] for c in out_of_fold_cases(table, k)}) for k in range(5)]
    assert sum(sizes) == 36 and max(sizes) - min(sizes) <= 1  # balanced in patients
    for k in range(5):
        train, val = fold_cases(table, k, 5)
        assert not set(train) & set(val) and not set(train) & set(test)
        assert not {COHORT[c] for c in train} & {COHORT[c] for c in val}
        assert sorted(train + val) == sorted(c for c in table if c not in test)


def test_folds_are_reproducible_and_keep_the_test_set():
    a = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=7, folds=4)
    assert a == assign_folds(COHORT, [0.8, 0.1, 0.1], seed=7, folds=4)
    assert a != assign_folds(COHORT, [0.8, 0.1, 0.1], seed=8, folds=4)
    one = assign_splits(COHORT, [0.8, 0.1, 0.1], seed=7)
    # the same test patients as the plain split, whatever the number of folds
    assert {c for c, (s, _) in a.items() if s == "test"} == {c for c, s in one.items() if s == "test"}


def test_one_fold_is_the_plain_split():
    one = assign_splits(COHORT, [0.8, 0.1, 0.1], seed=7)
    assert assign_folds(COHORT, [0.8, 0.1, 0.1], seed=7, folds=1) == {c: (s, None) for c, s in one.items()}
    # a single stratum (every case has the label, e.g. lung) changes nothing
    assert assign_splits(COHORT, [0.8, 0.1, 0.1], seed=7, strata=dict.fromkeys(COHORT, True)) == one
    table = {c: (s, None) for c, s in one.items()}
    train, val = fold_cases(table, 0, 1)
    assert train == sorted(c for c, s in one.items() if s == "train")
    assert val == sorted(c for c, s in one.items() if s == "val") == out_of_fold_cases(table, 0)


def test_single_stratum_folds_equal_unstratified():
    plain = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=3, folds=5)
    assert assign_folds(COHORT, [0.8, 0.1, 0.1], seed=3, folds=5, strata=dict.fromkeys(COHORT, False)) == plain


def test_stratified_folds_put_positives_in_every_fold():
    # 6 of 40 patients have a nodule (all their cases); unstratified, some fold lacks one for some seed
    positive_patients = {f"p{i:02d}" for i in (1, 5, 9, 22, 30, 33)}
    strata = {c: COHORT[c] in positive_patients for c in COHORT}
    for seed in range(20):
        table = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=seed, folds=5, strata=strata)
        positives_per_fold = [sum(strata[c] for c in out_of_fold_cases(table, k)) for k in range(5)]
        held_out = {COHORT[c] for c, (s, _) in table.items() if s == "test"} & positive_patients
        assert len(held_out) == 1  # the test cut takes 0.1 x 6 positives, rounded
        assert all(positives_per_fold), (seed, positives_per_fold)
        patient_counts = [len({COHORT[c] for c in out_of_fold_cases(table, k)}) for k in range(5)]
        assert max(patient_counts) - min(patient_counts) <= 1
    unstratified = [assign_folds(COHORT, [0.8, 0.1, 0.1], seed=s, folds=5) for s in range(20)]
    assert any(not all(sum(strata[c] for c in out_of_fold_cases(t, k)) for k in range(5)) for t in unstratified)


def test_stratified_test_cut_takes_each_stratum_in_proportion():
    cases = {f"c{i:02d}": f"p{i:02d}" for i in range(40)}
    strata = {c: i < 20 for i, c in enumerate(cases)}  # half the patients have the label
    for folds in (1, 4):
        table = assign_folds(cases, [0.5, 0.1, 0.4], seed=0, folds=folds, strata=strata)
        test = [c for c, (s, _) in table.items() if s == "test"]
        assert len(test) == 16 and sum(strata[c] for c in test) == 8, folds


def test_patient_with_a_positive_case_counts_positive():
    cases = {"a1": "pa", "a2": "pa", "b1": "pb", "c1": "pc", "d1": "pd"}
    strata = {"a1": False, "a2": True, "b1": True, "c1": None}  # d1 missing: unknown
    table = assign_folds(cases, [0.5, 0.25, 0.25], seed=1, folds=2, strata=strata)
    assert table["a1"] == table["a2"]


def test_more_folds_than_patients_is_one_line():
    with pytest.raises(ValueError) as err:
        check_folds(6, [0.8, 0.1, 0.1], 10)
    message = str(err.value)
    assert "\n" not in message and "split.folds = 10" in message and "6 patient(s)" in message, message
    assert "leaving 5" in message and "set split.folds to at most 5" in message, message
    with pytest.raises(ValueError, match="split.folds: 1"):
        check_folds(2, [0.5, 0.0, 0.5], 2)
    with pytest.raises(ValueError, match="split.folds = 0"):
        check_folds(10, [0.8, 0.1, 0.1], 0)
    check_folds(6, [0.8, 0.1, 0.1], 5)  # leave-one-patient-out
    check_folds(1, [0.8, 0.1, 0.1], 1)


def test_split_table_round_trip_with_folds(tmp_path):
    table = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=2, folds=3)
    splits = {c: s for c, (s, _) in table.items()}
    write_split(tmp_path / "split.tsv", COHORT, splits, {c: f for c, (_, f) in table.items()})
    assert read_split_table(tmp_path / "split.tsv") == table
    assert read_split(tmp_path / "split.tsv") == splits
    assert count_folds(table) == 3
    header = (tmp_path / "split.tsv").read_text().splitlines()[0]
    assert header == "case_id\tpatient_id\tsplit\tfold"


def test_old_split_file_without_fold_column(tmp_path):
    (tmp_path / "split.tsv").write_text("case_id\tpatient_id\tsplit\na\tp1\ttrain\nb\tp2\tval\nc\tp3\ttest\n")
    table = read_split_table(tmp_path / "split.tsv")
    assert table == {"a": ("train", None), "b": ("val", None), "c": ("test", None)}
    assert fold_cases(table, 0, 1) == (["a"], ["b"])


def test_fold_cases_refuse_a_mismatched_table():
    table = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=2, folds=3)
    with pytest.raises(ValueError, match="has 3 fold"):
        fold_cases(table, 0, 5)
    with pytest.raises(ValueError, match="fold 3 does not exist"):
        fold_cases(table, 3, 3)


def _ok_status(tmp_path, case, nodule):
    import json

    path = tmp_path / f"{case}.status.json"
    path.write_text(json.dumps({"case_id": case, "status": "ok", "labels": {"lung": 100, "nodule": nodule}}))
    return str(path)


def test_cli_folds_and_stratify_label(tmp_path, capsys):
    from lungseg.cli import main

    sheet = _sheet(tmp_path, n=12)  # 6 patients, 2 cases each
    statuses = [_ok_status(tmp_path, f"c{i}", 5 if i < 4 else 0) for i in range(11)]  # c11: no status
    out = tmp_path / "split.tsv"
    assert main(["split", "--cases", str(sheet), "--status", *statuses, "--folds", "2",
                 "--stratify-label", "nodule", "-o", str(out)]) == 0
    table = read_split_table(out)
    assert len(table) == 12 and count_folds(table) == 2
    assert table["c0"] == table["c1"] and table["c10"] == table["c11"]  # one patient, one fold
    positive_train = [table[f"c{i}"] for i in (0, 2) if table[f"c{i}"][0] == "train"]  # patients p0, p1
    assert len({fold for _, fold in positive_train}) == len(positive_train)  # in different folds
    assert "stratified by label nodule: 4 of 12 cases" in capsys.readouterr().out


def test_cli_more_folds_than_patients_is_one_line(tmp_path, capsys):
    from lungseg.cli import main

    sheet = _sheet(tmp_path, n=6)  # 3 patients
    out = tmp_path / "split.tsv"
    assert main(["split", "--cases", str(sheet), "--folds", "5", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lungseg split: error: split.folds = 5") and "\n" not in err, err
    assert "3 patient(s)" in err and not out.exists()


def test_stratified_split_gives_val_and_test_a_positive_patient_even_when_positives_are_rare():
    cases = {f"c{i:02d}": f"p{i:02d}" for i in range(20)}
    for positives in (3, 4, 5, 16):
        for seed in range(30):
            strata = {c: i < positives for i, c in enumerate(cases)}
            splits = assign_splits(cases, [0.6, 0.15, 0.25], seed=seed, strata=strata)
            for part in ("train", "val", "test"):
                assert any(strata[c] for c, s in splits.items() if s == part), (positives, seed, part)
            assert [s for s in splits.values()].count("test") == 5  # the cut sizes stay as they were
    # with 3 positives among 20 a plain split leaves val without one for some seeds
    plain = [assign_splits(cases, [0.6, 0.15, 0.25], seed=s) for s in range(30)]
    assert any(not any(c < "c03" for c, part in p.items() if part == "val") for p in plain)


# ---------------------------------------------------------------- stratified by malignancy (classifiers' folds)

def test_malignant_patients_are_dealt_to_every_fold_and_take_their_highest_level():
    # 40 patients: 5 with a malignant nodule, 15 with benign ones only, 20 without nodules
    level = {f"p{i:02d}": 2 if i % 8 == 3 else 1 if i % 2 == 0 else 0 for i in range(40)}
    strata = {c: level[COHORT[c]] for c in COHORT}
    strata["c003"] = 0  # p03 has a malignant nodule in another case (c043, c083): the patient counts malignant
    for seed in range(20):
        table = assign_folds(COHORT, [0.8, 0.1, 0.1], seed=seed, folds=4, strata=strata)
        malignant = [{COHORT[c] for c in out_of_fold_cases(table, k) if level[COHORT[c]] == 2} for k in range(4)]
        assert all(malignant), (seed, malignant)  # 5 malignant patients, at most 1 held out: one per fold
        assert table["c003"] == table["c043"]
    binary = {c: v > 0 for c, v in strata.items()}  # by nodule presence only: some fold may get no malignant one
    tables = [assign_folds(COHORT, [0.8, 0.1, 0.1], seed=s, folds=4, strata=binary) for s in range(20)]
    assert any(not all(any(level[COHORT[c]] == 2 for c in out_of_fold_cases(t, k)) for k in range(4)) for t in tables)


def _rated_status(tmp_path, case, nodule, medians):
    import json

    path = tmp_path / f"{case}.status.json"
    status = {"case_id": case, "status": "ok", "labels": {"nodule": nodule}}
    if medians is not None:
        status["malignancy_medians"] = medians
    path.write_text(json.dumps(status))
    return str(path)


def test_malignancy_strata_from_ingest_status(tmp_path):
    from lungseg.split import malignancy_strata

    files = [_rated_status(tmp_path, "m", 9, [2.0, 4.0]), _rated_status(tmp_path, "b", 9, [3.5, None]),
             _rated_status(tmp_path, "n", 0, []), _rated_status(tmp_path, "u", 9, None),
             _rated_status(tmp_path, "edge", 9, [3.0]), _status(tmp_path, "q", "quarantined")]
    assert malignancy_strata(files, "nodule", 4) == {"m": 2, "b": 1, "n": 0, "u": 1, "edge": 1, "q": None}
    assert malignancy_strata(files, "nodule", 3)["edge"] == 2


def test_cli_stratify_malignancy(tmp_path, capsys):
    from lungseg.cli import main

    sheet = _sheet(tmp_path, n=16)  # 8 patients, 2 cases each
    statuses = [_rated_status(tmp_path, f"c{i}", 5 if i < 10 else 0, [4.5] if i in (0, 2, 4) else [2.0])
                for i in range(16)]
    out = tmp_path / "split.tsv"
    args = ["split", "--cases", str(sheet), "--status", *statuses, "--folds", "2", "-o", str(out)]
    assert main([*args, "--stratify-label", "nodule", "--stratify-malignancy", "4"]) == 0
    printed = capsys.readouterr().out
    assert "3 case(s) with a malignant nodule" in printed and "cases with a malignant nodule per fold: [" in printed
    table = read_split_table(out)
    malignant_folds = {table[f"c{i}"] for i in (0, 2, 4) if table[f"c{i}"][0] == "train"}
    assert {fold for _, fold in malignant_folds} == {0, 1}  # patients p0, p1, p2: both folds get one
    with pytest.raises(SystemExit, match="--stratify-malignancy needs --stratify-label"):
        main([*args, "--stratify-malignancy", "4"])
