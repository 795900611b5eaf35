"""A deterministic synthetic chest CT (HU) with ground-truth lung and nodule masks.

Anatomy is drawn in millimetres, so it scales with the spacing: in-plane sizes are absolute (a
torso of ~320 x 230 mm centred in the slice), along z the lungs fill ~85-90% of the scanned
extent (apex near the top slice, costophrenic recesses near the bottom), so the caller picks the
slice spacing to get a realistic lung height. Axes follow LPS: x grows towards the patient's left
(the right lung is at small x), y towards posterior (spine and table at large y), z towards the
head (slice 0 is the most inferior).

Labels: ``lung`` 1 = right lung, 2 = left lung (vessels and nodules inside the lung are lung;
airway lumen and wall are not); ``nodule`` 0/1, always inside the lung label.

Nodules (:class:`NoduleSettings`; the defaults draw today's cohort): kinds ``solid`` (soft tissue),
``part_solid`` (ground glass around a solid core of 30-70% of the diameter, eccentric allowed) and
``ground_glass`` (about -750..-450 HU with a faint texture); positions ``isolated`` (in the
parenchyma), ``juxta_pleural`` (touching the chest wall, cut by the lung edge) and ``juxta_vascular``
(abutting a vessel of the pulmonary tree). The label is the whole nodule, ground glass included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lungseg.demo.shapes import Grid, LobulatedShape, ellipse, tube
from lungseg.demo.vessels import vessel_tree

HU_MIN, HU_MAX = -1024, 3071
AIR, FAT, SOFT, MUSCLE, BLOOD, LIVER = -1000.0, -95.0, 35.0, 45.0, 40.0, 58.0
CORTICAL, CANCELLOUS, DISC, CARTILAGE = 700.0, 230.0, 90.0, 120.0
RIGHT, LEFT = 1, 2
CAVITY_POWER = 2.3  # thoracic cavity and body are super-ellipses, boxier than ellipses
VESSEL_TARGETS = 300  # end points per lung vessel tree


NODULE_KINDS = ("solid", "part_solid", "ground_glass")
NODULE_POSITIONS = ("isolated", "juxta_pleural", "juxta_vascular")
NODULE_EDGES = ("hard", "partial_volume")
# relative frequencies among the enabled kinds / positions, drawn in this order (one uniform draw each,
# only when more than one is enabled): with the default positions, juxta-pleural is ``u < 0.4`` as it always was
KIND_WEIGHTS = {"solid": 4.0, "part_solid": 3.0, "ground_glass": 3.0}
POSITION_WEIGHTS = {"juxta_pleural": 2.0, "juxta_vascular": 2.0, "isolated": 3.0}
SOLID_HU = (20.0, 60.0)  # solid nodules
CORE_HU = (10.0, 60.0)  # solid core of a part-solid nodule
GGO_HU = (-750.0, -450.0)  # ground glass, pure or around a core
CORE_FRACTION = (0.3, 0.7)  # core diameter / nodule diameter
GGO_TEXTURE_HU = (15.0, 35.0)  # standard deviation of the ground-glass texture
GGO_EDGE_FADE = 0.3  # ground glass fades by this fraction towards its edge (fainter margins)
MAX_NODULES_PER_CASE = 50


@dataclass(frozen=True)
class NoduleSettings:
    """How many nodules of which kinds, positions and sizes a phantom gets. The defaults are today's cohort.

    ``per_case`` and ``diameter_mm`` are inclusive ``(min, max)`` ranges (count drawn uniformly among the
    integers, diameter uniformly in mm); ``edges`` ``"hard"`` paints voxels whose centre is inside the
    nodule (the scanner blur is in-plane only), ``"partial_volume"`` paints each voxel with the fraction of
    it that the nodule covers (sub-voxel sampling, along z too) and labels the voxels at least half covered.
    ``gap_mm`` is the least free space between two nodules of a case.
    """

    per_case: tuple[int, int] = (0, 3)
    diameter_mm: tuple[float, float] = (3.0, 25.0)
    kinds: tuple[str, ...] = ("solid",)
    positions: tuple[str, ...] = ("isolated", "juxta_pleural")
    edges: str = "hard"
    gap_mm: float = 5.0

    def __post_init__(self) -> None:
        lo, hi = self.per_case
        if int(lo) != lo or int(hi) != hi:
            raise ValueError(f"nodules per case must be whole numbers, got {lo} {hi}")
        if lo > hi:
            raise ValueError(f"MIN {lo} is greater than MAX {hi}")
        if not 0 <= lo <= hi <= MAX_NODULES_PER_CASE:
            raise ValueError(f"nodules per case must be within 0-{MAX_NODULES_PER_CASE}, got {lo} {hi}")
        dlo, dhi = (float(v) for v in self.diameter_mm)
        if dlo > dhi:
            raise ValueError(f"MIN {dlo:g} mm is greater than MAX {dhi:g} mm")
        if not 1.0 <= dlo <= dhi <= 60.0:
            raise ValueError(f"nodule diameters must be within 1-60 mm, got {dlo:g} {dhi:g}")
        object.__setattr__(self, "per_case", (int(lo), int(hi)))
        object.__setattr__(self, "diameter_mm", (dlo, dhi))
        object.__setattr__(self, "kinds", _canonical("kind", self.kinds, NODULE_KINDS))
        object.__setattr__(self, "positions", _canonical("position", self.positions, NODULE_POSITIONS))
        if self.edges not in NODULE_EDGES:
            raise ValueError(f"unknown nodule edges {self.edges!r}: use one of {', '.join(NODULE_EDGES)}")
        if not 0.0 <= self.gap_mm <= 50.0:
            raise ValueError(f"nodule gap must be 0-50 mm, got {self.gap_mm:g}")


def _canonical(what: str, values, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` in the order of ``allowed`` (so the order given does not change the draws)."""
    values = (values,) if isinstance(values, str) else tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown nodule {what} {unknown[0]!r}: use {', '.join(allowed)}")
    if not values:
        raise ValueError(f"no nodule {what} given: use one or more of {', '.join(allowed)}")
    return tuple(v for v in allowed if v in values)


