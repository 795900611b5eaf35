"""A deterministic synthetic chest CT (HU) with ground-truth lung and nodule masks.

Anatomy is drawn in millimetres, so it scales with the spacing: in-plane sizes are absolute (a
torso of ~320 x 230 mm centred in the slice), along z the lungs fill ~85-90% of the scanned
extent (apex near the top slice, costophrenic recesses near the bottom), so the caller picks the
slice spacing to get a realistic lung height. Axes follow LPS: x grows towards the patient's left
(the right lung is at small x), y towards posterior (spine and table at large y), z towards the
head (slice 0 is the most inferior).

Labels: ``lung`` 1 = right lung, 2 = left lung (vessels and nodules inside the lung are lung;
airway lumen and wall are not); ``nodule`` 0/1, always inside the lung label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lungseg.demo.shapes import Grid, ellipse, lobulated_blob, tube
from lungseg.demo.vessels import vessel_tree

HU_MIN, HU_MAX = -1024, 3071
AIR, FAT, SOFT, MUSCLE, BLOOD, LIVER = -1000.0, -95.0, 35.0, 45.0, 40.0, 58.0
CORTICAL, CANCELLOUS, DISC, CARTILAGE = 700.0, 230.0, 90.0, 120.0
RIGHT, LEFT = 1, 2
CAVITY_POWER = 2.3  # thoracic cavity and body are super-ellipses, boxier than ellipses
VESSEL_TARGETS = 300  # end points per lung vessel tree


@dataclass(frozen=True)
class Nodule:
    """One nodule: centre as continuous ``(z, y, x)`` voxel index, size, and position kind."""

    center_zyx: tuple[float, float, float]
    diameter_mm: float
    juxta_pleural: bool
    side: int  # 1 = right lung, 2 = left lung


@dataclass
class Phantom:
    hu: np.ndarray  # int16 (z, y, x)
    lung: np.ndarray  # uint8, 0 / 1 right / 2 left
    nodule: np.ndarray  # uint8, 0 / 1
    nodules: list[Nodule] = field(default_factory=list)


@dataclass(frozen=True)
class _Anatomy:
    """Per-case anatomical parameters (mm, grid coordinates of :mod:`lungseg.demo.shapes`)."""

    body_ax: float
    body_ay: float
    body_cy: float
    fat: float
    cav_ax: float
    cav_ay: float
    cav_cy: float
    z_low: float
    z_apex: tuple[float, float]  # right, left
    dome_top: tuple[float, float]  # right, left
    z_car: float
    z_arch: float
    vb_rx: float
    vb_ry: float
    vb_y: float
    canal_y: float
    disc_pitch: float
    disc_phase: float
    tr_y: float
    tr_r: float
    eso_y: float
    rib_pitch: float
    rib_phase: float
    rib_slope: float
    heart: tuple[float, float, float, float, float, float]  # centre x, y, z, semi-axes x, y, z
    table_gap: float
    lung_hu: float
    noise: float


def make_phantom(
    rng: np.random.Generator,
    n_slices: int,
    size: int,
    spacing_xyz: tuple[float, float, float],
    *,
    n_nodules: int | None = None,
) -> Phantom:
    """Draw one synthetic chest CT of ``n_slices`` x ``size`` x ``size`` voxels (0-3 nodules unless given)."""
    grid = Grid((n_slices, size, size), tuple(float(s) for s in spacing_xyz))
    a = _draw_anatomy(rng, grid)
    hu = np.full(grid.shape, AIR, dtype=np.float32)
    _paint_table(hu, grid, a)
    cavity = _paint_body_and_ribs(hu, grid, a)
    mediastinum, abdomen = _paint_mediastinum(hu, grid, a, cavity)
    _paint_spine(hu, grid, a)
    airway = _airway(grid, a)
    lung = _lung_label(grid, a, cavity, mediastinum | abdomen, airway)
    inside = lung > 0
    gravity = (grid.y - a.cav_cy) / (2 * a.cav_ay)  # denser dependent (posterior) lung
    hu[inside] = np.broadcast_to(a.lung_hu + 45.0 * gravity, grid.shape)[inside]
    _paint_vessels(hu, grid, rng, a, lung)
    if n_nodules is None:
        n_nodules = int(rng.integers(0, 4))
    nodule, nodules = _paint_nodules(hu, grid, rng, lung, cavity, n_nodules)
    _paint_airway(hu, grid, a)
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))  # scanner blur / partial volume
    hu += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(a.noise)
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(hu=hu, lung=lung, nodule=nodule, nodules=nodules)


def _draw_anatomy(rng: np.random.Generator, grid: Grid) -> _Anatomy:
    u = rng.uniform
    body_ax, body_ay = u(150, 172), u(105, 122)
    body_cy, fat = u(-30, -18), u(8, 28)
    cav_ant = body_cy - body_ay + 2 + fat + u(12, 18)  # anterior chest wall: skin, fat, muscle
    cav_post = body_cy + body_ay - 2 - fat - u(30, 38)  # posterior: paraspinal muscles, ribs
    cav_ax = body_ax - 2 - fat - u(14, 20)
    lz = grid.extent_z
    z_low = u(0.04, 0.08) * lz
    apex_r = u(0.89, 0.93) * lz
    apex_l = apex_r - u(0, 0.02) * lz
    height = apex_r - z_low
    dome_r = z_low + u(0.30, 0.38) * height
    dome_l = dome_r - u(0.03, 0.08) * height
    z_car = apex_r - u(0.33, 0.40) * height
    vb_ry = u(14, 17)
    canal_y = cav_post + 2
    vb_y = canal_y - 7.5 - 3 - vb_ry
    hz = 0.25 * height
    cav_ay = (cav_post - cav_ant) / 2
    cav_cy = (cav_post + cav_ant) / 2
    heart = (0.18 * cav_ax, cav_cy - 0.28 * cav_ay, dome_l - 8 + 0.7 * hz, 0.45 * cav_ax, 0.55 * cav_ay, hz)
    return _Anatomy(
        body_ax=body_ax, body_ay=body_ay, body_cy=body_cy, fat=fat,
        cav_ax=cav_ax, cav_ay=cav_ay, cav_cy=cav_cy,
        z_low=z_low, z_apex=(apex_r, apex_l), dome_top=(dome_r, dome_l), z_car=z_car,
        z_arch=z_car + 0.09 * height,
        vb_rx=vb_ry * u(1.15, 1.3), vb_ry=vb_ry, vb_y=vb_y, canal_y=canal_y,
        disc_pitch=u(24, 30), disc_phase=u(0, 30),
        tr_y=vb_y - vb_ry - 26, tr_r=u(7.5, 9.5), eso_y=vb_y - vb_ry - 8,
        rib_pitch=u(24, 30), rib_phase=u(0, 30), rib_slope=u(55, 85),
        heart=heart, table_gap=u(3, 12), lung_hu=u(-875, -845), noise=u(15, 25),
    )


def _cavity_scale(grid: Grid, a: _Anatomy) -> np.ndarray:
    """Per-slice (nz, 1, 1) shrink of the thoracic cavity towards the narrow upper thorax."""
    top = max(a.z_apex) + 5
    return 0.45 + 0.55 * np.sqrt(np.clip((top - grid.z) / (0.4 * (top - a.z_low)), 0, 1))


def _paint_table(hu: np.ndarray, grid: Grid, a: _Anatomy) -> None:
    """A curved scanner table under the back: two ~+350 HU skins around a foam core."""
    x, y = grid.x[0], grid.y[0]
    top = a.body_cy + a.body_ay + a.table_gap - 18.0 * (x / 200.0) ** 2  # rises at the sides
    depth = y - top
    width = np.abs(x) < 205
    plate = np.zeros(depth.shape, dtype=np.float32)
    plate[(depth >= 0) & (depth < 3) & width] = 350.0
    plate[(depth >= 3) & (depth < 28) & width] = -930.0
    plate[(depth >= 28) & (depth < 31) & width] = 300.0
    drawn = plate != 0
    hu[:, drawn] = plate[drawn]


def _paint_body_and_ribs(hu: np.ndarray, grid: Grid, a: _Anatomy) -> np.ndarray:
    """Skin, subcutaneous fat, chest-wall muscle, ribs, sternum; return the thoracic cavity mask."""
    x, y, z = grid.x, grid.y, grid.z
    ax, ay, cy = a.body_ax, a.body_ay, a.body_cy
    body = ellipse(x, y, 0, cy, ax, ay, power=2.3)
    hu[np.broadcast_to(body, hu.shape)] = SOFT
    under_skin = ellipse(x, y, 0, cy, ax - 2, ay - 2, power=2.3)
    hu[np.broadcast_to(under_skin, hu.shape)] = FAT
    f = a.fat
    muscle = ellipse(x, y, 0, cy, ax - 2 - f, ay - 2 - f, power=2.3)
    hu[np.broadcast_to(muscle, hu.shape)] = MUSCLE

    g = _cavity_scale(grid, a)
    cax, cay = a.cav_ax * g, a.cav_ay * g
    cyy = a.cav_cy + (1 - g) * a.cav_ay * 0.3  # upper thorax sits more posterior
    rho = (np.abs(x / cax) ** CAVITY_POWER + np.abs((y - cyy) / cay) ** CAVITY_POWER) ** (1 / CAVITY_POWER)
    cavity = rho <= 1.0
    hu[cavity] = SOFT

    # ribs: oblique bands just outside the cavity, descending from the spine to the front
    dist = np.sqrt(x**2 + (y - cyy) ** 2)
    d_out = dist * (1 - 1 / np.maximum(rho, 1e-3))  # mm outside the cavity along the ray
    phi = np.arccos(np.clip((y - cyy) / np.maximum(dist, 1e-3), -1, 1))  # 0 = posterior, pi = anterior
    side_jitter = np.where(x < 0, 0.0, 1.5).astype(np.float32)
    zeff = z + a.rib_slope * phi / np.pi + side_jitter - a.rib_phase
    frac = (zeff / a.rib_pitch) % 1.0
    height, thick = 11.0 / a.rib_pitch, 6.5
    rib = (d_out > 1.0) & (d_out < 1.0 + thick) & (frac < height) & muscle & (z < max(a.z_apex) + 12)
    rib &= ~((np.abs(x) < a.vb_rx + 10) & (y > a.cav_cy))  # no ribs through the spine
    rib &= phi < 0.95 * np.pi  # sternum in front
    marrow = rib & (np.abs(d_out - 1.0 - thick / 2) < 1.6) & (np.abs(frac - height / 2) < 0.3 * height)
    cartilage = rib & (phi > 0.8 * np.pi)
    hu[(d_out > 9.0) & (d_out < 12.0) & (phi > 0.3 * np.pi) & muscle] = FAT  # fat plane under the muscles
    hu[rib] = CORTICAL
    hu[marrow] = CANCELLOUS + 40
    hu[cartilage] = CARTILAGE

    # sternum: from the manubrium to the xiphoid
    ant = (a.cav_cy - a.cav_ay * g) - 7.0
    in_z = (z > a.dome_top[0] - 10) & (z < a.z_arch + 25)
    sternum = ellipse(x, y, 0, ant, 14, 5.5) & in_z
    hu[sternum] = CORTICAL - 200
    hu[ellipse(x, y, 0, ant, 11.5, 3.2) & in_z] = CANCELLOUS
    return cavity


def _paint_mediastinum(
    hu: np.ndarray, grid: Grid, a: _Anatomy, cavity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mediastinal fat, heart, great vessels, oesophagus and upper abdomen; return both masks."""
    x, y, z = grid.x, grid.y, grid.z
    s = (y - (a.cav_cy - a.cav_ay)) / (2 * a.cav_ay)
    half_width = np.interp(s.ravel(), [0, 0.2, 0.5, 0.8, 1.0], [6, 13, 20, 18, 15]).astype(np.float32)
    band = (np.abs(x - 2.0) < half_width.reshape(s.shape)) & cavity
    hu[band] = FAT
    mediastinum = band.copy()

    abdomen = cavity & ((z < _dome(grid, a)) | (z < a.z_low))

    hx, hy, hz, rx, ry, rz = a.heart
    heart = ellipse(x, y, hx, hy, rx, ry) & (np.abs(z - hz) <= rz)
    heart &= ((x - hx) / rx) ** 2 + ((y - hy) / ry) ** 2 + ((z - hz) / rz) ** 2 <= 1.0
    hu[heart] = FAT
    core = ((x - hx) / (rx - 4)) ** 2 + ((y - hy) / (ry - 4)) ** 2 + ((z - hz) / (rz - 4)) ** 2 <= 1.0
    hu[core] = BLOOD
    mediastinum |= heart

    heart_top = hz + 0.55 * rz
    da = (a.vb_rx + 10.0, a.vb_y - 6.0)
    aa = (-6.0, a.tr_y - 36.0)
    vessels = [  # (start, end, radius) in mm
        ((aa[0], aa[1], heart_top - 15), (aa[0], aa[1], a.z_arch), 14.0),  # ascending aorta
        ((aa[0], aa[1], a.z_arch), (10.0, a.tr_y - 12, a.z_arch + 6), 12.0),  # arch
        ((10.0, a.tr_y - 12, a.z_arch + 6), (da[0], da[1], a.z_arch), 12.0),
        ((da[0], da[1], a.z_arch), (da[0], da[1], -20.0), 12.0),  # descending aorta
        ((-24.0, a.tr_y - 18, a.z_arch + 30), (-24.0, a.tr_y - 18, heart_top - 10), 9.0),  # SVC
        ((12.0, a.tr_y - 38, heart_top - 10), (22.0, a.tr_y - 18, a.z_car - 18), 13.0),  # pulmonary trunk
        ((22.0, a.tr_y - 18, a.z_car - 18), (48.0, a.tr_y - 2, a.z_car - 20), 9.0),  # left PA
        ((16.0, a.tr_y - 14, a.z_car - 22), (-44.0, a.tr_y - 2, a.z_car - 28), 9.0),  # right PA
        ((4.0, a.eso_y, a.z_apex[0] + 60), (6.0, a.eso_y, a.dome_top[1] - 10), 8.0),  # oesophagus
    ]
    for p0, p1, r in vessels:
        drawn = tube(grid, p0, p1, r + 2.0)
        if drawn is not None:
            box, mask = drawn
            mediastinum[box] |= mask & cavity[box]
            hu[box][mask & cavity[box] & ~heart[box]] = FAT
    for p0, p1, r in vessels:
        drawn = tube(grid, p0, p1, r)
        if drawn is not None:
            box, mask = drawn
            hu[box][mask] = BLOOD if r > 8.0 else SOFT

    spine_zone = ellipse(x, y, 0, a.vb_y, a.vb_rx + 4, a.vb_ry + 4) | ((np.abs(x) < a.vb_rx + 2) & (y > a.vb_y))
    mediastinum |= spine_zone & cavity
    right = x < 0
    hu[abdomen & right] = LIVER
    hu[abdomen & ~right] = LIVER - 12
    return mediastinum & ~abdomen, abdomen


