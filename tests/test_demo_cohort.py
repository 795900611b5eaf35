"""The synthetic demo cohort: real DICOM series, NIfTI labels on the same grid, determinism, realism."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lungseg.demo import cohort
from lungseg.demo.cohort import DemoCase, demo_case_ids, demo_identity, generate_demo_scan, write_demo_case
from lungseg.demo.dicom_writer import PatientIdentity, write_ct_series
from lungseg.demo.phantom import make_phantom
from lungseg.geometry import Geometry, read_volume

SEED = 7
SMALL = {"n_slices": 12, "size": 64}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_geometry(a: Geometry, b: Geometry) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-4)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-3)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.fixture(scope="module")
def small_cases(tmp_path_factory) -> dict[str, DemoCase]:
    root = tmp_path_factory.mktemp("demo_small")
    return {cid: write_demo_case(cid, root, SEED, **SMALL) for cid in demo_case_ids(3)}


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> tuple[DemoCase, np.ndarray, np.ndarray]:
    """One full-size case (48 x 256 x 256), with its HU read back from DICOM and its lung label."""
    root = tmp_path_factory.mktemp("demo_full")
    case = write_demo_case("demo001", root, SEED)
    hu = sitk.GetArrayFromImage(read_series(case.dicom_dir)).astype(np.int32)
    lung, _ = read_volume(str(case.lung_path))
    return case, hu, lung


def test_case_ids_and_layout(small_cases):
    assert demo_case_ids(3) == ["demo001", "demo002", "demo003"]
    assert demo_case_ids(0) == []
    for case in small_cases.values():
        assert case.case_dir.name == case.case_id
        assert len(list(case.dicom_dir.glob("*.dcm"))) == SMALL["n_slices"]
        assert case.lung_path.is_file() and case.nodule_path.is_file()
        assert case.nodules_path == case.case_dir / "labels" / "nodules.json" and case.nodules_path.is_file()
        # nothing half-written or left over next to the case
        assert not [p for p in case.case_dir.parent.iterdir() if p.name.startswith(".")]


def test_every_file_is_a_valid_ct_slice(small_cases):
    for case in small_cases.values():
        files = sorted(case.dicom_dir.glob("*.dcm"))
        datasets = [pydicom.dcmread(f) for f in files]
        instance_numbers = sorted(int(ds.InstanceNumber) for ds in datasets)
        assert instance_numbers == list(range(1, len(files) + 1))
        for ds in datasets:
            meta = ds.file_meta
            assert meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
            assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert meta.TransferSyntaxUID == EXPLICIT_VR_LE
            assert meta.ImplementationClassUID
            assert ds.SOPClassUID == CT_IMAGE_STORAGE
            assert ds.Modality == "CT"
            assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            sx, sy, sz = case.geometry.spacing
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx([sy, sx])
            assert float(ds.SliceThickness) == pytest.approx(sz)
            assert (ds.Rows, ds.Columns) == (SMALL["size"], SMALL["size"])
            assert (ds.BitsAllocated, ds.SamplesPerPixel, ds.PhotometricInterpretation) == (16, 1, "MONOCHROME2")
            assert float(ds.RescaleSlope) == 1.0 and ds.RescaleType == "HU"
            assert ds.Manufacturer == "lungseg-demo"
            for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "KVP", "SliceLocation",
                        "WindowCenter", "WindowWidth", "StudyDate", "SeriesDescription", "PatientSex"):
                assert tag in ds, tag
            if case.storage == "unsigned":
                assert (ds.PixelRepresentation, ds.BitsStored, float(ds.RescaleIntercept)) == (0, 12, -1024.0)
            else:
                assert (ds.PixelRepresentation, ds.BitsStored, float(ds.RescaleIntercept)) == (1, 16, 0.0)
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert len({ds.get(tag) for ds in datasets}) == 1


def test_series_reads_back_exactly_on_the_label_grid(small_cases):
    for case in small_cases.values():
        image = read_series(case.dicom_dir)
        scan = generate_demo_scan(case.case_id, SEED, **SMALL)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).astype(np.int32), scan.phantom.hu.astype(np.int32))
        lung, lung_geometry = read_volume(str(case.lung_path))
        nodule, nodule_geometry = read_volume(str(case.nodule_path))
        np.testing.assert_array_equal(lung, scan.phantom.lung)
        np.testing.assert_array_equal(nodule, scan.phantom.nodule)
        assert lung.dtype == np.uint8 and nodule.dtype == np.uint8
        series_geometry = Geometry.from_sitk(image)
        assert_same_geometry(series_geometry, lung_geometry)
        assert_same_geometry(series_geometry, nodule_geometry)
        assert_same_geometry(series_geometry, case.geometry)
        assert case.geometry.direction == IDENTITY_DIRECTION


def test_file_name_order_is_not_z_order(small_cases):
    for case in small_cases.values():
        files = sorted(case.dicom_dir.glob("*.dcm"))
        z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
        assert z != sorted(z) and z != sorted(z, reverse=True)


def test_instance_numbers_follow_z_in_the_drawn_direction(small_cases, tmp_path):
    seen = set()
    for case_id in demo_case_ids(12):
        scan = generate_demo_scan(case_id, SEED, n_slices=6, size=32)
        seen.add((scan.storage, scan.descending_instances))
    assert {s for s, _ in seen} == {"signed", "unsigned"}
    assert {d for _, d in seen} == {True, False}
    for case in small_cases.values():
        pairs = sorted(
            (float(ds.ImagePositionPatient[2]), int(ds.InstanceNumber))
            for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in case.dicom_dir.glob("*.dcm"))
        )
        numbers = [n for _, n in pairs]
        assert numbers == sorted(numbers, reverse=case.descending_instances)


@pytest.mark.parametrize("storage", ["signed", "unsigned"])
@pytest.mark.parametrize("descending", [False, True])
def test_storage_round_trips(tmp_path, storage, descending):
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 3072, size=(5, 40, 48)).astype(np.int16)
    hu[0, 0, 0], hu[-1, -1, -1] = -1024, 3071
    geometry = Geometry(spacing=(0.7, 0.8, 2.5), origin=(-12.5, 30.25, -100.0), direction=IDENTITY_DIRECTION)
    identity = demo_identity("demo042", 1)
    files = write_ct_series(hu, geometry, tmp_path / "s", identity, rng, storage, descending_instances=descending)
    assert len(files) == 5 and all(f.parent == tmp_path / "s" for f in files)
    image = read_series(tmp_path / "s")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).astype(np.int32), hu.astype(np.int32))
    assert_same_geometry(Geometry.from_sitk(image), geometry)
    for k, f in enumerate(files):  # returned in z order; pydicom applies the rescale too
        ds = pydicom.dcmread(f)
        hu_k = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu_k, hu[k])
        assert ds.pixel_array.dtype == (np.uint16 if storage == "unsigned" else np.int16)
    with pytest.raises(ValueError):
        write_ct_series(hu, geometry, tmp_path / "x", identity, rng, "float")


def test_same_seed_same_case_is_identical(tmp_path, small_cases):
    again = write_demo_case("demo002", tmp_path, SEED, **SMALL)
    first = small_cases["demo002"]
    names = sorted(p.name for p in first.dicom_dir.glob("*.dcm"))
    assert names == sorted(p.name for p in again.dicom_dir.glob("*.dcm"))
    for name in names:
        a, b = pydicom.dcmread(first.dicom_dir / name), pydicom.dcmread(again.dicom_dir / name)
        for tag in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
            assert a.get(tag) == b.get(tag)
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    assert (first.lung_path.read_bytes() == again.lung_path.read_bytes()) or np.array_equal(
        read_volume(str(first.lung_path))[0], read_volume(str(again.lung_path))[0]
    )
    assert first.geometry == again.geometry and first.identity == again.identity


def test_cases_differ(small_cases):
    a, b = small_cases["demo001"], small_cases["demo002"]
    assert a.geometry.spacing != b.geometry.spacing
    assert a.identity != b.identity
    assert len({c.identity.patient_id for c in small_cases.values()}) == len(small_cases)
    lung_a, _ = read_volume(str(a.lung_path))
    lung_b, _ = read_volume(str(b.lung_path))
    assert not np.array_equal(lung_a, lung_b)
    series_a = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in a.dicom_dir.glob("*.dcm")}
    series_b = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in b.dicom_dir.glob("*.dcm")}
    assert series_a.isdisjoint(series_b)
    other_seed = generate_demo_scan("demo001", SEED + 1, **SMALL)
    assert not np.array_equal(other_seed.phantom.hu, generate_demo_scan("demo001", SEED, **SMALL).phantom.hu)


def test_rewriting_a_case_replaces_it_atomically(tmp_path, monkeypatch):
    write_demo_case("demo001", tmp_path, SEED, **SMALL)
    (tmp_path / "demo001" / "stale.txt").write_text("old")
    write_demo_case("demo001", tmp_path, SEED, **SMALL)
    assert not (tmp_path / "demo001" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo001"]

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(cohort, "write_volume", boom)
    with pytest.raises(RuntimeError):
        write_demo_case("demo002", tmp_path, SEED, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo001"]  # no half case, no temporary folder


def test_lungs_are_two_sided_components(realistic):
    case, hu, lung = realistic
    assert set(np.unique(lung)) == {0, 1, 2}
    for label in (1, 2):
        _, n = ndimage.label(lung == label)
        assert n == 1, f"label {label} has {n} components"
    x = np.arange(lung.shape[2])
    right_x = np.average(np.broadcast_to(x, lung.shape)[lung == 1])
    left_x = np.average(np.broadcast_to(x, lung.shape)[lung == 2])
    assert right_x < lung.shape[2] / 2 < left_x  # LPS: the patient's right lung at small x
    per_slice = (lung > 0).sum(axis=(1, 2))
    assert per_slice[0] < per_slice.max() / 10 and per_slice[-1] == 0  # bases and apices taper off


def test_lung_is_air_like_and_trachea_is_not_lung(realistic):
    case, hu, lung = realistic
    assert -900 < hu[lung > 0].mean() < -700
    assert hu[lung > 0].mean() > hu[lung > 0].min()  # vessels make it heterogeneous
    assert hu.min() >= -1024 and hu.max() <= 3071
    # the trachea: an air tube inside the body near the midline of the upper slices, not labelled lung
    nz, ny, nx = hu.shape
    found = 0
    for z in range(int(nz * 0.8), nz):
        body = ndimage.binary_fill_holes(ndimage.binary_opening(hu[z] > -500, iterations=2))
        air, n = ndimage.label(body & (hu[z] < -900) & (lung[z] == 0))
        for comp in range(1, n + 1):
            region = air == comp
            area = region.sum() * case.geometry.spacing[0] * case.geometry.spacing[1]
            cx = np.nonzero(region)[1].mean()
            if area > 80 and abs(cx - nx / 2) < nx * 0.1:
                found += 1
                assert hu[z][ndimage.binary_erosion(region)].mean() < -950
                assert not (lung[z][region]).any()
    assert found >= 3


def test_nodules_lie_inside_the_lung():
    rng = np.random.default_rng(11)
    phantom = make_phantom(rng, 24, 128, (2.8, 2.8, 10.0), n_nodules=3)
    assert len(phantom.nodules) == 3
    assert phantom.nodule.any()
    assert not (phantom.nodule.astype(bool) & (phantom.lung == 0)).any()
    components, n = ndimage.label(phantom.nodule)
    assert n >= len(phantom.nodules) - 1  # neighbours may touch across coarse voxels, never more blobs than 3
    for nod in phantom.nodules:
        z, y, x = (int(round(v)) for v in nod.center_zyx)
        assert phantom.nodule[z, y, x] == 1
        assert phantom.lung[z, y, x] == nod.side
        assert 3.0 <= nod.diameter_mm <= 25.0
        if nod.diameter_mm >= 4 * 2.8:  # big enough to survive blur and noise at its centre
            assert hu_at(phantom.hu, z, y, x) > -300  # soft tissue, well above the parenchyma
    assert phantom.hu[phantom.nodule > 0].mean() > phantom.hu[(phantom.lung > 0) & (phantom.nodule == 0)].mean() + 300
    assert not make_phantom(np.random.default_rng(1), 12, 64, (5.5, 5.5, 20.0), n_nodules=0).nodule.any()


def hu_at(hu: np.ndarray, z: int, y: int, x: int) -> int:
    return int(np.median(hu[z, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]))


def test_juxta_pleural_nodules_touch_the_chest_wall():
    juxta = 0
    for seed in range(6):
        phantom = make_phantom(np.random.default_rng(seed), 24, 128, (2.8, 2.8, 10.0), n_nodules=3)
        for nod in phantom.nodules:
            if not nod.juxta_pleural:
                continue
            juxta += 1
            components, _ = ndimage.label(phantom.nodule)
            blob = components == components[tuple(int(round(v)) for v in nod.center_zyx)]
            ring = ndimage.binary_dilation(blob) & ~blob
            assert (phantom.lung[ring] == 0).any()  # it reaches the edge of the lung
    assert juxta > 0


def test_identity_in_dicom_only(small_cases, capsys, tmp_path):
    from lungseg.cli import main

    case = small_cases["demo003"]
    identity: PatientIdentity = case.identity
    assert identity == demo_identity("demo003", SEED)
    ds = pydicom.dcmread(next(case.dicom_dir.glob("*.dcm")))
    assert str(ds.PatientName) == identity.patient_name
    assert ds.PatientID == identity.patient_id
    assert ds.PatientBirthDate == identity.birth_date
    assert ds.AccessionNumber == identity.accession_number
    assert ds.InstitutionName == identity.institution_name
    raw = next(case.dicom_dir.glob("*.dcm")).read_bytes()
    for value in identity.values():
        assert value.encode() in raw
    for path in (case.lung_path, case.nodule_path):
        blob = path.read_bytes()
        for data in (blob, gzip.decompress(blob)):
            for value in identity.values():
                assert value.encode() not in data
    # the command line prints case ids and paths only
    assert main(["demo-cohort", "--out", str(tmp_path), "--case", "demo003", "--seed", str(SEED),
                 "--slices", "12", "--size", "64"]) == 0
    out = capsys.readouterr()
    assert "demo003" in out.out
    for value in identity.values():
        assert value not in out.out and value not in out.err
    assert (tmp_path / "demo003" / "labels" / "lung.nii.gz").is_file()


def test_cli_writes_n_cases(tmp_path, capsys):
    from lungseg.cli import main

    assert main(["demo-cohort", "--out", str(tmp_path), "--n-cases", "2", "--slices", "8", "--size", "32",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo001", "demo002"]
    with pytest.raises(SystemExit):
        main(["demo-cohort", "--out", str(tmp_path), "--case", "../evil"])


def test_full_size_phantom_types():
    phantom = make_phantom(np.random.default_rng(5), 48, 256, (1.4, 1.4, 5.0))
    assert phantom.hu.dtype == np.int16 and phantom.hu.shape == (48, 256, 256)
    assert phantom.lung.dtype == np.uint8 and phantom.nodule.dtype == np.uint8
