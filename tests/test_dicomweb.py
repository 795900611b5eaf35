"""A real PACS in the loop: a local Orthanc with its DICOMweb plugin holding demo studies.

QIDO-RS filters, WADO-RS retrieval into a pseudonymous archive (resumable, never a half series under its
final name), a study or instances deleted between query and retrieve, an unreachable server and wrong
credentials (one line each), the STOW-RS round trip of a DICOM-SEG, and (slow) the workflow with
``source: dicomweb`` end to end. Without the Debian packages orthanc and orthanc-dicomweb these tests
skip with the reason; with ``LUNGSEG_PACS_TESTS=required`` (CI, .ci/run) they fail instead.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
import yaml
from conftest import REPO
from ingest_data import demo_case, edit, identifiers

from lungseg.cli import main
from lungseg.demo.cohort import DemoCase
from lungseg.dicomweb import retrieve as retrieve_module
from lungseg.dicomweb.client import DicomwebError, Pacs, check_url, read_credentials
from lungseg.dicomweb.orthanc import OrthancError, find_orthanc, free_port, start_orthanc, stop_orthanc
from lungseg.dicomweb.retrieve import (
    COMPLETE,
    GONE,
    PARTIAL,
    RESUMED,
    RETRIEVED,
    parse_filters,
    partial_folder,
    query_ct_series,
    retrieve_series,
)
from lungseg.ingest.pseudonym import case_pseudonym

REQUIRED = os.environ.get("LUNGSEG_PACS_TESTS") == "required"
SECRET = "dicomweb-test-secret-7"
USER, PASSWORD = "radiology", "s3cret-for-tests"
USER_ENV, PASSWORD_ENV = "LUNGSEG_TEST_PACS_USER", "LUNGSEG_TEST_PACS_PASSWORD"
SLICES = 16
UID_TEXT = re.compile(r"\d+(\.\d+){4,}")


def orthanc_or_skip() -> None:
    try:
        find_orthanc()
    except OrthancError as exc:
        if REQUIRED:
            pytest.fail(f"LUNGSEG_PACS_TESTS=required but {exc}")
        pytest.skip(str(exc))


@dataclass
class LocalPacs:
    http: str  # Orthanc's REST root
    url: str  # its DICOMweb root
    cases: list[DemoCase]

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, f"{self.http}{path}", auth=(USER, PASSWORD), timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def reset(self, cases: list[DemoCase]) -> None:
        """Delete every study, then upload ``cases`` (Orthanc's REST /instances, not the code under test)."""
        for study in self.rest("GET", "/studies").json():
            self.rest("DELETE", f"/studies/{study}")
        for case in cases:
            for path in sorted(case.dicom_dir.glob("*.dcm")):
                self.rest("POST", "/instances", data=path.read_bytes())
        self.cases = cases

    def delete(self, level: str, uid: str) -> None:
        """Delete the study (``level`` "Study") or instance ("Instance") with this DICOM UID."""
        found = [r for r in self.rest("POST", "/tools/lookup", data=uid).json() if r["Type"] == level]
        assert found, (level, uid)
        self.rest("DELETE", f"{found[0]['Path']}")


def reference_seg(case: DemoCase, out: Path, manufacturer: str = "reference reader") -> Path:
    """A DICOM-SEG of the case's lung label on its series (as a reader's contours in a PACS would be)."""
    from lungseg.export.dicom_seg import write_dicom_seg

    write_dicom_seg(case.lung_path, case.dicom_dir, out, model_name=manufacturer, model_version="1", label_kind="lung")

    def by(ds, k):
        ds.Manufacturer = manufacturer

    edit([out], by)
    return out


def series_uid(case: DemoCase) -> str:
    return str(pydicom.dcmread(next(case.dicom_dir.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def study_uid(case: DemoCase) -> str:
    return str(pydicom.dcmread(next(case.dicom_dir.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    orthanc_or_skip()
    folder = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(folder, free_port(), auth=(USER, PASSWORD))
    demo = tmp_path_factory.mktemp("demo")
    cases = [demo_case(demo, case, slices=SLICES, size=64) for case in ("demo001", "demo002")]
    assert cases[0].identity.study_date != cases[1].identity.study_date
    try:
        yield LocalPacs(server.http_url, server.dicomweb_url, cases)
    finally:
        stop_orthanc(folder)


@pytest.fixture
def pacs(orthanc, monkeypatch):
    """The local Orthanc holding the two demo studies (fresh for each test), credentials in the environment."""
    orthanc.reset(orthanc.cases[:2])
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("LUNGSEG_PSEUDONYM_KEY", SECRET)
    return orthanc


def client(pacs: LocalPacs) -> Pacs:
    return Pacs(pacs.url, user_env=USER_ENV, password_env=PASSWORD_ENV)


def retrieve_cli(pacs: LocalPacs, out: Path, *args: str) -> int:
    return main(["dicomweb-retrieve", "--url", pacs.url, "--user-env", USER_ENV, "--password-env", PASSWORD_ENV,
                 "--out", str(out), "--no-progress", *args])


def manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------- without a server


def test_filters_are_dicom_keywords_and_ct_only():
    assert parse_filters(["Modality=CT", "StudyDate=20240101-20241231", "StudyDescription=*CHEST*"]) == {
        "Modality": "CT", "StudyDate": "20240101-20241231", "StudyDescription": "*CHEST*"}
    with pytest.raises(DicomwebError, match="did you mean StudyDate"):
        parse_filters(["StudyDat=2024"])
    with pytest.raises(DicomwebError, match="not KEY=VALUE"):
        parse_filters(["StudyDate"])
    with pytest.raises(DicomwebError, match="CT series only"):
        parse_filters(["Modality=MR"])


def test_credentials_come_from_named_variables_only(monkeypatch):
    monkeypatch.delenv(USER_ENV, raising=False)
    assert read_credentials(None, None) is None
    with pytest.raises(DicomwebError, match=f"\\${USER_ENV} is not set"):
        read_credentials(USER_ENV, PASSWORD_ENV)
    with pytest.raises(DicomwebError, match="both"):
        read_credentials(USER_ENV, None)
    with pytest.raises(DicomwebError, match="holds credentials"):
        check_url("http://user:pw@pacs.example.org/dicom-web")
    with pytest.raises(DicomwebError, match="not a DICOMweb URL"):
        check_url("pacs.example.org")


def test_unreachable_server_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LUNGSEG_PSEUDONYM_KEY", SECRET)
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    assert main(["dicomweb-retrieve", "--url", url, "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "cannot reach the DICOMweb server" in lines[0] and url in lines[0], lines
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------- against Orthanc


def test_pacs_command_starts_and_stops_an_orthanc(tmp_path, capsys):
    orthanc_or_skip()
    port, folder = free_port(), tmp_path / "pacs"
    assert main(["pacs", "start", "--dir", str(folder), "--port", str(port)]) == 0
    try:
        out = capsys.readouterr().out
        assert f"http://127.0.0.1:{port}/dicom-web" in out
        assert requests.get(f"http://127.0.0.1:{port}/dicom-web/studies", timeout=10).json() == []
        assert main(["pacs", "start", "--dir", str(folder), "--port", str(port)]) == 1  # one per folder
        assert "already runs" in capsys.readouterr().err
    finally:
        assert main(["pacs", "stop", "--dir", str(folder)]) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/system", timeout=5)


def test_a_filter_selects_one_study_into_pseudonymous_folders(pacs, tmp_path, capsys):
    one, other = pacs.cases
    out, links = tmp_path / "archive", tmp_path / "links"
    date = one.identity.study_date
    assert retrieve_cli(pacs, out, "--filter", f"StudyDate={date}-{date}", "--filter", "Modality=CT",
                        "--links", str(links)) == 0
    folder = case_pseudonym(SECRET, series_uid(one))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [folder]
    files = sorted((out / folder).iterdir())
    assert len(files) == SLICES and all(re.fullmatch(r"[0-9a-f]{16}\.dcm", p.name) for p in files)
    retrieved = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in one.dicom_dir.glob("*.dcm")}
    assert retrieved == sent
    assert [p.name for p in links.iterdir()] == [folder] and (links / folder).resolve() == (out / folder).resolve()
    assert manifest(out / ".lungseg-retrieved.tsv") == [
        {"folder": folder, "status": RETRIEVED, "slices": str(SLICES), "expected": str(SLICES), "labels": "0"}]
    # nothing lungseg wrote or printed names a UID or the patient
    captured = capsys.readouterr()
    text = captured.out + captured.err + (out / ".lungseg-retrieved.tsv").read_text()
    text += " ".join(str(p) for p in out.rglob("*"))
    secrets = identifiers(one.dicom_dir) | identifiers(other.dicom_dir) | set(one.identity.values())
    assert not [value for value in secrets if value in text]
    assert not UID_TEXT.search(text)


def test_wildcards_select_both_and_a_rerun_fetches_nothing(pacs, tmp_path, capsys):
    out = tmp_path / "archive"
    assert retrieve_cli(pacs, out, "--filter", "StudyDescription=*CHEST*", "--filter", "SeriesDescription=*LUNG*") == 0
    folders = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert len(folders) == 2
    inodes = {p: p.stat().st_ino for f in folders for p in f.iterdir()}
    assert retrieve_cli(pacs, out, "--filter", "StudyDescription=*CHEST*") == 0
    assert {row["status"] for row in manifest(out / ".lungseg-retrieved.tsv")} == {COMPLETE}
    assert {p: p.stat().st_ino for f in folders for p in f.iterdir()} == inodes
    assert "2 already complete" in capsys.readouterr().out
    assert retrieve_cli(pacs, tmp_path / "none", "--filter", "StudyDescription=*HEAD*") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "no CT series" in lines[0] and "StudyDescription" in lines[0], lines


class Interrupted(Exception):
    pass


def test_an_interrupted_retrieve_resumes_and_skips_complete_series(pacs, tmp_path, monkeypatch):
    out = tmp_path / "archive"
    refs = query_ct_series(client(pacs), {}, SECRET)
    assert len(refs) == 2
    write = retrieve_module._write_instance
    written = []

    def write_then_die(ds, path):
        if len(written) == SLICES + SLICES - 4:  # the first series complete, the second 4 short
            raise Interrupted
        write(ds, path)
        written.append(path)

    monkeypatch.setattr(retrieve_module, "_write_instance", write_then_die)
    with pytest.raises(Interrupted):
        retrieve_series(client(pacs), refs, out, SECRET, progress=False)
    first, second = refs
    assert len(list((out / first.folder).glob("*.dcm"))) == SLICES
    assert not (out / second.folder).exists()  # never a half series under its final name
    left = partial_folder(out, second.folder)
    assert len(list(left.glob("*.dcm"))) == SLICES - 4
    kept = {p.name: p.stat().st_ino for p in left.glob("*.dcm")}
    (left / ".cut-short.dcm.tmp").write_bytes(b"DICM")  # what a kill in the middle of a write leaves
    monkeypatch.setattr(retrieve_module, "_write_instance", write)

    calls = {"iter_series": 0, "retrieve_instance": 0}
    pacs_client = client(pacs)
    methods = {name: getattr(pacs_client, name) for name in calls}
    for name in calls:
        def counted(*args, _name=name, **kwargs):
            calls[_name] += 1
            return methods[_name](*args, **kwargs)
        monkeypatch.setattr(pacs_client, name, counted)
    results = retrieve_series(pacs_client, refs, out, SECRET, progress=False)
    assert [(r.folder, r.status, r.slices) for r in results] == [
        (first.folder, COMPLETE, SLICES), (second.folder, RESUMED, SLICES)]
    assert calls == {"iter_series": 0, "retrieve_instance": 4}  # only the 4 missing instances were fetched
    assert not left.exists()
    final = out / second.folder
    assert all(final.joinpath(name).stat().st_ino == inode for name, inode in kept.items())
    assert len(list(final.iterdir())) == SLICES


def test_a_study_deleted_between_query_and_retrieve_is_reported_and_the_rest_retrieved(pacs, tmp_path, capsys, monkeypatch,
                                                                                        caplog):
    gone, kept = pacs.cases
    query = retrieve_module.query_ct_series

    def query_then_delete(*args, **kwargs):
        refs = query(*args, **kwargs)
        pacs.delete("Study", study_uid(gone))
        return refs

    monkeypatch.setattr(retrieve_module, "query_ct_series", query_then_delete)
    out = tmp_path / "archive"
    with caplog.at_level("WARNING", logger="lungseg.dicomweb"):
        assert retrieve_cli(pacs, out) == 0
    gone_folder, kept_folder = (case_pseudonym(SECRET, series_uid(c)) for c in (gone, kept))
    rows = {row["folder"]: row["status"] for row in manifest(out / ".lungseg-retrieved.tsv")}
    assert rows == {gone_folder: GONE, kept_folder: RETRIEVED}
    assert len(list((out / kept_folder).glob("*.dcm"))) == SLICES
    assert not (out / gone_folder).exists() and not partial_folder(out, gone_folder).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"series {gone_folder}: no longer on {pacs.url}" in warnings[0], warnings
    assert "1 retrieved, 1 gone" in capsys.readouterr().out


def test_a_partial_retrieve_is_never_renamed_into_place(pacs, tmp_path, capsys, monkeypatch):
    short, whole = pacs.cases
    victim = str(pydicom.dcmread(next(short.dicom_dir.glob("*.dcm")), stop_before_pixels=True).SOPInstanceUID)
    query = retrieve_module.query_ct_series

    def query_then_delete_one_instance(*args, **kwargs):
        refs = query(*args, **kwargs)
        assert {ref.listed for ref in refs} == {SLICES}
        pacs.delete("Instance", victim)  # the series was complete when queried; one instance goes before it comes back
        return refs

    monkeypatch.setattr(retrieve_module, "query_ct_series", query_then_delete_one_instance)
    out, links = tmp_path / "archive", tmp_path / "links"
    assert retrieve_cli(pacs, out, "--links", str(links)) == 1
    short_folder, whole_folder = (case_pseudonym(SECRET, series_uid(c)) for c in (short, whole))
    assert not (out / short_folder).exists()
    assert len(list(partial_folder(out, short_folder).glob("*.dcm"))) == SLICES - 1
    assert len(list((out / whole_folder).glob("*.dcm"))) == SLICES
    rows = {row["folder"]: (row["status"], row["slices"], row["expected"]) for row in manifest(out / ".lungseg-retrieved.tsv")}
    assert rows == {short_folder: (PARTIAL, str(SLICES - 1), str(SLICES)), whole_folder: (RETRIEVED, str(SLICES), str(SLICES))}
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"series {short_folder} came back incomplete ({SLICES - 1} of {SLICES} instances)" in lines[0]
    assert not UID_TEXT.search(lines[0])
    assert [p.name for p in links.iterdir()] == [whole_folder]  # what the workflow's discovery reads


def test_labels_come_with_their_series_but_not_lungsegs_own_segs(pacs, tmp_path, capsys):
    case, other = pacs.cases
    reference = reference_seg(case, tmp_path / "reference.dcm")
    own = reference_seg(other, tmp_path / "own.dcm", manufacturer="lungseg")  # a prediction stored back earlier
    for path in (reference, own):
        pacs.rest("POST", "/instances", data=path.read_bytes())
    out = tmp_path / "archive"
    assert retrieve_cli(pacs, out, "--labels") == 0
    assert "32 slices, 1 label objects" in capsys.readouterr().out
    folder, other_folder = (case_pseudonym(SECRET, series_uid(c)) for c in (case, other))
    rows = {row["folder"]: row["labels"] for row in manifest(out / ".lungseg-retrieved.tsv")}
    assert rows == {folder: "1", other_folder: "0"}
    assert len(list((out / other_folder).iterdir())) == SLICES
    modalities = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in (out / folder).iterdir())
    assert modalities == ["CT"] * SLICES + ["SEG"]
    # discovery attaches it to its series as the case's seg label
    sheet = tmp_path / "cases.tsv"
    assert main(["discover", str(out), "-o", str(sheet), "--secret-env", "LUNGSEG_PSEUDONYM_KEY", "--no-progress"]) == 0
    with open(sheet, newline="") as f:
        segs = {row["case_id"]: row["seg"] for row in csv.DictReader(f, delimiter="\t")}
    assert set(segs) == {folder, other_folder} and segs[folder] and not segs[other_folder]


def test_wrong_or_missing_credentials_are_one_clear_line(pacs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    assert retrieve_cli(pacs, tmp_path / "a") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "refused the credentials (HTTP 401" in lines[0], lines
    assert f"${USER_ENV}" in lines[0] and "not-the-password" not in lines[0]
    assert main(["dicomweb-retrieve", "--url", pacs.url, "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "HTTP 401" in lines[0] and "--user-env" in lines[0], lines
    monkeypatch.delenv(PASSWORD_ENV)
    assert retrieve_cli(pacs, tmp_path / "a") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"${PASSWORD_ENV} is not set" in lines[0], lines


def test_a_seg_is_stored_and_queried_back_equal(pacs, tmp_path, capsys):
    from lungseg.export.dicom_seg import write_dicom_seg
    from lungseg.export.readback import read_back_seg

    case = pacs.cases[0]
    seg_path = tmp_path / "exports" / "unet" / "c0.seg.dcm"
    write_dicom_seg(case.lung_path, case.dicom_dir, seg_path, model_name="lungseg unet", model_version="test",
                    label_kind="lung")
    receipt = tmp_path / "stored.json"
    assert main(["dicomweb-store", "--url", pacs.url, "--user-env", USER_ENV, "--password-env", PASSWORD_ENV,
                 "--receipt", str(receipt), str(seg_path)]) == 0
    assert "found again by QIDO-RS" in capsys.readouterr().out
    stored = json.loads(receipt.read_text())
    assert stored == {"url": pacs.url, "stored": [{"file": str(seg_path), "sop_class": "Segmentation Storage",
                                                    "found_by_qido": True}]}
    # query it back from the PACS as a viewer would, and compare it with the mask it was made from
    pacs_client = client(pacs)
    segs = pacs_client.search_series(study_uid(case), {"Modality": "SEG"})
    assert len(segs) == 1
    seg_series = segs[0]["0020000E"]["Value"][0]
    (instance,) = pacs_client.instance_uids(study_uid(case), seg_series)
    back = tmp_path / "back.dcm"
    pacs_client.retrieve_instance(study_uid(case), seg_series, instance).save_as(back, enforce_file_format=True)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(case.lung_path)))
    np.testing.assert_array_equal(read_back_seg(back, case.dicom_dir), expected)


def test_storing_a_non_dicom_file_is_one_clear_line(pacs, tmp_path, capsys):
    bad = tmp_path / "note.dcm"
    bad.write_text("not DICOM")
    assert main(["dicomweb-store", "--url", pacs.url, "--user-env", USER_ENV, "--password-env", PASSWORD_ENV, str(bad)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "not a readable DICOM file" in lines[0], lines


# ---------------------------------------------------------------------------- the workflow


def smk(workdir: Path, env: dict[str, str], *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, **env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_workflow_retrieves_the_filtered_studies_and_stores_the_seg_back(orthanc, tmp_path, monkeypatch):
    """source: dicomweb for 3 of 4 studies (StudyDescription filter), 1-epoch training, the test case's
    prediction exported as DICOM-SEG, stored in Orthanc, queried back and compared with the NIfTI."""
    demo = tmp_path / "demo"
    cases = [demo_case(demo, f"demo00{k}", slices=SLICES, size=64) for k in range(1, 5)]

    def head_study(ds, k):
        ds.StudyDescription = "HEAD CT"

    edit(sorted(cases[3].dicom_dir.glob("*.dcm")), head_study)
    orthanc.reset(cases)
    for k, case in enumerate(cases):  # the readers' lung contours, as DICOM-SEG in the PACS: the training labels
        orthanc.rest("POST", "/instances", data=reference_seg(case, tmp_path / f"reference{k}.dcm").read_bytes())
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.pop("experiments")
    config.update(source="dicomweb", dicomweb={
        "url": orthanc.url, "filters": {"StudyDescription": "*CHEST*"}, "user_env": USER_ENV,
        "password_env": PASSWORD_ENV, "archive": "pacs-archive", "labels": True})
    config["train"].update(epochs=1, image_size=32, base_channels=4, depth=2, batch_size=4, threads=1)
    config["scaling"]["enabled"] = False
    config["export"] = {"dicom_seg": True, "dicomweb": True, "folder": "exports"}
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    env = {USER_ENV: USER, PASSWORD_ENV: PASSWORD, "LUNGSEG_PSEUDONYM_KEY": SECRET, "OMP_NUM_THREADS": "1"}
    smk(work, env, "--cores", "2", "dicomweb_store_all")

    selected = {case_pseudonym(SECRET, series_uid(c)): c for c in cases[:3]}
    assert sorted(p.name for p in (work / "pacs-archive").iterdir() if not p.name.startswith(".")) == sorted(selected)
    with open(work / "results/discovered/cases.tsv", newline="") as f:
        sheet = {row["case_id"] for row in csv.DictReader(f, delimiter="\t")}
    assert sheet == set(selected)  # discovery names each case as the archive folder it came from
    receipts = sorted((work / "results/dicomweb/stored/unet").glob("*.json"))
    assert len(receipts) == 1
    case_id = receipts[0].stem
    case = selected[case_id]
    stored = json.loads(receipts[0].read_text())["stored"]
    assert stored == [{"file": f"exports/unet/{case_id}.seg.dcm", "sop_class": "Segmentation Storage", "found_by_qido": True}]
    # query the SEG back from the PACS and compare it with the NIfTI prediction
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    pacs_client = Pacs(orthanc.url, user_env=USER_ENV, password_env=PASSWORD_ENV)
    segs = [ds for series in pacs_client.search_series(study_uid(case), {"Modality": "SEG"})
            for ds in pacs_client.iter_series(study_uid(case), series["0020000E"]["Value"][0])]
    assert sorted(str(ds.Manufacturer) for ds in segs) == ["lungseg", "reference reader"]
    back = tmp_path / "back.dcm"
    next(ds for ds in segs if ds.Manufacturer == "lungseg").save_as(back, enforce_file_format=True)
    from lungseg.export.readback import read_back_seg

    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"results/experiments/unet/predictions/{case_id}.nii.gz")))
    np.testing.assert_array_equal(read_back_seg(back, work / "pacs-archive" / case_id), prediction)
    # results/ and logs/ name no UID and no patient of the PACS
    values = set().union(*(identifiers(c.dicom_dir) for c in cases)) | {v for c in cases for v in c.identity.values()}
    for root in (work / "results", work / "logs"):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in (".tsv", ".json", ".log", ".txt", ".csv", ".html"):
                text = path.read_text(errors="replace")
                assert not [v for v in values if v in text], path
    # a rerun has nothing to do: the archive and the receipts make retrieve and store run once
    assert "Nothing to be done" in smk(work, env, "--cores", "1", "dicomweb_store_all")
