"""Sliding-window inference of patch models over a whole scan, with Gaussian-weighted blending.

The scan is normalised and resampled in-plane exactly as the training patches were
(:mod:`lungseg.training.patches`); windows of the model's patch size step by ``size * (1 - overlap)``
over the slices (2-D / 2.5-D: every slice, with its context slices as channels; 3-D: slabs of
``depth`` slices) and in-plane. Each window's probabilities are weighted by a Gaussian centred on the
window (sigma = 1/8 of its size, as nnU-Net: the borders, where the network sees least context, count
least) and the weighted sum is divided by the summed weights: a model that returns its input
reconstructs the volume exactly. With a region (the lung mask grown by the model's margin), only
windows that touch it are run and the probability outside it is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from lungseg.training.patches import PatchSpec, context_indices, crop, resample_inplane, resampled_shape
from lungseg.training.preprocess import normalize_hu

Predict = Callable[[torch.Tensor], torch.Tensor]  # network input batch -> foreground probabilities


def gaussian_importance(shape: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """Separable Gaussian weights of a window, peak 1, sigma = ``sigma_scale`` x side; no zeros."""
    weights = torch.ones(shape, dtype=torch.float32)
    for axis, n in enumerate(shape):
        if n == 1:
            continue
        coords = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        g = torch.exp(-0.5 * (coords / (sigma_scale * n)) ** 2)
        view = [1] * len(shape)
        view[axis] = n
        weights = weights * g.view(view)
    return weights.clamp_(min=1e-4)


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` covering ``[0, length)`` with at least ``overlap``; the last
    window ends at ``length`` (a single window at 0 when the axis is shorter than it: padded)."""
    if length <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    n = int(np.ceil((length - window) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, length - window, n)]


def _windows(spec: PatchSpec, shape: tuple[int, int, int], region: np.ndarray | None
             ) -> Iterator[tuple[int, int, int]]:
    """``(z, y0, x0)`` of every window that touches the region (all windows without one)."""
    depth = spec.depth if spec.volumetric else 1
    z_overlap = spec.overlap if spec.volumetric else 0.0
    ys, xs = window_starts(shape[1], spec.size, spec.overlap), window_starts(shape[2], spec.size, spec.overlap)
    if region is None:
        zs = window_starts(shape[0], depth, z_overlap)
        yield from ((z, y, x) for z in zs for y in ys for x in xs)
        return
    for z in window_starts(shape[0], depth, z_overlap):
        seen = region[z:z + depth].any(axis=0)
        if not seen.any():
            continue
        table = np.zeros((shape[1] + 1, shape[2] + 1), dtype=np.int32)  # summed-area table: any voxel in O(1)
        table[1:, 1:] = seen.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
        for y in ys:
            y1 = min(y + spec.size, shape[1])
            for x in xs:
                x1 = min(x + spec.size, shape[2])
                if table[y1, x1] - table[y, x1] - table[y1, x] + table[y, x] > 0:
                    yield z, y, x


@torch.inference_mode()
def sliding_window_probabilities(predict: Predict, volume: torch.Tensor, spec: PatchSpec,
                                 region: np.ndarray | None = None, batch_size: int = 16,
                                 progress: bool = False) -> torch.Tensor:
    """Blended foreground probabilities ``(Z, H, W)`` of a prepared volume (normalised, on the patch grid).

    ``predict`` maps a batch ``(N, 1 + 2K, S, S)`` (2-D) or ``(N, 1, D, S, S)`` (3-D) to probabilities of
    shape ``(N, 1, S, S)`` / ``(N, 1, D, S, S)``. ``region`` (bool, the volume's shape): windows that miss it
    are skipped and the result is 0 outside it.
    """
    shape = tuple(int(v) for v in volume.shape)
    size, depth = spec.size, (spec.depth if spec.volumetric else 1)
    weight = gaussian_importance((depth, size, size))
    total = torch.zeros(shape, dtype=torch.float32)
    norm = torch.zeros(shape, dtype=torch.float32)
    windows = list(_windows(spec, shape, region))
    for start in tqdm(range(0, len(windows), batch_size), desc="sliding window", unit="batch", disable=not progress):
        batch = windows[start:start + batch_size]
        inputs = [crop(volume[context_indices(z, shape[0], spec)], y, x, size) for z, y, x in batch]
        x_batch = torch.stack(inputs)
        if spec.volumetric:
            x_batch = x_batch[:, None]
        probs = predict(x_batch).detach().to(torch.float32).cpu().reshape(len(batch), depth, size, size)
        for (z, y, x), p in zip(batch, probs):
            zs = slice(z, min(z + depth, shape[0]))
            ys, xs = slice(y, min(y + size, shape[1])), slice(x, min(x + size, shape[2]))
            part = (slice(0, zs.stop - zs.start), slice(0, ys.stop - ys.start), slice(0, xs.stop - xs.start))
            total[zs, ys, xs] += p[part] * weight[part]
            norm[zs, ys, xs] += weight[part]
    out = torch.where(norm > 0, total / norm.clamp(min=1e-12), torch.zeros_like(total))
    if region is not None:
        out *= torch.from_numpy(np.ascontiguousarray(region))
    return out


def prepare_volume(hu: np.ndarray, spacing_xyz: tuple[float, ...], spec: PatchSpec, hu_window: tuple[float, float],
                   region: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """A HU volume (and region) normalised and resampled in-plane to the model's patch spacing."""
    size = resampled_shape(hu.shape[1:], (spacing_xyz[1], spacing_xyz[0]), spec.spacing_mm)
    volume = resample_inplane(normalize_hu(torch.from_numpy(np.ascontiguousarray(hu)), hu_window), size)
    if region is not None and size != tuple(hu.shape[1:]):
        region = resample_inplane(torch.from_numpy(region.astype(np.float32)), size, "nearest").numpy() > 0
    return volume, region


def patch_model_probabilities(model: torch.nn.Module, meta: dict, hu: np.ndarray, spacing_xyz: tuple[float, ...],
                              region: np.ndarray | None, batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """float32 ``(z, y, x)`` probabilities of one patch model over a HU volume at the volume's own size.

    ``region`` (already grown by the model's margin; None = everywhere) limits the windows and zeroes the
    result outside it; with ``"mask"`` ROI mode the HU outside it are also set to the window's low end,
    as in training.
    """
    spec = PatchSpec.from_input(meta["input"])
    if region is not None and meta.get("roi", {}).get("mode") == "mask":
        hu = np.where(region, hu, np.int16(meta["hu_window"][0]))
    volume, grid_region = prepare_volume(hu, spacing_xyz, spec, tuple(meta["hu_window"]), region)
    device = next(model.parameters()).device

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x.to(device)).float())

    probs = sliding_window_probabilities(predict, volume, spec, grid_region, batch_size, progress)
    if tuple(probs.shape[1:]) != tuple(hu.shape[1:]):
        probs = resample_inplane(probs, tuple(hu.shape[1:])).clamp_(0.0, 1.0)
        if region is not None:
            probs *= torch.from_numpy(np.ascontiguousarray(region))
    return probs.numpy()
