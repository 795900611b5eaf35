"""Synthetic chest radiographs (PA) projected from the CT phantoms, with right / left lung-field masks.

Each case is one demo CT phantom (:func:`lungseg.demo.cohort.generate_demo_scan`) seen from the front:

1. the scanner table is dropped (only the body, the largest connected object, is projected);
2. HU become linear attenuation ``mu = mu_water (1 + HU / 1000)`` (clipped at 0), bone a little more
   (a radiograph's lower energy; how much varies with the "scanner"), integrated along the
   antero-posterior axis (y) in millimetres: the line integral ``p(z, x)``;
3. the anatomy the CT's field of view lacks is added: the neck and shoulders above (with the
   clavicles, bright bands across the lung apices) and the upper abdomen below (with a gastric
   air bubble under the left dome);
4. lung opacities (the demo's "pneumonia": smooth consolidation in the lungs; the lung field still
   counts as lung) in about half of the cases;
5. a random rotation (up to 6 degrees), scale (0.85-1.2) and shift (up to 7%), then the detector:
   ``I = exp(-k p)`` plus scatter (a wide blur of ``I``), Poisson noise at a case's exposure, the
   log, a "scanner"'s window, gamma and edge enhancement, and sometimes a burned-in side marker.

Display convention of a PA chest film: the patient's right on the image's left, head at the top,
dense tissue white. The lung-field mask: a pixel is lung when the lung's path length along the ray
is at least ``lung_fraction`` of the body's (the visible lung fields, as annotators draw them:
the thin lung behind the heart and below the diaphragm domes is not lung field); 1 = right lung,
2 = left lung.

Everything derives from ``(seed, case_id)``: the phantom from :func:`generate_demo_scan`, the
projection's own draws from a generator seeded with both plus ``"xray"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungseg.demo.cohort import _digest, demo_identity, generate_demo_scan
from lungseg.demo.dicom_writer import PatientIdentity

MU_WATER = 0.02  # 1/mm, water at a chest radiograph's effective energy (~60 keV)
BONE_HU = 150.0  # HU above which the extra (photoelectric) bone attenuation is added
CT_SLICES, CT_SIZE = 96, 192  # the phantom projected: 2.3-2.9 mm slices, ~1.9 mm pixels
FIELD_MM = 370.0  # the detector field (square), before the scale jitter
SCANNERS = ("A", "B", "C", "D")
OPACITY_RATE = 0.5  # share of cases with lung opacities


@dataclass(frozen=True)
class Scanner:
    """A "scanner": how it renders the same projection (energy, scatter, dose, processing)."""

    name: str
    energy: float  # multiplies the line integral (lower kVp: more contrast)
    bone: float  # extra bone attenuation per 1000 HU above BONE_HU, in units of mu_water
    scatter: float  # scatter-to-primary ratio of the wide blur
    photons: float  # photons per pixel at full transmission (noise)
    gamma: float
    edge: float  # unsharp-mask amount (edge enhancement)
    low_high: tuple[float, float]  # display window, percentiles of the log image inside the field


SCANNER_TABLE = {
    "A": Scanner("A", 1.00, 0.8, 0.25, 4000.0, 1.00, 0.6, (1.0, 99.5)),
    "B": Scanner("B", 1.15, 1.4, 0.40, 1500.0, 0.80, 0.0, (3.0, 99.0)),
    "C": Scanner("C", 0.85, 0.5, 0.15, 8000.0, 1.25, 1.0, (0.5, 99.8)),
    "D": Scanner("D", 1.05, 1.0, 0.35, 800.0, 1.10, 0.3, (2.0, 98.5)),
}


@dataclass
class Radiograph:
    """One synthetic PA chest radiograph: ``image`` uint16 (12 bits used), ``labels`` uint8 0/1/2."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    pixel_mm: float  # at the patient (the detector's pixel / magnification)
    scanner: str
    opacities: int  # number of opacity blobs drawn in the lungs
    identity: PatientIdentity

    def as_uint8(self) -> np.ndarray:
        """The image as 8-bit grey (what most public radiograph sets ship)."""
        return np.rint(self.image.astype(np.float64) * (255.0 / 4095.0)).astype(np.uint8)


