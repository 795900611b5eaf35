"""Labels found by discovery: RTSTRUCT and SEG objects that reference a series, LUNA16 rows, a diagnosis
table keyed by PatientID; each attached to its own series only, nothing identifying written."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
import pytest
from ingest_data import demo_case, edit, identifiers
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg.cli import main
from lungseg.ingest.discover import discover
from lungseg.ingest.label_objects import RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, LabelObject, attach_label_objects
from lungseg.ingest.pseudonym import case_pseudonym, patient_pseudonym

SECRET = "test-secret-labels"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsclc-radiomics" / "LUNG1-001"


def _header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(next(Path(folder).glob("*.dcm")), stop_before_pixels=True)


def _label_file(path: Path, kind: str, series: str | None, frame: str | None, patient: str) -> Path:
    """A minimal RTSTRUCT or SEG header referencing ``series`` (or only ``frame``)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS if kind == "rtstruct" else SEG_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT" if kind == "rtstruct" else "SEG"
    ds.PatientID = patient
    if kind == "rtstruct":
        ref = pydicom.Dataset()
        ref.FrameOfReferenceUID = frame or generate_uid()
        if series:
            study, ser = pydicom.Dataset(), pydicom.Dataset()
            ser.SeriesInstanceUID = series
            study.RTReferencedSeriesSequence = [ser]
            ref.RTReferencedStudySequence = [study]
        ds.ReferencedFrameOfReferenceSequence = [ref]
    else:
        ds.FrameOfReferenceUID = frame or generate_uid()
        if series:
            ser = pydicom.Dataset()
            ser.SeriesInstanceUID = series
            ds.ReferencedSeriesSequence = [ser]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three CT series with label objects beside them; returns (root, {name: header}, {name: label file})."""
    work = tmp_path_factory.mktemp("labels")
    root = work / "archive with spaces"
    headers, files = {}, {}
    for k, name in enumerate(("alpha", "beta", "gamma")):
        demo = demo_case(work / "demo", f"demo{k:03d}")
        series = root / f"PAT {name}" / "1.000000-CHEST 2.5 MM-123"
        shutil.copytree(demo.dicom_dir, series)
        edit(sorted(series.iterdir()), lambda ds, _k, n=name: setattr(ds, "PatientID", f"PATIENT-{n.upper()}"))
        headers[name] = _header(series)
    alpha, beta, gamma = (headers[n] for n in ("alpha", "beta", "gamma"))
    files["alpha_rtstruct"] = _label_file(
        root / "PAT alpha" / "RTSTRUCT" / "1-1.dcm", "rtstruct", alpha.SeriesInstanceUID, alpha.FrameOfReferenceUID,
        "PATIENT-ALPHA",
    )
    files["alpha_second"] = _label_file(
        root / "PAT alpha" / "RTSTRUCT" / "2-1.dcm", "rtstruct", alpha.SeriesInstanceUID, None, "PATIENT-ALPHA"
    )
    files["beta_seg"] = _label_file(root / "PAT beta" / "SEG" / "1-1.dcm", "seg", beta.SeriesInstanceUID, None, "PATIENT-BETA")
    # gamma: an RTSTRUCT naming no series, only gamma's frame of reference
    files["gamma_rtstruct"] = _label_file(
        root / "PAT gamma" / "RT" / "rs.dcm", "rtstruct", None, gamma.FrameOfReferenceUID, "PATIENT-GAMMA"
    )
    files["orphan"] = _label_file(root / "orphan" / "rs.dcm", "rtstruct", generate_uid(), None, "PATIENT-ZULU")
    luna = work / "annotations.csv"
    luna.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{alpha.SeriesInstanceUID},0,0,0,6.0\n{generate_uid()},1,2,3,5.0\n"
    )
    diagnosis = work / "diagnosis.csv"
    diagnosis.write_text(
        '"TCIA Patient ID","Diagnosis at the Patient Level\n0=Unknown\n2=malignant","Diagnosis Method"\n'
        "PATIENT-ALPHA,2,biopsy\nPATIENT-BETA,1,review of radiological images\nPATIENT-OUTSIDER,2,biopsy\n"
    )
    return root, headers, files, luna, diagnosis


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_each_label_object_is_attached_to_its_own_series_only(archive):
    root, headers, files, luna, _ = archive
    found = discover(root, SECRET, luna16=luna)
    by_case = {row["case_id"]: row for row in found.cases}
    case = {name: by_case[case_pseudonym(SECRET, h.SeriesInstanceUID)] for name, h in headers.items()}
    assert case["alpha"]["rtstruct"] == str(files["alpha_rtstruct"]) and case["alpha"]["seg"] == ""
    assert case["beta"]["seg"] == str(files["beta_seg"]) and case["beta"]["rtstruct"] == ""
    assert case["gamma"]["rtstruct"] == str(files["gamma_rtstruct"])  # by its unique frame of reference
    assert case["alpha"]["luna16"] == str(luna) and case["beta"]["luna16"] == case["gamma"]["luna16"] == ""
    reasons = {row["path"]: row["reason"] for row in found.skipped}
    assert "a second RTSTRUCT for a series that has one" in reasons[str(files["alpha_second"])]
    assert "references no CT series found below the root" in reasons[str(files["orphan"])]
    # label objects are not series: none of them is listed as a non-CT series
    assert not any("RTSTRUCT, not CT" in r or "SEG, not CT" in r for r in reasons.values())


def test_frame_of_reference_shared_by_two_series_is_not_guessed(tmp_path):
    objects = [LabelObject("rtstruct", tmp_path / "rs.dcm", frozenset(), frozenset({"1.2.3.4"}))]
    attached = attach_label_objects(objects, {"1.2.3.4.1": "1.2.3.4", "1.2.3.4.2": "1.2.3.4"})
    assert attached.by_series == {}
    assert "shared by 2 CT series" in attached.unattached[0]["reason"]
    one = attach_label_objects(objects, {"1.2.3.4.1": "1.2.3.4", "1.2.3.4.2": "1.9.9.9"})
    assert one.by_series == {"1.2.3.4.1": {"rtstruct": tmp_path / "rs.dcm"}}


def test_links_keep_the_sheet_pseudonymous_and_out_of_the_slices(archive, tmp_path, monkeypatch):
    root, headers, files, luna, diagnosis = archive
    monkeypatch.setenv("LUNGSEG_PSEUDONYM_KEY", SECRET)
    out = tmp_path / "out" / "cases.tsv"
    links = tmp_path / "out" / "series"
    argv = ["discover", str(root), "-o", str(out), "--link-dir", str(links), "--luna16", str(luna)]
    assert main([*argv, "--diagnosis", str(diagnosis), "--no-progress"]) == 0
    rows = {row["case_id"]: row for row in _rows(out)}
    alpha = rows[case_pseudonym(SECRET, headers["alpha"].SeriesInstanceUID)]
    link = Path(alpha["rtstruct"])
    assert link == links / f"{alpha['case_id']}.labels" / "rtstruct.dcm"
    assert link.resolve() == files["alpha_rtstruct"].resolve()
    assert not any(p.name.startswith("rtstruct") for p in Path(alpha["dicom"]).iterdir())
    # the diagnosis table: archive patients only, keyed by pseudonym, headers on one line
    diagnosis_rows = _rows(out.with_name("diagnosis.tsv"))
    assert [r["patient_id"] for r in diagnosis_rows] == sorted(
        patient_pseudonym(SECRET, p) for p in ("PATIENT-ALPHA", "PATIENT-BETA")
    )
    assert list(diagnosis_rows[0]) == [
        "patient_id",
        "Diagnosis at the Patient Level 0=Unknown 2=malignant",
        "Diagnosis Method",
    ]
    by_patient = {r["patient_id"]: r for r in diagnosis_rows}
    assert by_patient[patient_pseudonym(SECRET, "PATIENT-ALPHA")]["Diagnosis Method"] == "biopsy"
    # nothing identifying in what discovery wrote (sheet, skipped table, diagnosis table)
    secrets = {"PATIENT-ALPHA", "PATIENT-BETA", "PATIENT-GAMMA", "PATIENT-OUTSIDER", "PATIENT-ZULU"}
    for name in ("alpha", "beta", "gamma"):
        secrets |= identifiers(next(p for p in root.rglob("*") if p.name == "1.000000-CHEST 2.5 MM-123" and
                                    name in str(p)))
    for path in (out, out.with_name("discovery_skipped.tsv"), out.with_name("diagnosis.tsv")):
        text = path.read_text()
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{path.name} carries {leaked}"


def test_diagnosis_table_without_a_patient_column_is_refused_with_the_fix(archive, tmp_path):
    root, _, _, _, _ = archive
    table = tmp_path / "dx.csv"
    table.write_text("subject,diagnosis\nA,1\n")
    with pytest.raises(Exception, match="diagnosis_patient_column"):
        discover(root, SECRET, diagnosis=table)
    found = discover(root, SECRET, diagnosis=table, diagnosis_patient_column="subject")
    assert found.diagnosis.rows == [] and found.diagnosis.unmatched_rows == 1


@pytest.mark.realdata
def test_the_real_structure_set_is_attached_to_its_planning_ct(tmp_path):
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL} (../shared/data/nsclc-radiomics)")
    root = tmp_path / "NSCLC-Radiomics" / "LUNG1-001"
    root.mkdir(parents=True)
    (root / "1.000000-NA-12345").symlink_to(REAL / "image", target_is_directory=True)
    (root / "3.000000-NA-67890").symlink_to(REAL / "rtstruct", target_is_directory=True)
    found = discover(tmp_path, SECRET)
    assert len(found.cases) == 1
    assert found.cases[0]["rtstruct"] == str(root / "3.000000-NA-67890" / "1-1.dcm")
    assert found.cases[0]["n_slices"] == "134"
