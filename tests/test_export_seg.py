"""DICOM-SEG export: segments and codes, placement on the source slices, read back through the references,
dciodvfy, the CLI (its warning, a log without identifiers), and real LIDC slices."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import REPO
from ingest_data import copy_series, demo_case, edit, identifiers
from pydicom.uid import generate_uid
from test_ingest_oddities import _enhanced_files, _tilt_folder
from test_ingest_series import _tilt

from lungseg.cli import main
from lungseg.export.dicom_seg import model_version, write_dicom_seg
from lungseg.export.planes import mask_on_planes
from lungseg.export.readback import read_back_seg
from lungseg.export.source import read_source_series
from lungseg.geometry import Geometry, write_volume
from lungseg.ingest.dicom_series import read_series
from lungseg.ingest.errors import IngestError
from lungseg.ingest.seg_labels import read_seg_labels

#: CI sets LUNGSEG_PACS_TESTS=required: a missing dciodvfy (Debian package dicom3tools) fails there instead of skipping
REQUIRED = os.environ.get("LUNGSEG_PACS_TESTS") == "required"
NAME, VERSION = "lungseg unet", "0.1.0+0123456789ab"
SCT_LUNG, SCT_NODULE, SCT_ANATOMY, SCT_ABNORMAL = "39607008", "27925004", "91723000", "49755003"
SCT_RIGHT, SCT_LEFT = "24028007", "7771000"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_case(tmp_path_factory.mktemp("demo"))


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _write(mask, dicom: Path, out: Path, label_kind: str = "lung", **kwargs):
    return write_dicom_seg(mask, dicom, out, model_name=NAME, model_version=VERSION, label_kind=label_kind, **kwargs)


@functools.lru_cache(maxsize=1)
def _dciodvfy() -> str | None:
    return shutil.which("dciodvfy")


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's report lines of one file; skips (fails with LUNGSEG_PACS_TESTS=required) without dciodvfy."""
    tool = _dciodvfy()
    if tool is None:
        reason = "dciodvfy not found (Debian package dicom3tools)"
        if REQUIRED:
            pytest.fail(f"LUNGSEG_PACS_TESTS=required but {reason}")
        pytest.skip(f"{reason}: DICOM-SEG validation not run")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def _errors(report: list[str]) -> list[str]:
    return [line for line in report if line.startswith("Error")]


def test_lung_sides_become_right_and_left_lung_segments_and_read_back_equal(demo, tmp_path):
    out = tmp_path / "lung.seg.dcm"
    result = _write(demo.lung_path, demo.dicom_dir, out)
    assert result.segments == ["Right lung", "Left lung"] and result.slices == demo.shape[0] and result.resampled == 0
    mask = _labels(demo.lung_path)
    assert set(np.unique(mask)) == {0, 1, 2}
    np.testing.assert_array_equal(read_back_seg(out, demo.dicom_dir), mask)

    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    segments = list(ds.SegmentSequence)
    for segment, side in zip(segments, (SCT_RIGHT, SCT_LEFT)):
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == SCT_ANATOMY
        prop = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == (SCT_LUNG, "SCT")
        assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == side
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (NAME, VERSION)
    # it references every source slice and carries the source study's patient module and UIDs
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(demo.dicom_dir.glob("*.dcm"))]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(s.SOPInstanceUID) for s in source}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (source[0].StudyInstanceUID, source[0].FrameOfReferenceUID)
    assert (str(ds.PatientName), ds.PatientID) == (demo.identity.patient_name, demo.identity.patient_id)
    assert ds.SeriesInstanceUID not in identifiers(demo.dicom_dir)  # a series of its own


def test_a_binary_lung_mask_is_one_lung_segment(demo, tmp_path):
    binary = (_labels(demo.lung_path) > 0).astype(np.uint8)
    out = tmp_path / "lung.seg.dcm"
    assert _write((binary, demo.geometry), demo.dicom_dir, out).segments == ["Lung"]
    np.testing.assert_array_equal(read_back_seg(out, demo.dicom_dir), binary)
    prop = pydicom.dcmread(out).SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert prop.CodeValue == SCT_LUNG and "SegmentedPropertyTypeModifierCodeSequence" not in prop


