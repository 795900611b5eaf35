"""Real-archive oddities through discovery and ingest: non-image objects and localizers beside the slices,
gantry tilt, Enhanced (multi-frame) CT, and archive folder names with spaces, quotes and the like."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_data import SEED, demo_case, edit, identifiers, slice_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg.casefile import read_case
from lungseg.cli import main
from lungseg.demo.cohort import generate_demo_scan
from lungseg.ingest.dicom_series import read_series
from lungseg.ingest.discover import discover
from lungseg.ingest.errors import IngestError
from lungseg.ingest.headers import ENHANCED_CT_SOP_CLASS

SECRET = "oddities-secret-0123456789"
TILT = "dicom-oddities/tilt-phantom"
ENHANCED = "dicom-oddities/enhanced-multiframe/eCT_Supplemental.dcm"


def _truth(case):
    return generate_demo_scan(case.case_id, SEED, n_slices=case.shape[0], size=case.shape[1]).phantom.hu


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _ingest(folder: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    status = tmp_path / "status.json"
    code = main(["ingest", str(folder), "--case-id", "c1", "-o", str(tmp_path / "c1.h5"), "--status", str(status), *extra])
    return code, json.loads(status.read_text())


def _non_image(path: Path, sop_class: str, modality: str, series_uid: str | None = None) -> None:
    """A minimal DICOM object of ``sop_class`` without pixel data (a plan, report ...), in its own series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, ds.file_meta.MediaStorageSOPInstanceUID, modality
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = series_uid or generate_uid(), generate_uid(), "ODD-001"
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------- mixed folders


def test_non_image_objects_beside_the_slices_are_set_aside_and_said(tmp_path):
    demo = demo_case(tmp_path / "demo")
    folder = tmp_path / "archive" / "series"
    shutil.copytree(demo.dicom_dir, folder)
    _non_image(folder / "plan", "1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN")
    _non_image(folder / "report", "1.2.840.10008.5.1.4.1.1.88.22", "SR")
    _non_image(folder / "state", "1.2.840.10008.5.1.4.1.1.11.1", "PR")
    code, status = _ingest(folder, tmp_path)
    assert code == 0 and status["status"] == "ok", status
    np.testing.assert_array_equal(read_case(tmp_path / "c1.h5").image, _truth(demo))
    assert "set aside 3 non-image object(s) beside the slices: RTPLAN, SR, presentation state" in status["notes"]
    # discovery lists them as what they are and needs no series selector for the folder
    found = discover(tmp_path / "archive", SECRET)
    assert [(r["series"], r["n_slices"]) for r in found.cases] == [("", "12")]
    reasons = sorted(r["reason"] for r in found.skipped)
    assert reasons == ["non-image object: RTPLAN", "non-image object: SR", "non-image object: presentation state"]


def test_another_modality_beside_the_ct_series_is_set_aside_but_two_ct_series_are_refused(tmp_path):
    demos = [demo_case(tmp_path / "demo", cid) for cid in ("demo001", "demo002")]
    folder = tmp_path / "mixed"
    folder.mkdir()
    for prefix, demo in zip("ab", demos):
        for path in demo.dicom_dir.iterdir():
            shutil.copy(path, folder / f"{prefix}_{path.name}")
    with pytest.raises(IngestError, match=r"holds 2 image series \(12 \+ 12 files\)") as error:
        read_series(folder)
    assert "`series` column" in error.value.fix
    edit(sorted(folder.glob("b_*")), lambda ds, k: setattr(ds, "Modality", "MR"))
    series = read_series(folder)
    np.testing.assert_array_equal(series.hu, _truth(demos[0]))
    assert "set aside 12 image(s) of another modality (MR)" in series.notes
    found = discover(folder, SECRET)
    assert [r["series"] for r in found.cases] == [""]  # ingest sets the MR aside: no selector needed


@pytest.mark.realdata
def test_rtstruct_seg_localizer_and_directory_file_in_the_series_folder(shared_data, tmp_path):
    demo = demo_case(tmp_path / "demo")
    folder = tmp_path / "archive" / "LUNG1-XYZ" / "1.000000-CT-0001"
    shutil.copytree(demo.dicom_dir, folder)
    shutil.copy(shared_data / "nsclc-radiomics/LUNG1-001/rtstruct/1-1.dcm", folder / "rtstruct.dcm")
    shutil.copy(shared_data / "dicom-oddities/seg/seg_image_ct_binary.dcm", folder / "seg.dcm")
    shutil.copy(shared_data / "dicom-oddities/localizer/GH342.dcm", folder / "scout.dcm")
    shutil.copy(shared_data / TILT / "DIRFILE", folder / "DIRFILE")
    code, status = _ingest(folder, tmp_path)
    assert code == 0 and status["status"] == "ok", status
    np.testing.assert_array_equal(read_case(tmp_path / "c1.h5").image, _truth(demo))
    assert "set aside 3 non-image object(s) beside the slices: DICOMDIR, RTSTRUCT, SEG" in status["notes"]
    assert "set aside 1 scout/localizer image(s)" in status["notes"]
    written = json.dumps(status) + json.dumps(read_case(tmp_path / "c1.h5").provenance)
    leaked = [uid for uid in identifiers(folder) if uid in written]
    assert not leaked and "1.2.840" not in written

    found = discover(tmp_path / "archive", SECRET)
    assert len(found.cases) == 1 and found.cases[0]["series"] == "" and found.cases[0]["n_slices"] == "12"
    reasons = {Path(r["path"]).name: r["reason"] for r in found.skipped}
    assert reasons.get("DIRFILE") == "non-image object: DICOMDIR"
    assert not [r for r in found.skipped if "not CT" in r["reason"]], found.skipped  # never "modality SEG, not CT"


