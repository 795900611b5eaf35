"""``lungseg discover``: a nested tree with several series per folder, scouts, MR, reformats, junk -> case sheet."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_data import SEED, demo_case, edit, slice_files

from lungseg.cli import main
from lungseg.demo.cohort import generate_demo_scan
from lungseg.ingest.dicom_series import list_dicom_files
from lungseg.ingest.discover import discover, series_files
from lungseg.ingest.pseudonym import DEMO_SECRET, Scrubber, case_pseudonym, patient_pseudonym, series_selector

SECRET = "test-secret-0123456789"


def _uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(Path(folder).glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An archive-like tree; returns (root, {name: series UID})."""
    work = tmp_path_factory.mktemp("tree")
    demos = {
        cid: demo_case(work / "demo", cid)
        for cid in ("demo001", "demo002", "demo003", "demo004", "demo005", "demo006", "demo007", "demo008")
    }
    root = work / "archive"
    uids = {}
    # a plain series, nested, with its LIDC XML and a scout series beside it
    shutil.copytree(demos["demo001"].dicom_dir, root / "A" / "study1" / "ct")
    uids["plain"] = _uid(root / "A" / "study1" / "ct")
    (root / "A" / "study1" / "69.xml").write_text(
        '<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
        f"<SeriesInstanceUid>{uids['plain']}</SeriesInstanceUid></ResponseHeader><readingSession/></LidcReadMessage>"
    )
    scout = root / "A" / "study1" / "scout"
    scout.mkdir()
    shutil.copy(slice_files(demos["demo008"].dicom_dir)[0], scout / "IM0001")
    edit([scout / "IM0001"], lambda ds, k: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    # two series of one patient in one folder
    mixed = root / "A" / "study2" / "mixed"
    mixed.mkdir(parents=True)
    for cid, prefix in (("demo002", "a_"), ("demo003", "b_")):
        for path in demos[cid].dicom_dir.iterdir():
            shutil.copy(path, mixed / f"{prefix}{path.name}")
    edit(sorted(mixed.iterdir()), lambda ds, k: setattr(ds, "PatientID", "SAME-PATIENT-001"))
    uids["mixed_a"] = _uid(demos["demo002"].dicom_dir)
    uids["mixed_b"] = _uid(demos["demo003"].dicom_dir)
    # MR, sagittal, too short, deeply nested, junk
    shutil.copytree(demos["demo004"].dicom_dir, root / "B" / "mr")
    edit(sorted((root / "B" / "mr").iterdir()), lambda ds, k: setattr(ds, "Modality", "MR"))
    shutil.copytree(demos["demo005"].dicom_dir, root / "B" / "sag")

    def sagittal(ds, k):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-100 + 2.0 * k, -100, 100]

    edit(sorted((root / "B" / "sag").iterdir()), sagittal)
    short = root / "C" / "short"
    short.mkdir(parents=True)
    for path in slice_files(demos["demo007"].dicom_dir)[:5]:
        shutil.copy(path, short / path.name)
    shutil.copytree(demos["demo006"].dicom_dir, root / "D" / "x" / "y" / "z" / "w")
    uids["deep"] = _uid(demos["demo006"].dicom_dir)
    (root / "C" / "junk.bin").write_bytes(b"\x00not dicom" * 50)
    return root, uids, demos


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _discover(root, out, *extra, secret=SECRET, monkeypatch=None) -> int:
    monkeypatch.setenv("LUNGSEG_PSEUDONYM_KEY", secret)
    return main(["discover", str(root), "-o", str(out), "--no-progress", *extra])


def test_discovery_finds_the_axial_ct_series(tree, tmp_path, monkeypatch):
    root, uids, _ = tree
    assert _discover(root, tmp_path / "cases.tsv", monkeypatch=monkeypatch) == 0
    rows = {row["case_id"]: row for row in _read(tmp_path / "cases.tsv")}
    expected = {case_pseudonym(SECRET, uid): name for name, uid in uids.items()}
    assert set(rows) == set(expected)
    by_name = {expected[cid]: row for cid, row in rows.items()}
    assert by_name["plain"]["dicom"] == str(root / "A" / "study1" / "ct") and by_name["plain"]["series"] == ""
    assert by_name["plain"]["lidc_xml"] == str(root / "A" / "study1" / "69.xml")
    assert by_name["deep"]["dicom"] == str(root / "D" / "x" / "y" / "z" / "w") and by_name["deep"]["n_slices"] == "12"
    for name in ("mixed_a", "mixed_b"):
        assert by_name[name]["dicom"] == str(root / "A" / "study2" / "mixed")
        assert by_name[name]["series"] == series_selector(SECRET, uids[name])
    # one patient, one pseudonym; and never the raw PatientID
    assert (
        by_name["mixed_a"]["patient_id"]
        == by_name["mixed_b"]["patient_id"]
        == patient_pseudonym(SECRET, "SAME-PATIENT-001")
    )
    assert by_name["plain"]["patient_id"] != by_name["mixed_a"]["patient_id"]
    assert list(_read(tmp_path / "cases.tsv")[0]) == [
        "case_id",
        "patient_id",
        "dicom",
        "series",
        "n_slices",
        "lidc_xml",
        "luna16",
        "rtstruct",
        "seg",
        "label_lung",
        "label_nodule",
    ]

    skipped = {row["path"]: row["reason"] for row in _read(tmp_path / "discovery_skipped.tsv")}
    assert "scout/localizer series only" in skipped[str(root / "A" / "study1" / "scout")]
    assert "has modality MR, not CT" in skipped[str(root / "B" / "mr")]
    assert "is a sagittal image, not axial" in skipped[str(root / "B" / "sag")]
    assert "has only 5 slice(s), fewer than 10" in skipped[str(root / "C" / "short")]
    assert "is not a DICOM file" in skipped[str(root / "C" / "junk.bin")]


