"""``threshold_3d``, lungseg's own lung-parenchyma mask (the default method): 3-D, classical, vectorised,
labelled right (1) / left (2).

Steps (sizes in mm, converted per axis, so anisotropic spacing is handled):

1. Work on a coarse grid (in-plane blocks of about ``working_mm``) and threshold air (``air_hu``).
2. Outside air = air components that reach the in-plane border of the volume; the body is the
   largest connected non-outside region (a scanner table or arms lying apart are dropped). From
   here on only the body's box is worked on.
3. Airway lumen and gas: per-slice air components inside the body that are mostly pure air
   (< ``lumen_hu``) are the trachea, bronchi (or bowel gas); they are removed with their wall.
4. Lungs: 3-D components of the remaining air, large and not pure air; each is put right or left
   of the body's midline in physical space; a component spanning both sides (lungs that touch) is
   split by erosion + watershed. Components smaller than ``min_lung_fraction`` of the largest are
   kept only when they look like aerated lung (at most ``fragment_pure_fraction`` pure air), lie on
   one side and wholly above the centre of the large ones (in patient space): a part of a lung cut
   off by consolidation or a tumour (an apex above a consolidated upper lobe), while gas below the
   diaphragm (colon, stomach) lies below the lungs' centre and an airway lumen that step 3 missed
   is mostly pure air.
5. Per lung, what lies between the lungs (mediastinum, hilum) left aside: gaps along z are bridged
   (``closing_z_mm``), then an in-plane octagonal closing rolls along the pleura (``closing_mm``)
   and holes are filled per slice; of what that adds, thin parts (vessels) are kept, and thick
   parts only when they are nodule-like (closed off by lung above and below, at most
   ``max_nodule_mm`` long). Next to such a nodule against the chest wall, the pleura is followed
   beyond the chord that closing gives: the chest wall's thickness changes slowly, so wall tissue
   at least as far from the skin as the pleura around the nodule is nodule (``wall_follow_mm``,
   ``wall_window_mm``, ``wall_tolerance_mm``). Then holes are filled in 3-D.
6. Back on the full grid (only the box around the mask): the inside of the coarse mask is kept, its
   one-block rim follows the full-resolution air threshold; blocks next to what step 5 added are kept
   whole (a nodule's edge against the chest wall cannot be told from it), except at the hilum (the
   mediastinum and the blocks next to it, where vessels and bronchi enter: planning contours leave
   the hilum out). Last, the partial-volume layer: a voxel face-adjacent to the mask (in-plane or
   across slices) that holds at least about a third of aerated lung (below ``partial_volume_hu``;
   soft tissue is about +40 HU, aerated lung about -860 HU) is lung, as planning contours draw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from lungseg.geometry import Geometry
from lungseg.lungmask.morphology import (
    CONN_2D,
    CONN_3D,
    below,
    close_octagon,
    components_touching,
    count_below,
    dilate,
    erode,
    erode_octagon,
    fill_holes,
    sample_below,
    upsample,
)
from lungseg.lungmask.sides import LEFT, MERGED_FRACTION, RIGHT, between_lungs, midline_side, split_merged


@dataclass(frozen=True)
class Threshold3DParams:
    """Settings of the ``threshold_3d`` method (HU thresholds; sizes in mm or mL)."""

    air_hu: float = -400.0  #: air and aerated lung are darker than this
    partial_volume_hu: float = -250.0  #: a voxel next to the lung darker than this holds at least a third of lung
    lumen_hu: float = -950.0  #: pure air (airway lumen, gas) is darker than this
    lumen_fraction: float = 0.5  #: a region with more pure-air voxels than this is airway or gas
    airway_max_mm2: float = 1500.0  #: largest in-plane cross-section taken as airway / gas
    airway_wall_mm: float = 2.0  #: airway wall removed around the lumen
    working_mm: float = 3.3  #: in-plane size of the coarse grid's blocks
    closing_mm: float = 12.0  #: in-radius of the in-plane closing octagon rolled along the pleura
    closing_z_mm: float = 10.0  #: gaps along z up to twice this long are bridged (nodules seen from above/below)
    thick_mm: float = 4.0  #: additions with an in-plane half-width above this must look like a nodule:
    max_nodule_mm: float = 35.0  #: ... at most this long along z, and closed off by lung above and below
    wall_follow_mm: float = 6.0  #: next to such a nodule, wall tissue this close and as deep as the pleura is lung
    wall_window_mm: float = 20.0  #: half-size of the window in which the pleura's depth around a nodule is averaged
    wall_tolerance_mm: float = 1.5  #: ... and how much shallower than that average the bulging pleura may lie
    min_lung_ml: float = 5.0  #: smaller air components are not lung
    min_lung_fraction: float = 0.02  #: ... nor those smaller than this fraction of the largest, unless they are
    fragment_pure_fraction: float = 0.1  #: ... aerated (at most this fraction pure air), on one side, above the lungs


@dataclass
class LungMaskResult:
    mask: np.ndarray  #: uint8 (z, y, x): 0 background, 1 right lung, 2 left lung (per_slice_otsu: 1 lung)
    notes: list[str] = field(default_factory=list)  #: what the method noticed (shown in the QA)


def _voxels(mm: float, spacing: tuple[float, ...], minimum: int = 0) -> tuple[int, ...]:
    return tuple(max(minimum, int(round(mm / s))) for s in spacing)


def _largest(labels: np.ndarray, n: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _airway(candidates: np.ndarray, pure: np.ndarray, params: Threshold3DParams, pixel_mm2: float) -> np.ndarray:
    """Per-slice air regions that are mostly pure air and at most ``airway_max_mm2``: lumen or gas."""
    labels, n = ndimage.label(candidates, structure=CONN_2D)
    count = np.bincount(labels.ravel(), minlength=n + 1)
    n_pure = np.bincount(labels[pure], minlength=n + 1)
    lumen = (n_pure > params.lumen_fraction * count) & (count * pixel_mm2 <= params.airway_max_mm2)
    lumen[0] = False
    return lumen[labels]


def _upper_fragments(labels: np.ndarray, small: np.ndarray, big: np.ndarray, volume: np.ndarray,
                     spacing: tuple[float, float, float], geometry: Geometry) -> np.ndarray:
    """Of the ``small`` lung-like components (label lookup tables; ``volume`` per label), those wholly above
    the centre of the ``big`` ones (their boxes' centres weighted by volume): parts of a lung cut off by
    consolidation or a tumour (an apex above a consolidated upper lobe). Gas below the diaphragm (colon,
    stomach) lies below the lungs' centre and stays out."""
    out = np.zeros_like(small)
    if not small.any():
        return out
    z_axis = np.asarray(geometry.direction_matrix, dtype=float)[2] * np.array(spacing[::-1])  # LPS z per x, y, z index
    boxes = ndimage.find_objects(labels)
    big_ids = np.flatnonzero(big)
    centres = np.array([[(b.start + b.stop - 1) / 2 for b in boxes[i - 1]] for i in big_ids])
    centre_z = float(np.dot(centres @ z_axis[::-1], volume[big_ids]) / volume[big_ids].sum())
    for comp in np.flatnonzero(small):
        box = boxes[comp - 1]
        corners = np.array([[b.start, b.stop - 1] for b in box])  # (z, y, x) index ranges
        lowest = sum(min(z_axis[2 - k] * c for c in corners[k]) for k in range(3))
        out[comp] = lowest > centre_z
    return out


def _nodule_like(added: np.ndarray, lung: np.ndarray, thick: tuple[int, int, int],
                 max_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``added`` (closing / hole filling of ``lung``) that is lung: thin parts and nodules.

    Thin additions (vessels, small notches) are kept. A thick addition is kept only if it is a
    nodule-sized blob closed off by lung along z as well: at most ``max_slices`` long, and the
    slices just above and just below its thick core mostly lung (or added). Organs the lung wraps
    around (diaphragm dome, aorta, heart) are longer or continue into non-lung tissue: the in-slice
    pieces of ``added`` that hold their core are dropped. Returns the kept additions and, of them,
    the in-slice pieces holding a kept thick core (the nodules).
    """
    core = erode_octagon(added, thick) & added
    if not core.any():
        return added, np.zeros_like(added)
    labels, n = ndimage.label(core, structure=CONN_3D)
    extent = np.array([0] + [s[0].stop - s[0].start for s in ndimage.find_objects(labels)])
    organ = extent > max_slices
    closed = lung | added
    for ahead, behind in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
        next_label = labels[behind]  # the core's label, seen from the neighbouring slice
        face = (next_label > 0) & (labels[ahead] == 0)
        n_face = np.bincount(next_label[face], minlength=n + 1)
        n_closed = np.bincount(next_label[face & closed[ahead]], minlength=n + 1)
        organ |= n_closed < 0.5 * n_face
    organ[0] = False
    pieces, n_pieces = ndimage.label(added, structure=CONN_2D)
    dropped = np.zeros(n_pieces + 1, dtype=bool)
    dropped[pieces[organ[labels]]] = True
    dropped[0] = False
    nodule = np.zeros(n_pieces + 1, dtype=bool)
    nodule[pieces[(labels > 0) & ~organ[labels]]] = True
    nodule[0] = False
    nodule &= ~dropped
    return added & ~dropped[pieces], nodule[pieces]


def _follow_wall(kept: np.ndarray, nodules: np.ndarray, room: np.ndarray, body: np.ndarray,
                 box: tuple[slice, slice, slice], spacing: tuple[float, float, float],
                 params: Threshold3DParams) -> tuple[slice, np.ndarray]:
    """Where the pleura under a juxta-pleural nodule bulges out: what to add to ``kept`` (one lung, in
    ``box`` of the coarse grid), returned as ``zs, added`` for ``kept[zs]``.

    Closing and hole filling take the pleura under a nodule against the chest wall as (at best) the
    chord between the lung on either side, while a curved chest wall bulges out beyond it. The chest
    wall's thickness changes slowly along the pleura: the depth of a voxel is its in-plane distance
    (mm) from the body's outline (the skin), and the pleura's depth near the nodule is the average
    depth of the lung's boundary against the wall around it (within ``wall_window_mm``, the nodule's
    own contact left out). Tissue next to the nodule (within ``wall_follow_mm``) at least that deep
    (less ``wall_tolerance_mm``), and not much deeper, lies inside the pleura: it is nodule, not wall.
    Depths are only computed where needed (nearest outline point, ``scipy.spatial.cKDTree``).
    """
    one = (0, 1, 1)
    reach = (0, *_voxels(params.wall_follow_mm, spacing[1:], minimum=1))
    pocket = dilate(nodules, reach) & room & ~kept
    if not pocket.any():
        return slice(0, 0), pocket[:0]
    window = (0, *_voxels(params.wall_window_mm, spacing[1:], minimum=1))
    z_any = np.flatnonzero(pocket.any(axis=(1, 2)))
    zs = slice(int(z_any[0]), int(z_any[-1]) + 1)
    pocket, kept, nodules, room = pocket[zs], kept[zs], nodules[zs], room[zs]
    # the lung against the wall, off the nodule, near the pocket
    edge = kept & dilate(room & ~kept, one) & ~dilate(nodules, one) & dilate(pocket, window)
    slab = body[box[0].start + zs.start: box[0].start + zs.stop]
    outline = np.nonzero(slab & ~erode(slab, one))  # the skin (where the body is cut by the image: not skin)
    if outline[0].size == 0:  # no skin in view (body filling the image): no depth to go by
        return zs, np.zeros_like(pocket)
    far = 1e3 * (slab.shape[1] * spacing[1] + slab.shape[2] * spacing[2])  # other slices are never nearest
    scale = np.array([far, spacing[1], spacing[2]])
    tree = cKDTree(np.column_stack(outline) * scale)
    where = np.nonzero(pocket | edge)
    offset = np.array([0, box[1].start, box[2].start])
    depth = np.zeros(pocket.shape, dtype=np.float32)
    depth[where] = tree.query((np.column_stack(where) + offset) * scale)[0]
    size = tuple(2 * w + 1 for w in window)
    weight = ndimage.uniform_filter(edge.astype(np.float32), size, mode="constant")
    total = ndimage.uniform_filter(np.where(edge, depth, np.float32(0)), size, mode="constant")
    pleura = total / np.maximum(weight, np.float32(1e-6))
    accept = pocket & (weight > 1e-6) & (depth >= pleura - params.wall_tolerance_mm)
    accept &= depth <= pleura + params.wall_follow_mm
    labels, n = ndimage.label(accept | nodules, structure=CONN_2D)  # only what touches the nodule in its slice
    touching = np.zeros(n + 1, dtype=bool)
    touching[labels[nodules]] = True
    touching[0] = False
    return zs, accept & touching[labels]


def _close_lungs(lungs: np.ndarray, allowed: np.ndarray, body: np.ndarray, geometry: Geometry,
                 spacing: tuple[float, float, float], params: Threshold3DParams) -> np.ndarray:
    """Step 5, in place on the coarse ``lungs`` labels (see the module docstring); returns the
    mediastinum (what lies between the lungs)."""
    radius = (0, *_voxels(params.closing_mm, spacing[1:]))
    along_z = _voxels(params.closing_z_mm, spacing[:1], minimum=1) + (0, 0)
    thick = (0, *_voxels(params.thick_mm, spacing[1:], minimum=1))
    max_slices = int(params.max_nodule_mm / spacing[0]) + 1
    bridged_all = lungs.copy()  # lungs with their gaps along z bridged: what lies between them is mediastinum
    short_z = (1, 0, 0)
    for side in (RIGHT, LEFT):
        bridged_all[(erode(dilate(lungs == side, short_z), short_z, border=False) & allowed) & (lungs == 0)] = side
    mediastinum = between_lungs(bridged_all, geometry.direction_matrix)
    room_all = allowed & ~mediastinum
    boxes = ndimage.find_objects(lungs, max_label=LEFT)
    for side, other in ((RIGHT, LEFT), (LEFT, RIGHT)):
        found = boxes[side - 1]
        if found is None:
            continue
        pad = (along_z[0] + 1, radius[1] + 3, radius[2] + 3)
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(found, pad, lungs.shape))
        sub = lungs[box]
        lung = sub == side
        room = room_all[box] & (sub != other)
        bridged = lung | (erode(dilate(lung, along_z), along_z, border=False) & room)
        added = fill_holes(close_octagon(bridged, radius) & room, per_slice=True) & room & ~lung
        kept_added, nodules = _nodule_like(added, lung, thick, max_slices)
        kept = lung | kept_added
        if nodules.any():
            zs, bulge = _follow_wall(kept, nodules, room, body, box, spacing, params)
            kept[zs] |= bulge
        sub[fill_holes(kept, per_slice=False) & room] = side
    return mediastinum


def _refine(lungs: np.ndarray, added: np.ndarray, hilum: np.ndarray, allowed: np.ndarray, hu: np.ndarray,
            factors: tuple[int, int, int], offset: tuple[int, int, int], params: Threshold3DParams) -> np.ndarray:
    """Step 6: the coarse labels on the full grid, their rim following the full-resolution threshold,
    then the pleural partial-volume ring (see the module docstring). Only the box around the mask is
    worked on at full resolution. The coarse arrays are a box of the coarse grid starting at block ``offset``.

    Blocks that closing and hole filling ``added`` (vessels, nodules) are kept whole, and so is the
    block beyond them, except in the ``hilum`` (the mediastinum and the blocks next to it, where vessels
    and bronchi enter): a nodule against the pleura has an edge the threshold cannot tell from the chest
    wall (this costs a block-sized margin of wall next to such additions).
    """
    out = np.zeros(hu.shape, dtype=np.uint8)
    found = ndimage.find_objects((lungs > 0).view(np.uint8))
    if not found:
        return out
    box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(found[0], lungs.shape))
    lungs, added, hilum, allowed = (a[box] for a in (lungs, added, hilum, allowed))
    inside = lungs > 0
    one = (0, 1, 1)
    margin = dilate(added & ~hilum, one) & (inside | allowed)
    sure = (inside & erode(inside, one, border=False)) | (added & inside) | margin
    rim = dilate(inside, one) & ~sure & allowed
    side_near = np.where(dilate(lungs == LEFT, one), LEFT, np.where(dilate(lungs == RIGHT, one), RIGHT, 0))
    side_sure = np.where(sure, np.maximum(lungs, side_near * ~inside), 0)
    # one code per block: bits 0-1 the side of a sure block, 2-3 the side of a rim block, 4 allowed
    code = (side_sure | np.where(rim, side_near, 0) << 2 | allowed.astype(np.uint8) << 4).astype(np.uint8)
    full_box = tuple(slice((b.start + o) * f, (b.stop + o) * f) for b, o, f in zip(box, offset, factors))
    region = hu[full_box].ravel()
    code = upsample(code, factors, tuple(b.stop - b.start for b in full_box))
    full = code & np.uint8(3)
    flat = full.ravel()
    rim_at = np.flatnonzero(code & np.uint8(12))  # rim blocks: lung where the voxel is air
    rim_at = rim_at[below(region[rim_at], params.air_hu)]
    flat[rim_at] = (code.ravel()[rim_at] >> 2) & 3
    # partial volume: voxels next to the lung (face neighbours) holding at least some lung
    grown = _shift_max(full)
    ring_at = np.flatnonzero((flat == 0) & (grown.ravel() > 0) & (code.ravel() >= 16))
    ring_at = ring_at[below(region[ring_at], params.partial_volume_hu)]
    flat[ring_at] = grown.ravel()[ring_at]
    out[full_box] = full
    return out


def _shift_max(labels: np.ndarray) -> np.ndarray:
    """Per voxel, the largest label of its six face neighbours."""
    out = np.zeros_like(labels)
    np.maximum(out[1:], labels[:-1], out=out[1:])
    np.maximum(out[:-1], labels[1:], out=out[:-1])
    np.maximum(out[:, 1:], labels[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], labels[:, 1:], out=out[:, :-1])
    np.maximum(out[:, :, 1:], labels[:, :, :-1], out=out[:, :, 1:])
    np.maximum(out[:, :, :-1], labels[:, :, 1:], out=out[:, :, :-1])
    return out


def lung_mask_threshold_3d(hu: np.ndarray, geometry: Geometry,
                           params: Threshold3DParams | None = None) -> LungMaskResult:
    """Right/left lung mask of a HU volume ``(z, y, x)`` with ``geometry`` (see the module docstring)."""
    params = params or Threshold3DParams()
    notes: list[str] = []
    sx, sy, sz = geometry.spacing
    factors = (1, *(min(f, n) for f, n in zip(_voxels(params.working_mm, (sy, sx), minimum=1), hu.shape[1:])))
    spacing = (sz * factors[0], sy * factors[1], sx * factors[2])  # coarse (z, y, x) mm
    voxel_ml = float(np.prod(spacing)) / 1000.0

    n_air = count_below(hu, params.air_hu, factors)
    block = int(np.prod(factors))
    air = n_air == block  # every voxel air: thin walls and vessels keep blocks apart
    pure = sample_below(hu, params.lumen_hu, factors)  # pure air (lumen, gas) at the block centre

    # 1-2: outside air and body
    labels, n = ndimage.label(air, structure=CONN_3D)
    outside = components_touching(labels, n, (1, 2))[labels]
    labels, n = ndimage.label(~outside, structure=CONN_3D)
    if n == 0:
        return LungMaskResult(np.zeros(hu.shape, dtype=np.uint8), ["no body: the volume is all air"])
    body = _largest(labels, n)
    crop = ndimage.find_objects(body.view(np.uint8))[0]  # from here on: the body's box
    body, air, pure, n_air = body[crop], air[crop], pure[crop], n_air[crop]
    candidates = air & body
    if not candidates.any():
        return LungMaskResult(np.zeros(hu.shape, dtype=np.uint8), ["no air inside the body (all tissue?)"])

    # 3: airway lumen and gas
    airway = _airway(candidates, pure, params, spacing[1] * spacing[2])
    candidates &= ~airway

    # 4: lung components in 3-D, and their sides
    labels, n = ndimage.label(candidates, structure=CONN_3D)
    count = np.bincount(labels.ravel(), minlength=n + 1)
    n_pure = np.bincount(labels[pure], minlength=n + 1)
    volume = count * voxel_ml
    keep = (volume >= params.min_lung_ml) & (n_pure <= params.lumen_fraction * count)
    keep[0] = False
    if not keep.any():
        return LungMaskResult(np.zeros(hu.shape, dtype=np.uint8), ["no lung-like air region inside the body"])
    big = keep & (volume >= params.min_lung_fraction * volume[keep].max())
    right_side = midline_side(body, factors, spacing, geometry.direction_matrix)
    n_right = np.bincount(labels[right_side], minlength=n + 1)
    one_side = np.abs(n_right / np.maximum(count, 1) - 0.5) > 0.5 - MERGED_FRACTION
    aerated = n_pure <= params.fragment_pure_fraction * count  # not a lumen or gas pocket step 3 missed
    keep = big | _upper_fragments(labels, keep & ~big & one_side & aerated, big, volume, spacing, geometry)
    side_of = np.zeros(n + 1, dtype=np.uint8)
    lungs = np.zeros(air.shape, dtype=np.uint8)
    for comp in np.flatnonzero(keep):
        fraction = n_right[comp] / count[comp]
        if MERGED_FRACTION <= fraction <= 1 - MERGED_FRACTION:
            box = ndimage.find_objects(labels, max_label=comp)[comp - 1]
            split, ok = split_merged(labels[box] == comp, right_side[box], spacing)
            lungs[box] = np.maximum(lungs[box], split)
            notes.append("lungs touch: separated by erosion + watershed" if ok
                         else "lungs touch and could not be separated: cut at the body midline")
        else:
            side_of[comp] = RIGHT if fraction > 0.5 else LEFT
    lungs = np.maximum(lungs, side_of[labels])

    # 5: closing along the pleura and hole filling, per lung, minus airway lumen and wall
    wall = (0, *_voxels(params.airway_wall_mm, spacing[1:], minimum=1))
    allowed = body & ~(airway | (dilate(airway, wall) & ~candidates))
    if block > 1:  # regrow into the boundary blocks that are mostly air
        regrow = (lungs == 0) & (n_air > block // 2) & allowed
        for side in (RIGHT, LEFT):
            lungs[regrow & dilate(lungs == side, (0, 1, 1))] = side
    before = lungs > 0
    mediastinum = _close_lungs(lungs, allowed, body, geometry, spacing, params)

    # 6: back to the full grid
    hilum = dilate(mediastinum, (0, 1, 1))  # the mediastinum and the blocks next to it: the hilum
    offset = tuple(c.start for c in crop)
    return LungMaskResult(_refine(lungs, (lungs > 0) & ~before, hilum, allowed, hu, factors, offset, params), notes)


#: the names before ``threshold_3d`` (kept for one release)
DefaultParams = Threshold3DParams
lung_mask_default = lung_mask_threshold_3d