def xray_rng(seed: int, case_id: str) -> np.random.Generator:
    """The projection's own generator (the phantom keeps drawing from the cohort's)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _digest("xray", case_id)]))


def make_radiograph(case_id: str, seed: int, size: int = 256, lung_fraction: float = 0.25) -> Radiograph:
    """Draw the radiograph of demo case ``case_id`` as a ``size`` x ``size`` image."""
    if size < 32:
        raise ValueError(f"radiograph size must be >= 32 pixels, got {size}")
    if not 0.0 < lung_fraction < 1.0:
        raise ValueError(f"lung_fraction must be within (0, 1), got {lung_fraction}")
    scan = generate_demo_scan(case_id, seed, n_slices=CT_SLICES, size=CT_SIZE)
    rng = xray_rng(seed, case_id)
    scanner = SCANNER_TABLE[SCANNERS[int(rng.integers(len(SCANNERS)))]]
    sx, sy, sz = scan.geometry.spacing
    p, body_path, lung_paths = _project(scan.phantom.hu, scan.phantom.lung, sy, scanner)
    # (z, x) -> image rows from the head down: flip z; x already runs from the patient's right to left
    p, body_path, lung_paths = p[::-1], body_path[::-1], lung_paths[:, ::-1]
    p, body_path, lung_paths, top = _extend(p, body_path, lung_paths, sx, sz, rng)
    n_opacities = 0
    if rng.random() < OPACITY_RATE:
        n_opacities = int(rng.integers(1, 6))
        p = p + _opacities(lung_paths, sx, sz, n_opacities, rng)
    p = p + _clavicles(p.shape, sx, sz, top, lung_paths, rng)
    field = _field_transform(p.shape, (sz, sx), size, lung_paths, rng)
    p_img = _resample(p, field, size, order=1)
    body_img = _resample(body_path, field, size, order=1)
    lung_img = np.stack([_resample(lp, field, size, order=1) for lp in lung_paths])
    pixel_mm = field["pixel_mm"]
    image = _detector(p_img, pixel_mm, scanner, rng)
    if rng.random() < 0.5:
        _burn_marker(image, rng)
    labels = _lung_labels(lung_img, body_img, lung_fraction)
    return Radiograph(case_id, image, labels, pixel_mm, scanner.name, n_opacities, demo_identity(case_id, seed))


def _project(hu: np.ndarray, lung: np.ndarray, sy: float, scanner: Scanner
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line integral of attenuation, body path length and right / left lung path lengths along y (mm)."""
    h = hu.astype(np.float32)
    solid, n = ndimage.label(h > -400.0)
    if n > 1:  # keep the body, drop the table
        sizes = np.bincount(solid.ravel())
        sizes[0] = 0
        body = solid == int(np.argmax(sizes))
        body = ndimage.binary_fill_holes(body, structure=np.ones((1, 3, 3), bool)) | (lung > 0)
    else:
        body = solid > 0
    mu = np.clip(MU_WATER * (1.0 + h / 1000.0), 0.0, None)
    mu += MU_WATER * scanner.bone * np.clip(h - BONE_HU, 0.0, None) / 1000.0
    mu[~body] = 0.0
    p = mu.sum(axis=1) * sy
    body_path = body.sum(axis=1).astype(np.float32) * sy
    lung_paths = np.stack([(lung == side).sum(axis=1).astype(np.float32) * sy for side in (1, 2)])
    return p.astype(np.float32), body_path, lung_paths


