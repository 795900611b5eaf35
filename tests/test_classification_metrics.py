"""lungseg.evaluation.classification against values computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lungseg.evaluation.classification import (
    accuracy,
    balanced_accuracy,
    brier_score,
    classification_summary,
    confusion_matrix,
    reliability_bins,
    roc_auc,
    roc_auc_ci,
    roc_curve,
    sensitivity_specificity,
)

Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_auc_counts_correctly_ordered_pairs() -> None:
    # pairs (positive, negative): 0.35 > 0.1, 0.35 < 0.4, 0.8 > 0.1, 0.8 > 0.4 -> 3 of 4
    assert roc_auc(Y, P) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([0, 0, 1], [0.2, 0.1, 0.9]) == 1.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))  # one class: undefined, not an error


def test_roc_curve_points() -> None:
    fpr, tpr, thresholds = roc_curve(Y, P)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds.tolist() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(Y, P))


def test_threshold_metrics_and_confusion_matrix() -> None:
    pred = (np.asarray(P) >= 0.5).astype(int)  # [0, 0, 0, 1]
    assert confusion_matrix(Y, pred).tolist() == [[2, 0], [1, 1]]
    assert accuracy(Y, pred) == 0.75
    assert balanced_accuracy(Y, pred) == pytest.approx((1.0 + 0.5) / 2)
    assert sensitivity_specificity(Y, P, 0.5) == (0.5, 1.0)
    assert sensitivity_specificity(Y, P, 0.3) == (1.0, 0.5)
    assert balanced_accuracy([0, 1, 2, 2], [0, 2, 2, 2], 3) == pytest.approx(2 / 3)  # recalls 1, 0, 1
    sens, spec = sensitivity_specificity([0, 0], [0.7, 0.2])
    assert math.isnan(sens) and spec == 0.5
    with pytest.raises(ValueError, match="0 / 1 labels"):
        roc_auc([0, 2], [0.1, 0.2])


def test_calibration() -> None:
    assert brier_score(Y, P) == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    low, high = reliability_bins(Y, P, n_bins=2)
    assert (low["count"], high["count"]) == (3, 1)
    assert low["mean_prob"] == pytest.approx(0.85 / 3) and low["fraction_positive"] == pytest.approx(1 / 3)
    assert high["mean_prob"] == 0.8 and high["fraction_positive"] == 1.0
    empty = reliability_bins([1], [1.0], n_bins=4)
    assert [b["count"] for b in empty] == [0, 0, 0, 1] and math.isnan(empty[0]["mean_prob"])


def test_auc_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 60), 0, 1)
    lo, hi = roc_auc_ci(y, p, samples=500, seed=1)
    assert 0.0 <= lo < roc_auc(y, p) < hi <= 1.0
    assert roc_auc_ci(y, p, samples=500, seed=1) == (lo, hi)  # seeded
    assert roc_auc_ci([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], samples=200) == (1.0, 1.0)
    assert roc_auc_ci([1], [0.3]) is None


def test_summary_is_json_ready() -> None:
    summary = classification_summary(Y, P, threshold=0.5, samples=200)
    assert summary["auc"] == 0.75 and summary["confusion_matrix"] == [[2, 0], [1, 1]]
    assert summary["n"] == 4 and summary["positives"] == 2 and len(summary["auc_ci95"]) == 2
    json.dumps(summary, allow_nan=False)
    assert classification_summary([1, 1], [0.2, 0.9], samples=50)["auc"] is None
