"""RTSTRUCT contours -> labels on the scan grid: hand-made structure sets on a demo series, and LUNG1-001."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from lungseg.casefile import read_case
from lungseg.cli import main
from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.label_objects import RTSTRUCT_SOP_CLASS
from lungseg.ingest.rtstruct import fill_even_odd, parse_ds, read_rtstruct_labels
from lungseg.ingest.scan import IngestOptions, ingest_scan, read_source
from lungseg.ingest.structure_map import DEFAULT_STRUCTURE_LABELS, match
from tests.ingest_data import demo_case


def square(lo: float, hi: float, k: float, lo_y: float | None = None, hi_y: float | None = None) -> np.ndarray:
    """Index-space (x, y, z) corners of an axis-aligned square on slice ``k``."""
    lo_y, hi_y = (lo, hi) if lo_y is None else (lo_y, hi_y)
    return np.array([[lo, lo_y, k], [hi, lo_y, k], [hi, hi_y, k], [lo, hi_y, k]], dtype=float)


def write_rtstruct(path: Path, rois: dict[str, list[np.ndarray]], series_uid: str, frame_uid: str = "") -> Path:
    """A minimal RT Structure Set: one ROI per name, each a list of CLOSED_PLANAR contours in LPS mm."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    frame_uid = frame_uid or generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        ds.StructureSetROISequence.append(roi)
        items = []
        for points in contours:
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.4f}" for v in np.asarray(points).ravel()]
            items.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = Sequence(items)
        ds.ROIContourSequence.append(roi_contour)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    case = demo_case(tmp_path_factory.mktemp("rt"))
    scan = read_source(case.dicom_dir)
    return case, scan


def mm(scan, index_points: np.ndarray) -> np.ndarray:
    return scan.geometry.index_to_physical(index_points)


def test_area_holes_duplicates_and_reported_contours(demo, tmp_path):
    case, scan = demo
    circle = np.c_[24 + 8 * np.cos(np.linspace(0, 2 * np.pi, 200, endpoint=False)),
                   24 + 8 * np.sin(np.linspace(0, 2 * np.pi, 200, endpoint=False)), np.full(200, 2.0)]
    rois = {
        "Lung_R": [
            mm(scan, square(9.5, 19.5, 3)),  # 10 x 10 centres
            mm(scan, square(5.5, 30.5, 4)), mm(scan, square(10.5, 15.5, 4)),  # 25 x 25 with a 5 x 5 hole
            mm(scan, square(9.5, 19.5, 5)), mm(scan, square(9.5, 19.5, 5)),  # written twice
            mm(scan, square(-5.5, 10.5, 6, 20.5, 30.5)),  # reaches beyond the image: 11 x 10 centres inside
            mm(scan, square(60.5, 70.5, 7)),  # wholly outside
            mm(scan, square(9.5, 19.5, 12)),  # one slice past the series
            mm(scan, circle),
        ],
        "LT LUNG": [mm(scan, square(30.5, 40.5, 3))],
        "GTV_primary": [mm(scan, square(32.5, 35.5, 3))],
        "Body": [mm(scan, square(0.5, 46.5, 3))],
    }
    path = write_rtstruct(tmp_path / "rs.dcm", rois, scan.series_uid)
    labels, notes = read_rtstruct_labels(path, scan.geometry, scan.hu.shape, scan.series_uid)
    lung = labels["lung"]
    per_slice = [int((lung[k] == 1).sum()) for k in range(lung.shape[0])]
    assert per_slice[3] == 100 and per_slice[4] == 600 and per_slice[5] == 100 and per_slice[6] == 110
    assert per_slice[7] == 0 and per_slice[11] == 0
    assert lung[4, 12, 12] == 0 and lung[4, 6, 6] == 1  # the hole, the ring around it
    assert lung[6, 21:31, 0:11].all() and not lung[6, 21:31, 11:].any()
    assert abs(per_slice[2] - np.pi * 64) < 0.05 * np.pi * 64
    assert int((lung == 2).sum()) == 100 and lung[3, 31:41, 31:41].all()
    assert int(labels["tumour"].sum()) == 9 and labels["tumour"][3, 33:36, 33:36].all()
    text = "\n".join(notes)
    for expected in ("1 contour(s) written twice", "lie on no slice of the series", "clipped at its edge",
                     "wholly outside the image", "ROIs ignored (not in ingest.structure_labels): Body"):
        assert expected in text, (expected, notes)
    assert scan.series_uid not in text


