"""Seeded percentile-bootstrap confidence intervals over cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFAULT_SAMPLES = 2000


def _indices(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(stats: np.ndarray, level: float) -> tuple[float, float] | None:
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, samples: int = DEFAULT_SAMPLES, seed: int = 0, level: float = 0.95,
                 statistic: Callable[..., np.ndarray] = np.mean) -> tuple[float, float] | None:
    """Percentile CI of ``statistic`` of ``values`` (cases resampled with replacement); None for < 2 values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None
    return _interval(statistic(values[_indices(values.size, samples, seed)], axis=1), level)


def bootstrap_ratio_ci(numerators: np.ndarray, denominators: np.ndarray, samples: int = DEFAULT_SAMPLES,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile CI of the pooled ratio sum(numerators) / sum(denominators), resampling cases."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size < 2:
        return None
    idx = _indices(num.size, samples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)  # resamples without any nodule: NaN, dropped
    return _interval(ratios, level)


def paired_bootstrap_ci(x: np.ndarray, y: np.ndarray, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float] | None:
    """Percentile CI of mean(x) - mean(y) for paired values (``x[i]``, ``y[i]`` of one case): each resample
    draws cases with replacement and uses the same indices for both; None for < 2 pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same shape, got {x.shape} and {y.shape}")
    if x.size < 2:
        return None
    idx = _indices(x.size, samples, seed)
    return _interval(x[idx].mean(axis=1) - y[idx].mean(axis=1), level)
