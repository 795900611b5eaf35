"""Patch geometry and the patch training dataset: small objects (nodules) at the scan's own resolution.

One implementation serves training and inference (:mod:`lungseg.inference.sliding_window`), so they
cannot drift:

* :class:`PatchSpec` is the ``input`` entry of a model file: ``patch_size`` ``[D, S, S]`` (D = 1 for
  2-D architectures), ``context_slices`` (2.5-D: K slices on each side as extra channels),
  ``spacing_mm`` (in-plane pixel size the slices are resampled to; ``None`` = each scan's own) and the
  sliding-window ``overlap``.
* :func:`resample_inplane` brings normalised slices to ``spacing_mm`` (bilinear; masks nearest).
* :func:`crop` cuts a window out of a stack, padding outside the scan with 0 (= the HU window's low end).
* :func:`dilate_region` grows a region of interest (the lung mask) by a margin in-plane: background
  patches are drawn inside it, and inference only looks (and keeps foreground) inside it.

:class:`PatchDataset` draws ``patches_per_epoch`` patches; item ``i`` of an epoch is a function of
``(epoch seed, i)`` alone (its case is fixed, ``i mod n_cases``; centre and augmentation come from
:func:`~lungseg.training.dataset.item_seed`), so resumed and multi-process runs see the same data as one
uninterrupted run. A share ``foreground_rate`` of the patches is centred (with a jitter of up to a
quarter patch) on a voxel of a randomly chosen foreground object (connected component: small nodules
are drawn as often as large ones); the others half on a random voxel of the dilated region of interest
(the lungs: negatives where the confusers, vessels, are), half anywhere in its bounding box (hilum,
mediastinum, chest wall: what a sliding window over the grown lung mask also sees), or anywhere in the
scan with ``roi: none``. A case without
foreground gives region patches only, so the realised rate is ``foreground_rate`` times the share of
cases with foreground.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from lungseg.casefile import open_case
from lungseg.geometry import Geometry
from lungseg.training.dataset import EpochSeeded, augment_pair, check_labels, item_seed
from lungseg.training.preprocess import normalize_hu

#: foreground voxels kept per object, and region voxels per case, to draw centres from (memory bound)
MAX_VOXELS = 4096
_FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class PatchSpec:
    """How a patch network sees a scan (the model file's ``input`` of kind ``patches``)."""

    depth: int  # slices per patch: 1 for 2-D architectures
    size: int  # in-plane side S
    context_slices: int = 0  # 2-D architectures: neighbours per side as channels
    spacing_mm: float | None = None
    overlap: float = 0.5

    @classmethod
    def from_input(cls, spec: dict[str, Any]) -> PatchSpec:
        depth, size, size_x = (int(v) for v in spec["patch_size"])
        if size != size_x:
            raise ValueError(f"patches must be square in-plane, got patch_size {spec['patch_size']}")
        spacing = spec.get("spacing_mm")
        return cls(depth, size, int(spec.get("context_slices", 0)), None if spacing is None else float(spacing),
                   float(spec.get("overlap", 0.5)))

    @property
    def volumetric(self) -> bool:
        """3-D input ``(N, 1, D, S, S)`` rather than 2-D ``(N, 1 + 2K, S, S)``."""
        return self.depth > 1

    @property
    def channels(self) -> int:
        return 1 + 2 * self.context_slices


def resampled_shape(hw: Sequence[int], spacing_yx: Sequence[float], target_mm: float | None) -> tuple[int, int]:
    """In-plane size of slices of ``hw`` pixels of ``spacing_yx`` mm once resampled to ``target_mm``."""
    if target_mm is None:
        return int(hw[0]), int(hw[1])
    return (max(1, round(hw[0] * float(spacing_yx[0]) / target_mm)),
            max(1, round(hw[1] * float(spacing_yx[1]) / target_mm)))


def resample_inplane(slices: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(N, H, W)`` -> ``(N, *size)``: bilinear for images, ``nearest`` for masks (no antialiasing: the
    training and inference paths both call this, which is what matters)."""
    if tuple(slices.shape[-2:]) == tuple(size):
        return slices
    x = slices[:, None].to(torch.float32)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")[:, 0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class AxisSampling:
    """Where a window of the resampled axis reads the source axis: ``out[j] = (1 - w[j]) src[i0[j]] +
    w[j] src[i1[j]]`` for ``valid[j]``, 0 elsewhere (outside the resampled axis: crop()'s padding)."""

    i0: np.ndarray
    i1: np.ndarray
    w: np.ndarray
    valid: np.ndarray

    @property
    def span(self) -> slice:
        """The source pixels read (a contiguous range; empty when no pixel is valid)."""
        if not self.valid.any():
            return slice(0, 0)
        return slice(int(self.i0[self.valid].min()), int(self.i1[self.valid].max()) + 1)


def axis_sampling(n_in: int, n_out: int, start: int, size: int, mode: str = "bilinear") -> AxisSampling:
    """Pixels ``start .. start + size - 1`` of an axis of ``n_in`` pixels resampled to ``n_out`` as
    :func:`resample_inplane` (torch's bilinear with ``align_corners=False``, or ``nearest-exact``) computes them."""
    j = np.arange(start, start + size)
    valid = (j >= 0) & (j < n_out)
    scale = n_in / n_out
    if mode == "nearest":
        i0 = np.minimum(np.floor((j + 0.5) * scale), n_in - 1).astype(np.int64)
        return AxisSampling(np.where(valid, i0, 0), np.where(valid, i0, 0), np.zeros(size, np.float32), valid)
    src = np.maximum((j + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src), n_in - 1).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float32)
    return AxisSampling(np.where(valid, i0, 0), np.where(valid, i1, 0), np.where(valid, w, 0).astype(np.float32), valid)


def sample_window(part: torch.Tensor, rows: AxisSampling, cols: AxisSampling) -> torch.Tensor:
    """``(C, size, size)`` window of a stack whose rows ``rows.span`` and columns ``cols.span`` are ``part``."""
    out = part.new_zeros((part.shape[0], len(rows.valid), len(cols.valid)))
    if not rows.valid.any() or not cols.valid.any():
        return out
    ry, cx = np.flatnonzero(rows.valid), np.flatnonzero(cols.valid)
    tmp = _interpolate_axis(part, 1, rows.i0[ry] - rows.span.start, rows.i1[ry] - rows.span.start, rows.w[ry])
    tmp = _interpolate_axis(tmp, 2, cols.i0[cx] - cols.span.start, cols.i1[cx] - cols.span.start, cols.w[cx])
    out[:, ry[0]:ry[-1] + 1, cx[0]:cx[-1] + 1] = tmp
    return out


def _interpolate_axis(x: torch.Tensor, dim: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> torch.Tensor:
    """Linear interpolation along ``dim``: ``(1 - w) x[i0] + w x[i1]`` (a plain gather where ``w`` is 0)."""
    first = x.index_select(dim, torch.from_numpy(i0))
    if not w.any():
        return first
    shape = [1] * x.ndim
    shape[dim] = len(w)
    weight = torch.from_numpy(w).view(shape)
    return first.mul_(1 - weight).add_(x.index_select(dim, torch.from_numpy(i1)).mul_(weight))


def crop(stack: torch.Tensor, y0: int, x0: int, size: int) -> torch.Tensor:
    """``stack[..., y0:y0+size, x0:x0+size]``, zero-padded where the window leaves the stack."""
    h, w = stack.shape[-2:]
    ys, xs = slice(max(y0, 0), min(y0 + size, h)), slice(max(x0, 0), min(x0 + size, w))
    out = stack.new_zeros((*stack.shape[:-2], size, size))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[..., ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = stack[..., ys, xs]
    return out


def dilate_region(region: np.ndarray, margin_px: int) -> np.ndarray:
    """Boolean ``(z, y, x)`` region grown in-plane by ``margin_px`` pixels (Euclidean), slice by slice."""
    region = np.asarray(region) > 0
    if margin_px <= 0 or not region.any():
        return region
    out = np.zeros_like(region)
    boxes = ndimage.find_objects(region.astype(np.uint8))[0]
    zs = boxes[0]
    ys = slice(max(boxes[1].start - margin_px, 0), boxes[1].stop + margin_px)
    xs = slice(max(boxes[2].start - margin_px, 0), boxes[2].stop + margin_px)
    for z in range(zs.start, zs.stop):
        part = region[z, ys, xs]
        if part.any():
            out[z, ys, xs] = ndimage.distance_transform_edt(~part) <= margin_px
    return out


def context_indices(z: int, n_slices: int, spec: PatchSpec) -> np.ndarray:
    """The slice indices one patch at (first) slice ``z`` reads, clamped to the scan (edge slices repeat):
    ``z - K .. z + K`` for 2-D (K context slices), ``z .. z + D - 1`` for 3-D."""
    offsets = np.arange(spec.depth) if spec.volumetric else np.arange(-spec.context_slices, spec.context_slices + 1)
    return np.clip(z + offsets, 0, n_slices - 1)


def read_slices(dataset: h5py.Dataset | np.ndarray, indices: np.ndarray, rows: slice = np.s_[:],
                cols: slice = np.s_[:]) -> np.ndarray:
    """``dataset[indices, rows, cols]`` for sorted indices with repeats (h5py reads each slice once)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    part = dataset[unique.tolist() if isinstance(dataset, h5py.Dataset) else unique, rows, cols]
    return np.asarray(part)[inverse]


@dataclass
class _Case:
    shape: tuple[int, int, int]
    spacing_yx: tuple[float, float]
    objects: list[np.ndarray]  # per foreground component: (n, 3) voxel indices (subsampled)
    region: np.ndarray | None  # (n, 3) voxel indices of the dilated region of interest, or None = anywhere
    box: tuple[tuple[int, int], ...] | None  # (start, stop) per axis of the dilated region's bounding box


class PatchDataset(EpochSeeded, Dataset):
    """``n_items`` training patches per epoch over ``case_paths``: ``(image, mask)`` float32 tensors of
    ``(1 + 2K, S, S)`` / ``(1, S, S)`` (2-D; the mask of the middle slice) or ``(1, D, S, S)`` both (3-D).

    ``roi`` (``crop`` or ``mask``) with ``roi_label``: background centres are drawn inside that label
    dilated by ``roi_margin`` pixels; ``mask`` also sets HU outside the dilated label to the window's
    low end (as inference does). HDF5 handles open lazily per process and are never pickled.
    """

    def __init__(self, case_paths: Sequence[str | Path], label: str, spec: PatchSpec, hu_window: Sequence[float],
                 n_items: int, foreground_rate: float, augment: bool = False, roi: str = "none",
                 roi_label: str = "lung", roi_margin: int = 8, seed: int = 0) -> None:
        self.case_paths = [str(p) for p in case_paths]
        if not self.case_paths:
            raise ValueError("no case files given")
        self.label, self.spec = label, spec
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.foreground_rate, self.augment = float(foreground_rate), augment
        self.roi, self.roi_label, self.roi_margin = roi, roi_label, int(roi_margin)
        self.cases = [self._inspect(path, seed) for path in self.case_paths]
        cases = np.arange(int(n_items)) % len(self.case_paths)
        self.index = np.stack([cases, np.arange(int(n_items))], axis=1).astype(np.int64)
        self.positive = np.zeros(int(n_items), dtype=bool)  # no slice weights: the rate is drawn per item
        self._handles: dict[int, h5py.File] = {}
        self._datasets: dict[int, dict[str, h5py.Dataset]] = {}
        self._pid = os.getpid()

    @property
    def has_foreground(self) -> bool:
        return any(case.objects for case in self.cases)

    def _inspect(self, path: str, seed: int) -> _Case:
        if not Path(path).is_file():
            raise FileNotFoundError(f"case file not found: {path}")
        rng = np.random.default_rng(seed)
        with open_case(path) as f:
            check_labels(f, path, self.label, self.roi_label if self.roi != "none" else None, "use --roi none")
            spacing = Geometry.from_attrs(f.attrs).spacing
            target = f["labels"][self.label][()] > 0
            components, n = ndimage.label(target, structure=_FULL)
            objects = []
            for i, box in enumerate(ndimage.find_objects(components), start=1):
                voxels = np.argwhere(components[box] == i) + [s.start for s in box]
                objects.append(_subsample(voxels, rng))
            region, box = None, None
            if self.roi != "none":
                grown = dilate_region(f["labels"][self.roi_label][()], self.roi_margin)
                if not grown.any():
                    raise ValueError(f"case file {path}: ROI label '{self.roi_label}' is empty, no region to draw "
                                     f"patches from; use roi none, or check the case's {self.roi_label} label")
                region = _subsample(np.argwhere(grown), rng)
                box = tuple((s.start, s.stop) for s in ndimage.find_objects(grown.astype(np.uint8))[0])
            return _Case(tuple(int(v) for v in f["image"].shape), (float(spacing[1]), float(spacing[0])), objects,
                         region, box)

    def _file(self, case_idx: int) -> dict[str, h5py.Dataset]:
        """The case's image and label datasets, opened once per process."""
        if os.getpid() != self._pid:
            self._handles, self._datasets, self._pid = {}, {}, os.getpid()
        datasets = self._datasets.get(case_idx)
        if datasets is None:
            f = self._handles[case_idx] = open_case(self.case_paths[case_idx])
            names = {self.label, self.roi_label} if self.roi != "none" else {self.label}
            datasets = self._datasets[case_idx] = {"image": f["image"], **{n: f["labels"][n] for n in names}}
        return datasets

    def __len__(self) -> int:
        return len(self.index)

    def centre(self, i: int) -> tuple[int, tuple[int, int, int], bool]:
        """``(case index, centre voxel (z, y, x), foreground-centred?)`` of item ``i`` this epoch."""
        case_idx = int(self.index[i, 0])
        case = self.cases[case_idx]
        rng = np.random.default_rng(item_seed(self.epoch_seed, i))
        foreground = bool(rng.random() < self.foreground_rate) and bool(case.objects)
        if foreground:
            voxels = case.objects[int(rng.integers(len(case.objects)))]
            z, y, x = voxels[int(rng.integers(len(voxels)))]
            jitter = self.spec.size // 4
            y, x = y + int(rng.integers(-jitter, jitter + 1)), x + int(rng.integers(-jitter, jitter + 1))
            if self.spec.volumetric:
                z = z + int(rng.integers(-(self.spec.depth // 4), self.spec.depth // 4 + 1))
        elif case.region is not None and rng.random() < 0.5:
            z, y, x = case.region[int(rng.integers(len(case.region)))]
        elif case.box is not None:  # the hilum, mediastinum and chest wall next to the lungs: where false positives arise
            z, y, x = (int(rng.integers(start, stop)) for start, stop in case.box)
        else:
            z, y, x = (int(rng.integers(n)) for n in case.shape)
        return case_idx, (int(z), int(y), int(x)), foreground

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case_idx, (z, y, x), _ = self.centre(i)
        case, f, spec = self.cases[case_idx], self._file(case_idx), self.spec
        first = z - spec.depth // 2 if spec.volumetric else z
        zs = context_indices(first, case.shape[0], spec)
        target_zs = zs if spec.volumetric else zs[spec.context_slices: spec.context_slices + 1]
        size = resampled_shape(case.shape[1:], case.spacing_yx, spec.spacing_mm)
        cy = round((y + 0.5) * size[0] / case.shape[1] - 0.5)
        cx = round((x + 0.5) * size[1] / case.shape[2] - 0.5)
        # only the pixels the window samples are read: the values of crop(resample_inplane(whole slices))
        rows = [axis_sampling(case.shape[1], size[0], cy - spec.size // 2, spec.size, m) for m in ("bilinear", "nearest")]
        cols = [axis_sampling(case.shape[2], size[1], cx - spec.size // 2, spec.size, m) for m in ("bilinear", "nearest")]
        hu = read_slices(f["image"], zs, rows[0].span, cols[0].span)
        if self.roi == "mask":
            keep = dilate_region(read_slices(f[self.roi_label], zs), self.roi_margin)[:, rows[0].span, cols[0].span]
            hu = np.where(keep, hu, np.int16(self.hu_window[0]))
        image = sample_window(normalize_hu(torch.from_numpy(np.ascontiguousarray(hu)), self.hu_window), rows[0], cols[0])
        label = read_slices(f[self.label], target_zs, rows[1].span, cols[1].span) > 0
        mask = sample_window(torch.from_numpy(label.astype(np.float32)), rows[1], cols[1])
        if self.augment:
            generator = torch.Generator().manual_seed(item_seed(self.epoch_seed, i) ^ 0x5DEECE66D)
            image, mask = augment_pair(image, mask, generator=generator)
        if spec.volumetric:
            return image[None].contiguous(), mask[None].contiguous()
        return image.contiguous(), mask.contiguous()

    def close(self) -> None:
        if os.getpid() == self._pid:
            for f in self._handles.values():
                f.close()
        self._handles, self._datasets = {}, {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_datasets"] = {}, {}
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _subsample(voxels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(voxels) <= MAX_VOXELS:
        return voxels.astype(np.int32)
    return voxels[np.sort(rng.choice(len(voxels), MAX_VOXELS, replace=False))].astype(np.int32)
