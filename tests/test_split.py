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
