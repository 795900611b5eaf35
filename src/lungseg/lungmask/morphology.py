"""Vectorised building blocks for lung masking on ``(z, y, x)`` volumes.

Everything works on whole volumes at once (no Python loop over slices): per-slice ("2-D")
operations use structuring elements that are flat along z. Binary morphology is built from
line structuring elements (z, y, x axes and the two in-plane diagonals), each applied by
doubling with whole-array numpy operations, so its cost grows with the logarithm of the radius;
boxes and octagons (a close stand-in for disks) are sums of such lines. Connected components and
hole filling use ``scipy.ndimage.label``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: face-connected neighbourhoods: within each slice (2-D) and across slices (3-D)
CONN_2D = np.zeros((3, 3, 3), dtype=bool)
CONN_2D[1] = ndimage.generate_binary_structure(2, 1)
CONN_3D = ndimage.generate_binary_structure(3, 1)


def below(volume: np.ndarray, threshold: float) -> np.ndarray:
    """``volume < threshold`` with the threshold in the volume's own dtype (an integer volume against a
    Python number would be compared after conversion, many times slower)."""
    if np.issubdtype(volume.dtype, np.integer):
        info = np.iinfo(volume.dtype)
        return volume < volume.dtype.type(min(max(math.ceil(threshold), info.min), info.max))
    return volume < volume.dtype.type(threshold)


def _sum_x_blocks(mask: np.ndarray, fx: int) -> np.ndarray:
    """Sum of each run of ``fx`` consecutive uint8 counts (or booleans) along x (the last axis holds a
    multiple of ``fx``; the sums must fit a byte).

    For 2 and 4 the bytes are summed as one uint16 / uint32 word (multiply, shift), else by strided views.
    """
    if fx in (2, 4) and mask.flags.c_contiguous:
        word = np.uint16 if fx == 2 else np.uint32
        packed = mask.view(np.uint8).view(word)
        total = packed * word(0x0101 if fx == 2 else 0x01010101)  # the top byte now holds the sum
        total >>= word(8 * (fx - 1))
        return total.astype(np.uint8)
    total = mask[..., 0::fx].astype(np.uint8)
    for k in range(1, fx):
        total += mask[..., k::fx]
    return total


def count_below(volume: np.ndarray, threshold: float, factors: tuple[int, int, int]) -> np.ndarray:
    """Number of voxels below ``threshold`` in each ``factors`` (z, y, x) block (uint8: at most 255 a block).

    One threshold of the whole volume, then sums of the blocks' rows along y and z (strided views of
    whole rows: contiguous reads) and last along x (packed into machine words for 2 and 4); no
    reshape-sum. A partial block at the far end of an axis is left out.
    """
    if int(np.prod(factors)) > 255:
        raise ValueError(f"blocks of {factors} voxels are too large")
    fz, fy, fx = factors
    cut = tuple(n // f * f for n, f in zip(volume.shape, factors))
    below_mask = below(volume[: cut[0], : cut[1], : cut[2]], threshold).view(np.uint8)  # a new C-contiguous array
    total = below_mask
    for axis, f in ((1, fy), (0, fz)):  # whole rows first (contiguous reads), then the shorter x runs
        if f > 1:
            index = [slice(None)] * 3
            index[axis] = slice(0, None, f)
            summed = total[tuple(index)].copy()
            for k in range(1, f):
                index[axis] = slice(k, None, f)
                summed += total[tuple(index)]
            total = summed
    if fx > 1:
        total = _sum_x_blocks(np.ascontiguousarray(total), fx)
    return total if total is not below_mask else total.copy()


def sample_below(volume: np.ndarray, threshold: float, factors: tuple[int, int, int]) -> np.ndarray:
    """Whether the centre voxel of each ``factors`` block is below ``threshold`` (cheap block statistic)."""
    index = tuple(slice(f // 2, n // f * f, f) for n, f in zip(volume.shape, factors))
    return below(volume[index], threshold)


def upsample(coarse: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a block-reduced array (:func:`count_below`) to ``shape`` (zeros where no block).

    One broadcast copy into a ``(z, fz, y, fy, x, fx)`` view of the output (no repeat, no pad).
    """
    (nz, ny, nx), (fz, fy, fx) = coarse.shape, factors
    blocks = np.empty((nz, fz, ny, fy, nx, fx), dtype=coarse.dtype)
    blocks[...] = coarse[:, None, :, None, :, None]
    full = blocks.reshape(nz * fz, ny * fy, nx * fx)
    if full.shape == tuple(shape):
        return full
    out = np.zeros(shape, dtype=coarse.dtype)
    out[: nz * fz, : ny * fy, : nx * fx] = full
    return out