def _dome(grid: Grid, a: _Anatomy) -> np.ndarray:
    """Height (z, mm) of the diaphragm at every (y, x), shaped ``(1, ny, nx)``: right dome higher."""
    x, y = grid.x, grid.y
    sign = np.where(x < 0, -1.0, 1.0)
    top = np.where(x < 0, a.dome_top[0], a.dome_top[1])
    r2 = ((x - sign * 0.5 * a.cav_ax) / (0.62 * a.cav_ax)) ** 2 + ((y - (a.cav_cy - 0.25 * a.cav_ay)) / (1.1 * a.cav_ay)) ** 2
    return (top - (top - a.z_low) * r2).astype(np.float32)


def _paint_spine(hu: np.ndarray, grid: Grid, a: _Anatomy) -> None:
    """Vertebral bodies with a bright cortical rim and discs, spinal canal, posterior elements."""
    x, y, z = grid.x, grid.y, grid.z
    body = ellipse(x, y, 0, a.vb_y, a.vb_rx, a.vb_ry)
    inner = ellipse(x, y, 0, a.vb_y, a.vb_rx - 2.5, a.vb_ry - 2.5)
    disc = ((z - a.disc_phase) % a.disc_pitch) < 5.0
    hu[np.broadcast_to(body, hu.shape)] = CORTICAL
    hu[inner & ~disc] = CANCELLOUS
    hu[body & disc] = DISC
    r = np.sqrt(x**2 + (y - a.canal_y) ** 2)
    back = a.body_cy + a.body_ay - 2 - a.fat - 6
    arch = (r >= 7.5) & (r < 13) & (y > a.canal_y - 3)
    pedicle = (np.abs(x) > 5.5) & (np.abs(x) < 11) & (y > a.vb_y) & (y < a.canal_y)
    spinous = (np.abs(x) < 4) & (y > a.canal_y) & (y < min(a.canal_y + 36, back))
    transverse = (np.abs(x) < 27) & (np.abs(y - a.canal_y + 1 - 0.4 * np.abs(x)) < 3.5) & (r >= 7.5)
    posterior = arch | pedicle | spinous | transverse
    hu[np.broadcast_to(posterior, hu.shape)] = CORTICAL - 150
    hu[np.broadcast_to(r < 7.5, hu.shape)] = 20.0


