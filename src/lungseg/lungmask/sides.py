"""Patient right / left for lung components, and separation of lungs that touch.

Sides are decided in physical (LPS) space, so any scan orientation works: x grows towards the
patient's left, so the right lung (label 1) lies at smaller x than the body's midline, the left
lung (label 2) at larger x.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from lungseg.lungmask.morphology import CONN_3D

RIGHT, LEFT = 1, 2
#: a component with at least this fraction of its voxels on each side of the midline holds both lungs
MERGED_FRACTION = 0.2


def physical_coordinate(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float], direction: np.ndarray,
                        offset_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0), axis: int = 0) -> np.ndarray:
    """LPS coordinate ``axis`` (0 x, 1 y, 2 z; mm, relative to the origin) of every voxel of a ``(z, y, x)``
    grid, as a broadcastable sum.

    ``direction`` is the 3x3 ITK direction (columns = index axes x, y, z); ``offset_zyx`` shifts the
    voxel indices (e.g. to the centre of a block when the grid is block-reduced).
    """
    nz, ny, nx = shape
    sz, sy, sx = spacing_zyx
    row = np.asarray(direction, dtype=float)[axis]  # the LPS component of the x, y, z index axes
    iz = (np.arange(nz) + offset_zyx[0]) * sz * row[2]
    iy = (np.arange(ny) + offset_zyx[1]) * sy * row[1]
    ix = (np.arange(nx) + offset_zyx[2]) * sx * row[0]
    return (iz[:, None, None] + iy[None, :, None] + ix[None, None, :]).astype(np.float32)


def physical_x(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float], direction: np.ndarray,
               offset_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """LPS x (towards the patient's left) of every voxel: :func:`physical_coordinate` along x."""
    return physical_coordinate(shape, spacing_zyx, direction, offset_zyx, axis=0)


def split_merged(component: np.ndarray, right_of_midline: np.ndarray, spacing_zyx: tuple[float, float, float],
                 max_depth_mm: float = 20.0) -> tuple[np.ndarray, bool]:
    """Split one component holding both lungs into right (1) / left (2) labels.

    Erodes (by Euclidean distance) until the component falls apart into a right and a left core,
    then grows the cores back over the component by watershed on the distance map. Returns the
    labels and whether that worked; if no depth separates the lungs, the midline cuts them instead.
    """
    dist = ndimage.distance_transform_edt(component, sampling=spacing_zyx)
    step = min(spacing_zyx)
    for depth in np.arange(step, max_depth_mm + step / 2, step):
        cores, n = ndimage.label(dist > depth, structure=CONN_3D)
        if n < 2:
            if n == 0:
                break
            continue
        sizes = np.bincount(cores.ravel())
        right = np.bincount(cores[right_of_midline], minlength=n + 1)
        sizes[0] = right[0] = 0
        big = np.argsort(sizes)[::-1][:2]
        a, b = (int(v) for v in big)
        if sizes[b] < 0.05 * sizes[a]:
            continue
        frac_a, frac_b = right[a] / sizes[a], right[b] / sizes[b]
        if abs(frac_a - frac_b) < 0.5:  # both cores on the same side: not the two lungs yet
            continue
        markers = np.zeros(component.shape, dtype=np.int32)
        markers[cores == a] = RIGHT if frac_a > frac_b else LEFT
        markers[cores == b] = LEFT if frac_a > frac_b else RIGHT
        labels = watershed(-dist, markers, mask=component)
        return labels.astype(np.uint8), True
    labels = np.where(right_of_midline, RIGHT, LEFT).astype(np.uint8) * component
    return labels, False


def midline_side(body: np.ndarray, factors: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                 direction: np.ndarray) -> np.ndarray:
    """True for the voxels of a block-reduced grid on the patient's right of the body's centre (LPS x)."""
    offset = tuple((f - 1) / (2 * f) for f in factors)  # block centres, in block units
    x = physical_x(body.shape, spacing_zyx, direction, offset)
    n = body.sum()
    centre = [float(np.dot(body.sum(axis=tuple(a for a in range(3) if a != axis)), np.arange(body.shape[axis])) / n)
              for axis in range(3)]
    midline = float(physical_x((1, 1, 1), spacing_zyx, direction, tuple(c + o for c, o in zip(centre, offset)))[0, 0, 0])
    return np.broadcast_to(x < midline, body.shape)


def _first(mask: np.ndarray, axis: int) -> np.ndarray:
    """Index of the first True along ``axis`` (the axis length where there is none), keeping dims."""
    first = np.argmax(mask, axis=axis)
    return np.expand_dims(np.where(mask.any(axis=axis), first, mask.shape[axis]), axis)


def between_lungs(lungs: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Voxels lying, along their left-right image line, between the right and the left lung.

    That is the mediastinum (and the hilar notches opening into it): in-plane closing must not fill
    it. The left-right line is the in-plane index axis closest to the patient's x axis.
    """
    direction = np.asarray(direction, dtype=float)
    index_axis = int(np.argmax(np.abs(direction[0, :2])))  # ITK x or y index axis
    axis = 2 - index_axis  # its numpy axis
    right_first = direction[0, index_axis] > 0  # index grows towards the patient's left
    first, second = (RIGHT, LEFT) if right_first else (LEFT, RIGHT)
    n = lungs.shape[axis]
    last_of_first = n - 1 - _first(np.flip(lungs == first, axis=axis), axis)
    first_of_second = _first(lungs == second, axis)
    shape = [1, 1, 1]
    shape[axis] = n
    index = np.arange(n).reshape(shape)
    return (index > last_of_first) & (index < first_of_second)
