"""FROC analysis of nodule candidates, following the LUNA16 evaluation rules.

Input per scan: its candidates ``[[score, nodule index or -1], ...]`` (``lungseg evaluate --detection
--probabilities``; see :func:`lungseg.evaluation.detection.find_candidates`) and its number of reference
nodules. Rules (those of the LUNA16 script ``noduleCADEvaluationLUNA16.py``):

* per reference nodule only the highest-scoring candidate hitting it is a true positive; the other
  candidates on the same nodule are ignored (neither true nor false positive);
* a candidate hitting no nodule is a false positive;
* a nodule no candidate hits is a false negative at every threshold (the curve never reaches it).

Sweeping the score threshold from the highest score down gives one FROC vertex per distinct score
(candidates of equal score enter together), starting at (0, 0): x = false positives / number of scans,
y = true positives / number of reference nodules. The sensitivity at a false-positive rate ``f`` is
read off the piecewise-linear curve through the vertices, as LUNA16 does with ``numpy.interp``: between
two vertices linear interpolation (which only differs from the step curve where a true and a false
positive share a score); where several vertices share ``f`` (a vertical step) the highest; beyond the
last vertex the last sensitivity. (LUNA16 reads its interpolated curve at the nearest point of a
10001-point grid from 1/8 to 8, which can land just left of a step at 1, 2, 4 FP/scan; here the rates
are read exactly.) The CPM (competition performance metric) is the mean sensitivity at 1/8, 1/4, 1/2,
1, 2, 4 and 8 false positives per scan.

Confidence intervals: seeded percentile bootstrap over scans (scans resampled with replacement, each
copy of a scan bringing its nodules and candidates, as LUNA16 resamples), around the full-sample curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungseg.evaluation.bootstrap import DEFAULT_SAMPLES, _indices, _interval

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: x positions (FP per scan) of the stored curve: log2-spaced from 1/8 to 8, 0.05 apart in log2
CURVE_FP = tuple(float(2.0**e) for e in np.round(np.arange(-3.0, 3.0001, 0.05), 10))


def froc_lists(scans: Sequence[tuple[Sequence[Sequence[float]], int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                  np.ndarray]:
    """LUNA16 marks of all scans: (scores, is_true_positive, scan index of each mark, nodules per scan).

    ``scans``: per scan ``(candidates, n_nodules)``. Duplicate hits on a nodule are dropped (only its
    highest-scoring candidate is kept, as a true positive); candidates hitting no nodule are false positives.
    """
    scores, truth, owner = [], [], []
    nodules = np.zeros(len(scans), dtype=float)
    for s, (candidates, n_nodules) in enumerate(scans):
        nodules[s] = n_nodules
        best: dict[int, float] = {}
        for score, nodule in candidates:
            nodule = int(nodule)
            if nodule < 0:
                scores.append(float(score))
                truth.append(False)
                owner.append(s)
            elif nodule >= n_nodules:
                raise ValueError(f"scan {s}: candidate hits nodule {nodule} but the scan has {n_nodules} nodule(s)")
            elif nodule not in best or score > best[nodule]:
                best[nodule] = float(score)
        for score in best.values():
            scores.append(score)
            truth.append(True)
            owner.append(s)
    return (np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool), np.asarray(owner, dtype=np.int64),
            nodules)


def _vertices(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (weighted) true and false positives at each distinct score, highest first, from (0, 0).

    ``weights``: (B, n marks), one row per resample; returns two (B, n distinct scores + 1) arrays."""
    order = np.argsort(-scores, kind="stable")
    s, t, w = scores[order], truth[order], weights[:, order]
    ends = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)  # last mark of each tie group
    tp = np.cumsum(w * t, axis=1)[:, ends]
    fp = np.cumsum(w * ~t, axis=1)[:, ends]
    zero = np.zeros((weights.shape[0], 1))
    return np.hstack([zero, tp]), np.hstack([zero, fp])


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """Sensitivity of the piecewise-linear FROC curve through the vertices (``fps`` non-decreasing) at each
    rate: linear between vertices, the highest of vertices at the same rate, the last beyond the end."""
    fps, sens, rates = np.asarray(fps, float), np.asarray(sens, float), np.asarray(rates, float)
    j = np.searchsorted(fps, rates, side="right") - 1  # last vertex at or left of the rate
    out = np.empty(rates.shape)
    last = j >= fps.size - 1
    out[last] = sens[-1]
    k = j[~last]
    x0, x1, y0, y1 = fps[k], fps[k + 1], sens[k], sens[k + 1]  # x0 <= rate < x1
    out[~last] = y0 + (rates[~last] - x0) * (y1 - y0) / (x1 - x0)
    return out


