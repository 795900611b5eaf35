"""The classical nodule baseline (``lungseg.nodules``, ``lungseg nodule-baseline``): nodules found and vessels
rejected on demo phantoms, a 10 mm ball is a nodule and a vessel is not, the same scan at two resolutions gives
the same answer, and the command end to end (outputs on the scan's grid, one error line for a mask that is not)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.demo.phantom import make_phantom
from lungseg.evaluation.detection import detection_counts, label_nodules, match_nodules
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.lungmask.cli import compute_mask
from lungseg.nodules import classical_nodule_candidates, classical_nodule_mask, classical_nodule_probabilities
from lungseg.nodules.classical import paint_scores

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SOLID, LUNG_HU = 40.0, -850.0


def _geometry(spacing, origin=(0.0, 0.0, 0.0)) -> Geometry:
    return Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin), IDENTITY)


def _lung_block(spacing, extent_mm=(50.0, 70.0, 70.0)):
    """An ellipsoidal 'lung' (-850 HU) in soft tissue; mm coordinates (z, y, x) centred on the block."""
    sx, sy, sz = spacing
    axes = [(np.arange(int(round(e / s))) - (int(round(e / s)) - 1) / 2) * s for e, s in zip(extent_mm, (sz, sy, sx))]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    lung = (z / (extent_mm[0] / 2 - 3)) ** 2 + (y / (extent_mm[1] / 2 - 3)) ** 2 + (x / (extent_mm[2] / 2 - 3)) ** 2 <= 1
    return np.where(lung, LUNG_HU, SOLID), lung, (z, y, x)


def _scan(hu: np.ndarray, spacing, seed: int = 0, noise: float = 20.0) -> np.ndarray:
    """Scanner blur (0.6 mm) and noise, as int16 HU."""
    blurred = ndimage.gaussian_filter(hu, [0.6 / s for s in spacing[::-1]])
    noisy = blurred + np.random.default_rng(seed).standard_normal(hu.shape) * noise
    return np.clip(np.rint(noisy), -1024, 3071).astype(np.int16)


def _tube(coords, direction, radius):
    """Voxels within ``radius`` mm of the line through the block's centre along ``direction`` (z, y, x)."""
    d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    p = np.stack(coords, axis=-1)
    along = p @ d
    return (p**2).sum(-1) - along**2 <= radius**2, along


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.0), (1.4, 1.4, 2.5)])
def test_a_10_mm_ball_is_a_nodule_and_gets_its_size(spacing):
    hu, lung, (z, y, x) = _lung_block(spacing)
    ball = z**2 + y**2 + x**2 <= 5.0**2
    hu[ball] = SOLID
    candidates = classical_nodule_candidates(_scan(hu, spacing), lung, spacing)
    best = candidates[0]
    assert best.score >= 0.9 and abs(best.diameter_mm - 10.0) < 1.0 and best.elongation < 1.3
    mask = classical_nodule_mask(_scan(hu, spacing), lung, spacing)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert (mask.astype(bool) & ball).sum() / (mask.astype(bool) | ball).sum() >= 0.8  # IoU with the drawn ball


def test_a_ground_glass_ball_is_found_with_its_own_boundary():
    spacing = (0.8, 0.8, 1.25)
    hu, lung, (z, y, x) = _lung_block(spacing)
    hu[z**2 + y**2 + x**2 <= 6.0**2] = -600.0  # 12 mm, 250 HU above the lung
    best = classical_nodule_candidates(_scan(hu, spacing), lung, spacing)[0]
    assert best.score >= 0.5 and best.threshold_hu < -650 and abs(best.diameter_mm - 12.0) < 1.5


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.0), (1.4, 1.4, 2.5)])
def test_vessels_are_not_nodules(spacing):
    hu, lung, coords = _lung_block(spacing)
    for radius in (1.0, 2.0, 3.0):  # a straight oblique vessel right through the lung
        tube, _ = _tube(coords, (0.3, 0.5, 0.8), radius)
        vessel = hu.copy()
        vessel[tube & lung] = SOLID
        probabilities = classical_nodule_probabilities(_scan(vessel, spacing), lung, spacing)
        assert probabilities.dtype == np.float32 and probabilities.min() >= 0 and probabilities.max() < 0.5, radius
    bifurcation = hu.copy()  # a Y: three 2 mm vessels meeting at the centre
    for direction in ((0.2, 0.5, 0.87), (0.2, 0.5, -0.87), (-0.2, -1.0, 0.0)):
        tube, along = _tube(coords, direction, 2.0)
        bifurcation[tube & (along >= 0) & lung] = SOLID
    assert classical_nodule_probabilities(_scan(bifurcation, spacing), lung, spacing).max() < 0.5


