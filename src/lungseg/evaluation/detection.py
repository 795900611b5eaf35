"""Nodule-level evaluation: connected components of prediction and reference matched by overlap.

Components are 3-D with full (26-) connectivity. A reference nodule counts as detected when at least
one predicted component shares a voxel with it; a predicted component that touches no reference nodule
is a false positive. (One predicted blob covering two nodules detects both; two blobs on one nodule are
one detection and no false positive.) Sensitivity is undefined (NaN) for a scan without nodules; false
positives are counted on every scan.

Per-nodule segmentation quality (:func:`match_nodules`): each reference nodule is compared with the
predicted voxels assigned to it. A predicted component touching one nodule gives all its voxels to that
nodule; a component touching several nodules is split between them by nearest nodule (Voronoi cells of
the touched nodules, Euclidean distance in mm, ties to the lower nodule index); a component touching
none is a false positive and given to no nodule. Dice, IoU and volume error are reported for detected
nodules only (a missed nodule is counted by the sensitivity, not as Dice 0).

FROC candidates (:func:`find_candidates`): 26-connected components of the probability map at or above
a low threshold (default :data:`DEFAULT_CANDIDATE_THRESHOLD`), scored by their highest probability; a
candidate hits the reference nodule it shares the most voxels with (ties: lower index) or none (-1).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

DETECTION_METRICS = ("n_nodules", "n_detected", "n_pred_components", "n_false_positives", "sensitivity")
#: per-case means over the detected nodules (NaN when none is detected); appended to the CSV
NODULE_METRICS = ("nodule_dice", "nodule_iou", "nodule_volume_error_pct")
#: probability at or above which voxels form FROC candidates: well below the mask's own threshold (0.5)
#: so that the FROC reaches the higher false-positive rates, well above the background noise of a
#: sigmoid output so that candidates do not merge into lung-sized regions
DEFAULT_CANDIDATE_THRESHOLD = 0.1
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


def label_nodules(ref: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference nodules as 26-connected components: labels 1..n (nodule index = label - 1), and n."""
    labels, n = ndimage.label(ref > 0, structure=_FULL)
    return labels, int(n)


def _union_box(*boxes: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))


