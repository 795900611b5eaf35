"""Series reading: order, HU, padding, compressed syntaxes, irregular spacing, tilt, resampling, volume input."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ingest_data import SEED, copy_series, demo_case, edit, encapsulate_frames, jpeg_lossless_encode, slice_files
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from lungseg.casefile import read_case, write_case
from lungseg.cli import main
from lungseg.demo.cohort import generate_demo_scan
from lungseg.ingest.dicom_series import AIR_HU, read_series
from lungseg.ingest.errors import IngestError
from lungseg.ingest.scan import IngestOptions, ingest_scan


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_case(tmp_path_factory.mktemp("demo"))


def _truth(case):
    return generate_demo_scan(case.case_id, SEED, n_slices=case.shape[0], size=case.shape[1]).phantom


@pytest.mark.parametrize("case_id", ["demo001", "demo002", "demo003", "demo004"])
def test_order_hu_and_geometry_match_the_phantom(tmp_path, case_id):
    case = demo_case(tmp_path, case_id)
    series = read_series(case.dicom_dir)
    np.testing.assert_array_equal(series.hu, _truth(case).hu)  # signed and unsigned storage, any file order
    np.testing.assert_allclose(series.geometry.spacing, case.geometry.spacing, atol=1e-4)
    np.testing.assert_allclose(series.geometry.origin, case.geometry.origin, atol=1e-4)
    positions = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in series.files]
    assert positions == sorted(positions)
    assert series.provenance["storage"] == case.storage


def test_storages_and_numbering_are_both_covered(tmp_path):
    cases = [generate_demo_scan(f"demo00{i}", SEED, n_slices=8, size=32) for i in range(1, 5)]
    assert {c.storage for c in cases} == {"signed", "unsigned"}
    assert {c.descending_instances for c in cases} == {True, False}


def test_padding_and_out_of_field_of_view_become_air(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    signed = demo.storage == "signed"

    def pad(ds, k):
        array = ds.pixel_array.copy()
        pad_value = 2000 if signed else 4095  # stored values that would otherwise read as bone
        array[:2, :] = pad_value  # padding rows
        array[-2:, :5] = (-2000 if signed else 0) if k % 2 else array[-2:, :5]  # outside the field of view
        ds.PixelPaddingValue = pad_value
        ds["PixelPaddingValue"].VR = "SS" if signed else "US"
        ds.PixelData = array.tobytes()

    edit(slice_files(folder), pad)
    hu = read_series(folder).hu
    assert (hu[:, :2, :] == AIR_HU).all()
    assert (hu[1::2, -2:, :5] == AIR_HU).all()
    np.testing.assert_array_equal(hu[:, 2:-2], _truth(demo).hu[:, 2:-2])


def test_rescale_slope_and_padding_range(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")

    def rescale(ds, k):
        hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = ((hu + 1024) // 2).astype(np.uint16)  # slope 2: even HU exactly representable
        stored[0, :4] = [4090, 4091, 4092, 4095]  # padding range 4090..4095
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
        ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4090, 4095
        ds["PixelPaddingValue"].VR = ds["PixelPaddingRangeLimit"].VR = "US"
        ds.PixelData = stored.tobytes()

    edit(slice_files(folder), rescale)
    hu = read_series(folder).hu.astype(np.int32)
    truth = _truth(demo).hu.astype(np.int32)
    expected = ((truth + 1024) // 2) * 2 - 1024
    assert (hu[:, 0, :4] == AIR_HU).all()
    np.testing.assert_array_equal(hu[:, 1:], expected[:, 1:])


def _compress(syntax):
    def change(ds, k):
        if syntax == JPEGLosslessSV1:
            encapsulate_frames(ds, [jpeg_lossless_encode(ds)], syntax)
        else:
            ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")

    return change


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1], ids=["RLE", "JPEG2000", "JPEG-lossless"]
)
def test_compressed_series_decode_to_the_same_volume(demo, tmp_path, syntax):
    if syntax == JPEGLosslessSV1:
        pytest.importorskip("imagecodecs", reason="imagecodecs (test extra) encodes the JPEG lossless test series")
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    edit(slice_files(folder), _compress(syntax))
    assert str(pydicom.dcmread(slice_files(folder)[0]).file_meta.TransferSyntaxUID) == syntax
    series = read_series(folder)
    assert series.provenance["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(series.hu, _truth(demo).hu)


def _shift(folder, index, dz_fraction, spacing):
    files = slice_files(folder)

    def move(ds, k):
        if k == index:
            position = [float(v) for v in ds.ImagePositionPatient]
            position[2] += dz_fraction * spacing
            ds.ImagePositionPatient = [f"{v:.4f}" for v in position]

    edit(files, move)


def test_irregular_spacing_is_resampled_and_said(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    dz = demo.geometry.spacing[2]
    _shift(folder, 5, 0.3, dz)  # steps 1.3 dz and 0.7 dz around slice 5
    series = read_series(folder)
    assert series.hu.shape == demo.shape
    assert any("resampled linearly onto a uniform" in note for note in series.notes)
    truth = _truth(demo).hu
    np.testing.assert_array_equal(series.hu[:5], truth[:5])  # slices before the shift are untouched
    np.testing.assert_array_equal(series.hu[6:], truth[6:])
    expected = np.rint(
        truth[4] + (truth[5].astype(float) - truth[4]) / 1.3
    )  # slice 5's grid position lies between 4 and the moved 5
    np.testing.assert_allclose(series.hu[5], expected, atol=1)


def test_missing_slice_can_be_interpolated_when_allowed(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    slice_files(folder)[6].unlink()
    with pytest.raises(IngestError, match="missing slice"):
        read_series(folder)
    series = read_series(folder, max_gap=2.5)
    assert series.hu.shape == demo.shape
    truth = _truth(demo).hu.astype(float)
    np.testing.assert_allclose(series.hu[6], np.rint((truth[5] + truth[7]) / 2), atol=1)


def _tilt(folder, per_slice_mm):
    """Shift slice k (in z order) by k * per_slice_mm along y: a stack sheared as a gantry tilt shears it."""

    def tilt(ds, k):
        position = [float(v) for v in ds.ImagePositionPatient]
        position[1] += k * per_slice_mm
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]

    edit(slice_files(folder), tilt)


def test_gantry_tilt_is_resampled_slice_by_slice_onto_an_orthogonal_grid(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    dy, dz = demo.geometry.spacing[1], demo.geometry.spacing[2]
    _tilt(folder, dy)  # one pixel per slice: the corrected slices are the originals, moved by whole rows
    series = read_series(folder)
    n, rows, cols = demo.shape
    assert series.hu.shape == (n, rows + n - 1, cols)
    truth = _truth(demo).hu
    for k in range(n):
        np.testing.assert_array_equal(series.hu[k, k : k + rows], truth[k])
        assert (series.hu[k, :k] == AIR_HU).all() and (series.hu[k, k + rows :] == AIR_HU).all()
    direction = np.asarray(series.geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(series.geometry.origin, demo.geometry.origin, atol=1e-4)
    angle = np.degrees(np.arctan(dy / dz))
    assert series.provenance["gantry_tilt_deg"] == pytest.approx(angle, abs=0.01)
    assert any(note.startswith(f"gantry tilt {angle:.1f} deg") for note in series.notes), series.notes


def test_shear_beyond_a_gantry_tilt_is_refused(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    _tilt(folder, 2.0 * demo.geometry.spacing[2])  # 63 deg
    with pytest.raises(IngestError, match="sheared 63 deg away from the slice normal") as error:
        read_series(folder)
    assert "dcm2niix" in error.value.fix


def test_target_spacing_resamples_image_and_labels_and_keeps_the_source_grid(demo, tmp_path):
    spacing = tuple(2 * s for s in demo.geometry.spacing[:2]) + (demo.geometry.spacing[2],)
    case = ingest_scan("c1", demo.dicom_dir, {"lung": demo.lung_path}, options=IngestOptions(target_spacing=spacing))
    assert case.image.shape == (demo.shape[0], (demo.shape[1] - 1) // 2 + 1, (demo.shape[2] - 1) // 2 + 1)
    assert set(np.unique(case.labels["lung"])) <= {0, 1, 2}
    np.testing.assert_allclose(case.geometry.spacing, spacing)
    assert case.source_geometry is not None and case.source_shape == demo.shape
    # the nearest-neighbour label equals the full-resolution label at the kept grid points
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(demo.lung_path)))
    np.testing.assert_array_equal(case.labels["lung"], full[:, ::2, ::2])
    np.testing.assert_allclose(case.image[:, 1:-1, 1:-1], _truth(demo).hu[:, 2:-2:2, 2:-2:2], atol=1)
    write_case(tmp_path / "c1.h5", case)
    back = read_case(tmp_path / "c1.h5")
    assert back.source_shape == demo.shape
    np.testing.assert_allclose(back.source_geometry.spacing, demo.geometry.spacing)
    assert "resampled from" in json.loads(back.provenance["ingest_notes"])[0]


def test_volume_input_and_label(demo, tmp_path):
    volume = tmp_path / "ct.nii.gz"
    sitk.WriteImage(demo.geometry.to_sitk(_truth(demo).hu), str(volume))
    out = tmp_path / "c.h5"
    assert main(["ingest", str(volume), "--case-id", "v1", "--label", f"lung={demo.lung_path}", "-o", str(out)]) == 0
    case = read_case(out)
    np.testing.assert_array_equal(case.image, _truth(demo).hu)
    assert case.provenance["source_kind"] == "volume" and case.labels["lung"].any()