def test_nodule_mask_is_a_nodule_segment_in_the_lung(demo, tmp_path):
    out = tmp_path / "nodule.seg.dcm"
    mask = _labels(demo.nodule_path)
    assert mask.any()
    result = _write(demo.nodule_path, demo.dicom_dir, out, "nodule")
    assert result.segments == ["Nodule"]
    assert result.frames == int(np.count_nonzero(mask.any(axis=(1, 2))))  # empty frames left out
    np.testing.assert_array_equal(read_back_seg(out, demo.dicom_dir), mask)
    segment = pydicom.dcmread(out).SegmentSequence[0]
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == SCT_ABNORMAL
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == SCT_NODULE
    assert segment.AnatomicRegionSequence[0].CodeValue == SCT_LUNG


def test_numbered_nodules_are_one_segment_each(demo, tmp_path):
    mask = np.zeros(demo.shape, dtype=np.uint8)
    mask[2, 5:9, 5:9], mask[7, 30:34, 30:34] = 1, 3
    out = tmp_path / "nodules.seg.dcm"
    assert _write((mask, demo.geometry), demo.dicom_dir, out, "nodule").segments == ["Nodule 1", "Nodule 2", "Nodule 3"]
    np.testing.assert_array_equal(read_back_seg(out, demo.dicom_dir), mask)


def test_an_empty_prediction_gives_a_valid_seg_with_empty_segments(demo, tmp_path):
    out = tmp_path / "empty.seg.dcm"
    result = _write((np.zeros(demo.shape, np.uint8), demo.geometry), demo.dicom_dir, out, "nodule")
    assert result.segments == ["Nodule"] and result.frames == demo.shape[0]  # a SEG needs frames: all kept, empty
    back = read_back_seg(out, demo.dicom_dir)
    assert back.shape == demo.shape and not back.any()
    assert _errors(dciodvfy(out)) == []


def test_dciodvfy_finds_no_error_in_the_lung_and_nodule_segs(demo, tmp_path):
    for kind, path in (("lung", demo.lung_path), ("nodule", demo.nodule_path)):
        out = tmp_path / f"{kind}.seg.dcm"
        _write(path, demo.dicom_dir, out, kind)
        report = dciodvfy(out)
        assert _errors(report) == [], report


def test_a_mask_on_another_grid_is_resampled_onto_the_source_slices(demo, tmp_path):
    """A mask on a grid twice as coarse in-plane, its voxels covering 2x2 source pixels exactly (as a case
    ingested with a target spacing is predicted): nearest neighbour repeats each voxel."""
    fine = _labels(demo.lung_path)
    coarse = fine[:, ::2, ::2]
    sx, sy, sz = demo.geometry.spacing
    origin = np.asarray(demo.geometry.origin) + [sx / 2, sy / 2, 0]
    geometry = Geometry((2 * sx, 2 * sy, sz), tuple(origin), demo.geometry.direction)
    out = tmp_path / "coarse.seg.dcm"
    result = _write((coarse, geometry), demo.dicom_dir, out)
    assert result.resampled == demo.shape[0]
    np.testing.assert_array_equal(read_back_seg(out, demo.dicom_dir), coarse.repeat(2, axis=1).repeat(2, axis=2))


def test_a_gantry_tilted_series_gets_the_mask_of_its_orthogonal_grid_back_on_its_own_slices(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "tilted")
    _tilt(folder, demo.geometry.spacing[1])  # one row per slice: ingest moves slice k down by k rows
    series = read_series(folder)
    mask = (series.hu > -300).astype(np.uint8)  # a "prediction" on ingest's orthogonal grid
    out = tmp_path / "tilted.seg.dcm"
    result = _write((mask, series.geometry), folder, out)
    assert result.resampled == demo.shape[0]  # the grid is taller than the slices: every frame is resampled
    source = read_series(demo.dicom_dir)  # the same pixels, unsheared: what each source slice shows
    np.testing.assert_array_equal(read_back_seg(out, folder), (source.hu > -300).astype(np.uint8))


def _patient_and_study(ds: pydicom.Dataset, k: int) -> None:
    """The patient and study attributes a real Enhanced CT file has (the test's minimal file lacks them)."""
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "TEST^ENHANCED", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20200101", "120000", "1", "", ""
    ds.FrameOfReferenceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 1, 1


def test_enhanced_ct_frames_are_referenced_by_frame_number(demo, tmp_path):
    folder = tmp_path / "enhanced"
    paths = _enhanced_files(demo.dicom_dir, folder, 1)  # frames stored in descending z
    edit(paths, _patient_and_study)
    out = tmp_path / "enhanced.seg.dcm"
    _write(demo.lung_path, folder, out)
    np.testing.assert_array_equal(read_back_seg(out, folder), _labels(demo.lung_path))
    frames = pydicom.dcmread(out).PerFrameFunctionalGroupsSequence
    numbers = {int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber) for f in frames}
    assert numbers and numbers <= set(range(1, demo.shape[0] + 1))