# ---------------------------------------------------------------- gantry tilt


def _tilt_folder(shared_data: Path, tmp_path: Path) -> Path:
    """The tilt phantom's slices and directory file, linked into a folder without its licence text."""
    folder = tmp_path / "tilt"
    folder.mkdir()
    for path in (shared_data / TILT).iterdir():
        if not path.name.startswith("LICENSE"):
            (folder / path.name).symlink_to(path)
    return folder


def _bright_centroid_of_source(folder: Path, threshold: float, sheared: bool = True) -> np.ndarray:
    """Mean LPS position (mm) of the voxels above ``threshold`` HU, each placed by its own slice's header
    (``sheared=False``: as if the slices were stacked straight along their normal, ignoring the tilt)."""
    points = []
    origin0 = None
    for path in sorted(folder.glob("I*")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        j, i = np.nonzero(hu > threshold)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        row, col = orientation[:3], orientation[3:]
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        origin = np.asarray(ds.ImagePositionPatient, dtype=float)
        origin0 = origin if origin0 is None else origin0
        if not sheared:
            normal = np.cross(row, col)
            origin = origin0 + ((origin - origin0) @ normal) * normal
        points.append(origin + np.outer(i * col_spacing, row) + np.outer(j * row_spacing, col))
    return np.concatenate(points).mean(axis=0)


@pytest.mark.realdata
def test_tilted_phantom_is_resampled_onto_an_orthogonal_grid_in_place(shared_data, tmp_path):
    folder = _tilt_folder(shared_data, tmp_path)
    series = read_series(folder)
    header_tilt = float(pydicom.dcmread(folder / "I10", stop_before_pixels=True).GantryDetectorTilt)
    assert header_tilt == -18.5 and series.provenance["gantry_tilt_deg"] == pytest.approx(header_tilt, abs=0.05)
    assert series.hu.shape[0] == 54 and series.hu.shape[2] == 512 and series.hu.shape[1] > 512
    direction = np.asarray(series.geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert any(n.startswith("gantry tilt -18.5 deg") for n in series.notes), series.notes
    assert "set aside 1 non-image object(s) beside the slices: DICOMDIR" in series.notes

    threshold = 200.0  # the phantom's bright inserts
    z, y, x = np.nonzero(series.hu > threshold)
    resampled = series.geometry.index_to_physical(np.c_[x, y, z]).mean(axis=0)
    source = _bright_centroid_of_source(folder, threshold)
    assert np.linalg.norm(resampled - source) < min(series.geometry.spacing)  # within a voxel
    # slices stacked straight along their normal (the tilt ignored) would put it far off: the test can tell
    assert np.linalg.norm(_bright_centroid_of_source(folder, threshold, sheared=False) - source) > 5.0


@pytest.mark.realdata
def test_discovery_lists_the_tilted_series_and_notes_the_directory_file(shared_data, tmp_path):
    folder = _tilt_folder(shared_data, tmp_path)
    found = discover(tmp_path, SECRET)
    assert [(r["n_slices"], r["series"], r["dicom"]) for r in found.cases] == [("54", "", str(folder))]
    assert [r["reason"] for r in found.skipped] == ["non-image object: DICOMDIR"]


# ---------------------------------------------------------------- enhanced CT


def _enhanced_files(series_dir: Path, out_dir: Path, n_files: int) -> list[Path]:
    """The demo series rewritten as ``n_files`` Enhanced CT files (frames in scrambled order), geometry in the
    functional groups: rescale shared in the first file, per frame in the others."""
    slices = [pydicom.dcmread(p) for p in slice_files(series_dir)]
    series_uid = generate_uid()
    out_dir.mkdir(parents=True)
    paths = []
    for f, chunk in enumerate(np.array_split(np.arange(len(slices))[::-1], n_files)):
        first = slices[int(chunk[0])]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ENHANCED_CT_SOP_CLASS, generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = first.PatientID, first.StudyInstanceUID, series_uid
        for keyword in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                        "HighBit", "PixelRepresentation"):
            setattr(ds, keyword, getattr(first, keyword))
        ds.NumberOfFrames = len(chunk)
        rescale = Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = first.RescaleSlope, first.RescaleIntercept, "HU"
        shared = Dataset()
        orientation, measures = Dataset(), Dataset()
        orientation.ImageOrientationPatient = first.ImageOrientationPatient
        measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
        shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
        if f == 0:
            shared.PixelValueTransformationSequence = Sequence([rescale])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per_frame = []
        for k in chunk:
            item, position = Dataset(), Dataset()
            position.ImagePositionPatient = slices[int(k)].ImagePositionPatient
            item.PlanePositionSequence = Sequence([position])
            if f > 0:
                item.PixelValueTransformationSequence = Sequence([rescale])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        ds.PixelData = b"".join(slices[int(k)].PixelData for k in chunk)
        paths.append(out_dir / f"enhanced{f}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.parametrize("n_files", [1, 3])
def test_enhanced_ct_round_trips_against_the_single_frame_series(tmp_path, n_files):
    demo = demo_case(tmp_path / "demo", "demo002")
    classic = read_series(demo.dicom_dir)
    folder = tmp_path / "archive" / "enhanced"
    _enhanced_files(demo.dicom_dir, folder, n_files)
    enhanced = read_series(folder)
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    np.testing.assert_array_equal(enhanced.hu, _truth(demo))
    for field in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(enhanced.geometry, field), getattr(classic.geometry, field), atol=1e-6)
    assert enhanced.provenance["enhanced_ct_files"] == n_files and enhanced.provenance["n_source_slices"] == 12
    found = discover(tmp_path / "archive", SECRET)
    assert [(r["n_slices"], r["series"]) for r in found.cases] == [("12", "")], found.skipped
    assert read_series(Path(found.cases[0]["dicom"])).hu.shape == classic.hu.shape


@pytest.mark.realdata
def test_enhanced_ct_file_is_read_from_its_functional_groups(shared_data, tmp_path):
    path = shared_data / ENHANCED
    folder = tmp_path / "archive" / "ect"
    folder.mkdir(parents=True)
    (folder / path.name).symlink_to(path)
    series = read_series(folder)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.int32)
    assert series.hu.shape == (2, 512, 512)
    # frames sorted along the slice normal (0, 0, -1): z -149 (frame 2) before z -159 (frame 1)
    np.testing.assert_array_equal(series.hu, np.clip(stored[::-1] - 1024, -1024, 3071))
    np.testing.assert_allclose(series.geometry.origin, (99.5, -301.5, -149.0))
    np.testing.assert_allclose(series.geometry.spacing, (0.388672, 0.388672, 10.0))
    # discovery counts frames, not files
    assert [r["n_slices"] for r in discover(tmp_path / "archive", SECRET, min_slices=2).cases] == ["2"]
    skipped = discover(tmp_path / "archive", SECRET, min_slices=3).skipped
    assert [r["reason"] for r in skipped] == ["has only 2 slice(s), fewer than 3"]