@dataclass(frozen=True)
class Nodule:
    """One nodule: centre as continuous ``(z, y, x)`` voxel index, size, lung, kind and position."""

    center_zyx: tuple[float, float, float]
    diameter_mm: float
    side: int  # 1 = right lung, 2 = left lung
    kind: str = "solid"  # one of NODULE_KINDS
    position: str = "isolated"  # one of NODULE_POSITIONS

    @property
    def juxta_pleural(self) -> bool:
        return self.position == "juxta_pleural"

    def as_dict(self) -> dict:
        """The JSON record: ``center_zyx``, ``diameter_mm``, ``kind``, ``position``, ``side``."""
        return {"center_zyx": list(self.center_zyx), "diameter_mm": self.diameter_mm, "kind": self.kind,
                "position": self.position, "side": self.side}


@dataclass
class Phantom:
    hu: np.ndarray  # int16 (z, y, x)
    lung: np.ndarray  # uint8, 0 / 1 right / 2 left
    nodule: np.ndarray  # uint8, 0 / 1
    nodules: list[Nodule] = field(default_factory=list)
    nodules_requested: int = 0  # drawn count; ``len(nodules)`` is fewer when there was no room left


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
    nodule_settings: NoduleSettings | None = None,
) -> Phantom:
    """Draw one synthetic chest CT of ``n_slices`` x ``size`` x ``size`` voxels.

    ``n_nodules`` nodules (default: drawn from ``nodule_settings.per_case``) of the kinds, positions and
    sizes of ``nodule_settings`` (default :class:`NoduleSettings()`: 0-3 solid nodules of 3-25 mm).
    """
    settings = nodule_settings if nodule_settings is not None else NoduleSettings()
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
        n_nodules = draw_nodule_count(rng, settings)
    nodule, nodules = _paint_nodules(hu, grid, rng, lung, cavity, n_nodules, settings)
    _paint_airway(hu, grid, a)
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))  # scanner blur / partial volume
    hu += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(a.noise)
    hu = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(hu=hu, lung=lung, nodule=nodule, nodules=nodules, nodules_requested=n_nodules)


