"""Overlap and surface metrics of a binary prediction against a binary reference.

Overlap comes from SimpleITK's LabelOverlapMeasuresImageFilter; HD95 from Maurer distance maps
of the reference and predicted surfaces (in mm, using the voxel spacing), as the larger of the two
directed 95th percentiles (the MONAI convention).

Empty masks, explicitly: both empty -> Dice = IoU = precision = recall = F-score = 1, HD95 = 0;
exactly one empty -> Dice = IoU = F-score = 0, precision (empty prediction) and recall (empty
reference) are undefined (NaN), HD95 is NaN. NaNs are skipped (and counted) when aggregating.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from lungseg.geometry import Geometry

METRICS = ("dice", "iou", "precision", "recall", "fscore", "accuracy", "hd95_mm", "volume_diff_ml")


def _surface_distances(from_surface: sitk.Image, to_surface: sitk.Image) -> np.ndarray:
    """Distances (mm) from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(to_surface, squaredDistance=False, useImageSpacing=True))
    return sitk.GetArrayViewFromImage(distance)[sitk.GetArrayViewFromImage(from_surface) > 0]


def hd95(pred: sitk.Image, ref: sitk.Image) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between two non-empty binary masks."""
    # pad with background so that masks touching the image border still have a surface there
    pred, ref = (sitk.ConstantPad(m, (1, 1, 1), (1, 1, 1), 0) for m in (pred, ref))
    pred_surface, ref_surface = sitk.LabelContour(pred), sitk.LabelContour(ref)
    d_pred = _surface_distances(pred_surface, ref_surface)
    d_ref = _surface_distances(ref_surface, pred_surface)
    return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, geometry: Geometry) -> dict[str, float]:
    """All of :data:`METRICS` for boolean-like ``pred`` and ``ref`` (z, y, x) on the same grid."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p, r = pred > 0, ref > 0
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    n_pred, n_ref = int(p.sum()), int(r.sum())
    tp = int(np.count_nonzero(p & r))
    accuracy = 1.0 - float(np.count_nonzero(p ^ r)) / p.size
    volume_diff = (n_pred - n_ref) * voxel_ml
    if n_pred == 0 and n_ref == 0:
        return dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, fscore=1.0, accuracy=accuracy, hd95_mm=0.0,
                    volume_diff_ml=volume_diff)
    if n_pred == 0 or n_ref == 0:
        return dict(dice=0.0, iou=0.0, precision=math.nan if n_pred == 0 else 0.0, recall=math.nan if n_ref == 0 else 0.0,
                    fscore=0.0, accuracy=accuracy, hd95_mm=math.nan, volume_diff_ml=volume_diff)
    pred_img = geometry.to_sitk(p.astype(np.uint8))
    ref_img = geometry.to_sitk(r.astype(np.uint8))
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(pred_img, ref_img)  # source = prediction, target = reference
    # not 1 - Get{FalsePositive,FalseNegative}Error(): ITK's false-positive error is a rate over the
    # reference background, not 1 - precision
    precision, recall = tp / n_pred, tp / n_ref
    fscore = 2 * precision * recall / (precision + recall) if tp else 0.0
    return dict(
        dice=overlap.GetDiceCoefficient(),
        iou=overlap.GetJaccardCoefficient(),
        precision=precision,
        recall=recall,
        fscore=fscore,
        accuracy=accuracy,
        hd95_mm=hd95(pred_img, ref_img),
        volume_diff_ml=volume_diff,
    )
