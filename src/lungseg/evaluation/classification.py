"""Classification metrics of binary (malignant vs not) predictions: accuracy, balanced accuracy, ROC AUC with a
bootstrap 95% CI, sensitivity and specificity at a threshold, the confusion matrix, the Brier score and the
bins of a reliability curve.

``y_true`` holds 0 / 1 (1 = positive, malignant), ``prob`` the predicted probability of the positive class.
Undefined values (AUC with one class only, sensitivity without positives, ...) are NaN, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from lungseg.evaluation.bootstrap import DEFAULT_SAMPLES, _interval, bootstrap_ci


def _binary(y_true: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0 / 1 labels, got values {sorted(set(np.unique(y).tolist()))[:5]}")
    return y.astype(np.int64)


def _pairs(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y, p = _binary(y_true), np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y_true and prob must be 1-D of the same length, got shapes {y.shape} and {p.shape}")
    return y, p


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int = 2) -> np.ndarray:
    """``m[i, j]`` = examples of true class i predicted as class j."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Share of correct predictions (NaN without examples)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` (NaN without examples)."""
    t = np.asarray(y_true, dtype=np.int64)
    if not t.size:
        return float("nan")
    k = n_classes or int(max(t.max(), np.max(y_pred)) + 1)
    m = confusion_matrix(t, y_pred, k)
    support = m.sum(axis=1)
    return float(np.mean(np.diag(m)[support > 0] / support[support > 0]))


def roc_auc(y_true: Sequence[int], prob: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney: ties count one half); NaN unless both classes occur."""
    y, p = _pairs(y_true, prob)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: Sequence[int], prob: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: one point per distinct score (predict positive when ``prob >= threshold``),
    from (0, 0) at threshold +inf to (1, 1)."""
    y, p = _pairs(y_true, prob)
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1] if len(p) else np.zeros(0, np.int64)
    tps, fps = np.cumsum(y)[last], (last + 1) - np.cumsum(y)[last]
    n_pos, n_neg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return (np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, p[last]])


def roc_auc_ci(y_true: Sequence[int], prob: Sequence[float], samples: int = DEFAULT_SAMPLES, seed: int = 0,
               level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the ROC AUC (examples resampled with replacement; resamples with one class
    only are dropped); None for fewer than 2 examples or no resample with both classes."""
    y, p = _pairs(y_true, prob)

    def auc_of_rows(index_rows: np.ndarray, axis: int = 1) -> np.ndarray:
        return np.array([roc_auc(y[idx], p[idx]) for idx in index_rows.astype(np.int64)])

    return bootstrap_ci(np.arange(len(y)), samples=samples, seed=seed, level=level, statistic=auc_of_rows)


def sensitivity_specificity(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5) -> tuple[float, float]:
    """Sensitivity (recall of positives) and specificity (recall of negatives) when ``prob >= threshold``
    is called positive; each NaN without examples of its class."""
    y, p = _pairs(y_true, prob)
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def brier_score(y_true: Sequence[int], prob: Sequence[float]) -> float:
    """Mean squared difference between the probability and the outcome (NaN without examples)."""
    y, p = _pairs(y_true, prob)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def reliability_bins(y_true: Sequence[int], prob: Sequence[float], n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability-curve bins: ``n_bins`` equal-width probability bins ([0, 1/n), ..., [.., 1]), each with its
    ``count``, ``mean_prob`` (the predicted) and ``fraction_positive`` (the observed; NaN when empty)."""
    y, p = _pairs(y_true, prob)
    which = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = which == b
        n = int(inside.sum())
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": n,
                     "mean_prob": float(p[inside].mean()) if n else float("nan"),
                     "fraction_positive": float(y[inside].mean()) if n else float("nan")})
    return bins