def test_contour_between_slices_is_put_on_the_nearest_and_noted(demo, tmp_path):
    _, scan = demo
    path = write_rtstruct(tmp_path / "rs.dcm", {"Lung-Right": [mm(scan, square(9.5, 19.5, 3.4))]}, scan.series_uid)
    labels, notes = read_rtstruct_labels(path, scan.geometry, scan.hu.shape, scan.series_uid)
    assert labels["lung"][3].sum() == 100
    assert any("between slices" in n for n in notes)


@pytest.mark.parametrize(
    "direction",
    [
        (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),  # rotated in plane
        (1.0, 0.0, 0.0, 0.0, 0.8, -0.6, 0.0, 0.6, 0.8),  # oblique (tilted about x)
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.3, 0.9539392),  # gantry tilt: slices stacked along a sheared axis
    ],
)
def test_oblique_and_sheared_grids_land_in_index_space(direction, tmp_path):
    geometry = Geometry((0.7, 0.8, 2.5), (-20.0, 30.0, -50.0), direction)
    shape = (6, 40, 50)
    contour = geometry.index_to_physical(square(4.5, 14.5, 2, 20.5, 25.5))
    path = write_rtstruct(tmp_path / "rs.dcm", {"Lungs": [contour]}, "1.2.3")
    labels, notes = read_rtstruct_labels(path, geometry, shape, "1.2.3")
    expected = np.zeros(shape, dtype=np.uint8)
    expected[2, 21:26, 5:15] = 1
    np.testing.assert_array_equal(labels["lung"], expected)
    assert not any("slice plane" in n for n in notes)