def test_a_nodule_on_a_vessel_is_cut_off_it():
    spacing = (0.8, 0.8, 1.25)
    hu, lung, coords = _lung_block(spacing)
    tube, _ = _tube(coords, (0.3, 0.5, 0.8), 1.5)
    hu[tube & lung] = SOLID
    z, y, x = coords
    ball = z**2 + y**2 + x**2 <= 4.0**2
    hu[ball] = SOLID
    best = classical_nodule_candidates(_scan(hu, spacing), lung, spacing)[0]
    assert best.score >= 0.5 and best.diameter_mm < 10.0 and best.elongation < 2.0
    mask = np.zeros(hu.shape, dtype=bool)
    mask[best.box] = best.mask
    assert (mask & ball).sum() / (mask | ball).sum() >= 0.6


def test_no_lung_no_candidates():
    hu = np.full((8, 32, 32), -1000, dtype=np.int16)
    assert classical_nodule_probabilities(hu, np.zeros(hu.shape, np.uint8), (1.0, 1.0, 2.0)).max() == 0
    with pytest.raises(ValueError, match="same shape"):
        classical_nodule_candidates(hu, np.zeros((8, 32, 31), np.uint8), (1.0, 1.0, 2.0))


def _phantom(seed: int, n_slices: int, size: int, spacing, n_nodules: int):
    phantom = make_phantom(np.random.default_rng(seed), n_slices, size, spacing, n_nodules=n_nodules)
    lung = compute_mask(phantom.hu, _geometry(spacing)).mask  # the classical lung mask, as the CLI gets it
    return phantom, lung