def froc_curve(scans: Sequence[tuple[Sequence[Sequence[float]], int]]) -> tuple[np.ndarray, np.ndarray]:
    """FROC vertices (false positives per scan, sensitivity) of all scans together, from (0, 0)."""
    scores, truth, _, nodules = froc_lists(scans)
    tp, fp = _vertices(scores, truth, np.ones((1, scores.size)))
    return fp[0] / len(scans), tp[0] / nodules.sum()


def froc_summary(scans: Sequence[tuple[Sequence[Sequence[float]], int]], samples: int = DEFAULT_SAMPLES,
                 seed: int = 0, level: float = 0.95) -> dict | None:
    """Sensitivity at :data:`FP_RATES`, the CPM and the curve at :data:`CURVE_FP`, each with a bootstrap CI
    over scans (None for fewer than 2 scans); None when there are no scans or no reference nodules."""
    n_scans = len(scans)
    scores, truth, owner, nodules = froc_lists(scans)
    if not n_scans or not nodules.sum():
        return None
    queries = np.asarray(FP_RATES + CURVE_FP)
    tp, fp = _vertices(scores, truth, np.ones((1, scores.size)))
    point = sensitivity_at(fp[0] / n_scans, tp[0] / nodules.sum(), queries)
    boot = np.full((samples, queries.size), np.nan)
    if n_scans >= 2:
        counts = np.stack([np.bincount(row, minlength=n_scans) for row in _indices(n_scans, samples, seed)])
        chunk = max(1, 4_000_000 // max(1, scores.size))
        for start in range(0, samples, chunk):
            mult = counts[start:start + chunk].astype(float)  # copies of each scan in the resample
            tp_b, fp_b = _vertices(scores, truth, mult[:, owner])
            total = mult @ nodules
            for r in range(mult.shape[0]):
                if total[r]:  # a resample without any nodule has no FROC: left out
                    boot[start + r] = sensitivity_at(fp_b[r] / n_scans, tp_b[r] / total[r], queries)
    n_rates = len(FP_RATES)
    ci = [_interval(boot[:, q], level) if n_scans >= 2 else None for q in range(queries.size)]
    cpm_ci = _interval(boot[:, :n_rates].mean(axis=1), level) if n_scans >= 2 else None
    curve_ci = ci[n_rates:]
    n_fp = int((~truth).sum())
    return {
        "fp_per_scan": list(FP_RATES),
        "sensitivity": [float(v) for v in point[:n_rates]],
        "ci95": [list(c) if c else None for c in ci[:n_rates]],
        "cpm": float(point[:n_rates].mean()),
        "cpm_ci95": list(cpm_ci) if cpm_ci else None,
        "n_scans": n_scans,
        "n_nodules": int(nodules.sum()),
        "n_candidates_hit": int(truth.sum()),
        "n_false_positive_candidates": n_fp,
        # the curve ends here: at lower thresholds there are no more candidates
        "max_sensitivity": float(truth.sum() / nodules.sum()),
        "max_fp_per_scan": n_fp / n_scans,
        "curve": {
            "fp_per_scan": list(CURVE_FP),
            "sensitivity": [float(v) for v in point[n_rates:]],
            "ci95_low": [c[0] if c else None for c in curve_ci],
            "ci95_high": [c[1] if c else None for c in curve_ci],
        },
        "bootstrap": {"samples": samples, "seed": seed, "level": level, "method": "percentile, scans resampled"},
    }
