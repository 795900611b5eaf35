"""DICOM-SEG -> labels on the scan grid: SEGs built with highdicom on a demo series, and public SEG test files."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from lungseg.casefile import read_case
from lungseg.cli import main
from lungseg.geometry import Geometry
from lungseg.ingest.errors import IngestError
from lungseg.ingest.scan import IngestOptions, _slice_map, ingest_scan, read_source
from lungseg.ingest.seg_labels import read_seg, read_seg_labels
from tests.ingest_data import demo_case, slice_files

NAMES = ("Lung right", "Lung left", "GTV")


def expected_masks(shape: tuple[int, int, int]) -> np.ndarray:
    """(z, y, x, 3) masks: right lung, left lung, a tumour inside the left lung."""
    masks = np.zeros((*shape, 3), dtype=bool)
    masks[3:7, 8:30, 5:20, 0] = True
    masks[2:8, 10:40, 26:44, 1] = True
    masks[4:6, 20:25, 30:34, 2] = True
    return masks


def write_seg(path: Path, dicom_dir: Path, masks: np.ndarray, names=NAMES, fractional: bool = False) -> Path:
    sources = [pydicom.dcmread(f) for f in slice_files(dicom_dir)]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, name in enumerate(names)
    ]
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    pixels = np.where(masks, 0.8, 0.3).astype(np.float32) if fractional else masks
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="lungseg", manufacturer_model_name="tests", software_versions="0", device_serial_number="0",
        max_fractional_value=255 if fractional else None,
    )
    seg.save_as(path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    case = demo_case(root)
    scan = read_source(case.dicom_dir)
    masks = expected_masks(scan.hu.shape)
    return case, scan, masks, write_seg(root / "seg.dcm", case.dicom_dir, masks)


def lung_volume(masks: np.ndarray) -> np.ndarray:
    return np.where(masks[..., 0], 1, np.where(masks[..., 1], 2, 0)).astype(np.uint8)


@pytest.mark.parametrize("fractional", [False, True])
def test_grid_round_trip(demo, tmp_path, fractional):
    case, scan, masks, path = demo
    if fractional:
        path = write_seg(tmp_path / "fractional.dcm", case.dicom_dir, masks, fractional=True)
    labels, notes = read_seg_labels(path, scan.geometry, scan.hu.shape, scan.series_uid)
    np.testing.assert_array_equal(labels["lung"], lung_volume(masks))
    np.testing.assert_array_equal(labels["tumour"], masks[..., 2].astype(np.uint8))
    assert any("FRACTIONAL" in n for n in notes) == fractional
    assert scan.series_uid not in " ".join(notes)


def test_frames_are_placed_by_their_physical_position(demo, tmp_path):
    _, scan, masks, path = demo
    ds = pydicom.dcmread(path)
    step = scan.geometry.spacing[0]
    for frame in ds.PerFrameFunctionalGroupsSequence:  # every frame 3 columns (+x) over
        position = frame.PlanePositionSequence[0]
        position.ImagePositionPatient = [float(position.ImagePositionPatient[0]) + 3 * step,
                                         *position.ImagePositionPatient[1:]]
    shifted = tmp_path / "shifted.dcm"
    ds.save_as(shifted)
    labels, _ = read_seg_labels(shifted, scan.geometry, scan.hu.shape, scan.series_uid)
    np.testing.assert_array_equal(labels["lung"], np.roll(lung_volume(masks), 3, axis=2))


def test_frames_without_plane_position_use_their_source_slice(demo, tmp_path):
    _, scan, masks, path = demo
    ds = pydicom.dcmread(path)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.PlanePositionSequence
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare)
    labels, _ = read_seg_labels(bare, scan.geometry, scan.hu.shape, scan.series_uid, uid_to_slice=_slice_map(scan).uid_to_slice)
    np.testing.assert_array_equal(labels["lung"], lung_volume(masks))
    with pytest.raises(IngestError, match="none of its voxels falls inside the scan.*no plane position"):
        read_seg_labels(bare, scan.geometry, scan.hu.shape, scan.series_uid)


def test_seg_through_ingest_and_cli(demo, tmp_path):
    case, scan, masks, path = demo
    result = ingest_scan("s1", case.dicom_dir, options=IngestOptions(seg=path))
    np.testing.assert_array_equal(result.labels["lung"], lung_volume(masks))
    out, status = tmp_path / "case.h5", tmp_path / "status.json"
    argv = ["ingest", str(case.dicom_dir), "--case-id", "s1", "--seg", str(path), "-o", str(out), "--status", str(status)]
    assert main(argv) == 0
    stored = read_case(out)
    np.testing.assert_array_equal(stored.labels["tumour"], masks[..., 2].astype(np.uint8))
    assert json.loads(status.read_text())["labels"] == {"lung": int(masks[..., :2].any(-1).sum()),
                                                         "tumour": int(masks[..., 2].sum())}
    assert scan.series_uid.encode() not in out.read_bytes()


def test_bad_segs(demo, tmp_path):
    case, scan, masks, _ = demo
    args = (scan.geometry, scan.hu.shape, scan.series_uid)
    overlap = masks.copy()
    overlap[3:7, 8:30, 5:30, 0] = True  # the right lung reaches into the left
    path = write_seg(tmp_path / "overlap.dcm", case.dicom_dir, overlap)
    with pytest.raises(IngestError, match=r"Lung right \(lung 1\) and Lung left \(lung 2\) overlap.*ingest\.structure_labels"):
        read_seg_labels(path, *args)
    # mapped to one value: united
    labels, _ = read_seg_labels(path, *args, mapping={"lung": ["lung*"]})
    np.testing.assert_array_equal(labels["lung"], overlap[..., :2].any(-1).astype(np.uint8))

    unknown = write_seg(tmp_path / "unknown.dcm", case.dicom_dir, masks, names=("A", "B", "C"))
    with pytest.raises(IngestError, match=r"'A', 'B', 'C'.*ingest\.structure_labels"):
        read_seg_labels(unknown, *args)
    with pytest.raises(IngestError, match="no segment matching tumour 1"):
        read_seg_labels(unknown, *args, mapping={"lung": {"1": ["a"], "2": ["b"]}, "tumour": ["gtv*"]})


# ---------------------------------------------------------------- real files: public DICOM-SEG test objects

SMALL = Geometry((0.488281, 0.488281, 1.25), (-125.0, -128.100006, 103.019997), (1, 0, 0, 0, 1, 0, 0, 0, 1))
LIVER = Geometry((0.810547, 0.810547, 1.0), (-235.2, -226.8, -128.69), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.mark.realdata
def test_public_seg_files_byte_and_non_byte_aligned(shared_data):
    folder = shared_data / "dicom-oddities" / "seg"
    aligned, _ = read_seg_labels(folder / "liver.dcm", LIVER, (3, 512, 512), mapping={"liver": ["liver"]})
    packed, _ = read_seg_labels(folder / "liver_nonbyte_aligned.dcm", LIVER, (3, 512, 512), mapping={"liver": ["liver"]})
    assert aligned["liver"].reshape(3, -1).sum(1).tolist() == [36233, 35645, 35220]
    np.testing.assert_array_equal(aligned["liver"][:, :510, :510], packed["liver"][:, :510, :510])
    assert not aligned["liver"][:, 510:, :].any() and not aligned["liver"][:, :, 510:].any()
    seg = read_seg(folder / "seg_image_ct_binary.dcm")
    assert seg.segments == {1: "first segment"} and len(seg.frames) == 3 and not seg.fractional


@pytest.mark.realdata
def test_public_seg_files_mapping_overlap_and_reference(shared_data):
    folder = shared_data / "dicom-oddities" / "seg"
    overlap = folder / "seg_image_ct_binary_overlap.dcm"
    labels, notes = read_seg_labels(overlap, SMALL, (3, 16, 16), mapping={"tumour": ["* segment"]})
    assert labels["tumour"].sum() == 48  # the second segment lies inside the first: united
    assert any("frame(s) lie on no slice" in n for n in notes)  # one frame of each segment is 200 mm away
    with pytest.raises(IngestError, match=r"first segment \(lung 1\) and second segment \(lung 2\) overlap"):
        read_seg_labels(overlap, SMALL, (3, 16, 16), mapping={"lung": {"1": ["first*"], "2": ["second*"]}})
    with pytest.raises(IngestError, match=r"no segment lungseg knows \(its segments: 'first segment', 'second segment'\)"):
        read_seg_labels(overlap, SMALL, (3, 16, 16))
    with pytest.raises(IngestError, match="references another series"):
        read_seg_labels(folder / "liver.dcm", LIVER, (3, 512, 512), series_uid="1.2.3.4", mapping={"liver": ["liver"]})