def test_enhanced_ct_over_several_files_is_refused(demo, tmp_path):
    folder = tmp_path / "enhanced3"
    _enhanced_files(demo.dicom_dir, folder, 3)
    with pytest.raises(IngestError, match="split over 3 files"):
        _write(demo.lung_path, folder, tmp_path / "x.seg.dcm")


def test_bad_masks_are_refused_with_the_fix(demo, tmp_path):
    three = np.full(demo.shape, 3, dtype=np.uint8)
    with pytest.raises(IngestError, match="not a lung mask"):
        _write((three, demo.geometry), demo.dicom_dir, tmp_path / "x.seg.dcm")
    probabilities = np.full(demo.shape, 0.4, dtype=np.float32)
    with pytest.raises(IngestError, match="not labels"):
        _write((probabilities, demo.geometry), demo.dicom_dir, tmp_path / "x.seg.dcm")
    with pytest.raises(IngestError, match="does not know"):
        _write(demo.lung_path, demo.dicom_dir, tmp_path / "x.seg.dcm", "vessel")
    assert not (tmp_path / "x.seg.dcm").exists()


def test_read_back_refuses_another_series(demo, tmp_path):
    out = tmp_path / "lung.seg.dcm"
    _write(demo.lung_path, demo.dicom_dir, out)
    other = demo_case(tmp_path / "other", "demo002")
    with pytest.raises(IngestError, match="does not reference the given series"):
        read_back_seg(out, other.dicom_dir)


def test_the_same_prediction_exports_to_the_same_uids(demo, tmp_path):
    first, second = tmp_path / "a.seg.dcm", tmp_path / "b.seg.dcm"
    _write(demo.lung_path, demo.dicom_dir, first)
    _write(demo.lung_path, demo.dicom_dir, second)
    a, b = pydicom.dcmread(first), pydicom.dcmread(second)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    binary = (_labels(demo.lung_path) > 0).astype(np.uint8)
    _write((binary, demo.geometry), demo.dicom_dir, second)  # another mask: another instance of the same series
    c = pydicom.dcmread(second)
    assert c.SeriesInstanceUID == a.SeriesInstanceUID and c.SOPInstanceUID != a.SOPInstanceUID


def test_model_version_is_lungseg_version_and_model_hash(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    version, short = model_version([model])
    assert len(short) == 12 and version.endswith(f"+{short}")
    model.write_bytes(b"other weights")
    assert model_version([model])[1] != short


def _model_file(path: Path, label: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "lungseg-model", "label": label, "state_dict": {}}, path)
    return path


