"""Ingest on real scanner output from ../shared/data (skipped with a message when absent)."""

import json

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


# --- LIDC-IDRI reader XML on the real slices -------------------------------------------------------

LIDC = {"LIDC-IDRI-0001": "69.xml", "LIDC-IDRI-0003": "72.xml"}


def _lidc_case(shared_data, patient):
    from lungseg.ingest.scan import IngestOptions, ingest_scan

    folder = shared_data / "lidc-idri" / patient
    return ingest_scan(patient, folder, options=IngestOptions(lidc_xml=folder / LIDC[patient]))


def _marked_z(shared_data, patient):
    """z (mm) of every slice on which some reader outlined a nodule, per reader."""
    from lungseg.ingest.lidc import parse_lidc_xml

    readers = parse_lidc_xml(shared_data / "lidc-idri" / patient / LIDC[patient])
    return [{round(r.z, 1) for m in marks if m.kind == "nodule" for r in m.rois} for marks in readers]


@pytest.mark.parametrize("patient", list(LIDC))
def test_lidc_consensus_lies_on_the_marked_slices(shared_data, patient):
    case = _lidc_case(shared_data, patient)
    z = np.round(case.geometry.origin[2] + case.geometry.spacing[2] * np.arange(case.image.shape[0]), 1)
    assert np.all(np.diff(z) > 0)  # z ascending
    assert case.image.min() >= -1024 and case.image.max() <= 3071
    marked = _marked_z(shared_data, patient)
    assert len(marked) == 4
    votes = np.array([sum(zk in reader for reader in marked) for zk in z])
    nodule = case.labels["nodule"]
    per_slice = nodule.reshape(len(z), -1).sum(axis=1)
    assert np.all(per_slice[votes == 0] == 0)  # empty where no reader marked
    assert np.all(per_slice[votes >= 2] > 0)  # non-empty where at least half of the readers outlined
    assert nodule.sum() > 1000
    table = json.loads(case.annotation_attrs["lidc_nodules"])
    inside = [n for n in table if n["outlines_complete"]]
    assert len(inside) == 1 and inside[0]["readers"] == [1, 2, 3, 4]
    assert inside[0]["malignancy"] == {"LIDC-IDRI-0001": [5, 5, 5, 4], "LIDC-IDRI-0003": [5, 5, 3, 4]}[patient]
    # per-reader masks: each reader's voxels on the slices that reader outlined
    readers = case.annotations["lidc_readers"]
    for r, reader_z in enumerate(marked):
        has = ((readers >> r) & 1).reshape(len(z), -1).any(axis=1)
        assert set(z[has]) == reader_z & set(z)
        assert has.any()
    # the nodule is soft tissue, not lung air
    assert np.median(case.image[nodule > 0]) > -300


def test_lidc_small_marks_are_points(shared_data):
    """LIDC-IDRI-0001's < 3 mm marks (z -150 and -175, beyond the shipped slices) on a grid that covers them."""
    from lungseg.geometry import Geometry
    from lungseg.ingest.lidc import SliceMap, rasterise_lidc

    series = read_series(shared_data / "lidc-idri/LIDC-IDRI-0001")
    geometry = Geometry(series.geometry.spacing, (*series.geometry.origin[:2], -180.0), series.geometry.direction)
    z = -180.0 + 2.5 * np.arange(16)
    result = rasterise_lidc(
        shared_data / "lidc-idri/LIDC-IDRI-0001/69.xml", geometry, (16, 512, 512), SliceMap({}, z, 2.5)
    )  # no UIDs: matched by imageZposition
    small = [p for p in result.points if p["kind"] == "small"]
    assert len(small) == 9 and {p["reader"] for p in small} == {1, 3, 4}  # three marks each
    assert {round(p["position_mm"][2], 1) for p in small} == {-150.0, -175.0}
    assert not result.consensus.any()  # points, not masks; the large nodule lies above this grid


def _pylidc(monkeypatch):
    """pylidc 0.2.3 with the shims it needs on current Python/numpy (pkg_resources, np.int/np.float)."""
    import importlib.resources
    import sys
    import types
    import warnings

    pytest.importorskip("sqlalchemy", reason="pylidc needs SQLAlchemy (test extra)")
    if importlib.util.find_spec("pylidc") is None:
        pytest.skip("pylidc is not installed (pip install -e '.[test]')")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)
        monkeypatch.setitem(sys.modules, "pkg_resources", shim)
    monkeypatch.setattr(np, "int", int, raising=False)
    monkeypatch.setattr(np, "float", float, raising=False)
    warnings.filterwarnings("ignore", module="pylidc")
    import pylidc
    from pylidc.utils import consensus

    return pylidc, consensus


@pytest.mark.parametrize("patient", list(LIDC))
def test_lidc_consensus_matches_pylidc(shared_data, patient, monkeypatch):
    pl, consensus = _pylidc(monkeypatch)
    case = _lidc_case(shared_data, patient)
    ours = case.labels["nodule"].astype(bool)
    z = case.geometry.origin[2] + case.geometry.spacing[2] * np.arange(ours.shape[0])
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == patient).first()
    zvals = np.asarray(scan.slice_zvals)
    reference = np.zeros_like(ours)
    compared = 0
    for cluster in scan.cluster_annotations(verbose=False):
        cz = [c.image_z_position for ann in cluster for c in ann.contours]
        if min(cz) < z.min() - 0.1 or max(cz) > z.max() + 0.1:
            continue  # only the nodules wholly inside the shipped slices
        compared += 1
        mask, bbox, _ = consensus(cluster, clevel=0.5)
        for kk in range(mask.shape[2]):
            k = int(np.argmin(np.abs(z - zvals[bbox[2].start + kk])))
            reference[k, bbox[0], bbox[1]] |= mask[:, :, kk]
    ours_inside = ours & (case.annotations["lidc_nodules"] > 0)
    dice = 2 * (ours_inside & reference).sum() / (ours_inside.sum() + reference.sum())
    print(
        f"{patient}: Dice(lungseg, pylidc consensus at 50%) = {dice:.4f} over {compared} nodule(s), "
        f"{int(reference.sum())} pylidc voxels"
    )
    assert compared == 1 and dice >= 0.99


def test_jpeg2000_case_through_the_cli_equals_simpleitk(shared_data, tmp_path):
    from lungseg.casefile import read_case
    from lungseg.cli import main

    folder = shared_data / "ct-jpeg2000/example_ct_dicom"
    label = shared_data / "ct-jpeg2000/example_seg_dicom.nii.gz"
    out = tmp_path / "j2k.h5"
    assert main(["ingest", str(folder), "--case-id", "j2k", "--label", f"organs={label}", "-o", str(out)]) == 0
    case = read_case(out)
    assert case.provenance["transfer_syntax"].startswith("JPEG 2000")
    reference = sitk.GetArrayFromImage(_sitk_series(folder)).astype(np.int32)
    inside = case.image > AIR_HU
    np.testing.assert_array_equal(case.image[inside], reference[inside])
    naive = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    np.testing.assert_array_equal(case.labels["organs"], naive[:, ::-1, :])
