"""The classical nodule baseline: multi-scale Hessian dot enhancement, half-maximum threshold, vessel-cutting opening.

Training-free and spacing-aware (every size is in mm, so anisotropic voxels and 0.5-5 mm slices are handled);
the settings are physical (HU, mm) and taken from the literature or from geometry, not fitted to a data set.

1. **Region.** The lung mask (``> 0``) with its in-plane holes filled (nodules a threshold mask leaves out
   but surrounds), optionally dilated by ``shell_mm`` (for lung masks that carve juxta-pleural nodules out;
   ``lungseg lung-mask`` keeps them, so the default is 0). All work is done in its bounding box.
2. **Dot enhancement** (Li, Sone and Doi, Med Phys 30(8):2040, 2003). Inside the lung the scan, clipped to
   [-1000, 100] HU (calcium weighs like soft tissue) minus the lung's median HU (outside the lung: 0, so the
   chest wall and mediastinum do not touch the blobs), is smoothed at ``n_scales`` Gaussian scales
   sigma = d / 4, d from ``min_diameter_mm`` to ``max_diameter_mm`` (geometric; sigma at least half a voxel
   per axis; the larger ones on a grid block-averaged to sigma / 2 per voxel). From the scale-normalised
   (sigma^2) Hessian's eigenvalues, ``|l1| >= |l2| >= |l3|``: dot = ``|l3|^2 / |l1|`` when all three are
   negative, line = ``|l2| (|l2| - |l3|) / |l1|`` when ``l1, l2 < 0``, in HU of contrast (divided by the
   response at the centre of an ideal ball, :data:`BALL_RESPONSE`, so a ball of 800 HU responds ~800 at its
   best scale), less the noise's own response (:data:`NOISE_FLOOR` robust SDs of the Laplacian of plain lung,
   measured at the finest scale and scaled as white noise), maximum over the scales.
3. **Seeds.** Connected lung voxels with a smoothed HU above ``lowest_hu``, dot >= ``seed_response_hu`` and
   dot >= line (a blob, not a vessel), strongest first; the peak gives a centre and, from its scale, a radius
   estimate ``R = 1.73 sigma`` (where a ball's centre response peaks) or the seed region's own radius if larger.
4. **Segmentation per seed** (as Kostis et al., IEEE TMI 22(10):1259, 2003: threshold, then an opening sized
   to the nodule cuts the vessels), in a box of +-(2.5 R + 5 mm) around the peak: threshold at ``solid_hu``
   (-400 HU, half-way between aerated lung and soft tissue); for blobs at least ``ggo_min_diameter_mm`` wide,
   at the half maximum between the blob's core (90th percentile within R) and the lung around it (median),
   clamped to [``lowest_hu``, ``solid_hu``], so ground-glass nodules get their own boundary. The thresholded
   component at the peak is opened with balls of ``opening_fractions`` x R (a ball of radius r cuts
   attachments thinner than 2 r) and dilated back by the same radius inside the threshold mask; the
   best-scoring of these is the candidate. One that runs out of its box although bigger than estimated is
   redone in a box fitted to its size.
5. **Score** in [0, 1]: the product of logistic factors, each 0.5 exactly at its cut-off and ~0.9 at 30%
   inside it (:data:`STEEPNESS`): equivalent diameter at least ``score_diameter_mm`` (4 mm, the NLST's positive
   screen) and at most ``max_diameter_mm`` (30 mm: larger is a mass, Fleischner glossary); elongation (ratio
   of principal axes) at most ``max_elongation``; contrast to the lung and dot response at least
   ``min_contrast_hu``; at most ``max_wall_contact`` of its surface on non-lung (a spherical cap on a flat wall
   has at most half, plus a margin for the voxel staircase; more is a bulge of the wall or mediastinum) and
   mostly inside the lung mask; :data:`OPEN_PENALTY` when it runs out of its box (a vessel tree the openings
   did not cut). So 0.5, the operating point of :func:`classical_nodule_mask`, is where a candidate just meets
   one criterion and clearly meets the others; the scores rank candidates for an FROC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: sigma^2 |eigenvalue| at the centre of a unit-contrast ball at its best scale: (1/3) E[(X^2 - 3); X < R/sigma],
#: X chi-distributed with 3 degrees of freedom, is largest (0.308) at R = 1.73 sigma
BALL_RESPONSE = 0.308
BALL_RADIUS_PER_SIGMA = 1.73
#: score factor of a candidate that runs out of its box (a vessel tree, not a closed blob)
OPEN_PENALTY = 0.25
#: steepness of the logistic score factors (per unit of log ratio): 0.5 at the cut-off, ~0.9 at 30% inside it
STEEPNESS = 8.0
#: responses are reduced by this many robust standard deviations of the Laplacian of the plain lung (noise) ...
NOISE_FLOOR = 2.0
#: ... measured at up to this many voxels within this many HU of the lung's median
NOISE_SAMPLES, NOISE_BAND_HU = 200_000, 100.0
#: of two segmentations of a seed whose scores differ by less than this, the one with the smaller opening is kept
NEAR_TIE = 0.02
CONN_3D = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class NoduleBaselineParams:
    """Settings of the classical nodule baseline (HU and mm; see the module docstring)."""

    min_diameter_mm: float = 3.0  #: smallest nodule searched (smaller: a "micronodule", below CT nodule definitions)
    score_diameter_mm: float = 4.0  #: diameter at which the size score is 0.5 (NLST: a positive screen is >= 4 mm)
    max_diameter_mm: float = 30.0  #: largest nodule (larger is a mass)
    n_scales: int = 5  #: Hessian scales sigma = d / 4 for d from min to max diameter, geometric
    solid_hu: float = -400.0  #: boundary of a solid nodule: half-way between aerated lung and soft tissue
    lowest_hu: float = -750.0  #: lowest boundary (faint ground-glass nodules); also where responses are computed
    ggo_min_diameter_mm: float = 6.0  #: blobs estimated at least this wide get the half-maximum (ground-glass) threshold
    min_contrast_hu: float = 150.0  #: a candidate's core must be this much denser than the lung around it
    seed_response_hu: float = 100.0  #: least dot response (HU of ball contrast) of a seed
    shell_mm: float = 0.0  #: dilate the lung mask this much (for masks that carve juxta-pleural nodules out)
    #: opening radii tried, per estimated nodule radius R (0: none); a ball of f R cuts attachments thinner than 2 f R
    opening_fractions: tuple[float, ...] = (0.0, 0.35, 0.7, 1.0, 1.4)
    max_elongation: float = 2.0  #: principal axes ratio (sqrt of variance ratio) at which the shape score is 0.5
    max_wall_contact: float = 0.75  #: surface fraction on non-lung at which the score is 0.5 (a cap on a wall: <= 0.5)
    smooth_mm: float = 0.5  #: Gaussian smoothing (mm) of the HU before thresholding (noise of sharp kernels)
    max_seeds: int = 3000  #: at most this many seeds (the strongest) are segmented: bounds the run time


@dataclass
class NoduleCandidate:
    """One scored candidate; ``mask`` is a boolean array over ``box`` (index slices of the full volume)."""

    score: float
    peak_zyx: tuple[int, int, int]
    diameter_mm: float  #: diameter of the sphere of the same volume
    elongation: float
    contrast_hu: float
    threshold_hu: float
    closed: bool  #: False when it runs out of its box
    outside_lung: float  #: fraction of its voxels outside the (hole-filled) lung mask
    wall_contact: float  #: fraction of its surface voxels next to non-lung (chest wall, mediastinum)
    box: tuple[slice, slice, slice]
    mask: np.ndarray
    dot_hu: float = 0.0  #: dot response at the seed's peak (HU of ball contrast)
    line_hu: float = 0.0  #: line response there
    sigma_mm: float = 0.0  #: the scale of the peak's dot response


def classical_nodule_probabilities(hu: np.ndarray, lung: np.ndarray, spacing_xyz: tuple[float, float, float],
                                   params: NoduleBaselineParams | None = None) -> np.ndarray:
    """float32 ``(z, y, x)`` in [0, 1]: 0 outside candidates, else the score of the best candidate holding the voxel."""
    return paint_scores(classical_nodule_candidates(hu, lung, spacing_xyz, params), np.shape(hu))


def paint_scores(candidates: list[NoduleCandidate], shape: tuple[int, ...]) -> np.ndarray:
    """float32 volume of ``shape``: each voxel the best score of the candidates holding it, else 0."""
    out = np.zeros(shape, dtype=np.float32)
    for cand in candidates:
        view = out[cand.box]
        np.maximum(view, np.where(cand.mask, np.float32(cand.score), np.float32(0)), out=view)
    return out


def classical_nodule_mask(hu: np.ndarray, lung: np.ndarray, spacing_xyz: tuple[float, float, float],
                          params: NoduleBaselineParams | None = None) -> np.ndarray:
    """uint8 ``(z, y, x)`` 0/1: :func:`classical_nodule_probabilities` >= 0.5."""
    return (classical_nodule_probabilities(hu, lung, spacing_xyz, params) >= 0.5).astype(np.uint8)


def classical_nodule_candidates(hu: np.ndarray, lung: np.ndarray, spacing_xyz: tuple[float, float, float],
                                params: NoduleBaselineParams | None = None) -> list[NoduleCandidate]:
    """All scored candidates (best first) of a HU volume ``(z, y, x)`` with its lung mask (``> 0`` = lung)."""
    p = params or NoduleBaselineParams()
    hu = np.asarray(hu)
    lung = np.asarray(lung)
    if hu.ndim != 3 or lung.shape != hu.shape:
        raise ValueError(f"need a (z, y, x) scan and a lung mask of the same shape, got {hu.shape} and {lung.shape}")
    spacing = tuple(float(s) for s in spacing_xyz[::-1])  # (z, y, x) mm
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing_xyz}")
    inside = lung > 0
    if not inside.any():
        return []
    crop = _crop(inside, spacing, p.shell_mm + 1.0)
    offset = tuple(s.start for s in crop)
    lung_c = _fill_holes_per_slice(inside[crop])
    region = _dilate_mm(lung_c, spacing, p.shell_mm)
    hu_c = hu[crop].astype(np.float32)
    smooth = _gaussian_mm(hu_c, spacing, p.smooth_mm)
    background = float(np.median(hu_c[lung_c]))
    # relative to the lung's median HU, so the truncated derivative kernels see no offset; outside the lung: 0
    image = np.where(lung_c, np.clip(hu_c, -1000.0, 100.0) - np.float32(background), np.float32(0)).astype(np.float32)
    del hu_c
    where = np.flatnonzero(lung_c & (smooth > p.lowest_hu))
    if where.size == 0:
        return []
    sigmas = np.geomspace(p.min_diameter_mm / 4, p.max_diameter_mm / 4, p.n_scales)
    parenchyma = np.flatnonzero(lung_c & (np.abs(smooth - np.float32(background)) < NOISE_BAND_HU))
    parenchyma = parenchyma[:: max(1, parenchyma.size // NOISE_SAMPLES)]
    dot, line, best = _multiscale_responses(image, spacing, sigmas, where, parenchyma)
    del image
    is_seed = (dot >= p.seed_response_hu) & (dot >= line)
    seeds = _seed_peaks(where[is_seed], dot[is_seed], best[is_seed], line[is_seed], lung_c.shape)[: p.max_seeds]
    candidates: list[NoduleCandidate] = []
    taken = np.zeros(lung_c.shape, dtype=bool)  # voxels of closed candidates: later seeds there are the same blob
    voxel_mm3 = float(np.prod(spacing))
    for flat, scale, dot_hu, line_hu, size in seeds:
        peak = np.unravel_index(flat, lung_c.shape)
        if taken[peak]:
            continue
        seed_radius = (3 * size * voxel_mm3 / (4 * math.pi)) ** (1 / 3)
        radius = max(BALL_RADIUS_PER_SIGMA * sigmas[scale], seed_radius)
        cand = _segment(peak, radius, dot_hu, smooth, lung_c, region, spacing, p)
        if cand is None:
            continue
        cand.line_hu, cand.sigma_mm = line_hu, float(sigmas[scale])
        if cand.closed:
            taken[cand.box] |= cand.mask
        cand.box = tuple(slice(b.start + o, b.stop + o) for b, o in zip(cand.box, offset))
        cand.peak_zyx = tuple(int(v + o) for v, o in zip(peak, offset))
        candidates.append(cand)
    candidates.sort(key=lambda c: -c.score)
    return candidates


def _crop(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> tuple[slice, slice, slice]:
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(b.start - math.ceil(margin_mm / s), 0), min(b.stop + math.ceil(margin_mm / s), n))
                 for b, s, n in zip(box, spacing, mask.shape))


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for z in range(mask.shape[0]):
        if mask[z].any():
            out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def _dilate_mm(mask: np.ndarray, spacing: tuple[float, ...], mm: float) -> np.ndarray:
    if mm <= 0 or mask.all():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm


def _gaussian_mm(image: np.ndarray, spacing: tuple[float, ...], mm: float) -> np.ndarray:
    sigma = [mm / s if mm / s >= 0.3 else 0.0 for s in spacing]
    if not any(sigma):
        return image.copy()
    return ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0).astype(np.float32, copy=False)


def _block_mean(image: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    if factors == (1, 1, 1):
        return image
    pad = [(0, (-n) % f) for n, f in zip(image.shape, factors)]
    a = np.pad(image, pad, mode="edge")
    (nz, ny, nx), (fz, fy, fx) = a.shape, factors
    return a.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx).mean(axis=(1, 3, 5), dtype=np.float32)


def _hessian(image: np.ndarray, sigma_vox: tuple[float, ...], take: np.ndarray | None) -> list[np.ndarray]:
    """Gaussian second derivatives (voxel units) zz, yy, xx, zy, zx, yx, at flat indices ``take`` (all if None)."""
    kw = {"mode": "nearest", "truncate": 3.0, "output": np.float32}
    g = ndimage.gaussian_filter1d
    sz, sy, sx = sigma_vox

    def pick(a: np.ndarray) -> np.ndarray:
        return a.ravel() if take is None else a.ravel()[take]

    out: dict[str, np.ndarray] = {}
    p0 = g(image, sz, axis=0, order=0, **kw)
    q = g(p0, sy, axis=1, order=0, **kw)
    out["xx"] = pick(g(q, sx, axis=2, order=2, **kw))
    q = g(p0, sy, axis=1, order=1, **kw)
    out["yx"] = pick(g(q, sx, axis=2, order=1, **kw))
    q = g(p0, sy, axis=1, order=2, **kw)
    del p0
    out["yy"] = pick(g(q, sx, axis=2, order=0, **kw))
    p1 = g(image, sz, axis=0, order=1, **kw)
    q = g(p1, sy, axis=1, order=0, **kw)
    out["zx"] = pick(g(q, sx, axis=2, order=1, **kw))
    q = g(p1, sy, axis=1, order=1, **kw)
    del p1
    out["zy"] = pick(g(q, sx, axis=2, order=0, **kw))
    q = g(g(image, sz, axis=0, order=2, **kw), sy, axis=1, order=0, **kw)
    out["zz"] = pick(g(q, sx, axis=2, order=0, **kw))
    return [out[k] for k in ("zz", "yy", "xx", "zy", "zx", "yx")]


def _dot_line(h: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Li et al.'s dot and line responses from Hessian components (closed-form symmetric 3x3 eigenvalues)."""
    a, b, c, d, e, f = (np.asarray(v, dtype=np.float64) for v in h)
    q = (a + b + c) / 3
    p1 = d * d + e * e + f * f
    ap, bp, cp = a - q, b - q, c - q
    p = np.sqrt((ap * ap + bp * bp + cp * cp + 2 * p1) / 6)
    det = ap * (bp * cp - f * f) - d * (d * cp - f * e) + e * (d * f - bp * e)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(p > 0, det / (2 * p**3), 0.0)
    phi = np.arccos(np.clip(r, -1.0, 1.0)) / 3
    e1 = q + 2 * p * np.cos(phi)
    e3 = q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    eig = np.stack([e1, 3 * q - e1 - e3, e3], axis=-1)
    order = np.argsort(-np.abs(eig), axis=-1)
    l1, l2, l3 = np.moveaxis(np.take_along_axis(eig, order, axis=-1), -1, 0)
    m1 = np.maximum(np.abs(l1), 1e-12)
    dot = np.where((l1 < 0) & (l2 < 0) & (l3 < 0), l3 * l3 / m1, 0.0)
    line = np.where((l1 < 0) & (l2 < 0), np.abs(l2) * (np.abs(l2) - np.abs(l3)) / m1, 0.0)
    return dot.astype(np.float32), line.astype(np.float32)