def _airway_tubes(a: _Anatomy, z_top: float) -> list[tuple[tuple, tuple, float]]:
    """Trachea, main and lobar bronchi as (start, end, lumen radius) in mm."""
    c = (0.0, a.tr_y, a.z_car)
    rmb = (-30.0, a.tr_y + 8, a.z_car - 20)
    lmb = (40.0, a.tr_y + 12, a.z_car - 36)
    return [
        ((0.0, a.tr_y, z_top), c, a.tr_r),
        (c, rmb, 0.75 * a.tr_r),
        (c, lmb, 0.65 * a.tr_r),
        (rmb, (-52.0, a.tr_y + 2, a.z_car - 8), 4.0),  # right upper lobe
        (rmb, (-40.0, a.tr_y + 12, a.z_car - 55), 4.8),  # bronchus intermedius
        (lmb, (58.0, a.tr_y + 2, a.z_car - 24), 4.2),  # left upper lobe
        (lmb, (54.0, a.tr_y + 18, a.z_car - 62), 4.2),  # left lower lobe
    ]


def _airway(grid: Grid, a: _Anatomy) -> np.ndarray:
    """Mask of airway lumen plus wall (excluded from the lung label)."""
    out = np.zeros(grid.shape, dtype=bool)
    for p0, p1, r in _airway_tubes(a, grid.extent_z + 20):
        drawn = tube(grid, p0, p1, r + 2.0)
        if drawn is not None:
            out[drawn[0]] |= drawn[1]
    return out