def _shift_views(shape: tuple[int, ...], shift: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples ``(here, there)`` with ``there = here + shift``, both inside ``shape``."""
    here, there = [], []
    for k, n in zip(shift, shape):
        k = max(-n, min(k, n))
        here.append(slice(0, n - k) if k >= 0 else slice(-k, n))
        there.append(slice(k, n) if k >= 0 else slice(0, n + k))
    return tuple(here), tuple(there)


def _half_window(a: np.ndarray, length: int, step: tuple[int, int, int], op: np.ufunc) -> np.ndarray:
    """``op`` over ``a[p + k * step]`` for ``k = 0 .. length - 1`` (terms outside the array left out),
    by doubling: about log2(length) whole-array numpy operations whatever the length, ping-ponging
    between two buffers (no overlapping in-place operations)."""
    src, dst = a.copy(), np.empty_like(a)
    span = 1
    while span < length:
        shift = min(span, length - span)  # doubling, then the remainder (overlap is harmless for OR/AND)
        offset = tuple(shift * s for s in step)
        here, there = _shift_views(a.shape, offset)
        op(src[here], src[there], out=dst[here])
        for axis, k in enumerate(offset):  # where p + offset falls outside: unchanged
            if k:
                edge = [slice(None)] * 3
                edge[axis] = slice(a.shape[axis] - min(k, a.shape[axis]), None) if k > 0 else slice(0, min(-k, a.shape[axis]))
                dst[tuple(edge)] = src[tuple(edge)]
        src, dst = dst, src
        span += shift
    return src


def line_filter(mask: np.ndarray, half: int, step: tuple[int, int, int], dilation: bool) -> np.ndarray:
    """Binary dilation (OR) or erosion (AND) of ``mask`` by the line ``k * step``, ``|k| <= half``.

    Outside the array counts as background for dilation and as foreground for erosion.
    """
    mask = np.asarray(mask, dtype=bool)
    if half <= 0:
        return mask.copy()
    op = np.logical_or if dilation else np.logical_and
    forward = _half_window(mask, half + 1, step, op)
    return op(forward, _half_window(mask, half + 1, tuple(-s for s in step), op), out=forward)


_AXES = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def _clear_border(mask: np.ndarray, radius: tuple[int, int, int]) -> np.ndarray:
    for axis, r in enumerate(radius):
        if r > 0:
            index = [slice(None)] * 3
            index[axis] = slice(0, r)
            mask[tuple(index)] = False
            index[axis] = slice(-r, None)
            mask[tuple(index)] = False
    return mask


def dilate(mask: np.ndarray, radius: tuple[int, int, int]) -> np.ndarray:
    """Binary dilation by a box of half-sizes ``radius`` (z, y, x) voxels; outside the array is background."""
    out = np.asarray(mask, dtype=bool)
    for step, r in zip(_AXES, radius):
        out = line_filter(out, r, step, True)
    return out if out is not mask else out.copy()


def erode(mask: np.ndarray, radius: tuple[int, int, int], border: bool = True) -> np.ndarray:
    """Binary erosion by a box of half-sizes ``radius``; outside the array counts as ``border``."""
    out = np.asarray(mask, dtype=bool)
    for step, r in zip(_AXES, radius):
        out = line_filter(out, r, step, False)
    out = out if out is not mask else out.copy()
    return out if border else _clear_border(out, radius)


def _octagon_steps(radius: int) -> tuple[int, int]:
    """Half-lengths ``(a, d)`` of the axis and diagonal lines whose sum is a near-regular octagon of
    in-radius ``radius`` voxels along the axes (``a + 2 d = radius``; regular when ``d ~ 0.293 radius``)."""
    diagonal = int(round(0.2929 * radius))
    return radius - 2 * diagonal, diagonal


def _octagon_filter(mask: np.ndarray, radius: tuple[int, int, int], dilation: bool) -> np.ndarray:
    out = line_filter(mask, radius[0], (1, 0, 0), dilation)
    axis_half, diagonal_half = _octagon_steps(max(radius[1], radius[2]))
    for step in ((0, 1, 0), (0, 0, 1)):
        out = line_filter(out, axis_half, step, dilation)
    for step in ((0, 1, 1), (0, 1, -1)):
        out = line_filter(out, diagonal_half, step, dilation)
    return out


def erode_octagon(mask: np.ndarray, radius: tuple[int, int, int]) -> np.ndarray:
    """Binary erosion by the octagon of :func:`close_octagon` (outside the array counts as inside)."""
    return _octagon_filter(mask, radius, False)


def close_octagon(mask: np.ndarray, radius: tuple[int, int, int]) -> np.ndarray:
    """Binary closing by an in-plane regular octagon (a close, fast stand-in for a disk) of in-radius
    ``max(radius[1:])`` voxels, extruded over ``radius[0]`` slices either side.

    The octagon is the sum of four lines (two axes, two diagonals); each line is applied by doubling
    (:func:`line_filter`), so the cost grows with the logarithm of the radius.
    """
    return _octagon_filter(_octagon_filter(mask, radius, True), radius, False)


def components_touching(labels: np.ndarray, n: int, axes: tuple[int, ...]) -> np.ndarray:
    """Lookup table ``(n + 1,)``: True for labels that reach either face of the array along ``axes``."""
    lut = np.zeros(n + 1, dtype=bool)
    for axis in axes:
        for index in (0, -1):
            lut[np.take(labels, index, axis=axis)] = True
    lut[0] = False
    return lut


def fill_holes(mask: np.ndarray, per_slice: bool) -> np.ndarray:
    """Fill background regions not connected to the array border (in-plane border for ``per_slice``)."""
    labels, n = ndimage.label(~mask, structure=CONN_2D if per_slice else CONN_3D)
    if n == 0:
        return mask.copy()
    open_lut = components_touching(labels, n, (1, 2) if per_slice else (0, 1, 2))
    open_lut[0] = True  # label 0 is the mask itself
    return mask | ~open_lut[labels]