def assign_to_nodules(pred: np.ndarray, ref_labels: np.ndarray, n_ref: int,
                      spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Label (1..n_ref) of the nodule each predicted voxel is given to, 0 for none (see the module docstring)."""
    pred_labels, n_pred = ndimage.label(pred > 0, structure=_FULL)
    owner = np.zeros(ref_labels.shape, dtype=np.int32)
    if not n_pred or not n_ref:
        return owner
    both = (pred_labels > 0) & (ref_labels > 0)
    pairs = np.unique(np.stack([pred_labels[both], ref_labels[both]]), axis=1)  # (component, nodule) touching
    touched: dict[int, list[int]] = {}
    for comp, nodule in pairs.T:
        touched.setdefault(int(comp), []).append(int(nodule))
    lut = np.zeros(n_pred + 1, dtype=np.int32)
    for comp, nodules in touched.items():
        if len(nodules) == 1:
            lut[comp] = nodules[0]
    owner[...] = lut[pred_labels]
    multi = {c: n for c, n in touched.items() if len(n) > 1}
    if multi:
        pred_boxes, ref_boxes = ndimage.find_objects(pred_labels), ndimage.find_objects(ref_labels)
        for comp, nodules in multi.items():
            # the box around the component and its nodules holds every voxel that can be nearest
            box = _union_box(pred_boxes[comp - 1], *(ref_boxes[n - 1] for n in nodules))
            ref_crop = ref_labels[box]
            seeds = np.isin(ref_crop, nodules)
            _, nearest = ndimage.distance_transform_edt(~seeds, sampling=spacing_zyx, return_indices=True)
            voronoi = ref_crop[tuple(nearest)]
            in_comp = pred_labels[box] == comp
            owner[box][in_comp] = voronoi[in_comp]
    return owner


def match_nodules(pred: np.ndarray, ref_labels: np.ndarray, n_ref: int,
                  spacing_zyx: tuple[float, float, float]) -> dict:
    """Per-nodule segmentation quality of one scan.

    Returns :data:`NODULE_METRICS` (means over the detected nodules; NaN when none), ``nodules`` (one dict
    per reference nodule, in label order: ``volume_mm3``, ``diameter_mm`` (equivalent sphere),
    ``detected``, and ``dice``, ``iou``, ``volume_error_mm3`` (predicted minus reference),
    ``volume_error_pct`` (signed, relative to the reference) for a detected nodule, else None) and
    ``voxels`` (``tp``, ``fp``, ``fn`` voxel counts of the whole mask, for pooled voxel overlap).
    """
    if pred.shape != ref_labels.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref_labels.shape}")
    voxel_mm3 = float(np.prod(spacing_zyx))
    owner = assign_to_nodules(pred, ref_labels, n_ref, spacing_zyx)
    ref_count = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_count = np.bincount(owner.ravel(), minlength=n_ref + 1)
    hit = (owner > 0) & (owner == ref_labels)
    inter = np.bincount(owner[hit], minlength=n_ref + 1)
    nodules = []
    for i in range(1, n_ref + 1):
        r, p, tp = int(ref_count[i]), int(pred_count[i]), int(inter[i])
        volume = r * voxel_mm3
        entry = {"volume_mm3": volume, "diameter_mm": (6.0 * volume / math.pi) ** (1.0 / 3.0), "detected": tp > 0,
                 "dice": None, "iou": None, "volume_error_mm3": None, "volume_error_pct": None}
        if tp:
            entry.update(dice=2.0 * tp / (p + r), iou=tp / (p + r - tp), volume_error_mm3=(p - r) * voxel_mm3,
                         volume_error_pct=100.0 * (p - r) / r)
        nodules.append(entry)
    found = [n for n in nodules if n["detected"]]
    p_mask, r_mask = pred > 0, ref_labels > 0
    tp_all = int(np.count_nonzero(p_mask & r_mask))
    return {
        "nodule_dice": float(np.mean([n["dice"] for n in found])) if found else math.nan,
        "nodule_iou": float(np.mean([n["iou"] for n in found])) if found else math.nan,
        "nodule_volume_error_pct": float(np.mean([abs(n["volume_error_pct"]) for n in found])) if found else math.nan,
        "nodules": nodules,
        "voxels": {"tp": tp_all, "fp": int(np.count_nonzero(p_mask)) - tp_all,
                   "fn": int(np.count_nonzero(r_mask)) - tp_all},
    }


def candidate_labels(probabilities: np.ndarray, threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
                     scale: float = 1.0) -> tuple[np.ndarray, int]:
    """The candidates of a probability map (p * ``scale``): 26-connected components of p >= ``threshold``,
    labelled 1..n in ``ndimage.label`` order (the candidate number), and n."""
    if np.issubdtype(probabilities.dtype, np.integer):
        above = probabilities >= math.ceil(threshold * scale - 1e-6)  # exact on the integer grid
    else:
        above = probabilities >= threshold * scale
    labels, n = ndimage.label(above, structure=_FULL)
    return labels, int(n)


def candidate_hits(labels: np.ndarray, n: int, ref_labels: np.ndarray) -> np.ndarray:
    """Per candidate number 0..n (0 unused): the reference nodule (index = label - 1) it overlaps most (ties:
    the lower index), or -1."""
    hits = np.full(n + 1, -1, dtype=np.int64)
    both = (labels > 0) & (ref_labels > 0)
    if both.any():
        n_ref = int(ref_labels.max())
        keys, counts = np.unique(labels[both].astype(np.int64) * (n_ref + 1) + ref_labels[both], return_counts=True)
        cand, nodule = keys // (n_ref + 1), keys % (n_ref + 1)
        # most overlap first, then the lower nodule index: the first row per candidate wins
        order = np.lexsort((nodule, -counts, cand))
        cand, nodule = cand[order], nodule[order]
        first = np.r_[True, cand[1:] != cand[:-1]]
        hits[cand[first]] = nodule[first] - 1
    return hits


def candidate_maxima(probabilities: np.ndarray, labels: np.ndarray, n: int, scale: float = 1.0) -> np.ndarray:
    """The highest p of candidates 1..n (``probabilities`` holds p * ``scale``): the FROC's candidate scores."""
    if not n:
        return np.zeros(0)
    return np.asarray(ndimage.maximum(probabilities, labels, np.arange(1, n + 1)), dtype=float) / scale


def find_candidates(probabilities: np.ndarray, ref_labels: np.ndarray, threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
                    scale: float = 1.0) -> list[list]:
    """FROC candidates of one scan, highest score first: ``[score, nodule index or -1]`` each.

    ``probabilities`` holds p * ``scale`` (``scale`` 255 for a uint8 map, 1 for a float one); a candidate
    is a 26-connected component of p >= ``threshold`` (:func:`candidate_labels`), its score the highest p
    in it, its nodule the reference nodule (``ref_labels``: 1..n, index = label - 1) it overlaps most, or -1.
    """
    if probabilities.shape != ref_labels.shape:
        raise ValueError(f"probability map shape {probabilities.shape} differs from reference shape {ref_labels.shape}")
    labels, n = candidate_labels(probabilities, threshold, scale)
    if not n:
        return []
    scores = candidate_maxima(probabilities, labels, n, scale)
    hits = candidate_hits(labels, n, ref_labels)
    order = np.argsort(-scores, kind="stable")
    return [[float(scores[i]), int(hits[i + 1])] for i in order]
