"""The default lung mask: quality on full-size demo cases, sides in any orientation, lungs that touch, bad input, QA."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungseg.demo.cohort import generate_demo_scan
from lungseg.geometry import Geometry
from lungseg.lungmask.default import lung_mask_threshold_3d
from lungseg.lungmask.qa import lung_mask_qa

SEED = 2026  # the workflow's demo seed


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def full_size_cases():
    """Two full-size demo cases (48 x 256 x 256) with juxta-pleural nodules (demo006: one of 14.6 mm;
    demo008: two, of 13.4 and 18.9 mm), their default masks."""
    out = {}
    for case_id in ("demo006", "demo008"):
        scan = generate_demo_scan(case_id, SEED, n_slices=48, size=256)
        assert any(n.juxta_pleural for n in scan.phantom.nodules)
        out[case_id] = (scan, lung_mask_threshold_3d(scan.phantom.hu, scan.geometry))
    return out


@pytest.mark.parametrize("case_id", ["demo006", "demo008"])
def test_quality_on_full_size_demo_cases(full_size_cases, case_id):
    scan, result = full_size_cases[case_id]
    truth, mask = scan.phantom.lung, result.mask
    assert dice(mask > 0, truth > 0) >= 0.98
    assert dice(mask == 1, truth == 1) >= 0.98  # right lung
    assert dice(mask == 2, truth == 2) >= 0.98  # left lung
    nodule = scan.phantom.nodule > 0
    assert np.count_nonzero(mask[nodule]) / np.count_nonzero(nodule) >= 0.99  # juxta-pleural ones included
    trachea_top = scan.phantom.hu[-1] < -950  # the trachea is the only air inside the body at the top slice
    assert not mask[-1][trachea_top].any()
    qa = lung_mask_qa(mask, scan.geometry, result.notes)
    assert qa["plausible"] and qa["n_components"] == 2, qa


def test_juxta_pleural_nodule_in_a_curved_chest_wall():
    """demo010's 21 mm juxta-pleural nodule sits where the chest wall curves strongly: the pleura under it
    bulges out beyond the chord between the lung on either side (the chord alone kept 90 % of it)."""
    scan = generate_demo_scan("demo010", SEED, n_slices=48, size=256)
    phantom = scan.phantom
    (nodule,) = [n for n in phantom.nodules if n.juxta_pleural]
    blobs, _ = ndimage.label(phantom.nodule > 0)
    juxta = blobs == blobs[tuple(round(c) for c in nodule.center_zyx)]
    assert nodule.diameter_mm > 20 and juxta.sum() > 300
    mask = lung_mask_threshold_3d(phantom.hu, scan.geometry).mask
    assert np.count_nonzero(mask[juxta]) / np.count_nonzero(juxta) >= 0.97
    assert np.count_nonzero(mask[phantom.nodule > 0]) / np.count_nonzero(phantom.nodule) >= 0.98
    assert dice(mask > 0, phantom.lung > 0) >= 0.99  # the bulge adds nodule, not chest wall


def _flip_x(scan):
    g = scan.geometry
    origin = g.index_to_physical(np.array([scan.phantom.hu.shape[2] - 1, 0, 0]))
    direction = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    return Geometry(g.spacing, tuple(float(v) for v in origin), direction)


def test_sides_follow_physical_space_not_array_order():
    scan = generate_demo_scan("demo002", SEED, n_slices=24, size=128)
    hu, truth = scan.phantom.hu, scan.phantom.lung
    flipped = lung_mask_threshold_3d(hu[:, :, ::-1].copy(), _flip_x(scan)).mask[:, :, ::-1]
    assert dice(flipped == 1, truth == 1) >= 0.97 and dice(flipped == 2, truth == 2) >= 0.97
    g = scan.geometry  # in-plane axes swapped: the array's x axis is the patient's y
    swapped_geometry = Geometry((g.spacing[1], g.spacing[0], g.spacing[2]), g.origin, (0, 1.0, 0, 1.0, 0, 0, 0, 0, 1.0))
    swapped = lung_mask_threshold_3d(hu.transpose(0, 2, 1).copy(), swapped_geometry).mask.transpose(0, 2, 1)
    assert dice(swapped == 1, truth == 1) >= 0.97 and dice(swapped == 2, truth == 2) >= 0.97


def test_anisotropic_spacing():
    scan = generate_demo_scan("demo004", SEED, n_slices=48, size=128)
    g = scan.geometry
    thick = Geometry((g.spacing[0], g.spacing[1], 2 * g.spacing[2]), g.origin, g.direction)  # every other slice
    mask = lung_mask_threshold_3d(scan.phantom.hu[::2].copy(), thick).mask
    assert dice(mask > 0, scan.phantom.lung[::2] > 0) >= 0.97


def test_lungs_that_touch_are_split_into_right_and_left():
    scan = generate_demo_scan("demo001", SEED, n_slices=48, size=128)
    hu, truth = scan.phantom.hu.copy(), scan.phantom.lung
    for z in range(20, 32):  # aerated bridge across the anterior mediastinum (an anterior junction line)
        rows = np.flatnonzero((truth[z] > 0).any(axis=1))
        band = slice(rows.min() + 5, rows.min() + 8)
        right_end = np.flatnonzero((truth[z, band] == 1).any(axis=0)).max()
        left_start = np.flatnonzero((truth[z, band] == 2).any(axis=0)).min()
        hu[z, band, right_end : left_start + 1] = -860
    result = lung_mask_threshold_3d(hu, scan.geometry)
    assert any("touch" in note for note in result.notes)
    assert dice(result.mask == 1, truth == 1) >= 0.95 and dice(result.mask == 2, truth == 2) >= 0.95


def _geometry(spacing=(0.7, 0.7, 2.5)) -> Geometry:
    return Geometry(spacing, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


@pytest.mark.parametrize("name, volume, flag", [
    ("all air", np.full((6, 64, 64), -1000, dtype=np.int16), "empty mask: no body"),
    ("all tissue", np.full((6, 64, 64), 40, dtype=np.int16), "empty mask: no air inside the body"),
    ("one voxel", np.zeros((1, 1, 1), dtype=np.int16), "empty mask"),
])
def test_degenerate_volumes_give_empty_flagged_masks(name, volume, flag):
    result = lung_mask_threshold_3d(volume, _geometry())
    assert result.mask.shape == volume.shape and not result.mask.any(), name
    qa = lung_mask_qa(result.mask, _geometry(), result.notes)
    assert not qa["plausible"] and flag in qa["flags"], qa


def test_volume_without_lungs_gives_an_empty_flagged_mask():
    scan = generate_demo_scan("demo003", SEED, n_slices=48, size=256)
    hu = scan.phantom.hu.copy()
    hu[scan.phantom.lung > 0] = 45  # body, trachea and bronchi, table: no lungs (as abdomen-only slices)
    result = lung_mask_threshold_3d(hu, scan.geometry)
    assert not result.mask.any()
    qa = lung_mask_qa(result.mask, scan.geometry, result.notes)
    assert not qa["plausible"] and "empty mask: no lung-like air region" in qa["flags"]


def test_single_slice_gives_a_partial_flagged_mask():
    scan = generate_demo_scan("demo005", SEED, n_slices=48, size=128)
    z = 28
    result = lung_mask_threshold_3d(scan.phantom.hu[z : z + 1].copy(), scan.geometry)
    assert dice(result.mask > 0, scan.phantom.lung[z : z + 1] > 0) >= 0.95
    qa = lung_mask_qa(result.mask, scan.geometry, result.notes)
    assert not qa["plausible"] and "single slice" in qa["flags"]


def test_qa_figures_and_flags():
    g = _geometry((1.0, 1.0, 1.0))
    mask = np.zeros((10, 40, 40), dtype=np.uint8)
    mask[1:9, 5:35, 3:15] = 1  # right: 8 * 30 * 12 voxels of 1 mm^3
    mask[1:9, 5:35, 25:35] = 2
    qa = lung_mask_qa(mask, g)
    assert qa["right_ml"] == pytest.approx(2.88) and qa["left_ml"] == pytest.approx(2.4)
    assert qa["right_left_ratio"] == pytest.approx(1.2) and qa["n_components"] == 2
    assert not qa["plausible"] and "< 100 mL" in qa["flags"]  # tiny lungs
    big = Geometry((4.0, 4.0, 5.0), g.origin, g.direction)  # 80 mm^3 voxels: 460 + 384 mL
    assert lung_mask_qa(mask, big)["plausible"]
    one_lung = np.where(mask == 2, 0, mask).astype(np.uint8)
    assert "only one lung (right)" in lung_mask_qa(one_lung, big)["flags"]
    binary = (mask > 0).astype(np.uint8)  # per_slice_otsu masks: sides by the image centre (x < centre is right)
    qa_binary = lung_mask_qa(binary, big)
    assert qa_binary["right_ml"] == pytest.approx(qa["right_ml"] * 80) and qa_binary["plausible"]
    edge = mask.copy()
    edge[:, :, 0] = 1
    assert "touches the in-plane image border" in lung_mask_qa(edge, big)["flags"]