def test_pseudonyms_are_stable_and_keyed(tree, tmp_path, monkeypatch):
    root, _, _ = tree
    _discover(root, tmp_path / "1.tsv", monkeypatch=monkeypatch)
    _discover(root, tmp_path / "2.tsv", monkeypatch=monkeypatch)
    _discover(root, tmp_path / "3.tsv", secret="another-secret", monkeypatch=monkeypatch)
    assert (tmp_path / "1.tsv").read_bytes() == (tmp_path / "2.tsv").read_bytes()
    first = {r["case_id"] for r in _read(tmp_path / "1.tsv")}
    other = {r["case_id"] for r in _read(tmp_path / "3.tsv")}
    assert len(first) == len(other) == 4 and not first & other


def test_no_secret_is_refused_unless_demo_secret_allowed(tree, tmp_path, monkeypatch, capsys):
    root, uids, _ = tree
    monkeypatch.delenv("LUNGSEG_PSEUDONYM_KEY", raising=False)
    assert main(["discover", str(root), "-o", str(tmp_path / "c.tsv"), "--no-progress"]) == 1
    assert "LUNGSEG_PSEUDONYM_KEY" in capsys.readouterr().err and not (tmp_path / "c.tsv").exists()
    assert main(["discover", str(root), "-o", str(tmp_path / "c.tsv"), "--no-progress", "--allow-default-secret"]) == 0
    assert case_pseudonym(DEMO_SECRET, uids["plain"]) in (tmp_path / "c.tsv").read_text()
    secret_file = tmp_path / "key"
    secret_file.write_text(SECRET + "\n")
    assert (
        main(["discover", str(root), "-o", str(tmp_path / "d.tsv"), "--no-progress", "--secret-file", str(secret_file)])
        == 0
    )
    assert case_pseudonym(SECRET, uids["plain"]) in (tmp_path / "d.tsv").read_text()


def test_selector_picks_one_series_of_a_shared_folder(tree, tmp_path, monkeypatch):
    root, uids, demos = tree
    _discover(root, tmp_path / "cases.tsv", monkeypatch=monkeypatch)
    row = next(r for r in _read(tmp_path / "cases.tsv") if r["case_id"] == case_pseudonym(SECRET, uids["mixed_b"]))
    out = tmp_path / "b.h5"
    assert main(["ingest", row["dicom"], "--case-id", row["case_id"], "--series", row["series"], "-o", str(out)]) == 0
    from lungseg.casefile import read_case

    truth = generate_demo_scan("demo003", SEED, n_slices=12, size=48).phantom.hu
    np.testing.assert_array_equal(read_case(out).image, truth)
    files = series_files(Path(row["dicom"]), row["series"], SECRET)
    assert len(files) == 12 and all(f.name.startswith("b_") for f in files)
    # without the selector the shared folder is refused with a pointer to discovery
    assert main(["ingest", row["dicom"], "--case-id", "x", "-o", str(tmp_path / "x.h5")]) == 1


def test_link_dir_gives_one_pseudonymous_folder_per_series(tree, tmp_path, monkeypatch):
    root, uids, _ = tree
    links = tmp_path / "links"
    assert _discover(root, tmp_path / "cases.tsv", "--link-dir", str(links), monkeypatch=monkeypatch) == 0
    rows = _read(tmp_path / "cases.tsv")
    assert {r["dicom"] for r in rows} == {str(links / r["case_id"]) for r in rows}
    assert all(r["series"] == "" for r in rows)
    mixed = next(r for r in rows if r["case_id"] == case_pseudonym(SECRET, uids["mixed_a"]))
    names = sorted(p.name for p in Path(mixed["dicom"]).iterdir())
    assert names == [f"{k:05d}.dcm" for k in range(12)]
    assert main(["ingest", mixed["dicom"], "--case-id", mixed["case_id"], "-o", str(tmp_path / "a.h5")]) == 0
    # rerun replaces the links in place
    assert _discover(root, tmp_path / "cases.tsv", "--link-dir", str(links), monkeypatch=monkeypatch) == 0
    assert sorted(p.name for p in links.iterdir()) == sorted(r["case_id"] for r in rows)


