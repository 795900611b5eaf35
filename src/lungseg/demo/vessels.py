"""Random but deterministic branching vessel trees that fill a lung.

The tree is grown top-down by recursive bisection of target points sampled inside the lung: each
branch runs from its parent's end to the centroid of its points, its points are split in two along
their main axis, and each half grows a thinner child (Murray's law, r_child ~ r / 2^(1/3)).
Branches are drawn as two slightly bent tapered tubes so vessels are not ruler-straight.
"""

from __future__ import annotations

import numpy as np

Segment = tuple[np.ndarray, np.ndarray, float, float]  # start, end (x, y, z mm), start and end radius


def vessel_tree(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_root: float) -> list[Segment]:
    """Segments of a tree from ``root`` (mm) reaching every target point ((n, 3) mm)."""
    segments: list[Segment] = []
    stack = [(np.asarray(root, dtype=float), np.asarray(targets, dtype=float), float(r_root))]
    while stack:
        start, points, radius = stack.pop()
        end = points.mean(axis=0)
        child_r = radius * 0.79
        if len(points) == 1:
            end = points[0]
            child_r = max(radius * 0.6, 0.5)
        _bent(rng, start, end, radius, child_r, segments)
        if len(points) == 1:
            continue
        centred = points - end
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        order = np.argsort(centred @ axis)
        half = len(points) // 2
        stack.append((end, points[order[:half]], child_r))
        stack.append((end, points[order[half:]], child_r))
    return segments


def _bent(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, ra: float, rb: float, out: list[Segment]) -> None:
    """Append a tube from a to b via a mid point jittered sideways by up to ~15% of its length."""
    d = b - a
    length = float(np.linalg.norm(d))
    if length < 1e-3:
        return
    jitter = rng.normal(size=3)
    jitter -= (jitter @ d) / (length**2) * d  # perpendicular to the branch
    mid = (a + b) / 2 + jitter * 0.08 * length
    rm = (ra + rb) / 2
    out.append((a, mid, ra, rm))
    out.append((mid, b, rm, rb))
