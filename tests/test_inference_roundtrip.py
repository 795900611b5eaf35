"""Masks in the scan's own geometry, on real scanner output (../shared/data; skipped with a message when absent).

A mask ingested and written back is identical to the original: for a mask made on a DICOM series' grid and
for a NIfTI mask whose y axis is flipped against the DICOM rows. `lungseg predict` on the same scan given as
a DICOM folder or as a flipped-axis NIfTI volume writes each in that input's own geometry, on the same voxels.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from test_inference import balanced_model, save_model

from lungseg.casefile import read_case, write_case
from lungseg.cli import main
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.ingest.scan import ingest_scan, read_scan

pytestmark = pytest.mark.realdata


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_dicom_grid_mask_round_trip_is_identical(shared_data, tmp_path):
    series = shared_data / "lidc-idri/LIDC-IDRI-0001"
    hu, geometry, _ = read_scan(series)
    original = (hu > -500).astype(np.uint8)  # body and vessels: an irregular mask on the DICOM grid
    original[:, :, : hu.shape[2] // 3] *= 2  # two label values
    write_volume(str(tmp_path / "mask.nii.gz"), original, geometry)
    write_case(tmp_path / "case.h5", ingest_scan("rt0001", series, {"m": tmp_path / "mask.nii.gz"}))
    case = read_case(tmp_path / "case.h5")
    np.testing.assert_array_equal(case.labels["m"], original)
    write_volume(str(tmp_path / "back.nii.gz"), case.labels["m"], case.geometry)
    original_img, back = sitk.ReadImage(str(tmp_path / "mask.nii.gz")), sitk.ReadImage(str(tmp_path / "back.nii.gz"))
    _assert_same_grid(back, original_img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original_img))


def test_flipped_axis_nifti_mask_round_trip_is_identical(shared_data, tmp_path):
    series = shared_data / "ct-jpeg2000/example_ct_dicom"
    original_path = shared_data / "ct-jpeg2000/example_seg_dicom.nii.gz"
    case = ingest_scan("rt0002", series, {"organs": original_path})
    write_volume(str(tmp_path / "back.nii.gz"), case.labels["organs"], case.geometry)
    original, back = sitk.ReadImage(str(original_path)), sitk.ReadImage(str(tmp_path / "back.nii.gz"))
    # written in the scan's geometry: the y axis runs the other way than in the original file ...
    flip = np.sign(np.asarray(back.GetDirection()).reshape(3, 3)[:, 1] @ np.asarray(original.GetDirection()).reshape(3, 3)[:, 1])
    assert flip == -1
    # ... and yet, in physical space, it is the original mask voxel for voxel
    on_original_grid = sitk.Resample(back, original, sitk.Transform(), sitk.sitkNearestNeighbor, 0, back.GetPixelID())
    original_array = sitk.GetArrayFromImage(original)
    assert np.count_nonzero(original_array) > 1000
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_original_grid), original_array)


def test_predict_on_dicom_and_flipped_nifti_gives_the_same_mask(shared_data, tmp_path):
    series = shared_data / "ct-jpeg2000/example_ct_dicom"
    hu, geometry, _ = read_scan(series)
    # the same scan as a NIfTI volume stored with its y axis reversed (rows bottom-up, direction negated)
    d = geometry.direction_matrix.copy()
    origin = geometry.index_to_physical(np.array([0, hu.shape[1] - 1, 0]))
    d[:, 1] *= -1
    flipped = Geometry(geometry.spacing, tuple(origin.tolist()), tuple(d.ravel().tolist()))
    write_volume(str(tmp_path / "flipped_ct.nii.gz"), np.ascontiguousarray(hu[:, ::-1]), flipped)
    save_model(balanced_model(hu), tmp_path / "model.pt")
    outputs = {}
    for name, study in (("dicom", series), ("nifti", tmp_path / "flipped_ct.nii.gz")):
        outputs[name] = tmp_path / f"{name}_mask.nii.gz"
        assert main(["predict", str(study), "--model", str(tmp_path / "model.pt"), "--flips", "y", "--threads", "2",
                     "-o", str(outputs[name])]) == 0
    dicom_mask, nifti_mask = (sitk.ReadImage(str(p)) for p in outputs.values())
    _assert_same_grid(nifti_mask, sitk.ReadImage(str(tmp_path / "flipped_ct.nii.gz")))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    _assert_same_grid(dicom_mask, reader.Execute())  # the DICOM series' own geometry, as SimpleITK reads it
    a = sitk.GetArrayFromImage(dicom_mask)
    b = sitk.GetArrayFromImage(sitk.Resample(nifti_mask, dicom_mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    assert 0.2 < a.mean() < 0.8
    assert (a != b).mean() < 0.005  # same voxels in physical space (float rounding at the threshold aside)
    assert read_volume(str(outputs["dicom"]))[0].shape == hu.shape