def test_cli_writes_checks_and_warns_without_naming_the_patient(demo, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    model = _model_file(tmp_path / "results/experiments/unet/folds/0/model.pt", "lung")
    out = tmp_path / "exports/unet/case1.seg.dcm"
    code = main(["export-seg", str(demo.lung_path), "--dicom", str(demo.dicom_dir), "-o", str(out),
                 "--model", str(model), "--check"])
    assert code == 0
    ds = pydicom.dcmread(out)
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "lungseg unet" and algorithm.AlgorithmVersion == model_version([model])[0]
    err = capsys.readouterr().err
    assert "warning" in err and "identifiers" in err and "exports/" in err
    logged = err + caplog.text
    assert "equal to the mask on every source slice" in logged and "Right lung, Left lung" in logged
    secret = identifiers(demo.dicom_dir) | {demo.identity.patient_id, demo.identity.accession_number}
    secret |= set(demo.identity.patient_name.split("^")) - {"DEMO"}  # the demo's name part shares the case name
    assert not [s for s in secret if s in logged]


def test_cli_takes_the_target_from_the_model_and_fails_in_one_line(demo, tmp_path, capsys):
    model = _model_file(tmp_path / "model.pt", "nodule")
    out = tmp_path / "seg.dcm"
    assert main(["export-seg", str(demo.lung_path), "--dicom", str(demo.dicom_dir), "-o", str(out),
                 "--model", str(model)]) == 0  # values 1/2 of a nodule target: numbered nodules
    assert [s.SegmentLabel for s in pydicom.dcmread(out).SegmentSequence] == ["Nodule 1", "Nodule 2"]
    capsys.readouterr()
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_bytes(b"junk")
    assert main(["export-seg", str(demo.lung_path), "--dicom", str(demo.dicom_dir), "-o", str(out),
                 "--model", str(not_a_model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "cannot be read as a lungseg model file" in err[0]


def test_sampling_on_planes_copies_grid_slices(demo):
    source = read_source_series(demo.dicom_dir)
    image = sitk.ReadImage(str(demo.lung_path))
    labels, resampled = mask_on_planes(image, source.planes)
    assert resampled == 0
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(image))


@pytest.mark.realdata
def test_real_lidc_series_round_trips_a_synthetic_lung_mask(shared_data, tmp_path):
    folder = shared_data / "lidc-idri" / "LIDC-IDRI-0001"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    series = read_series(folder)
    z, y, x = np.indices(series.hu.shape)
    nz, ny, nx = series.hu.shape
    mask = np.zeros(series.hu.shape, dtype=np.uint8)
    for label, cx in ((1, 0.3 * nx), (2, 0.7 * nx)):  # right lung at low x (LPS), left at high x
        mask[((x - cx) / (0.15 * nx)) ** 2 + ((y - 0.45 * ny) / (0.25 * ny)) ** 2 + ((z - nz / 2) / nz) ** 2 < 1] = label
    path = tmp_path / "prediction.nii.gz"
    write_volume(str(path), mask, series.geometry)
    out = tmp_path / "exports" / "lidc.seg.dcm"
    result = _write(path, folder, out)
    assert result.segments == ["Right lung", "Left lung"] and result.resampled == 0 and result.slices == nz
    np.testing.assert_array_equal(read_back_seg(out, folder), mask)
    report = dciodvfy(out)
    assert _errors(report) == [], report


def test_lungseg_ingest_reads_the_exported_lungs_back_as_its_lung_label(demo, tmp_path):
    """Another reader (ingest's, by plane positions rather than references) finds the same right/left lungs."""
    out = tmp_path / "lung.seg.dcm"
    _write(demo.lung_path, demo.dicom_dir, out)
    series = read_series(demo.dicom_dir)
    labels, notes = read_seg_labels(out, series.geometry, series.hu.shape, series.series_uid)
    np.testing.assert_array_equal(labels["lung"], _labels(demo.lung_path))


def test_a_deidentified_source_without_its_method_still_validates(demo, tmp_path):
    """PatientIdentityRemoved YES without a method (as in NSCLC-Radiomics) would make the SEG invalid: it says so."""
    folder = copy_series(demo.dicom_dir, tmp_path / "deid")

    def deidentified(ds, k):
        ds.PatientIdentityRemoved = "YES"

    edit(sorted(folder.glob("*.dcm")), deidentified)
    out = tmp_path / "deid.seg.dcm"
    _write(demo.lung_path, folder, out)
    assert pydicom.dcmread(out).DeidentificationMethod == "not recorded in the source series"
    assert _errors(dciodvfy(out)) == []


def test_a_series_without_uids_is_refused(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "blank")

    def blank(ds, k):
        ds.StudyInstanceUID = ""

    edit(sorted(folder.glob("*.dcm")), blank)
    with pytest.raises(IngestError, match="has no StudyInstanceUID, which a DICOM-SEG must reference"):
        _write(demo.lung_path, folder, tmp_path / "x.seg.dcm")


@pytest.mark.realdata
def test_real_gantry_tilted_series_gets_its_mask_back_on_its_own_slices(shared_data, tmp_path):
    """The tilt phantom (-18.5 deg): a mask on ingest's orthogonal grid, resampled onto each sheared source slice,
    matches what the slice itself shows, and the SEG validates."""
    folder = _tilt_folder(shared_data, tmp_path)
    series = read_series(folder)
    mask = (series.hu > 200).astype(np.uint8)  # the phantom's bright inserts, on the untilted grid
    out = tmp_path / "tilt.seg.dcm"
    result = _write((mask, series.geometry), folder, out)
    assert result.resampled == result.slices == 54
    source = read_source_series(folder)
    back = read_back_seg(out, folder, source=source)
    expected, _ = mask_on_planes(series.geometry.to_sitk(mask), source.planes)
    np.testing.assert_array_equal(back, expected)
    shown = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) > 200 for ds in source.datasets])
    dice = 2 * np.logical_and(back, shown).sum() / (back.sum() + shown.sum())
    assert dice > 0.9, dice  # the untilt interpolates, so edges differ by a voxel here and there
    assert _errors(dciodvfy(out)) == [], dciodvfy(out)


def test_the_workflow_refuses_an_export_folder_inside_results(tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["export"] = {"dicom_seg": True, "folder": "results/exports"}
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "export.folder 'results/exports' lies inside results" in proc.stdout + proc.stderr