def test_phantoms_most_solid_nodules_found_and_most_vessels_rejected():
    spacing = (1.9, 1.9, 4.5)  # 48 x 192 x 192: the demo cohort's field of view and lung height, thick slices
    found, false_positives, ious = [], [], []
    for seed in range(4):
        phantom, lung = _phantom(seed, 48, 192, spacing, n_nodules=4)
        truth, n = label_nodules(phantom.nodule)
        big = [any(nd.diameter_mm >= 5.0 and truth[tuple(int(round(v)) for v in nd.center_zyx)] == label
                   for nd in phantom.nodules) for label in range(1, n + 1)]
        scores = classical_nodule_probabilities(phantom.hu, lung, spacing)
        nodules = match_nodules(scores >= 0.5, truth, n, spacing[::-1])["nodules"]
        found += [nd["detected"] for nd, b in zip(nodules, big) if b]
        ious += [nd["iou"] for nd in nodules if nd["detected"]]
        false_positives.append(detection_counts(scores >= 0.5, phantom.nodule)["n_false_positives"])
        # the vessel tree is the bulk of what is dense in the lung: almost none of it is called nodule
        vessels = (phantom.hu > -400) & (phantom.lung > 0) & ~ndimage.binary_dilation(phantom.nodule > 0, iterations=2)
        assert (scores[vessels] >= 0.5).mean() < 0.03
    assert len(found) >= 10 and np.mean(found) >= 0.6, found
    assert np.mean(false_positives) <= 6, false_positives
    assert np.median(ious) >= 0.7, ious


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    z, y, x = a.shape
    return a.reshape(z, y // f, f, x // f, f).mean(axis=(2, 4))


def test_the_same_phantom_at_two_resolutions_gives_the_same_nodules():
    fine_spacing = (1.4, 1.4, 4.0)
    phantom, _ = _phantom(7, 48, 256, fine_spacing, n_nodules=4)
    coarse_spacing = (2.8, 2.8, 4.0)  # 2 x 2 in-plane block means: the same scan with coarser pixels
    coarse_hu = np.rint(_block_mean(phantom.hu.astype(np.float32), 2)).astype(np.int16)
    coarse_nodule = (_block_mean(phantom.nodule.astype(np.float32), 2) >= 0.5).astype(np.uint8)
    per_grid = []
    for hu, nodule, spacing, step in ((phantom.hu, phantom.nodule, fine_spacing, 1),
                                      (coarse_hu, coarse_nodule, coarse_spacing, 2)):
        candidates = classical_nodule_candidates(hu, compute_mask(hu, _geometry(spacing)).mask, spacing)
        truth, n = label_nodules(nodule)
        nodules = match_nodules(paint_scores(candidates, hu.shape) >= 0.5, truth, n, spacing[::-1])["nodules"]
        found = {}
        for nd in phantom.nodules:
            z, y, x = (int(round(v)) for v in nd.center_zyx)
            label = truth[z, y // step, x // step]
            if nd.diameter_mm >= 8.0 and label:
                hits = [c for c in candidates if (truth[c.box][c.mask] == label).any()]
                best = max(hits, key=lambda c: c.score) if hits else None
                found[nd.diameter_mm] = (nodules[label - 1]["detected"], best.diameter_mm if best else 0.0)
        big_false = [c for c in candidates if c.score >= 0.5 and c.diameter_mm >= 8.0 and not truth[c.box][c.mask].any()]
        per_grid.append((found, len(big_false)))
    (fine, fp_fine), (coarse, fp_coarse) = per_grid
    assert fine.keys() == coarse.keys() and any(f for f, _ in fine.values())
    for diameter, (was_found, size) in fine.items():
        assert coarse[diameter][0] == was_found, f"{diameter} mm nodule: found {was_found} on 1.4 mm pixels, not on 2.8"
        if was_found:
            assert abs(coarse[diameter][1] - size) <= 0.15 * size, (diameter, size, coarse[diameter][1])
    assert abs(fp_fine - fp_coarse) <= 2, (fp_fine, fp_coarse)  # (finer pixels resolve more small vessel bits)


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    """A case file of a 40 x 128 x 128 phantom with a non-trivial origin, and its classical lung mask."""
    tmp = tmp_path_factory.mktemp("nodule_case")
    spacing = (2.6, 2.6, 5.0)
    phantom = make_phantom(np.random.default_rng(11), 40, 128, spacing, n_nodules=3)
    geometry = _geometry(spacing, origin=(-166.4, -150.2, -312.5))
    write_case(tmp / "c1.h5", CaseVolume(case_id="c1", image=phantom.hu, geometry=geometry))
    assert main(["lung-mask", str(tmp / "c1.h5"), "-o", str(tmp / "lung.nii.gz")]) == 0
    return tmp, phantom, geometry


def test_command_writes_mask_scores_and_candidates_on_the_scan_grid(small_case, tmp_path):
    tmp, phantom, geometry = small_case
    out = tmp_path / "out"
    assert main(["nodule-baseline", str(tmp / "c1.h5"), "--lung-mask", str(tmp / "lung.nii.gz"),
                 "-o", str(out / "nodules.nii.gz"), "--probabilities", str(out / "prob.nii.gz"),
                 "--candidates", str(out / "candidates.json")]) == 0
    mask, mask_geometry = read_volume(str(out / "nodules.nii.gz"))
    prob, prob_geometry = read_volume(str(out / "prob.nii.gz"))
    for g in (mask_geometry, prob_geometry):
        np.testing.assert_allclose(g.spacing, geometry.spacing, atol=1e-4)
        np.testing.assert_allclose(g.origin, geometry.origin, atol=1e-3)
    assert mask.shape == prob.shape == phantom.hu.shape and mask.dtype == prob.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1} and np.array_equal(mask, (prob >= 128).astype(np.uint8))
    assert mask.any() and (mask.astype(bool) & (phantom.nodule > 0)).any()  # finds a drawn nodule
    rows = json.loads((out / "candidates.json").read_text())
    assert rows and rows[0]["score"] >= 0.5 and rows == sorted(rows, key=lambda r: -r["score"])
    assert {"centre_lps_mm", "diameter_mm", "elongation", "closed"} <= set(rows[0])
    lung = read_volume(str(tmp / "lung.nii.gz"))[0]
    direct = classical_nodule_mask(phantom.hu, lung, geometry.spacing)
    assert np.array_equal(direct, mask)


def test_a_lung_mask_off_the_scan_grid_is_one_error_line(small_case, tmp_path, capsys):
    tmp, phantom, geometry = small_case
    lung = read_volume(str(tmp / "lung.nii.gz"))[0]
    write_volume(str(tmp_path / "cropped.nii.gz"), lung[:, :, :-1], geometry)
    write_volume(str(tmp_path / "moved.nii.gz"), lung, _geometry(geometry.spacing, origin=(0.0, 0.0, 0.0)))
    capsys.readouterr()
    for bad in ("cropped.nii.gz", "moved.nii.gz", "missing.nii.gz"):
        assert main(["nodule-baseline", str(tmp / "c1.h5"), "--lung-mask", str(tmp_path / bad),
                     "-o", str(tmp_path / "n.nii.gz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err
    for line, bad in zip(err, ("cropped.nii.gz", "moved.nii.gz", "missing.nii.gz")):
        assert line.startswith("lungseg nodule-baseline: error: ") and bad in line and "Fix:" in line
    assert "shape" in err[0] and "origin" in err[1]
    assert not (tmp_path / "n.nii.gz").exists()