def test_tilted_contours_on_an_orthogonal_grid_are_resampled(tmp_path):
    """Contours on planes tilted 15 degrees (a gantry-tilted series), the scan resampled onto an axial grid."""
    geometry = Geometry((1.0, 1.0, 2.0), (-40.0, -40.0, -30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    shape = (31, 80, 80)
    tilt = np.deg2rad(15)
    u, v = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(u, v)
    planes = np.arange(-8, 9) * 2.0  # 17 planes 2 mm apart along the tilted normal
    contours = [np.array([a * u + b * v + w * normal for a, b in ((-15, -10), (15, -10), (15, 10), (-15, 10))])
                for w in planes]
    path = write_rtstruct(tmp_path / "rs.dcm", {"Lungs": contours}, "1.2.3")
    labels, notes = read_rtstruct_labels(path, geometry, shape, "1.2.3")
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centres = geometry.index_to_physical(np.stack([x, y, z], axis=-1).reshape(-1, 3))
    inside = ((np.abs(centres @ u) < 15) & (np.abs(centres @ v) < 10) & (np.abs(centres @ normal) < 17)).reshape(shape)
    got = labels["lung"] > 0
    dice = 2 * (got & inside).sum() / (got.sum() + inside.sum())
    assert dice > 0.96, dice
    assert any("rasterised on their own planes" in n for n in notes)


def test_even_odd_fill_matches_known_areas():
    outer, inner = square(0.5, 10.5, 0)[:, :2], square(3.5, 6.5, 0)[:, :2]
    assert fill_even_odd([outer], (12, 12)).sum() == 100
    assert fill_even_odd([outer, inner], (12, 12)).sum() == 91
    # integer vertices: left/top edges inside, right/bottom outside, so the area adds up exactly
    assert fill_even_odd([square(0, 4, 0)[:, :2]], (8, 8)).sum() == 16
    triangle = np.array([[0.2, 0.3], [30.7, 2.1], [12.4, 25.9]])
    (ax, ay), (bx, by) = triangle[1] - triangle[0], triangle[2] - triangle[0]
    area = 0.5 * abs(ax * by - ay * bx)
    assert abs(fill_even_odd([triangle], (40, 40)).sum() - area) < 0.08 * area


def test_default_names(tmp_path):
    for name in ("Lung-Right", "Lung_R", "Lung R", "RT LUNG", "Right Lung", "LUNG_RT", "lungs", "Lung"):
        assert match(name, DEFAULT_STRUCTURE_LABELS) == ("lung", 1), name
    for name in ("Lung-Left", "Lung_L", "LT LUNG", "Left Lung", "LUNG_LT"):
        assert match(name, DEFAULT_STRUCTURE_LABELS) == ("lung", 2), name
    for name in ("GTV-1", "GTVp", "gtv_primary"):
        assert match(name, DEFAULT_STRUCTURE_LABELS) == ("tumour", 1), name
    for name in ("Lungs-GTV", "Spinal-Cord", "Heart", "PTV"):
        assert match(name, DEFAULT_STRUCTURE_LABELS) is None, name


def test_union_structure_beside_sided_lungs_is_left_out(demo, tmp_path):
    _, scan = demo
    rois = {
        "Lungs": [mm(scan, square(4.5, 40.5, 3))],
        "Lung_R": [mm(scan, square(4.5, 20.5, 3, 4.5, 40.5))],
        "Lung_L": [mm(scan, square(24.5, 40.5, 3, 4.5, 40.5))],
    }
    path = write_rtstruct(tmp_path / "rs.dcm", rois, scan.series_uid)
    labels, notes = read_rtstruct_labels(path, scan.geometry, scan.hu.shape, scan.series_uid)
    assert (labels["lung"] == 1).sum() == 16 * 36 and (labels["lung"] == 2).sum() == 16 * 36
    assert any("Lungs left out" in n for n in notes)


def test_bad_structure_sets(demo, tmp_path):
    _, scan = demo
    args = (scan.geometry, scan.hu.shape, scan.series_uid)
    other = write_rtstruct(tmp_path / "other.dcm", {"Lung_R": [mm(scan, square(9.5, 19.5, 3))]}, generate_uid())
    with pytest.raises(IngestError, match="references another series") as err:
        read_rtstruct_labels(other, *args)
    assert "other.dcm" in str(err.value) and scan.series_uid not in str(err.value)

    unknown = write_rtstruct(tmp_path / "unknown.dcm", {"Poumon D": [mm(scan, square(9.5, 19.5, 3))]}, scan.series_uid)
    with pytest.raises(IngestError, match=r"'Poumon D'.*ingest\.structure_labels"):
        read_rtstruct_labels(unknown, *args)
    labels, _ = read_rtstruct_labels(unknown, *args, mapping={"lung": {"1": ["poumon d*"]}})
    assert labels["lung"].sum() == 100

    missing = write_rtstruct(tmp_path / "missing.dcm", {"Lung_R": [mm(scan, square(9.5, 19.5, 3))]}, scan.series_uid)
    with pytest.raises(IngestError, match=r"no ROI matching lung 2 of ingest\.structure_labels \(its ROIs: 'Lung_R'\)"):
        read_rtstruct_labels(missing, *args, mapping={"lung": {1: ["lung_r"], 2: ["lung_l"]}})

    outside = write_rtstruct(tmp_path / "outside.dcm", {"Lung_R": [mm(scan, square(60.5, 70.5, 3))]}, scan.series_uid)
    with pytest.raises(IngestError, match="covers a voxel of the scan"):
        read_rtstruct_labels(outside, *args)

    overlap = write_rtstruct(
        tmp_path / "overlap.dcm",
        {"Lung_R": [mm(scan, square(4.5, 20.5, 3))], "Lung_L": [mm(scan, square(14.5, 30.5, 3))]},
        scan.series_uid,
    )
    with pytest.raises(IngestError, match=r"Lung_R \(lung 1\) and Lung_L \(lung 2\) overlap"):
        read_rtstruct_labels(overlap, *args)

    image = sorted(case_file for case_file in scan.files)[0]
    with pytest.raises(IngestError, match="is not an RT Structure Set"):
        read_rtstruct_labels(image, *args)


def test_cli_round_trip_on_a_demo_series(demo, tmp_path):
    case, scan = demo
    rois = {"Lung_R": [mm(scan, square(9.5, 19.5, 3))], "Poumon G": [mm(scan, square(30.5, 40.5, 3))]}
    path = write_rtstruct(tmp_path / "rs.dcm", rois, scan.series_uid)
    out, status = tmp_path / "case.h5", tmp_path / "status.json"
    mapping = json.dumps({"lung": {"1": ["lung_r"], "2": ["poumon g"]}})
    argv = ["ingest", str(case.dicom_dir), "--case-id", "rt1", "--rtstruct", str(path), "--structure-labels", mapping,
            "-o", str(out), "--status", str(status)]
    assert main(argv) == 0
    stored = read_case(out)
    assert (stored.labels["lung"] == 1).sum() == 100 and (stored.labels["lung"] == 2).sum() == 100
    report = json.loads(status.read_text())
    assert report["status"] == "ok" and report["labels"]["lung"] == 200
    assert scan.series_uid not in status.read_text() and scan.series_uid.encode() not in out.read_bytes()

    # the ROI the mapping asks for is missing: quarantined, the file and the config key named
    assert main(argv[:7] + [json.dumps({"lung": ["lung_x"]})] + argv[8:]) == 0
    report = json.loads(status.read_text())
    assert report["status"] == "quarantined" and "ingest.structure_labels" in report["reason"] + report["fix"]
    assert "rs.dcm" in report["file"]

    # the table as a YAML file, as the config writes it (integer values as keys)
    table = tmp_path / "structures.yaml"
    table.write_text("lung: {1: [lung_r], 2: ['poumon g*']}\n")
    assert main(argv[:7] + [str(table)] + argv[8:]) == 0
    assert json.loads(status.read_text())["labels"]["lung"] == 200


# ---------------------------------------------------------------- real data: NSCLC-Radiomics LUNG1-001


@pytest.fixture(scope="module")
def lung1(request):
    from tests.conftest import SHARED_DATA

    folder = SHARED_DATA / "nsclc-radiomics" / "LUNG1-001"
    if not folder.is_dir():
        pytest.skip(f"real CT test data not found at {folder} (clone with ../shared beside the repo)")
    scan = read_source(folder / "image")
    labels, notes = read_rtstruct_labels(folder / "rtstruct" / "1-1.dcm", scan.geometry, scan.hu.shape, scan.series_uid)
    return folder, scan, labels, notes


@pytest.mark.realdata
def test_lung1_volumes_sides_and_tumour(lung1):
    _, scan, labels, notes = lung1
    litres = np.prod(scan.geometry.spacing) / 1e6
    right, left = (labels["lung"] == 1).sum() * litres, (labels["lung"] == 2).sum() * litres
    assert 1.0 < right < 4.0 and 1.0 < left < 4.0 and 0.8 < right / left < 1.8, (right, left)
    centre = {}
    for value in (1, 2):
        z, y, x = np.nonzero(labels["lung"] == value)
        centre[value] = scan.geometry.index_to_physical(np.array([x.mean(), y.mean(), z.mean()]))
    assert centre[2][0] > centre[1][0] + 100  # LPS: +x is the patient's left
    tumour = labels["tumour"].astype(bool)
    assert 20 < tumour.sum() * litres * 1000 < 1000  # millilitres
    near_left = ndimage.binary_dilation(tumour, iterations=2) & (labels["lung"] == 2)
    assert near_left.any() and not (ndimage.binary_dilation(tumour, iterations=2) & (labels["lung"] == 1)).any()
    assert any("Spinal-Cord" in n for n in notes)


@pytest.mark.realdata
def test_lung1_voxel_volume_matches_contour_areas(lung1):
    folder, scan, labels, _ = lung1
    ds = pydicom.dcmread(folder / "rtstruct" / "1-1.dcm")
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    for roi_contour in ds.ROIContourSequence:
        name = names[int(roi_contour.ReferencedROINumber)]
        if name not in ("Lung-Right", "Lung-Left"):
            continue
        area = 0.0
        for item in roi_contour.ContourSequence:
            xy = np.asarray(item.ContourData, dtype=float).reshape(-1, 3)[:, :2]
            area += 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
        value = 1 if name == "Lung-Right" else 2
        voxels = (labels["lung"] == value).sum() * scan.geometry.spacing[0] * scan.geometry.spacing[1]
        assert abs(voxels - area) < 0.02 * area, (name, voxels, area)


@pytest.mark.realdata
def test_lung1_through_ingest(lung1, tmp_path):
    folder, scan, labels, _ = lung1
    out, status = tmp_path / "case.h5", tmp_path / "status.json"
    argv = ["ingest", str(folder / "image"), "--case-id", "lung1", "--rtstruct", str(folder / "rtstruct" / "1-1.dcm"),
            "-o", str(out), "--status", str(status)]
    assert main(argv) == 0
    report = json.loads(status.read_text())
    assert report["status"] == "ok" and set(report["labels"]) == {"lung", "tumour"}
    assert any(n.startswith("RTSTRUCT: ROIs ignored") and "Spinal-Cord" in n for n in report["notes"])
    np.testing.assert_array_equal(read_case(out).labels["lung"], labels["lung"])
    assert scan.series_uid not in status.read_text()


def test_ingest_scan_keeps_a_given_mask_over_the_rtstruct(demo, tmp_path):
    case, scan = demo
    path = write_rtstruct(tmp_path / "rs.dcm", {"Lung_R": [mm(scan, square(9.5, 19.5, 3))]}, scan.series_uid)
    result = ingest_scan("c1", case.dicom_dir, {"lung": case.lung_path}, options=IngestOptions(rtstruct=path))
    notes = json.loads(result.provenance["ingest_notes"])
    assert "RTSTRUCT: label lung kept from an earlier source, the RTSTRUCT's left out" in notes


def test_decimal_string_parser_agrees_with_float():
    rng = np.random.default_rng(3)
    texts = [f"{v:.{rng.integers(0, 9)}f}" for v in rng.uniform(-600, 600, 3000)]
    texts += ["12", "-0.5", " 3.25 ", "+4.5", "7.", ".25", "-.75", "0", "-0"]
    np.testing.assert_allclose(parse_ds("\\".join(texts).encode()), [float(t) for t in texts], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(parse_ds(b"1e3\\2.5E-1\\-4"), [1000.0, 0.25, -4.0])  # exponents: the slow path