def _paint_airway(hu: np.ndarray, grid: Grid, a: _Anatomy) -> None:
    tubes = _airway_tubes(a, grid.extent_z + 20)
    for wall in (True, False):
        for p0, p1, r in tubes:
            drawn = tube(grid, p0, p1, r + 2.0 if wall else r)
            if drawn is not None:
                hu[drawn[0]][drawn[1]] = SOFT if wall else AIR


def _lung_label(grid: Grid, a: _Anatomy, cavity: np.ndarray, excluded: np.ndarray, airway: np.ndarray) -> np.ndarray:
    """Right (1) and left (2) lungs: cavity within each tapering lung envelope, above the diaphragm."""
    x, y, z = grid.x, grid.y, grid.z
    g = _cavity_scale(grid, a)
    lung = np.zeros(grid.shape, dtype=np.uint8)
    free = cavity & ~excluded & ~airway & (z >= a.z_low)
    for label, sign, apex in ((RIGHT, -1.0, a.z_apex[0]), (LEFT, 1.0, a.z_apex[1])):
        e = np.sqrt(np.clip((apex - z) / (0.4 * (apex - a.z_low)), 0, 1))  # rounded apex
        cx = sign * 0.5 * a.cav_ax * g
        cy = a.cav_cy + 0.2 * a.cav_ay * (1 - e)  # apices lie posterior
        ex = np.maximum(0.56 * a.cav_ax * g * e, 1e-3)
        ey = np.maximum(1.02 * a.cav_ay * g * e, 1e-3)
        env = np.abs((x - cx) / ex) ** 2.3 + np.abs((y - cy) / ey) ** 2.3 <= 1
        side = free & env & (sign * x > 0)
        lung[_largest_component(side)] = label
    return lung


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _paint_vessels(hu: np.ndarray, grid: Grid, rng: np.random.Generator, a: _Anatomy, lung: np.ndarray) -> None:
    """A pulmonary vessel tree per lung, rooted at its hilum, drawn only inside that lung."""
    min_radius = 0.3 * min(grid.spacing[:2])
    roots = {RIGHT: (-44.0, a.tr_y - 2, a.z_car - 28), LEFT: (48.0, a.tr_y - 2, a.z_car - 20)}
    for label, root in roots.items():
        idx = np.flatnonzero(lung == label)
        if idx.size < VESSEL_TARGETS:
            continue
        pick = rng.choice(idx, size=VESSEL_TARGETS, replace=False)
        targets = grid.to_mm(np.stack(np.unravel_index(pick, grid.shape), axis=-1))
        for p0, p1, r0, r1 in vessel_tree(rng, np.asarray(root), targets, r_root=7.0):
            if max(r0, r1) < min_radius:
                continue  # far thinner than a voxel: lost to partial volume on coarse grids
            drawn = tube(grid, p0, p1, r0, r1)
            if drawn is not None:
                box, mask = drawn
                hu[box][mask & (lung[box] == label)] = BLOOD