def draw_nodule_count(rng: np.random.Generator, settings: NoduleSettings) -> int:
    """The number of nodules of one case (the defaults draw ``rng.integers(0, 4)``, as always)."""
    lo, hi = settings.per_case
    return int(rng.integers(lo, hi + 1))


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
    hu: np.ndarray, grid: Grid, rng: np.random.Generator, lung: np.ndarray, cavity: np.ndarray, count: int,
    settings: NoduleSettings | None = None,
) -> tuple[np.ndarray, list[Nodule]]:
    """Place up to ``count`` nodules, at least ``settings.gap_mm`` apart; skip one when there is no room left.

    Per nodule the draws are: diameter, position (if several enabled), kind (if several enabled), centre,
    shape, HU, then for part-solid the core and for ground glass the texture; so the default settings draw
    exactly what they always drew.
    """
    settings = settings if settings is not None else NoduleSettings()
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
    del d, nearest
    vessel_dist = _vessel_distance(hu, grid, lung, crop) if "juxta_vascular" in settings.positions else None
    for _ in range(count):
        diameter = float(rng.uniform(*settings.diameter_mm))
        radius = diameter / 2
        position = _pick(rng, POSITION_WEIGHTS, settings.positions)
        kind = _pick(rng, KIND_WEIGHTS, settings.kinds)
        cand = _candidates(position, radius, grid, dist, wall_near, vessel_dist) & (lung > 0)
        idx = np.flatnonzero(cand)
        for n in found:
            if idx.size == 0:
                break
            zyx = np.stack(np.unravel_index(idx, grid.shape), axis=-1)
            gap = np.linalg.norm(grid.to_mm(zyx) - grid.to_mm(np.asarray(n.center_zyx)), axis=-1)
            idx = idx[gap > radius + n.diameter_mm / 2 + settings.gap_mm]
        if idx.size == 0:
            continue
        centre_zyx = np.asarray(np.unravel_index(int(rng.choice(idx)), grid.shape), dtype=float)
        if not _paint_one(hu, nodule, grid, rng, lung, grid.to_mm(centre_zyx), radius, kind, settings.edges):
            continue
        found.append(Nodule(tuple(float(v) for v in centre_zyx), round(diameter, 2),
                            int(lung[tuple(centre_zyx.astype(int))]), kind, position))
    return nodule, found


def _pick(rng: np.random.Generator, weights: dict[str, float], enabled: tuple[str, ...]) -> str:
    """One of ``enabled`` by ``weights`` with one uniform draw (none when only one is enabled)."""
    names = [name for name in weights if name in enabled]
    if len(names) == 1:
        return names[0]
    total = sum(weights[name] for name in names)
    u, acc = rng.random(), 0.0
    for name in names:
        acc += weights[name] / total
        if u < acc:
            return name
    return names[-1]


