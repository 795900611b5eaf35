"""Building blocks of the lung masks against scipy / skimage references, and per_slice_otsu against its recipe
(Chi et al.) written out slice by slice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import binary_closing, binary_erosion, disk
from skimage.segmentation import clear_border

from lungseg.demo.cohort import generate_demo_scan
from lungseg.lungmask.morphology import (
    close_octagon,
    count_below,
    dilate,
    erode,
    erode_octagon,
    fill_holes,
    line_filter,
    sample_below,
    upsample,
)
from lungseg.lungmask.seed001 import CLOSING_RADIUS, EROSION_RADIUS, cross_sequence, lung_mask_per_slice_otsu

STEPS = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (0, 1, -1)]


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.random((7, 41, 53)), 2) > 0.5


def _line_footprint(half: int, step: tuple[int, int, int]) -> np.ndarray:
    footprint = np.zeros((2 * half + 1,) * 3, dtype=bool)
    for k in range(-half, half + 1):
        footprint[tuple(half + k * s for s in step)] = True
    return footprint


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("half", [0, 1, 2, 3, 5, 8])
def test_line_filter_matches_scipy(blobs, half, step):
    footprint = _line_footprint(half, step)
    assert np.array_equal(line_filter(blobs, half, step, True), ndimage.binary_dilation(blobs, footprint))
    assert np.array_equal(line_filter(blobs, half, step, False), ndimage.binary_erosion(blobs, footprint, border_value=1))


def test_box_dilate_erode_match_scipy(blobs):
    box = np.ones((3, 5, 7), dtype=bool)
    assert np.array_equal(dilate(blobs, (1, 2, 3)), ndimage.binary_dilation(blobs, box))
    assert np.array_equal(erode(blobs, (1, 2, 3)), ndimage.binary_erosion(blobs, box, border_value=1))
    assert np.array_equal(erode(blobs, (1, 2, 3), border=False), ndimage.binary_erosion(blobs, box, border_value=0))


def test_octagon_is_a_near_disk():
    point = np.zeros((1, 41, 41), dtype=bool)
    point[0, 20, 20] = True
    octagon = ~erode_octagon(~point, (0, 12, 12))[0]  # dilation of the point = the structuring element
    yy, xx = np.mgrid[-20:21, -20:21]
    r = np.hypot(yy, xx)
    assert octagon[r <= 11.0].all()  # holds the inscribed disk...
    assert not octagon[r > 13.2].any()  # ...and stays within the circumscribed one (12 / cos 22.5 deg)
    assert np.array_equal(octagon, octagon.T) and np.array_equal(octagon, octagon[::-1])
    shape = np.zeros((1, 100, 100), dtype=bool)
    shape[0, 30:90, 10:90] = True
    shape[0, 30:50, 20:40] = False  # a notch 20 pixels wide (narrower than the octagon's 25)
    shape[0, 30:70, 50:85] = False  # a bay 35 pixels wide
    closed = close_octagon(shape, (0, 12, 12))
    assert closed[0, 36:50, 20:40].all()  # the notch is filled (the octagon only dips into its mouth)
    assert not closed[0, 30:55, 58:77].any()  # the bay keeps its middle


def test_counts_and_upsampling():
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 100, size=(4, 22, 26)).astype(np.int16)
    for factors in [(1, 2, 2), (1, 4, 4), (1, 3, 3), (2, 2, 3), (1, 1, 1)]:
        cut = [n // f * f for n, f in zip(volume.shape, factors)]
        blocks = (volume[: cut[0], : cut[1], : cut[2]] < -400).reshape(
            cut[0] // factors[0], factors[0], cut[1] // factors[1], factors[1], cut[2] // factors[2], factors[2])
        assert np.array_equal(count_below(volume, -400.0, factors), blocks.sum(axis=(1, 3, 5)))
        coarse = count_below(volume, -400.0, factors)
        full = upsample(coarse, factors, volume.shape)
        assert full.shape == volume.shape
        assert np.array_equal(full[: cut[0] : factors[0], : cut[1] : factors[1], : cut[2] : factors[2]], coarse)
        assert not full[:, cut[1]:].any() and not full[:, :, cut[2]:].any()
        reference = coarse.repeat(factors[0], 0).repeat(factors[1], 1).repeat(factors[2], 2)
        assert np.array_equal(full[: cut[0], : cut[1], : cut[2]], reference)
        centre = sample_below(volume, -950.0, factors)
        assert np.array_equal(centre, volume[factors[0] // 2 : cut[0] : factors[0], factors[1] // 2 : cut[1] : factors[1],
                                             factors[2] // 2 : cut[2] : factors[2]] < -950)


def test_fill_holes_matches_scipy(blobs):
    per_slice = np.stack([ndimage.binary_fill_holes(s) for s in blobs])
    assert np.array_equal(fill_holes(blobs, per_slice=True), per_slice)
    assert np.array_equal(fill_holes(blobs, per_slice=False), ndimage.binary_fill_holes(blobs))


@pytest.mark.parametrize("radius", [EROSION_RADIUS, CLOSING_RADIUS])
def test_per_slice_otsu_crosses_compose_the_exact_disk(radius):
    size = 2 * radius + 3
    point = np.zeros((1, size, size), dtype=bool)
    point[0, size // 2, size // 2] = True
    grown = point
    for half_y, half_x in cross_sequence(radius):
        grown = line_filter(grown, half_y, (0, 1, 0), True) | line_filter(grown, half_x, (0, 0, 1), True)
    assert np.array_equal(grown[0, 1:-1, 1:-1], disk(radius).astype(bool))


def _per_slice_reference(volume: np.ndarray) -> np.ndarray:
    """The per-slice Otsu recipe of Chi et al. written out slice by slice with skimage / scipy."""
    out = []
    for hu in volume:
        if hu.min() == hu.max():
            out.append(np.zeros(hu.shape, dtype=bool))
            continue
        mask = clear_border(hu < threshold_otsu(hu))
        mask = binary_closing(binary_erosion(mask, disk(EROSION_RADIUS)), disk(CLOSING_RADIUS))
        out.append(ndimage.binary_fill_holes(mask))
    return np.stack(out).astype(np.uint8)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # skimage's binary_* in the reference
def test_per_slice_otsu_equals_its_per_slice_recipe():
    volume = generate_demo_scan("demo003", 2026, n_slices=12, size=128).phantom.hu.copy()
    volume[0] = 40  # a constant slice
    assert np.array_equal(lung_mask_per_slice_otsu(volume), _per_slice_reference(volume))