def _paint_nodules(
    hu: np.ndarray, grid: Grid, rng: np.random.Generator, lung: np.ndarray, cavity: np.ndarray, count: int
) -> tuple[np.ndarray, list[Nodule]]:
    """Place ``count`` nodules: isolated in the parenchyma or touching the chest wall (juxta-pleural)."""
    nodule = np.zeros(grid.shape, dtype=np.uint8)
    found: list[Nodule] = []
    if count == 0 or not lung.any():
        return nodule, found
    sx, sy, sz = grid.spacing
    dist = np.zeros(grid.shape, dtype=np.float32)
    wall_near = np.zeros(grid.shape, dtype=bool)
    crop = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects((lung > 0).astype(np.uint8))[0])
    d, nearest = ndimage.distance_transform_edt(lung[crop] > 0, sampling=(sz, sy, sx), return_indices=True)
    dist[crop] = d
    wall_near[crop] = ~cavity[crop][tuple(nearest)]  # the closest non-lung voxel is outside the cavity
    for _ in range(count):
        diameter = float(rng.uniform(3.0, 25.0))
        radius = diameter / 2
        juxta = bool(rng.random() < 0.4)
        cand = (dist >= 0.35 * radius) & (dist <= 0.75 * radius + 0.5 * sx) & wall_near if juxta else dist > radius + 3.0
        cand &= lung > 0
        idx = np.flatnonzero(cand)
        for n in found:
            if idx.size == 0:
                break
            zyx = np.stack(np.unravel_index(idx, grid.shape), axis=-1)
            gap = np.linalg.norm(grid.to_mm(zyx) - grid.to_mm(np.asarray(n.center_zyx)), axis=-1)
            idx = idx[gap > radius + n.diameter_mm / 2 + 5.0]
        if idx.size == 0:
            continue
        centre_zyx = np.asarray(np.unravel_index(int(rng.choice(idx)), grid.shape), dtype=float)
        drawn = lobulated_blob(grid, rng, grid.to_mm(centre_zyx), radius)
        if drawn is None:
            continue
        box, mask = drawn
        mask &= lung[box] > 0
        nodule[box][mask] = 1
        hu[box][mask] = float(rng.uniform(20, 60))
        found.append(Nodule(tuple(float(v) for v in centre_zyx), round(diameter, 2), juxta,
                            int(lung[tuple(centre_zyx.astype(int))])))
    return nodule, found