def _extend(p: np.ndarray, body_path: np.ndarray, lung_paths: np.ndarray, sx: float, sz: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Add the neck and shoulders above the CT's top slice and the upper abdomen below its bottom one.

    Returns the extended arrays and the row of the CT's top slice."""
    nz, nx = p.shape
    above, below = int(round(120.0 / sz)), int(round(130.0 / sz))
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx
    # above: the top slice's profile (body, spine, rib cage), narrowing from the shoulders to the neck
    shoulder_mm = float(rng.uniform(35.0, 60.0))
    neck_half = float(rng.uniform(55.0, 70.0))
    top_row, top_body = p[0], body_path[0]
    width = max(float(np.abs(x[top_body > 0]).max(initial=1.0)), neck_half + 1.0)
    rows_p, rows_b = [], []
    for k in range(above, 0, -1):  # k mm-rows above the top slice, farthest first
        d = k * sz
        t = np.clip((d - shoulder_mm) / 40.0, 0.0, 1.0)
        half = width + (neck_half - width) * (t * t * (3 - 2 * t))
        scale = width / half  # stretch of the top profile
        xs = np.clip(x * scale, x[0], x[-1])
        prof = np.interp(xs, x, top_row) * np.clip(1.0 - 0.25 * t, 0.0, 1.0)
        prof[np.abs(x) > half] = 0.0
        rows_p.append(prof)
        rows_b.append(np.where(np.abs(x) <= half, np.interp(xs, x, top_body), 0.0))
    # below: the bottom slice's profile (liver, spine), with a gastric air bubble under the left dome
    bottom, bottom_b = p[-1], body_path[-1]
    low_p = np.repeat(bottom[None], below, axis=0)
    low_b = np.repeat(bottom_b[None], below, axis=0)
    zz = np.arange(below, dtype=np.float32)[:, None] * sz
    if rng.random() < 0.8:
        cx, cz = float(rng.uniform(40.0, 80.0)), float(rng.uniform(15.0, 45.0))
        rx, rz = float(rng.uniform(20.0, 40.0)), float(rng.uniform(12.0, 25.0))
        depth = float(rng.uniform(30.0, 70.0))  # mm of gas along the ray
        r2 = ((x[None] - cx) / rx) ** 2 + ((zz - cz) / rz) ** 2
        low_p = low_p - MU_WATER * depth * np.clip(1.0 - r2, 0.0, None) ** 0.5
    fade = np.clip(1.0 - zz / (below * sz) * 0.3, 0.0, 1.0)
    low_p = low_p * fade
    p_ext = np.concatenate([np.array(rows_p, np.float32).reshape(-1, nx), p, low_p.astype(np.float32)])
    b_ext = np.concatenate([np.array(rows_b, np.float32).reshape(-1, nx), body_path, low_b.astype(np.float32)])
    zero = np.zeros((2, above, nx), np.float32)
    l_ext = np.concatenate([zero, lung_paths, np.zeros((2, below, nx), np.float32)], axis=1)
    return np.clip(p_ext, 0.0, None), b_ext, l_ext, above


def _opacities(lung_paths: np.ndarray, sx: float, sz: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth consolidations inside the lung fields: extra attenuation in proportion to the lung path."""
    lung = lung_paths.sum(axis=0)
    where = np.argwhere(lung > 0.4 * lung.max())
    out = np.zeros(lung.shape, np.float32)
    if not len(where):
        return out
    rows = np.arange(lung.shape[0], dtype=np.float32)[:, None] * sz
    cols = np.arange(lung.shape[1], dtype=np.float32)[None, :] * sx
    for _ in range(count):
        r, c = where[int(rng.integers(len(where)))]
        sigma_r, sigma_c = rng.uniform(12.0, 45.0, size=2)
        fill = float(rng.uniform(0.25, 0.8))  # fraction of the lung path consolidated at the centre
        blob = np.exp(-0.5 * (((rows - r * sz) / sigma_r) ** 2 + ((cols - c * sx) / sigma_c) ** 2))
        out += (MU_WATER * fill * blob * lung).astype(np.float32)
    return out


def _clavicles(shape: tuple[int, int], sx: float, sz: float, top: int, lung_paths: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Two clavicles: curved bone bands from the sternal notch across each apex towards the shoulder."""
    nz, nx = shape
    rows = np.arange(nz, dtype=np.float32)[:, None] * sz
    x = (np.arange(nx, dtype=np.float32)[None, :] - (nx - 1) / 2) * sx
    lung_rows = np.flatnonzero(lung_paths.sum(axis=(0, 2)) > 0)
    apex = (lung_rows[0] if len(lung_rows) else top) * sz
    out = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        base = apex + float(rng.uniform(45.0, 65.0))  # at the midline, below the apex
        rise = float(rng.uniform(25.0, 40.0))  # the lateral end is higher
        length = float(rng.uniform(115.0, 140.0))
        u = np.clip(side * x / length, 0.0, 1.0)
        centre = base - rise * u + 10.0 * np.sin(np.pi * u)  # gentle S
        half = float(rng.uniform(6.0, 9.0))
        band = np.clip(1.0 - ((rows - centre) / half) ** 2, 0.0, None) ** 0.5
        band *= (side * x > 8.0) & (side * x < length)
        out += MU_WATER * float(rng.uniform(18.0, 26.0)) * 2.0 * band.astype(np.float32)
    return out


def _field_transform(shape: tuple[int, int], spacing: tuple[float, float], size: int, lung_paths: np.ndarray,
                     rng: np.random.Generator) -> dict:
    """Where the detector's ``size`` x ``size`` pixels sample the extended projection: centred on the
    lungs, ``FIELD_MM`` high (scaled 0.85-1.2), rotated by up to 6 degrees and shifted by up to 7%."""
    sz, sx = spacing
    lung = lung_paths.sum(axis=0) > 0
    rows, cols = np.nonzero(lung)
    centre = np.array([0.5 * (rows.min() + rows.max()) * sz + 10.0, 0.5 * (cols.min() + cols.max()) * sx])
    field = FIELD_MM * float(rng.uniform(0.85, 1.2))
    pixel = field / size
    angle = math.radians(float(rng.uniform(-6.0, 6.0)))
    shift = rng.uniform(-0.07, 0.07, size=2) * field
    return {"pixel_mm": pixel, "angle": angle, "centre_mm": centre + shift, "spacing": (sz, sx)}


def _resample(values: np.ndarray, field: dict, size: int, order: int) -> np.ndarray:
    """Sample ``values`` (rows, cols on the projection's mm grid) at the detector's pixels."""
    sz, sx = field["spacing"]
    c, s = math.cos(field["angle"]), math.sin(field["angle"])
    scale = field["pixel_mm"]
    # detector index (i, j) -> mm (centred) -> rotate -> projection index
    matrix = np.array([[c * scale / sz, -s * scale / sz], [s * scale / sx, c * scale / sx]])
    centre_idx = np.array([field["centre_mm"][0] / sz, field["centre_mm"][1] / sx])
    offset = centre_idx - matrix @ np.array([(size - 1) / 2, (size - 1) / 2])
    return ndimage.affine_transform(values, matrix, offset=offset, output_shape=(size, size), order=order,
                                    mode="constant", cval=0.0).astype(np.float32)


def _detector(p: np.ndarray, pixel_mm: float, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Transmission, scatter, quantum noise, log and a scanner's display processing -> 12-bit image."""
    exposure = float(rng.uniform(0.6, 1.6))  # this case's dose relative to the scanner's usual
    energy = scanner.energy * float(rng.uniform(0.95, 1.05))
    primary = np.exp(-energy * p.astype(np.float64))
    scatter = scanner.scatter * ndimage.gaussian_filter(primary, sigma=40.0 / pixel_mm)
    signal = ndimage.gaussian_filter(primary + scatter, sigma=0.6)  # detector blur
    photons = scanner.photons * exposure * (pixel_mm / 1.7) ** 2
    counts = rng.poisson(signal * photons) / photons
    log_image = -np.log(np.maximum(counts, 0.5 / photons))
    inside = p > 1.0  # the window is set on the body, the direct exposure around it saturates
    lo, hi = np.percentile(log_image[inside] if inside.sum() > 100 else log_image, scanner.low_high)
    lo += float(rng.uniform(-0.1, 0.1)) * (hi - lo)
    hi += float(rng.uniform(-0.1, 0.1)) * (hi - lo)
    x = np.clip((log_image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    x = x ** (scanner.gamma * float(rng.uniform(0.9, 1.1)))
    if scanner.edge > 0:
        x = x + scanner.edge * (x - ndimage.gaussian_filter(x, sigma=4.0 / pixel_mm))
    return np.rint(np.clip(x, 0.0, 1.0) * 4095.0).astype(np.uint16)


def _burn_marker(image: np.ndarray, rng: np.random.Generator) -> None:
    """A burned-in side marker: a bright block with a dark letter-like stroke in an upper corner."""
    n = image.shape[0]
    h, w = max(4, n // 20), max(3, n // 28)
    r = int(rng.integers(n // 25, n // 8))
    c = int(rng.integers(n // 25, n // 8)) if rng.random() < 0.5 else n - w - int(rng.integers(n // 25, n // 8))
    image[r:r + h, c:c + w] = 4095
    image[r + h // 4:r + h - h // 4, c + w // 3:c + w // 3 + max(1, w // 4)] = 600


def _lung_labels(lung_paths: np.ndarray, body_path: np.ndarray, lung_fraction: float) -> np.ndarray:
    """1 (right) / 2 (left) where that lung's path is at least ``lung_fraction`` of the body's."""
    right, left = lung_paths
    total = np.maximum(body_path, 1.0)
    labels = np.zeros(right.shape, np.uint8)
    labels[(right >= lung_fraction * total) & (right >= left)] = 1
    labels[(left >= lung_fraction * total) & (left > right)] = 2
    return labels
