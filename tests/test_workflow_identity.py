"""`source: discover` on an archive laid out as <PatientID>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm (older TCIA
downloads): no folder or file name of the archive (patient ID, UIDs) reaches results/, logs/ or .snakemake/
(sheet, rule parameters, command lines, metadata, status files, HDF5 attributes, tables). With
`export.dicom_seg: true` the test case's DICOM-SEG lands in exports/ and does carry them (the patient module
and UIDs a SEG must hold: the export is real), while results/ and logs/ stay clean."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import yaml
from conftest import REPO
from ingest_data import demo_case, edit, identifiers, slice_files
from pydicom.uid import generate_uid

from lungseg.export.dicom_seg import write_dicom_seg

pytestmark = pytest.mark.slow
SECRET = "workflow-identity-secret-7"
PATIENTS = ("PATIENT-8472913", "PATIENT-5519027", "PATIENT-3306481", "PATIENT-6620154")
XML_NAME = "069.xml"  # LIDC-IDRI names its reader XML by number: not identifying


def _lidc_xml(series: Path, path: Path) -> None:
    """A reader XML naming the series and outlining a square on three of its slices (by SOP UID)."""
    rois = ""
    for f in slice_files(series)[5:8]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        square = [(x, 20) for x in range(20, 30)] + [(29, y) for y in range(21, 30)]
        square += [(x, 29) for x in range(28, 19, -1)] + [(20, y) for y in range(28, 20, -1)]
        rois += (
            f"<roi><imageZposition>{ds.ImagePositionPatient[2]}</imageZposition><imageSOP_UID>{ds.SOPInstanceUID}"
            "</imageSOP_UID><inclusion>TRUE</inclusion>"
            + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in square)
            + "</roi>"
        )
    uid = pydicom.dcmread(slice_files(series)[0], stop_before_pixels=True).SeriesInstanceUID
    path.write_text(
        f'<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader><SeriesInstanceUid>'
        f"{uid}</SeriesInstanceUid></ResponseHeader><readingSession><servicingRadiologistID>R1"
        "</servicingRadiologistID><unblindedReadNodule><noduleID>1</noduleID>"
        f"{rois}</unblindedReadNodule></readingSession></LidcReadMessage>"
    )


def _archive_series(demo: Path, root: Path, patient: str, series: str | None = None) -> Path:
    """Copy a demo series to root/<patient>/<study UID>/<series UID>/<SOP UID>.dcm, headers matching."""
    study, series = generate_uid(), series or generate_uid()

    def identity(ds, k):
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series

    edit(slice_files(demo), identity)
    folder = root / patient / study / series
    folder.mkdir(parents=True)
    for path in slice_files(demo):
        shutil.copy(path, folder / f"{pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm")
    return folder


def smk(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, LUNGSEG_PSEUDONYM_KEY=SECRET)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def _texts(path: Path) -> list[bytes]:
    """The bytes of a file, plus its gzip-decompressed content and its HDF5 attributes and strings."""
    data = path.read_bytes()
    out = [data]
    if data[:2] == b"\x1f\x8b":
        out.append(gzip.decompress(data))
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        with h5py.File(path, "r") as f:
            items = [f]
            f.visititems(lambda name, obj: items.append(obj))
            for obj in items:
                out += [f"{k}={v!r}".encode() for k, v in obj.attrs.items()]
                if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "SOU":
                    out.append(repr(obj[()]).encode())
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("identity")
    archive = work / "archive"
    # the second series UID is not conformant (a component with a leading zero): pydicom's warnings quote it
    uids = (None, generate_uid()[:50] + ".0777", None, None)
    demos = [demo_case(work / "demo", case, slices=16, size=64) for case in ("demo001", "demo002", "demo003", "demo004")]
    series = [_archive_series(d.dicom_dir, archive, patient, uid) for d, patient, uid in zip(demos, PATIENTS, uids)]
    for demo, folder in zip(demos, series):  # the lungs as a DICOM-SEG series of the study: discovery finds the labels
        write_dicom_seg(demo.lung_path, folder, folder.parent / generate_uid() / f"{generate_uid()}.dcm",
                        model_name="reference lungs", model_version="1", label_kind="lung")
    _lidc_xml(series[0], series[0] / XML_NAME)
    scout = series[0].parent / generate_uid()  # a localizer beside the series: skipped, listed by folder
    scout.mkdir()
    shutil.copy(slice_files(series[0])[0], scout / f"{generate_uid()}.dcm")

    def make_scout(ds, k):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = scout.name, generate_uid()

    edit(sorted(scout.iterdir()), make_scout)
    secrets = set(PATIENTS) | {s for study in {f.parent for f in series} for s in identifiers(study)}
    slice_files(series[2])[8].unlink()  # a missing slice: the third case is quarantined, its file named
    (series[1] / f"{generate_uid()}.dcm").write_bytes(b"\x00not dicom" * 50)  # junk, skipped by file name
    secrets |= {p.name for p in archive.rglob("*") if p.name != XML_NAME}

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(source="discover", discover={"root": str(archive), "min_slices": 10})
    # three good cases (lungs from their SEGs): a split with one test case, a tiny model, its prediction exported
    config["export"] = {"dicom_seg": True, "folder": "exports"}
    config["train"].update(epochs=1, image_size=32, base_channels=4, depth=2, batch_size=4)
    (work / "config").mkdir()
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    printed = smk(work, "--cores", "2", "results/quarantine.tsv", "results/lungmask/qa.tsv", "export_seg_all")
    return work, sorted(secrets), printed


def test_the_cases_ran_through_links(run):
    work, secrets, _ = run
    rows = (work / "results/discovered/cases.tsv").read_text().splitlines()
    assert len(rows) == 5 and all("results/discovered/series/" in r for r in rows[1:]), rows
    with_xml = [r for r in rows[1:] if r.split("\t")[5]]
    assert len(with_xml) == 1 and Path(work, with_xml[0].split("\t")[5]).resolve().name == XML_NAME
    case = with_xml[0].split("\t")[0]
    with h5py.File(work / "results/ingest" / f"{case}.h5", "r") as f:
        assert np.asarray(f["labels/nodule"]).sum() > 0  # the reader XML reached ingest, through its link
    skipped = (work / "results/discovered/skipped.tsv").read_text()
    assert "scout" in skipped and "is not a DICOM file" in skipped and "<uid>" in skipped
    quarantine = (work / "results/quarantine.tsv").read_text()
    assert "missing slice" in quarantine and "results/discovered/series/" in quarantine, quarantine
    assert len(secrets) > 80  # 4 patients, 4 x (study, series, 16 SOP, frame) UIDs, the scout's, the junk's


def test_no_archive_name_in_results_logs_or_snakemake_metadata(run):
    work, secrets, printed = run
    needles = [s.lower().encode() for s in secrets]
    leaks = [f"snakemake's output contains {s}" for s in secrets if s.lower() in printed.lower()]
    checked = 0
    for top in ("results", "logs", ".snakemake"):
        for dirpath, dirs, files in os.walk(work / top):  # links are not followed
            for name in dirs + files:
                path = Path(dirpath, name)
                leaks += [f"name {path.relative_to(work)} contains {s}" for s in secrets if s.lower() in name.lower()]
                if name in files and path.is_file() and not path.is_symlink():
                    checked += 1
                    for text in _texts(path):
                        low = text.lower()
                        leaks += [f"{path.relative_to(work)} contains {s.decode()}" for s in needles if s in low]
    assert checked > 20
    assert not leaks, "\n".join(sorted(set(leaks)))


def test_the_export_carries_the_identifiers_results_and_logs_do_not(run):
    """The SEG of the test case holds its patient's ID and its study's UIDs (checked with the other folders
    by the test above: none of them reaches results/, logs/ or .snakemake/, the export's log included)."""
    work, secrets, _ = run
    split = [line.split("\t") for line in (work / "results/split.tsv").read_text().splitlines()[1:]]
    test_cases = [row[0] for row in split if row[2] == "test"]
    exported = sorted((work / "exports").rglob("*.seg.dcm"))
    assert [p.relative_to(work / "exports").as_posix() for p in exported] == [f"unet/{c}.seg.dcm" for c in test_cases]
    seg = pydicom.dcmread(exported[0])
    assert seg.Modality == "SEG" and seg.PatientID in PATIENTS
    carried = {seg.PatientID, seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID}
    assert carried <= set(secrets)
    data = exported[0].read_bytes().lower()
    assert all(s.lower().encode() in data for s in carried)
    log = (work / "logs/export_seg/unet" / f"{test_cases[0]}.log").read_text()
    assert "equal to the mask on every source slice" in log
