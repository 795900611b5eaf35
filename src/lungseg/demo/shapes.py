"""Millimetre-space drawing primitives on a voxel grid, for the synthetic phantom.

Positions are ``(x, y, z)`` millimetres relative to the grid: x and y are 0 at the centre of the
slice (x towards the patient's left, y towards posterior, as in LPS), z is 0 at slice 0 (the most
inferior slice) and grows towards the head. Masks and arrays are numpy ``(z, y, x)``.
Primitives that are local (tubes, blobs) work on a bounding box and return it with their mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]  # (z, y, x) index slices


@dataclass(frozen=True)
class Grid:
    """A ``(nz, ny, nx)`` voxel grid with spacing ``(sx, sy, sz)`` mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def x(self) -> np.ndarray:
        """x (mm) of every column, shaped ``(1, 1, nx)``."""
        nx = self.shape[2]
        return ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * self.spacing[0])[None, None, :]

    @property
    def y(self) -> np.ndarray:
        """y (mm) of every row, shaped ``(1, ny, 1)``."""
        ny = self.shape[1]
        return ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * self.spacing[1])[None, :, None]

    @property
    def z(self) -> np.ndarray:
        """z (mm) of every slice, shaped ``(nz, 1, 1)``."""
        return (np.arange(self.shape[0], dtype=np.float32) * self.spacing[2])[:, None, None]

    @property
    def extent_z(self) -> float:
        return self.shape[0] * self.spacing[2]

    def to_index(self, p_mm: np.ndarray) -> np.ndarray:
        """Continuous ``(z, y, x)`` index of the ``(..., 3)`` ``(x, y, z)`` mm point(s)."""
        p = np.asarray(p_mm, dtype=float)
        nz, ny, nx = self.shape
        sx, sy, sz = self.spacing
        return np.stack([p[..., 2] / sz, p[..., 1] / sy + (ny - 1) / 2, p[..., 0] / sx + (nx - 1) / 2], axis=-1)

    def to_mm(self, index_zyx: np.ndarray) -> np.ndarray:
        """``(x, y, z)`` mm of the ``(..., 3)`` ``(z, y, x)`` index/indices."""
        i = np.asarray(index_zyx, dtype=float)
        nz, ny, nx = self.shape
        sx, sy, sz = self.spacing
        return np.stack([(i[..., 2] - (nx - 1) / 2) * sx, (i[..., 1] - (ny - 1) / 2) * sy, i[..., 0] * sz], axis=-1)

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Box | None:
        """Index slices covering the mm box ``[lo, hi]`` (clipped to the grid), or None if outside."""
        lo = self.to_index(np.minimum(lo_mm, hi_mm))
        hi = self.to_index(np.maximum(lo_mm, hi_mm))
        out = []
        for a, b, n in zip(np.floor(lo).astype(int), np.ceil(hi).astype(int) + 1, self.shape):
            a, b = max(a, 0), min(b, n)
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x, y, z (mm) arrays of the voxels in ``box``."""
        return self.x[:, :, box[2]], self.y[:, box[1], :], self.z[box[0], :, :]


def ellipse(x: np.ndarray, y: np.ndarray, cx, cy, ax, ay, power: float = 2.0) -> np.ndarray:
    """Inside of the (super-)ellipse centred ``(cx, cy)`` with semi-axes ``(ax, ay)``; args broadcast."""
    return (np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power) <= 1.0


def tube(grid: Grid, p0, p1, r0: float, r1: float | None = None) -> tuple[Box, np.ndarray] | None:
    """Mask of a (tapered) capsule from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), in its box."""
    p0, p1 = np.asarray(p0, dtype=np.float32), np.asarray(p1, dtype=np.float32)
    r1 = r0 if r1 is None else r1
    pad = max(r0, r1) + 1.0
    box = grid.box(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad)
    if box is None:
        return None
    x, y, z = grid.coords(box)
    d = p1 - p0
    dd = float(d @ d) or 1e-6
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / dd, 0.0, 1.0)
    dist2 = (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
    r = r0 + (r1 - r0) * t
    return box, dist2 <= r * r


def lobulated_blob(
    grid: Grid, rng: np.random.Generator, centre, radius: float, elongation: float = 0.15, lobulation: float = 0.1
) -> tuple[Box, np.ndarray] | None:
    """Mask of a randomly oriented ellipsoid of mean radius ``radius`` mm with a lobulated edge."""
    centre = np.asarray(centre, dtype=np.float32)
    pad = radius * (1 + elongation) * (1 + lobulation) + 1.0
    box = grid.box(centre - pad, centre + pad)
    if box is None:
        return None
    shape = LobulatedShape.draw(rng, radius, elongation, lobulation)
    x, y, z = grid.coords(box)
    return box, shape.inside(x - centre[0], y - centre[1], z - centre[2])


@dataclass(frozen=True)
class LobulatedShape:
    """A randomly oriented ellipsoid of mean radius ``radius`` mm with a lobulated edge, centred at 0.

    :meth:`level` is ``rho / limit`` (<= 1 inside), so the shape can be sampled anywhere, e.g. at
    sub-voxel points for partial volume. Drawn with the random draws :func:`lobulated_blob` always made.
    """

    radius: float
    lobulation: float
    rot: np.ndarray  # (3, 3) float32
    axes: np.ndarray  # (3,) float32
    bumps: tuple[tuple[np.ndarray, float, float], ...]  # (unit direction float32, frequency, phase)

    @classmethod
    def draw(cls, rng: np.random.Generator, radius: float, elongation: float = 0.15,
             lobulation: float = 0.1) -> LobulatedShape:
        rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        axes = 1.0 + rng.uniform(-elongation, elongation, size=3)
        axes /= np.cbrt(np.prod(axes))  # keep the volume of a sphere of ``radius``
        bumps = []
        for _ in range(4):
            w = rng.normal(size=3).astype(np.float32)
            w /= np.linalg.norm(w)
            bumps.append((w, rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)))
        return cls(radius, lobulation, rot.astype(np.float32), axes.astype(np.float32), tuple(bumps))

    def extent(self) -> float:
        """Largest distance (mm) from the centre to the edge."""
        return float(self.radius * np.max(self.axes) * (1 + 2 * self.lobulation))

    def _rho_limit(self, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
        v = np.stack(np.broadcast_arrays(dx, dy, dz), axis=-1)
        q = (v @ self.rot) / self.axes
        rho = np.linalg.norm(q, axis=-1)
        u = q / np.maximum(rho, 1e-6)[..., None]
        bump = np.zeros_like(rho)
        for w, freq, phase in self.bumps:
            bump += np.cos(freq * np.pi * (u @ w) + phase)
        return rho, self.radius * (1.0 + self.lobulation * bump / 2.0)

    def inside(self, dx, dy, dz) -> np.ndarray:
        """Mask of the points at mm offsets ``(dx, dy, dz)`` (broadcast) from the centre inside the shape."""
        rho, limit = self._rho_limit(dx, dy, dz)
        return rho <= limit

    def level(self, dx, dy, dz) -> np.ndarray:
        """``rho / limit`` at mm offsets ``(dx, dy, dz)``: 0 at the centre, 1 on the edge."""
        rho, limit = self._rho_limit(dx, dy, dz)
        return rho / limit
