"""Simulated LIDC readers of a demo case: outlines that disagree at the edges, and ratings.

Each reader outlines every nodule (a nodule < 6 mm is missed by one reader now and then) on every
slice it covers: the nodule's label, grown or shrunk by a reader-specific bias (+0.45, +0.15, -0.15,
-0.45 pixel for four readers, in a shuffled session order per case) plus a smooth jitter of 0.3 pixel.
Where more readers than the 50 % consensus allows grow over the same pixel outside the label (or
drop one inside it), the least sure of them give way, so the readers disagree at the edges while
the consensus that :func:`lungseg.ingest.lidc.rasterise_lidc` forms (agreement 0.5) is the label.
An outline is written as the LIDC ``edgeMap``: the chain of pixels just outside the outlined region
(the region is what lies strictly inside it). Nodules < 3 mm (or without label voxels) are single
points, as in LIDC.

Ratings follow the nodule: ``texture`` from its kind (solid 5, part-solid 3, ground glass 1),
``margin`` from kind and edges (blurred partial-volume edges score lower), ``lobulation`` and
``spiculation`` grow with size, ``sphericity`` from the label's principal axes, and ``malignancy``
rises with diameter, solid components, ill-defined margin and lobulation; each reader moves a
subjective rating by one now and then (15 % each way). Everything derives from the generator given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

from lungseg.demo.lidc_xml import CHARACTERISTIC_RANGES, XmlNodule, XmlNonNodule, XmlRoi, XmlSession
from lungseg.demo.phantom import Nodule

N_READERS = 4
READER_BIAS_PX = 0.45  # the most generous reader grows the outline this far (pixels); the strictest shrinks it
JITTER_PX = 0.3  # standard deviation of each reader's smooth outline jitter (pixels)
POINT_BELOW_MM = 3.0  # nodules smaller than this are marked as points, as in LIDC
MISS_BELOW_MM = 6.0  # nodules smaller than this are missed by one reader with MISS_PROBABILITY
MISS_PROBABILITY = 0.3
RATING_SHIFT_PROBABILITY = 0.15  # per subjective rating and reader, each way
NON_NODULE_PROBABILITY = 0.3  # per reader: one non-nodule mark somewhere in the lung
SUBJECTIVE = ("subtlety", "sphericity", "margin", "lobulation", "spiculation", "malignancy")
TEXTURE = {"solid": 5, "part_solid": 3, "ground_glass": 1}  # LIDC texture: 1 non-solid (ground glass) .. 5 solid
_ID_STYLES = ("Nodule {:03d}", "IL057_{}", "MI014_{}", "{}")  # the noduleID styles of the real files


@dataclass
class NoduleRead:
    """What the readers made of one demo nodule (in the order of the case's nodules)."""

    index: int  # position in the case's nodule list
    characteristics: dict[str, int] | None  # the nodule's own (reader-free) ratings; None for points
    box: tuple[slice, slice, slice] | None = None  # (z, y, x) box of the outlines in the volume; None for points
    readers: list[int] = field(default_factory=list)  # session numbers (1-based) that marked it
    ratings: list[dict[str, int] | None] = field(default_factory=list)  # per marking reader
    outline_masks: list[np.ndarray] = field(default_factory=list)  # per marking reader: bool over ``box``

    @property
    def malignancy(self) -> int | None:
        return None if self.characteristics is None else self.characteristics["malignancy"]

    def as_dict(self) -> dict:
        return {"readers": self.readers, "malignancy": self.malignancy,
                "ratings": [None if r is None else r["malignancy"] for r in self.ratings],
                "characteristics": self.characteristics}


def split_nodules(label: np.ndarray, nodules: list[Nodule], spacing_xyz: tuple[float, float, float]) -> list[np.ndarray]:
    """One (z, y, x) bool mask per nodule: each label voxel goes to the nodule with the nearest centre."""
    if not nodules:
        return []
    zyx = np.argwhere(label > 0)
    scale = np.array(spacing_xyz[::-1], dtype=float)
    centres = np.array([n.center_zyx for n in nodules], dtype=float)
    owner = np.argmin(np.linalg.norm((zyx[:, None, :] - centres[None]) * scale, axis=-1), axis=1)
    masks = []
    for i in range(len(nodules)):
        mask = np.zeros(label.shape, dtype=bool)
        mask[tuple(zyx[owner == i].T)] = True
        masks.append(mask)
    return masks


def outline_chains(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """LIDC ``edgeMap`` chains ((x, y) pixels, in order) of a 2-D mask: per 8-connected region, the pixels
    just outside it, so that what lies strictly inside a chain is the (hole-filled) region."""
    cross = ndimage.generate_binary_structure(2, 1)  # grown by the 4-neighbours: no pixel at a convex corner
    parts, _ = ndimage.label(ndimage.binary_fill_holes(mask), np.ones((3, 3), bool))
    chains = []
    for part, box in enumerate(ndimage.find_objects(parts), start=1):
        (r0, _), (c0, _) = ((s.start, s.stop) for s in box)
        own = np.pad(parts[box] == part, 2)  # room for the chain, also of a region at the image border
        region = ndimage.binary_fill_holes(ndimage.binary_dilation(own, cross))
        contour = max(find_contours(region.astype(np.float32), 0.5, fully_connected="high"), key=len)
        chain: list[tuple[int, int]] = []
        for r, c in contour:
            if abs(r - round(r)) < 1e-6:
                pixels = ((round(r), int(np.floor(c))), (round(r), int(np.ceil(c))))
            else:
                pixels = ((int(np.floor(r)), round(c)), (int(np.ceil(r)), round(c)))
            row, col = next(p for p in pixels if region[p])
            xy = (c0 + col - 2, r0 + row - 2)  # may lie just outside the image, around a region at its border
            if not chain or chain[-1] != xy:
                chain.append(xy)
        if len(chain) > 1 and chain[0] == chain[-1]:
            chain.pop()
        chains.append(chain)
    return chains


def nodule_box(mask: np.ndarray, margin: int = 3) -> tuple[slice, slice, slice]:
    """The (z, y, x) box of ``mask``'s voxels, ``margin`` pixels wider in-plane (the slices it covers in z)."""
    z, y, x = ndimage.find_objects(mask.astype(np.uint8))[0]
    return (z, slice(max(y.start - margin, 0), y.stop + margin), slice(max(x.start - margin, 0), x.stop + margin))


def reader_outlines(mask: np.ndarray, biases: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Each reader's outline of one nodule (``mask``: its (z, y, x) box, bool), slice by slice as readers draw.

    A reader includes a pixel where its signed distance to the label edge (pixels, > 0 inside) plus the
    reader's bias plus its smooth jitter is > 0. Votes are then settled so that the 50 % consensus of the
    readers is the label: a pixel outside keeps at most ``need - 1`` readers (the most confident), a pixel
    inside gets at least ``need`` (``need``: the votes rasterise_lidc's 0.5 agreement asks for).
    """
    n = len(biases)
    need = int(np.ceil(0.5 * n))
    signed = np.zeros(mask.shape, dtype=np.float32)
    for k in range(mask.shape[0]):
        inside = mask[k]
        if inside.any():
            signed[k] = np.where(inside, ndimage.distance_transform_edt(inside) - 0.5,
                                 0.5 - ndimage.distance_transform_edt(~inside))
        else:
            signed[k] = -np.inf
    noise = ndimage.gaussian_filter(rng.standard_normal((n, *mask.shape)), sigma=(0, 0.7, 2.0, 2.0))
    noise *= JITTER_PX / max(float(noise.std()), 1e-6)
    score = signed[None] + np.asarray(biases, dtype=np.float32)[:, None, None, None] + noise
    rank = np.argsort(np.argsort(-score, axis=0), axis=0)  # 0 = the reader most sure the pixel is nodule
    votes = np.where(mask[None], (score > 0) | (rank < need), (score > 0) & (rank < need - 1))
    outlines = []
    for r in range(n):
        drawn = np.stack([ndimage.binary_fill_holes(plane) for plane in votes[r]])
        if not drawn.any():  # every marking reader draws something: the pixel it is surest of
            drawn.flat[int(np.argmax(np.where(mask, score[r], -np.inf)))] = True
        outlines.append(drawn)
    return outlines


def _elongation(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> float:
    """Shortest over longest principal axis of the voxels of ``mask`` (mm), 1 for a sphere."""
    pts = np.argwhere(mask) * np.array(spacing_xyz[::-1], dtype=float)
    if len(pts) < 4:
        return 1.0
    eig = np.clip(np.linalg.eigvalsh(np.cov(pts.T) + np.eye(3) * (np.array(spacing_xyz[::-1]) ** 2 / 12)), 1e-9, None)
    return float(np.sqrt(eig[0] / eig[-1]))


def nodule_characteristics(nodule: Nodule, edges: str, elongation: float) -> dict[str, int]:
    """The LIDC ratings a careful reader would give this nodule (before reader variation)."""
    d = nodule.diameter_mm
    margin = {"solid": 5, "part_solid": 3, "ground_glass": 2}[nodule.kind] - (edges == "partial_volume")
    lobulation = 1 + (d >= 8) + (d >= 15)
    spiculation = 1 + (d >= 12) + (d >= 18 and nodule.kind == "solid")
    sphericity = 1 + sum(elongation > t for t in (0.5, 0.65, 0.8, 0.9))
    subtlety = 2 + (d >= 5) + (d >= 10) + (nodule.kind == "solid")
    score = (1 + (d - 3) / 6 + {"solid": 0.4, "part_solid": 0.6, "ground_glass": -0.6}[nodule.kind]
             + 0.35 * (3 - margin) + 0.3 * (lobulation - 1) + 0.3 * (spiculation - 1))
    values = {
        "subtlety": subtlety, "internalStructure": 1, "calcification": 6, "sphericity": sphericity, "margin": margin,
        "lobulation": lobulation, "spiculation": spiculation, "texture": TEXTURE[nodule.kind],
        "malignancy": round(score),
    }
    return {name: int(np.clip(v, *CHARACTERISTIC_RANGES[name])) for name, v in values.items()}


def reader_ratings(truth: dict[str, int], rng: np.random.Generator) -> dict[str, int]:
    """One reader's ratings: each subjective one moved by one now and then, texture rarely."""
    out = dict(truth)
    for name in (*SUBJECTIVE, "texture"):
        p = RATING_SHIFT_PROBABILITY if name != "texture" else RATING_SHIFT_PROBABILITY / 2
        u = rng.random()
        shift = -1 if u < p else 1 if u > 1 - p else 0
        out[name] = int(np.clip(truth[name] + shift, *CHARACTERISTIC_RANGES[name]))
    return out


@dataclass(frozen=True)
class SliceRefs:
    """Per slice index (z order of the label volume): SOPInstanceUID and world z (mm)."""

    sop_uids: list[str]
    z_mm: list[float]

    def roi(self, k: int, xy: list[tuple[int, int]]) -> XmlRoi:
        return XmlRoi(self.z_mm[k], self.sop_uids[k], xy)


def simulate_reads(
    nodule_label: np.ndarray, lung: np.ndarray, nodules: list[Nodule], spacing_xyz: tuple[float, float, float],
    edges: str, slices: SliceRefs, rng: np.random.Generator, n_readers: int = N_READERS,
) -> tuple[list[XmlSession], list[NoduleRead]]:
    """The reading sessions of ``n_readers`` simulated readers of one case, and per nodule what they did."""
    if not 1 <= n_readers <= 8:
        raise ValueError(f"need 1-8 readers, got {n_readers}")
    biases = np.linspace(READER_BIAS_PX, -READER_BIAS_PX, n_readers) if n_readers > 1 else np.zeros(1)
    biases = biases[rng.permutation(n_readers)]  # session order differs from case to case
    masks = split_nodules(nodule_label, nodules, spacing_xyz)
    sessions = [XmlSession(f"{int(rng.integers(10**8, 10**9))}") for _ in range(n_readers)]
    id_bases = [int(rng.integers(1000, 200000)) for _ in range(n_readers)]
    reads = []
    for i, (nodule, mask) in enumerate(zip(nodules, masks, strict=True)):
        point = nodule.diameter_mm < POINT_BELOW_MM or not mask.any()
        truth = None if point else nodule_characteristics(nodule, edges, _elongation(mask, spacing_xyz))
        marking = list(range(n_readers))
        if nodule.diameter_mm < MISS_BELOW_MM and n_readers > 2 and rng.random() < MISS_PROBABILITY:
            marking.pop(int(rng.integers(n_readers)))  # one reader misses this small nodule
        read = NoduleRead(i, truth, box=None if point else nodule_box(mask))
        if read.box is not None:
            read.outline_masks = reader_outlines(mask[read.box], [float(biases[r]) for r in marking], rng)
        for j, r in enumerate(marking):
            session = sessions[r]
            nodule_id = _ID_STYLES[r % len(_ID_STYLES)].format(id_bases[r] + len(session.nodules))
            if read.box is None:
                z, y, x = (int(round(v)) for v in nodule.center_zyx)
                rois = [slices.roi(z, [(x, y)])]
            else:
                z0, y0, x0 = (s.start for s in read.box)
                outline = read.outline_masks[j]
                rois = [slices.roi(z0 + int(k), [(x + x0, y + y0) for x, y in chain])
                        for k in np.flatnonzero(outline.any(axis=(1, 2))) for chain in outline_chains(outline[k])]
            ratings = None if truth is None else reader_ratings(truth, rng)
            session.nodules.append(XmlNodule(nodule_id, rois, ratings))
            read.readers.append(r + 1)
            read.ratings.append(ratings)
        reads.append(read)
    _add_non_nodules(sessions, lung, nodules, spacing_xyz, slices, rng)
    return sessions, reads


def _add_non_nodules(sessions: list[XmlSession], lung: np.ndarray, nodules: list[Nodule],
                     spacing_xyz: tuple[float, float, float], slices: SliceRefs, rng: np.random.Generator) -> None:
    """Now and then a reader marks a lung spot >= 10 mm from every nodule as a non-nodule (a point)."""
    candidates = np.argwhere(lung[:, ::4, ::4] > 0) * np.array([1, 4, 4])
    if len(candidates) > 512:  # a sample is plenty, and keeps the distances small on big scans
        candidates = candidates[np.sort(rng.choice(len(candidates), 512, replace=False))]
    if nodules and len(candidates):
        scale = np.array(spacing_xyz[::-1], dtype=float)
        centres = np.array([n.center_zyx for n in nodules], dtype=float)
        distance = np.linalg.norm((candidates[:, None, :] - centres[None]) * scale, axis=-1)
        reach = np.array([n.diameter_mm / 2 + 10.0 for n in nodules])
        candidates = candidates[(distance > reach).all(axis=1)]
    for session in sessions:
        if len(candidates) and rng.random() < NON_NODULE_PROBABILITY:
            z, y, x = (int(v) for v in candidates[int(rng.integers(len(candidates)))])
            roi = slices.roi(z, [(x, y)])
            name = f"_Non-nodule {len(session.non_nodules) + 1:03d}"
            session.non_nodules.append(XmlNonNodule(name, roi.z_mm, roi.sop_uid, (x, y)))
