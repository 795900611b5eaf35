"""Nodule-level detection: connected components of prediction and reference matched by overlap.

Components are 3-D with full (26-) connectivity. A reference nodule counts as detected when at least
one predicted component shares a voxel with it; a predicted component that touches no reference nodule
is a false positive. (One predicted blob covering two nodules detects both; two blobs on one nodule are
one detection and no false positive.) Sensitivity is undefined (NaN) for a scan without nodules; false
positives are counted on every scan.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

DETECTION_METRICS = ("n_nodules", "n_detected", "n_pred_components", "n_false_positives", "sensitivity")
_FULL = np.ones((3, 3, 3), dtype=bool)


def detection_counts(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """:data:`DETECTION_METRICS` of one scan (counts as ints, sensitivity as float or NaN)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    ref_labels, n_ref = ndimage.label(ref > 0, structure=_FULL)
    pred_labels, n_pred = ndimage.label(pred > 0, structure=_FULL)
    both = (ref_labels > 0) & (pred_labels > 0)
    n_detected = int(np.unique(ref_labels[both]).size)
    n_matched_pred = int(np.unique(pred_labels[both]).size)
    return {
        "n_nodules": int(n_ref),
        "n_detected": n_detected,
        "n_pred_components": int(n_pred),
        "n_false_positives": int(n_pred) - n_matched_pred,
        "sensitivity": n_detected / n_ref if n_ref else math.nan,
    }