def test_nothing_found_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.bin").write_bytes(b"x" * 200)
    assert _discover(tmp_path / "empty", tmp_path / "cases.tsv", monkeypatch=monkeypatch) == 1
    assert "holds no axial CT series" in capsys.readouterr().err
    assert _read(tmp_path / "cases.tsv") == [] and len(_read(tmp_path / "discovery_skipped.tsv")) == 1


def test_link_dir_names_no_archive_folder(tmp_path):
    """<PatientID>/<StudyUID>/<SeriesUID>/ (older TCIA downloads): sheet and skipped table name none of them."""
    patient, study, series = "PAT-12345", "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    demo = demo_case(tmp_path / "demo", "demo001")
    folder = tmp_path / "archive" / patient / study / series
    shutil.copytree(demo.dicom_dir, folder)

    def identity(ds, k):
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series

    edit(sorted(folder.iterdir()), identity)
    (folder / "069.xml").write_text(
        '<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
        f"<SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader><readingSession/></LidcReadMessage>"
    )
    (folder / f"{series}.9.dcm").write_bytes(b"\x00not dicom" * 50)  # a file named by UID: skipped, scrubbed
    links = tmp_path / "links"
    found = discover(tmp_path / "archive", SECRET, link_dir=links)
    assert len(found.cases) == 1 and len(found.skipped) == 1
    row = found.cases[0]
    assert row["lidc_xml"] == str(links / row["case_id"] / "lidc.xml") and row["dicom"] == str(links / row["case_id"])
    assert Path(row["lidc_xml"]).resolve() == (folder / "069.xml").resolve()
    assert len(list_dicom_files(Path(row["dicom"]))) == 12  # the XML link is not taken for a slice
    sheet = " ".join(v for r in found.cases for v in r.values())
    assert not [name for name in (patient, study, series, str(tmp_path / "archive")) if name in sheet], sheet
    skipped = " ".join(v for r in found.skipped for v in r.values())
    assert not [name for name in (patient, study, series) if name in skipped], skipped
    assert found.skipped[0]["path"].endswith("<redacted>/<uid>/<uid>/<uid>.dcm"), found.skipped
    # rediscovery replaces the link folder as a whole: no XML link once the XML is gone
    (folder / "069.xml").unlink()
    again = discover(tmp_path / "archive", SECRET, link_dir=links)
    assert again.cases[0]["lidc_xml"] == "" and not (links / row["case_id"] / "lidc.xml").exists()


def test_scrubber_replaces_uid_path_components_and_file_names():
    scrub = Scrubber()
    assert scrub("/a/1.2.826.0.1.3680043.8.498.111/2.25.77.1/x") == "/a/<uid>/<uid>/x"
    assert scrub("CT.1.2.840.113619.2.55.3.dcm, 1.2.3.4.5.dcm") == "CT.<uid>.dcm, <uid>.dcm"
    assert scrub("1.2.840.10008.1.2.1 v1.26.4 10.0.0.1") == "1.2.840.10008.1.2.1 v1.26.4 10.0.0.1"


def test_header_values_quoted_by_pydicom_are_not_printed(tmp_path):
    """pydicom's warnings quote invalid header values (dates, UIDs): discover and ingest never print them."""
    demo = demo_case(tmp_path / "demo", "demo001")
    folder = tmp_path / "archive" / "s"
    shutil.copytree(demo.dicom_dir, folder)
    series = "1.2.826.0.1.3680043.8.498.0777"  # invalid (a component with a leading 0): pydicom quotes it

    def bad_values(ds, k):
        ds.SeriesInstanceUID = series

    edit(sorted(folder.iterdir()), bad_values)
    env = dict(os.environ, LUNGSEG_PSEUDONYM_KEY=SECRET)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lungseg"]
    printed = subprocess.run(
        [*cmd, "discover", str(tmp_path / "archive"), "-o", str(out / "cases.tsv"), "--link-dir", str(out / "l")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    row = _read(out / "cases.tsv")[0]
    ingest = subprocess.run(
        [*cmd, "ingest", row["dicom"], "--case-id", row["case_id"], "-o", str(out / "c.h5")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    text = printed.stdout + printed.stderr + ingest.stdout + ingest.stderr
    assert printed.returncode == ingest.returncode == 0, text
    assert series not in text, text
