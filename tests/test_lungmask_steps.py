"""The steps of ``threshold_3d`` on small synthetic chests (what each includes and excludes), the plain
3-D threshold it is compared with, and both against the clinical contours of a real planning CT."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from lungseg.geometry import Geometry
from lungseg.lungmask.default import Threshold3DParams, _refine, lung_mask_threshold_3d
from lungseg.lungmask.plain import lung_mask_plain_threshold
from lungseg.lungmask.sides import LEFT, RIGHT

PIXEL_MM, SLICE_MM = 2.0, 5.0
IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient coordinates (mm from the centre) of every voxel: z (head +), y (posterior +), x (left +)."""
    nz, ny, nx = shape
    return np.meshgrid((np.arange(nz) - nz / 2) * SLICE_MM, (np.arange(ny) - ny / 2) * PIXEL_MM,
                       (np.arange(nx) - nx / 2) * PIXEL_MM, indexing="ij")


def synthetic_chest(shape: tuple[int, int, int] = (40, 160, 160)) -> tuple[np.ndarray, Geometry, dict[str, np.ndarray]]:
    """A chest in mm: body (40 HU), two ellipsoid lungs (-860 HU), the heart indenting the left lung, the
    trachea (-1000 HU) down to the carina, and a 24 mm tumour (30 HU) against the right lung's lateral pleura.
    Returns HU, geometry and the parts: ``lung`` (1 right, 2 left, aerated), ``heart``, ``trachea``, ``tumour``
    (its part inside the pleura)."""
    z, y, x = _grid(shape)
    body = (x / 140) ** 2 + (y / 100) ** 2 <= 1
    right = ((x + 62) / 48) ** 2 + ((y + 5) / 65) ** 2 + (z / 65) ** 2 <= 1
    left = ((x - 62) / 48) ** 2 + ((y + 5) / 65) ** 2 + (z / 65) ** 2 <= 1
    heart = ((x - 20) / 45) ** 2 + ((y + 10) / 45) ** 2 + ((z + 30) / 45) ** 2 <= 1
    trachea = (x**2 + (y + 45) ** 2 <= 9**2) & (z > 10)
    tumour = (x + 108) ** 2 + (y + 5) ** 2 + (z - 5) ** 2 <= 12**2
    lung = np.where(right & ~tumour, RIGHT, np.where(left & ~heart, LEFT, 0)).astype(np.uint8)
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[body] = 40
    hu[lung > 0] = -860
    hu[trachea] = -1000
    hu[tumour & body] = 30
    geometry = Geometry((PIXEL_MM, PIXEL_MM, SLICE_MM), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    parts = {"lung": lung, "heart": heart & body & ~(right | left), "trachea": trachea, "tumour": tumour & right}
    return hu, geometry, parts


@pytest.fixture(scope="module")
def chest():
    return synthetic_chest()


def test_synthetic_chest_tumour_in_heart_and_trachea_out(chest):
    hu, geometry, parts = chest
    mask = lung_mask_threshold_3d(hu, geometry).mask
    assert dice(mask == RIGHT, parts["lung"] == RIGHT) >= 0.98 and dice(mask == LEFT, parts["lung"] == LEFT) >= 0.99
    assert (mask[parts["tumour"]] == RIGHT).mean() >= 0.95  # the juxta-pleural tumour inside the pleura
    assert not mask[parts["heart"]].any()  # the heart the left lung wraps around
    assert not mask[parts["trachea"]].any()


def test_fragment_above_the_lungs_is_lung_gas_below_is_not(chest):
    """A 12 mL piece of aerated lung above the right lung, cut off by dense tissue (an apex above a
    consolidated upper lobe; under 2 % of the largest lung), is lung; the same pocket below the lungs
    (gas under the diaphragm) is not, nor is a noisy lumen above them (a quarter of it below -950 HU:
    too little for step 3's airway test, too much for aerated lung)."""
    hu, geometry, parts = chest
    z, y, x = _grid(hu.shape)
    pocket = ((x + 62) / 18) ** 2 + ((y + 5) / 18) ** 2
    above = (pocket + ((z - 82) / 9) ** 2) <= 1
    below = (pocket + ((z + 82) / 9) ** 2) <= 1
    lumen = ((x + 25) ** 2 + (y + 5) ** 2 <= 11**2) & (z > 72) & (z < 96)
    ml = PIXEL_MM**2 * SLICE_MM / 1000
    assert 5 < above.sum() * ml < 0.02 * (parts["lung"] == RIGHT).sum() * ml and lumen.sum() * ml > 5
    hu = hu.copy()
    hu[above | below] = -860
    hu[lumen] = np.random.default_rng(0).normal(-930, 30, lumen.sum()).astype(np.int16)
    mask = lung_mask_threshold_3d(hu, geometry).mask
    assert (mask[above] == RIGHT).mean() >= 0.95
    assert not mask[below].any()
    assert not mask[lumen].any()
    with_lumen = lung_mask_threshold_3d(hu, geometry, replace(Threshold3DParams(), fragment_pure_fraction=0.5)).mask
    assert (with_lumen[lumen] > 0).mean() > 0.5  # only the purity test keeps it out


def test_partial_volume_layer_follows_the_planning_convention(chest):
    """The layer of voxels just outside the lung: holding a third of lung or more (-300 HU) it is lung,
    as planning contours draw it; holding less (-150 HU) it is not."""
    hu, geometry, parts = chest
    lung = parts["lung"]
    layer = ndimage.binary_dilation(lung > 0, IN_PLANE) & (lung == 0) & (hu > -500) & ~parts["tumour"]
    near_right = ndimage.binary_dilation(lung == RIGHT, IN_PLANE)
    hu = hu.copy()
    hu[layer & near_right] = -300
    hu[layer & ~near_right] = -150
    mask = lung_mask_threshold_3d(hu, geometry).mask
    assert (mask[layer & near_right] == RIGHT).mean() >= 0.97
    assert (mask[layer & ~near_right] > 0).mean() <= 0.01
    without = lung_mask_threshold_3d(hu, geometry, replace(Threshold3DParams(), partial_volume_hu=-1000)).mask
    assert (without[layer & near_right] > 0).mean() <= 0.05  # the -400 HU threshold alone leaves it out


def test_blocks_beyond_additions_are_kept_except_at_the_hilum():
    """Step 6 on a coarse grid of 3 x 3 blocks, all tissue: the block beyond an addition against the
    chest wall is kept whole (a nodule's edge), the one beyond an addition at the hilum is not."""
    lungs = np.zeros((3, 6, 10), dtype=np.uint8)
    lungs[:, 1:5, 1:8] = RIGHT
    added = np.zeros(lungs.shape, dtype=bool)
    added[1, 2, 1] = added[1, 2, 7] = True  # one against the wall (x = 1), one at the hilum (x = 7)
    hilum = np.zeros(lungs.shape, dtype=bool)
    hilum[:, :, 7:] = True
    allowed = np.ones(lungs.shape, dtype=bool)
    hu = np.full((3, 18, 30), 40, dtype=np.int16)
    full = _refine(lungs, added, hilum, allowed, hu, (1, 3, 3), (0, 0, 0), Threshold3DParams())
    assert full[1, 6:9, 0:3].all()  # beyond the wall-side addition: kept
    assert not full[1, 6:9, 24:27].any()  # beyond the hilar addition: left out
    assert full[1, 6:9, 3:6].all() and full[1, 6:9, 21:24].all()  # the additions themselves
    assert set(np.unique(full)) == {0, RIGHT}


def test_plain_threshold_recipe():
    """-400 HU, border air removed, the two largest air components, holes filled per slice."""
    hu = np.full((4, 40, 60), 40, dtype=np.int16)
    hu[:, :3] = -1000  # air along the border: outside
    hu[:, 10:30, 5:25] = -800  # two lungs and a small air pocket
    hu[:, 10:30, 35:55] = -800
    hu[:, 34:37, 28:31] = -800
    hu[:, 18:21, 12:15] = 40  # a vessel inside the right lung
    mask = lung_mask_plain_threshold(hu)
    assert mask[:, 10:30, 5:25].all() and mask[:, 10:30, 35:55].all()  # vessel filled
    assert not mask[:, :3].any() and not mask[:, 34:37, 28:31].any()
    assert not lung_mask_plain_threshold(np.full((2, 8, 8), 40, dtype=np.int16)).any()


@pytest.mark.realdata
def test_clinical_contours_of_a_real_planning_ct(shared_data):
    """LUNG1-001 (NSCLC-Radiomics): a large left tumour, a consolidated right upper lobe. Against the
    clinical lung contours threshold_3d reaches Dice 0.975 and beats the plain 3-D threshold."""
    from lungseg.ingest.dicom_series import read_series
    from lungseg.ingest.rtstruct import read_rtstruct_labels

    case = shared_data / "nsclc-radiomics" / "LUNG1-001"
    if not case.is_dir():
        pytest.skip(f"{case} not found (the NSCLC-Radiomics planning CT of ../shared/data)")
    scan = read_series(case / "image")
    labels, _ = read_rtstruct_labels(case / "rtstruct" / "1-1.dcm", scan.geometry, scan.hu.shape, scan.series_uid)
    lung = labels["lung"]
    mask = lung_mask_threshold_3d(scan.hu, scan.geometry).mask
    plain = lung_mask_plain_threshold(scan.hu)
    whole = dice(mask > 0, lung > 0)
    assert whole >= 0.975
    assert whole > dice(plain > 0, lung > 0) + 0.005
    assert dice(mask == RIGHT, lung == RIGHT) >= 0.97 and dice(mask == LEFT, lung == LEFT) >= 0.97
