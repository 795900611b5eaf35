"""Ingest on real scanner output from ../shared/data (skipped with a message when absent)."""

import numpy as np
import pytest
import SimpleITK as sitk

from lungseg.ingest.dicom_series import AIR_HU, read_series
from lungseg.ingest.labels import load_label_on_grid

pytestmark = pytest.mark.realdata


def _sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize(
    "folder, n_slices",
    [("lidc-idri/LIDC-IDRI-0001", 16), ("lidc-idri/LIDC-IDRI-0003", 11), ("ct-jpeg2000/example_ct_dicom", 20)],
)
def test_real_series_matches_simpleitk(shared_data, folder, n_slices):
    series = read_series(shared_data / folder)  # the LIDC folders also hold the reader XML: skipped
    reference = _sitk_series(shared_data / folder)
    assert series.hu.shape == (n_slices, 512, 512)
    np.testing.assert_allclose(series.geometry.origin, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(series.geometry.spacing, reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(series.geometry.direction, reference.GetDirection(), atol=1e-6)
    expected = sitk.GetArrayFromImage(reference).astype(np.int32)
    inside = series.hu > AIR_HU  # padding / out-of-FOV values are mapped to air by lungseg
    np.testing.assert_array_equal(series.hu[inside], expected[inside])
    assert (expected[~inside] <= AIR_HU).all()
    # z ascending along the slice normal, whatever the file names
    z = [float(sitk.ReadImage(str(f)).GetOrigin()[2]) for f in series.files]
    assert z == sorted(z)
    assert series.hu.min() >= -1024 and series.hu.max() <= 3071


def test_lidc_padding_is_air(shared_data):
    series = read_series(shared_data / "lidc-idri/LIDC-IDRI-0001")  # PixelPaddingValue 63536 as stored
    corners = series.hu[:, :8, :8]
    assert (corners == AIR_HU).all()


def test_flipped_axis_label_lands_on_anatomy(shared_data):
    """The NIfTI label's y axis is flipped against the DICOM rows; physical resampling must undo it."""
    series = read_series(shared_data / "ct-jpeg2000/example_ct_dicom")
    path = shared_data / "ct-jpeg2000/example_seg_dicom.nii.gz"
    on_grid = load_label_on_grid(path, series.geometry, series.hu.shape)
    naive = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # same shape, rows in the opposite order
    assert naive.shape == on_grid.shape
    assert np.count_nonzero(on_grid) == np.count_nonzero(naive)
    tissue = series.hu > -300  # organs and bones, not air or lung
    assert tissue[on_grid > 0].mean() > 0.95
    assert tissue[naive > 0].mean() < 0.8
    np.testing.assert_array_equal(on_grid, naive[:, ::-1, :])