def _vessel_distance(hu: np.ndarray, grid: Grid, lung: np.ndarray, crop) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of a visible vessel (>= ~2 voxels across) in the lung."""
    vessel = (hu[crop] == np.float32(BLOOD)) & (lung[crop] > 0)
    visible = ndimage.binary_opening(vessel, structure=ndimage.generate_binary_structure(3, 1)[1:2])  # in-plane
    sx, sy, sz = grid.spacing
    out = np.full(grid.shape, np.inf, dtype=np.float32)
    if visible.any():
        out[crop] = ndimage.distance_transform_edt(~visible, sampling=(sz, sy, sx))
    return out


def _candidates(position: str, radius: float, grid: Grid, dist: np.ndarray, wall_near: np.ndarray,
                vessel_dist: np.ndarray | None) -> np.ndarray:
    """Voxels where the centre of a nodule of ``radius`` mm at ``position`` may go (``dist``: to the lung edge)."""
    sx, sy, _ = grid.spacing
    if position == "juxta_pleural":  # it overlaps the chest wall a little and is cut by the lung edge
        return (dist >= 0.35 * radius) & (dist <= 0.75 * radius + 0.5 * sx) & wall_near
    away = dist > radius + 3.0
    if vessel_dist is None:
        return away
    if position == "juxta_vascular":  # its edge reaches a vessel, which it does not swallow
        reach = max(0.7 * radius, 1.01 * min(sx, sy))
        return away & (vessel_dist > 0.35 * radius) & (vessel_dist <= reach)
    return away & (vessel_dist > 1.3 * radius + 1.0)  # isolated: clear of the visible vessels, lobulated edge too


def _paint_one(hu: np.ndarray, nodule: np.ndarray, grid: Grid, rng: np.random.Generator, lung: np.ndarray,
               centre_mm: np.ndarray, radius: float, kind: str, edges: str) -> bool:
    """Paint one nodule of ``kind`` centred at ``centre_mm`` into ``hu`` and ``nodule`` (inside the lung only)."""
    centre = np.asarray(centre_mm, dtype=np.float32)
    elongation, lobulation = 0.15, 0.1
    pad = radius * (1 + elongation) * (1 + lobulation) + 1.0
    if edges == "partial_volume":
        pad += max(grid.spacing)
    box = grid.box(centre - pad, centre + pad)
    if box is None:
        return False
    shape = LobulatedShape.draw(rng, radius, elongation, lobulation)
    x, y, z = grid.coords(box)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    in_lung = lung[box] > 0
    region = hu[box]
    if kind == "solid" and edges == "hard":  # exactly as the cohort has always been drawn
        mask = shape.inside(dx, dy, dz) & in_lung
        nodule[box][mask] = 1
        region[mask] = float(rng.uniform(*SOLID_HU))
        return True
    fade = 0.0 if kind == "solid" else GGO_EDGE_FADE
    cover, density = _coverage(grid, shape, dx, dy, dz, edges, fade)
    label = (cover >= 0.5) & in_lung
    if not label.any():
        return False
    nodule[box][label] = 1
    density = np.where(in_lung, density, np.float32(0.0))
    if kind == "solid":
        value = np.float32(rng.uniform(*SOLID_HU))
        region[...] = region * (1 - density) + value * density
        return True
    glass = np.float32(rng.uniform(*GGO_HU))
    if kind == "part_solid":
        core_r = radius * float(rng.uniform(*CORE_FRACTION))
        direction = rng.normal(size=3)
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        offset = direction * float(rng.uniform(0.0, 0.6)) * (radius - core_r)  # eccentric, inside the glass
        core = LobulatedShape.draw(rng, core_r, elongation, lobulation)
        core_value = np.float32(rng.uniform(*CORE_HU))
    texture = rng.standard_normal(region.shape).astype(np.float32)
    texture = ndimage.gaussian_filter(texture, sigma=(0.5, 1.0, 1.0))
    texture *= np.float32(rng.uniform(*GGO_TEXTURE_HU) / max(float(texture.std()), 1e-6))
    glassy = region * (1 - density) + (glass + texture) * density
    region[...] = np.maximum(region, glassy)  # vessels crossing ground glass stay visible
    if kind == "part_solid":
        o = offset.astype(np.float32)
        core_cover, _ = _coverage(grid, core, dx - o[0], dy - o[1], dz - o[2], edges, 0.0)
        core_cover = np.minimum(core_cover, cover) * in_lung
        region[...] = region * (1 - core_cover) + core_value * core_cover
    return True


def _coverage(grid: Grid, shape: LobulatedShape, dx, dy, dz, edges: str, fade: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of every voxel inside ``shape`` and its density (``fade``: fainter towards the edge).

    ``"hard"`` samples each voxel at its centre; ``"partial_volume"`` on a sub-voxel grid of ~0.6 mm steps.
    """
    steps = [1, 1, 1] if edges == "hard" else [int(np.clip(np.ceil(s / 0.6), 2, 5)) for s in grid.spacing]
    offsets = [((np.arange(n, dtype=np.float32) + 0.5) / n - 0.5) * np.float32(s)
               for n, s in zip(steps, grid.spacing, strict=True)]
    full = np.broadcast_shapes(np.shape(dx), np.shape(dy), np.shape(dz))
    cover = np.zeros(full, dtype=np.float32)
    density = np.zeros(full, dtype=np.float32)
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                level = shape.level(dx + ox, dy + oy, dz + oz)
                inside = level <= 1.0
                cover += inside
                density += np.where(inside, 1.0 - fade * np.minimum(level, 1.0) ** 4, 0.0).astype(np.float32)
    n = float(np.prod(steps))
    return cover / n, density / n
