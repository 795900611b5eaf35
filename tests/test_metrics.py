import math

import numpy as np
import pytest

from lungseg.evaluation.aggregate import summarise
from lungseg.evaluation.metrics import segmentation_metrics
from lungseg.geometry import Geometry

GEOM = Geometry((0.5, 0.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _cube(shift_x=0, size=20):
    m = np.zeros((20, 40, 48), np.uint8)
    m[5:15, 10:10 + size, 10 + shift_x:10 + shift_x + size] = 1
    return m


def test_identical_masks():
    m = segmentation_metrics(_cube(), _cube(), GEOM)
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == m["fscore"] == 1.0
    assert m["hd95_mm"] == 0.0 and m["volume_diff_ml"] == 0.0


def test_shifted_cube_known_values():
    # shift by 4 voxels along x (0.5 mm): overlap 16/20 of each
    m = segmentation_metrics(_cube(shift_x=4), _cube(), GEOM)
    assert m["dice"] == pytest.approx(0.8)
    assert m["iou"] == pytest.approx(0.8 / 1.2)
    assert m["precision"] == pytest.approx(0.8)
    assert m["recall"] == pytest.approx(0.8)
    assert m["fscore"] == pytest.approx(0.8)
    assert m["hd95_mm"] == pytest.approx(2.0)  # 4 voxels * 0.5 mm
    assert m["accuracy"] == pytest.approx(1 - 2 * 10 * 20 * 4 / (20 * 40 * 48))


def test_precision_recall_asymmetric():
    small = _cube(size=10)
    m = segmentation_metrics(small, _cube(), GEOM)  # prediction inside the reference
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(100 / 400)
    assert m["volume_diff_ml"] == pytest.approx((1000 - 4000) * 0.5 * 0.5 * 2.0 / 1000)


def test_empty_conventions():
    empty = np.zeros((20, 40, 48), np.uint8)
    both = segmentation_metrics(empty, empty, GEOM)
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0
    no_pred = segmentation_metrics(empty, _cube(), GEOM)
    assert no_pred["dice"] == 0.0 and no_pred["recall"] == 0.0
    assert math.isnan(no_pred["precision"]) and math.isnan(no_pred["hd95_mm"])
    no_ref = segmentation_metrics(_cube(), empty, GEOM)
    assert no_ref["dice"] == 0.0 and math.isnan(no_ref["recall"]) and no_ref["precision"] == 0.0


def test_summary_skips_and_counts_nan():
    rows = [
        {"case_id": "a", "method": "m", **segmentation_metrics(_cube(), _cube(), GEOM)},
        {"case_id": "b", "method": "m", **segmentation_metrics(np.zeros_like(_cube()), _cube(), GEOM)},
    ]
    s = summarise(rows)["m"]["metrics"]
    assert s["dice"]["mean"] == pytest.approx(0.5) and s["dice"]["n"] == 2
    assert s["hd95_mm"]["n"] == 1 and s["hd95_mm"]["n_undefined"] == 1


def test_hd95_of_masks_filling_the_image():
    full = np.ones((20, 40, 48), np.uint8)
    m = segmentation_metrics(full, _cube(), GEOM)
    assert np.isfinite(m["hd95_mm"]) and m["hd95_mm"] > 0
    assert segmentation_metrics(full, full, GEOM)["hd95_mm"] == 0.0