def _multiscale_responses(image: np.ndarray, spacing: tuple[float, ...], sigmas: np.ndarray, where: np.ndarray,
                          parenchyma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max over scales of dot and line (HU of ball contrast) at flat indices ``where``, and the best dot scale.

    The responses are reduced by the noise's own: :data:`NOISE_FLOOR` robust standard deviations of the Laplacian
    at the ``parenchyma`` voxels (plain lung) at the finest scale, scaled to the others as for white noise, so
    noise does not make blobs at fine scales."""
    n_where = where.size
    where = np.concatenate([where, parenchyma])
    dot = np.zeros(n_where, dtype=np.float32)
    line = np.zeros(n_where, dtype=np.float32)
    best = np.zeros(n_where, dtype=np.int16)
    zyx = None
    for i, sigma in enumerate(sigmas):
        eff = tuple(max(float(sigma), 0.5 * s) for s in spacing)  # at least half a voxel per axis
        factors = tuple(max(1, int(e / (2 * s))) for e, s in zip(eff, spacing))  # >= 2 coarse voxels per sigma
        grid = tuple(f * s for f, s in zip(factors, spacing))
        # a block mean of f voxels has a variance of (f^2 - 1) / 12 voxels^2; the Gaussian adds the rest
        sigma_vox = tuple(math.sqrt(max((e / s) ** 2 - (f * f - 1) / 12, 0.25)) / f
                          for e, s, f in zip(eff, spacing, factors))
        coarse = _block_mean(image, factors)
        full = factors == (1, 1, 1)
        h = _hessian(coarse, sigma_vox, where if full else None)
        if not full:  # the Hessian is smooth at this scale: interpolate it (not the eigenvalue ratios) back
            if zyx is None:
                zyx = np.stack(np.unravel_index(where, image.shape)).astype(np.float32)
            coords = (zyx - np.asarray([(f - 1) / 2 for f in factors], dtype=np.float32)[:, None]) / np.asarray(
                factors, dtype=np.float32)[:, None]
            h = [ndimage.map_coordinates(v.reshape(coarse.shape), coords, order=1, mode="nearest") for v in h]
        pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
        h = [v * np.float32(eff[a] * eff[b] / (grid[a] * grid[b] * BALL_RESPONSE)) for v, (a, b) in zip(h, pairs)]
        if i == 0:  # white noise's normalised Hessian falls as 1 / sqrt(sigma_z sigma_y sigma_x): measured once
            laplacian = (h[0] + h[1] + h[2])[n_where:]
            noise = 1.4826 * float(np.median(np.abs(laplacian - np.median(laplacian)))) if laplacian.size else 0.0
            noise *= math.sqrt(math.prod(eff))
        floor = NOISE_FLOOR * noise / math.sqrt(math.prod(eff))
        d, ln = _dot_line([v[:n_where] for v in h])
        d, ln = np.maximum(d - floor, 0), np.maximum(ln - floor, 0)
        better = d > dot
        best[better] = i
        np.maximum(dot, d, out=dot)
        np.maximum(line, ln, out=line)
    return dot, line, best


def _seed_peaks(flat: np.ndarray, dot: np.ndarray, best: np.ndarray, line: np.ndarray,
                shape: tuple[int, ...]) -> list[tuple[int, int, float, float, int]]:
    """(flat index of the peak, its best scale, dot, line, voxels in the region) of each connected seed region,
    strongest first."""
    if flat.size == 0:
        return []
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[flat] = True
    labels, _ = ndimage.label(mask.reshape(shape), structure=CONN_3D)
    lab = labels.ravel()[flat]
    sizes = np.bincount(lab)
    order = np.lexsort((-dot, lab))
    first = order[np.r_[True, lab[order][1:] != lab[order][:-1]]]
    first = first[np.argsort(-dot[first], kind="stable")]
    return [(int(flat[i]), int(best[i]), float(dot[i]), float(line[i]), int(sizes[lab[i]])) for i in first]


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


def _segment(peak: tuple[int, ...], radius: float, dot_hu: float, smooth: np.ndarray, lung: np.ndarray,
             region: np.ndarray, spacing: tuple[float, ...], p: NoduleBaselineParams) -> NoduleCandidate | None:
    """The best-scoring candidate at ``peak`` (crop indices) of estimated radius ``radius`` mm; once more in a box
    fitted to its size when it ran out of a box made for a smaller blob."""
    cand = _segment_in_box(peak, radius, dot_hu, smooth, lung, region, spacing, p)
    largest = p.max_diameter_mm / 2
    if cand is not None and not cand.closed and radius < largest and cand.diameter_mm / 2 > 1.25 * radius:
        again = _segment_in_box(peak, min(cand.diameter_mm / 2, largest), dot_hu, smooth, lung, region, spacing, p)
        if again is not None and again.score > cand.score:
            cand = again
    return cand


def _segment_in_box(peak: tuple[int, ...], radius: float, dot_hu: float, smooth: np.ndarray, lung: np.ndarray,
                    region: np.ndarray, spacing: tuple[float, ...], p: NoduleBaselineParams) -> NoduleCandidate | None:
    """Threshold the blob at ``peak`` (crop indices) of estimated radius ``radius`` mm, open it with balls of
    ``opening_fractions * radius`` and keep the best-scoring result (on a near tie, the smaller opening)."""
    half = 2.5 * radius + 5.0
    box = tuple(slice(max(int(c) - math.ceil(half / s), 0), min(int(c) + math.ceil(half / s) + 1, n))
                for c, s, n in zip(peak, spacing, smooth.shape))
    hb, lb, rb = smooth[box], lung[box], region[box]
    local = tuple(int(c) - b.start for c, b in zip(peak, box))
    if not lb.any():
        return None
    background = float(np.median(hb[lb]))
    d2 = sum(((np.arange(n) - c) * s).reshape([-1 if k == a else 1 for k in range(3)]) ** 2
             for a, (n, c, s) in enumerate(zip(hb.shape, local, spacing)))
    ball = (d2 <= radius**2) & rb  # the densest tenth of the blob's ball: its core (a vessel crossing counts too)
    core = float(np.percentile(hb[ball], 90)) if ball.any() else float(hb[local])
    if core - background < 0.5 * p.min_contrast_hu:
        return None
    threshold = p.solid_hu
    if 2 * radius >= p.ggo_min_diameter_mm:  # wide enough that partial volume cannot explain a faint core
        threshold = float(np.clip((core + background) / 2, p.lowest_hu, p.solid_hu))
    above = rb & (hb > threshold)
    if not above[local]:
        return None
    depth = ndimage.distance_transform_edt(above, sampling=spacing)
    best: NoduleCandidate | None = None
    tried: set[bytes] = set()
    for fraction in sorted(p.opening_fractions):
        rho = fraction * radius
        body = _opened_part(above, depth, rho, local, d2, radius, spacing) if rho >= 0.5 * min(spacing) else None
        if body is None:
            if best is not None:
                continue
            labels, _ = ndimage.label(above, structure=CONN_3D)
            body, rho = labels == labels[local], 0.0
        grown = above & (ndimage.distance_transform_edt(~body, sampling=spacing) <= rho) if rho > 0 else body
        labels, _ = ndimage.label(grown, structure=CONN_3D)
        keep = np.unique(labels[body])
        mask = np.isin(labels, keep[keep > 0])
        key = np.packbits(mask).tobytes()
        if not mask.any() or key in tried:
            continue
        tried.add(key)
        cand = _describe(mask, box, hb, lb, background, threshold, smooth.shape, spacing)
        cand.peak_zyx, cand.dot_hu = tuple(int(v) for v in peak), dot_hu
        cand.score = _score(cand, p)
        if best is None or cand.score > best.score + NEAR_TIE:
            best = cand
    return best


def _describe(mask: np.ndarray, box: tuple[slice, ...], hb: np.ndarray, lb: np.ndarray, background: float,
              threshold: float, shape: tuple[int, ...], spacing: tuple[float, ...]) -> NoduleCandidate:
    """The measurements the score is made of."""
    n = int(mask.sum())
    diameter = (6.0 * n * float(np.prod(spacing)) / math.pi) ** (1.0 / 3.0)
    coords = np.stack(np.nonzero(mask), axis=1) * np.asarray(spacing)
    cov = np.cov(coords, rowvar=False) if n > 1 else np.zeros((3, 3))
    variances = np.linalg.eigvalsh(cov + np.diag(np.asarray(spacing) ** 2 / 12.0))
    elongation = float(math.sqrt(variances[-1] / max(variances[0], 1e-12)))
    closed = not any(
        (b.start > 0 and mask.take(0, axis=a).any()) or (b.stop < n_full and mask.take(-1, axis=a).any())
        for a, (b, n_full) in enumerate(zip(box, shape)))
    surface = mask & ~ndimage.binary_erosion(mask, border_value=1)
    contact = float((surface & ndimage.binary_dilation(~lb, border_value=0)).sum() / max(surface.sum(), 1))
    return NoduleCandidate(score=0.0, peak_zyx=(0, 0, 0), diameter_mm=float(diameter), elongation=elongation,
                           contrast_hu=float(hb[mask].mean()) - background, threshold_hu=threshold, closed=closed,
                           outside_lung=float(1.0 - lb[mask].mean()), wall_contact=contact, box=box, mask=mask)


def _score(c: NoduleCandidate, p: NoduleBaselineParams) -> float:
    """Product of logistic factors, each 0.5 at its cut-off (see the module docstring)."""
    k = STEEPNESS
    return float(_logistic(k * math.log(c.diameter_mm / p.score_diameter_mm))
                 * _logistic(-k * math.log(c.diameter_mm / p.max_diameter_mm))
                 * _logistic(-k * math.log(c.elongation / p.max_elongation))
                 * _logistic(k * math.log(max(c.contrast_hu, 1e-3) / p.min_contrast_hu))
                 * _logistic(k * math.log(max(c.dot_hu, 1e-3) / p.min_contrast_hu))
                 * _logistic(-4 * k * (c.outside_lung - 0.5))
                 * _logistic(-3 * k * (c.wall_contact - p.max_wall_contact))
                 * (1.0 if c.closed else OPEN_PENALTY))


def _opened_part(above: np.ndarray, depth: np.ndarray, rho: float, local: tuple[int, ...], d2: np.ndarray,
                 radius: float, spacing: tuple[float, ...]) -> np.ndarray | None:
    """The component at (or, failing that, nearest to) ``local`` of ``above`` opened by a ball of ``rho`` mm
    (``depth``: the distance of each voxel of ``above`` to its outside)."""
    eroded = depth > rho
    if not eroded.any():
        return None
    opened = (ndimage.distance_transform_edt(~eroded, sampling=spacing) <= rho) & above
    labels, _ = ndimage.label(opened, structure=CONN_3D)
    label = labels[local]
    if label == 0:
        near = (labels > 0) & (d2 <= radius**2)
        if not near.any():
            return None
        label = labels[near][np.argmin(d2[near])]
    return labels == label