def classification_summary(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5,
                           samples: int = DEFAULT_SAMPLES, seed: int = 0, n_bins: int = 10,
                           clusters: Sequence[object] | None = None) -> dict[str, Any]:
    """All of the above for one set of binary predictions, JSON-ready (NaN -> None). With ``clusters`` (the
    patient of each example) the AUC's CI resamples patients (:func:`roc_auc_cluster_ci`) and the summary says so
    in ``auc_ci_resampling``."""
    y, p = _pairs(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    sens, spec = sensitivity_specificity(y, p, threshold)
    ci = roc_auc_ci(y, p, samples, seed) if clusters is None else roc_auc_cluster_ci(y, p, clusters, samples, seed)
    out = {"n": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
           "accuracy": accuracy(y, pred), "balanced_accuracy": balanced_accuracy(y, pred, 2),
           "auc": roc_auc(y, p), "auc_ci95": list(ci) if ci else None, "sensitivity": sens, "specificity": spec,
           "brier": brier_score(y, p), "confusion_matrix": confusion_matrix(y, pred, 2).tolist(),
           "reliability": reliability_bins(y, p, n_bins)}
    if clusters is not None:
        out["auc_ci_resampling"] = "patients"
    return json_ready(out)


def _cluster_draws(clusters: Sequence[object], samples: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Row indices of each cluster (in order of first appearance), each row's cluster, and ``samples`` draws of
    as many clusters as there are, with replacement."""
    labels = np.asarray([str(c) for c in clusters])
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cluster_of_row = rank[inverse.reshape(-1)] if labels.size else np.zeros(0, np.int64)
    members = [np.flatnonzero(cluster_of_row == k) for k in range(len(order))]
    draws = np.random.default_rng(seed).integers(0, max(len(members), 1), size=(samples, len(members)))
    return members, cluster_of_row, draws


def cluster_resamples(clusters: Sequence[object], samples: int = DEFAULT_SAMPLES, seed: int = 0) -> list[np.ndarray]:
    """``samples`` cluster-bootstrap resamples of the example indices: each draws as many clusters as there are,
    with replacement, and takes all examples of every drawn cluster (a patient's nodules stay together)."""
    members, _, draws = _cluster_draws(clusters, samples, seed)
    return [np.concatenate([members[k] for k in row]) if row.size else np.zeros(0, np.int64) for row in draws]


def _cluster_weights(clusters: Sequence[object], samples: int, seed: int) -> np.ndarray:
    """(samples, n): how often each example occurs in each resample of :func:`cluster_resamples` (same draws)."""
    members, cluster_of_row, draws = _cluster_draws(clusters, samples, seed)
    counts = np.stack([np.bincount(row, minlength=len(members)) for row in draws]) if members else np.zeros((samples, 0))
    return counts[:, cluster_of_row].astype(np.float64)


#: above this many (positive, negative) pairs the resampled AUCs are computed one resample at a time
_MAX_PAIRS = 4_000_000


def _resampled_aucs(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AUC of each resample given as example multiplicities (rows of ``weights``), equal to :func:`roc_auc`
    of the resampled examples (pairs counted with their multiplicities, ties one half); NaN with one class."""
    pos, neg = y == 1, y == 0
    if pos.sum() * neg.sum() > _MAX_PAIRS:
        return np.array([roc_auc(y[idx], p[idx]) for idx in (np.repeat(np.arange(len(y)), w.astype(np.int64))
                                                              for w in weights)])
    wins = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
    w_pos, w_neg = weights[:, pos], weights[:, neg]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("bi,ij,bj->b", w_pos, wins, w_neg) / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def _check_clusters(clusters: Sequence[object], n: int) -> None:
    if len(clusters) != n:
        raise ValueError(f"clusters must name the cluster of each of the {n} examples, got {len(clusters)}")


def roc_auc_cluster_ci(y_true: Sequence[int], prob: Sequence[float], clusters: Sequence[object],
                       samples: int = DEFAULT_SAMPLES, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile CI of the ROC AUC by the cluster bootstrap (:func:`cluster_resamples`: patients resampled, their
    nodules together); resamples with one class only are dropped; None for fewer than 2 clusters."""
    y, p = _pairs(y_true, prob)
    if len(set(map(str, clusters))) < 2:
        return None
    _check_clusters(clusters, len(y))
    return _interval(_resampled_aucs(y, p, _cluster_weights(clusters, samples, seed)), level)


def paired_auc_difference(y_true: Sequence[int], prob: Sequence[float], prob_reference: Sequence[float],
                          clusters: Sequence[object], samples: int = DEFAULT_SAMPLES, seed: int = 0,
                          level: float = 0.95) -> dict[str, Any]:
    """AUC(``prob``) - AUC(``prob_reference``) on the same examples, with a paired cluster-bootstrap CI (each
    resample draws patients once and scores both predictions on it) and a two-sided bootstrap p-value
    ``min(1, 2 * min(share of differences <= 0, share >= 0))`` over the resamples with both classes
    (the share counts the observed difference too: never exactly 0). JSON-ready; undefined values None."""
    y, p = _pairs(y_true, prob)
    _, r = _pairs(y_true, prob_reference)
    _check_clusters(clusters, len(y))
    auc, auc_ref = roc_auc(y, p), roc_auc(y, r)
    out: dict[str, Any] = {"n": int(len(y)), "positives": int(y.sum()), "patients": len(set(map(str, clusters))),
                           "auc": auc, "auc_reference": auc_ref, "difference": auc - auc_ref, "ci95": None,
                           "p_value": None, "resamples_used": 0, "level": level}
    if not np.isfinite(out["difference"]) or out["patients"] < 2:
        return json_ready(out)
    weights = _cluster_weights(clusters, samples, seed)
    diffs = _resampled_aucs(y, p, weights) - _resampled_aucs(y, r, weights)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size:
        ci = _interval(diffs, level)
        out["ci95"] = list(ci) if ci else None
        below, above = (1 + np.sum(diffs <= 0)) / (diffs.size + 1), (1 + np.sum(diffs >= 0)) / (diffs.size + 1)
        out["p_value"] = float(min(1.0, 2 * min(below, above)))
        out["resamples_used"] = int(diffs.size)
    return json_ready(out)


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists too) as None, for JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value