# ---------------------------------------------------------------- archive folder names


HOSTILE_NAMES = (
    "LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192",
    "LIDC-IDRI-0002/01-01-2000-NA-NA-30179/1.000000-CHEST 2.5 MM-12345",
    "-patient 'one' \"two\" [b] (c) {d} ü 肺/--study; $(x) `y` & |z/-series #1 %s *?",
)


def test_discover_and_ingest_take_archive_folder_names_as_they_are(tmp_path, monkeypatch):
    root = tmp_path / "TCIA download"
    demos = {}
    for k, name in enumerate(HOSTILE_NAMES):
        demo = demo_case(tmp_path / "demo", f"demo00{k + 1}")
        shutil.copytree(demo.dicom_dir, root / name)
        demos[str(root / name)] = demo
    monkeypatch.setenv("LUNGSEG_PSEUDONYM_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    assert main(["discover", str(root), "-o", str(tmp_path / "cases.tsv"), "--no-progress"]) == 0
    rows = _read(tmp_path / "cases.tsv")
    assert sorted(r["dicom"] for r in rows) == sorted(demos) and all(r["series"] == "" for r in rows)
    for row in rows:
        out = tmp_path / f"{row['case_id']}.h5"
        assert main(["ingest", row["dicom"], "--case-id", row["case_id"], "-o", str(out)]) == 0
        np.testing.assert_array_equal(read_case(out).image, _truth(demos[row["dicom"]]))


def test_multi_frame_without_per_frame_geometry_is_refused(tmp_path):
    demo = demo_case(tmp_path / "demo")
    folder = tmp_path / "multi"
    shutil.copytree(demo.dicom_dir, folder)

    def two_frames(ds, k):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    edit(slice_files(folder)[:1], two_frames)
    with pytest.raises(IngestError, match=r"is a multi-frame image \(2 frames\) without per-frame geometry") as error:
        read_series(folder)
    assert "Enhanced CT" in error.value.fix and error.value.path.startswith(str(folder))
