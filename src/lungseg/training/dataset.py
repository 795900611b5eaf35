"""Axial-slice dataset over per-case HDF5 files, read lazily (one slice per chunk).

Augmentation is seeded per item from ``(epoch seed, item index)``, not from a process-global RNG:
an item gets the same flips / rotation whichever worker, rank or batch position loads it, so a run
resumed mid-epoch, or split across ranks, sees exactly the data of an uninterrupted single run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lungseg.casefile import open_case
from lungseg.training.preprocess import resize_mask, to_model_input

ROI_MODES = ("none", "crop", "mask")


def augment_pair(image: torch.Tensor, mask: torch.Tensor, max_degrees: float = 10.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal / vertical flips and a rotation in [-max_degrees, max_degrees] of ``(1, S, S)`` tensors.

    Draws three numbers from ``generator`` (the global torch RNG when ``None``), so it is deterministic
    given the generator's seed. Pixels rotated in from outside are 0 (= the window's low end, air) / background.
    """
    flip_x, flip_y, u = torch.rand(3, generator=generator).tolist()
    if flip_x < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if flip_y < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    angle = math.radians((2.0 * u - 1.0) * max_degrees)
    if angle != 0.0:
        c, s = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=image.dtype)
        both = torch.cat([image, mask])[None]  # one resampling pass for image and mask
        grid = F.affine_grid(theta, list(both.shape), align_corners=False)
        rotated = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        image, mask = rotated[: image.shape[0]], (rotated[image.shape[0]:] > 0.5).to(mask.dtype)
    return image.contiguous(), mask.contiguous()


class EpochSeeded:
    """The epoch seed of a training dataset (``item_seed(epoch_seed, i)`` seeds item i's augmentation), held in
    shared memory: the DataLoader's persistent workers, which keep their copy of the dataset between epochs, read
    the value the main process sets before the epoch's first index is sent to them."""

    _shared_epoch_seed: torch.Tensor | None = None

    @property
    def epoch_seed(self) -> int:
        return 0 if self._shared_epoch_seed is None else int(self._shared_epoch_seed[0])

    def set_epoch_seed(self, seed: int) -> None:
        """Seed of this epoch's augmentation (set before the epoch's DataLoader iterator is created)."""
        if self._shared_epoch_seed is None:
            self._shared_epoch_seed = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._shared_epoch_seed[0] = int(seed)


def item_seed(epoch_seed: int, index: int) -> int:
    """Seed of one item's augmentation in one epoch (a splitmix-style hash: independent streams)."""
    z = (epoch_seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def roi_box(roi: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """Square ``(y0, y1, x0, x1)`` box around the non-zero voxels of a ``(z, y, x)`` mask, grown by
    ``margin`` pixels and clipped to the slice; ``None`` when the mask is empty."""
    ys, xs = np.nonzero(roi.any(axis=0))
    if ys.size == 0:
        return None
    h, w = roi.shape[1:]
    y0, y1 = int(ys.min()) - margin, int(ys.max()) + 1 + margin
    x0, x1 = int(xs.min()) - margin, int(xs.max()) + 1 + margin
    side = min(max(y1 - y0, x1 - x0), h, w)  # square, so resizing to S x S keeps the aspect ratio
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    y0 = min(max(cy - side // 2, 0), h - side)
    x0 = min(max(cx - side // 2, 0), w - side)
    return y0, y0 + side, x0, x0 + side


def check_labels(f: h5py.File, path: str, label: str, roi_label: str | None, roi_fix: str) -> None:
    """ValueError (one line naming the file and the fix) unless the open case file ``f`` has ``label`` and
    ``roi_label`` (None: no region of interest) on the image grid; ``roi_fix`` is the fix for a missing ROI label."""
    labels = sorted(f["labels"].keys()) if "labels" in f else []
    for name in [label] + ([roi_label] if roi_label is not None else []):
        if name not in labels:
            raise ValueError(f"case file {path} has no label '{name}' (it has: {', '.join(labels) or 'no labels'}); "
                             f"choose one of those with --label/--roi-label, or ingest the case with that label"
                             + (f", or {roi_fix}" if name == roi_label and name != label else ""))
        if f["labels"][name].shape != f["image"].shape:
            raise ValueError(f"case file {path}: label '{name}' has shape {f['labels'][name].shape}, "
                             f"image has {f['image'].shape}")


class SliceDataset(EpochSeeded, Dataset):
    """All axial slices of ``case_paths`` as ``(image (1, S, S), mask (1, S, S))`` float32 pairs.

    The image is the HU slice through :func:`~lungseg.training.preprocess.to_model_input` (the exact
    preprocessing inference uses); the mask is ``labels/<label> > 0`` resized with nearest neighbour.
    ``roi``: ``"crop"`` crops every slice of a case to the square box around its ``roi_label`` (plus
    ``roi_margin`` pixels) before resizing; ``"mask"`` sets HU outside ``roi_label`` to the window's
    low end. ``positive[i]`` says whether slice ``i`` has any foreground (for oversampling).
    HDF5 handles are opened on first use in each process and never pickled, so the dataset is safe
    with DataLoader worker processes (fork or spawn).
    """

    def __init__(
        self,
        case_paths: Sequence[str | Path],
        label: str,
        image_size: int,
        hu_window: Sequence[float],
        augment: bool = False,
        roi: str = "none",
        roi_label: str = "lung",
        roi_margin: int = 8,
    ) -> None:
        if roi not in ROI_MODES:
            raise ValueError(f"roi must be one of {', '.join(ROI_MODES)}, got {roi!r}")
        self.case_paths = [str(p) for p in case_paths]
        self.label = label
        self.image_size = int(image_size)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.augment = augment
        self.roi, self.roi_label, self.roi_margin = roi, roi_label, int(roi_margin)
        index: list[tuple[int, int]] = []
        positive: list[np.ndarray] = []
        self.boxes: list[tuple[int, int, int, int] | None] = []
        for case_idx, path in enumerate(self.case_paths):
            pos, box = self._inspect(path)
            index.extend((case_idx, z) for z in range(len(pos)))
            positive.append(pos)
            self.boxes.append(box)
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self.positive = np.concatenate(positive) if positive else np.zeros(0, bool)
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    @property
    def has_foreground(self) -> bool:
        return bool(self.positive.any())

    def _inspect(self, path: str) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """Check that ``path`` is a case file with the label (and ROI label) on the image grid;
        return which slices have foreground, and the case's ROI box."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"case file not found: {path}")
        with open_case(path) as f:
            check_labels(f, path, self.label, self.roi_label if self.roi != "none" else None,
                         "train on whole slices with --roi none (config train.roi: none)")
            target = f["labels"][self.label]
            positive = np.array([target[z].any() for z in range(target.shape[0])], dtype=bool)
            box = None
            if self.roi == "crop":
                box = roi_box(f["labels"][self.roi_label][()], self.roi_margin)
                if box is None:
                    raise ValueError(f"case file {path}: ROI label '{self.roi_label}' is empty, nothing to crop to; "
                                     f"use roi none or mask, or check the case's {self.roi_label} label")
            return positive, box

    def _file(self, case_idx: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: inherited handles are not safe to use
            self._handles = {}
            self._pid = os.getpid()
        f = self._handles.get(case_idx)
        if f is None:
            f = self._handles[case_idx] = open_case(self.case_paths[case_idx])
        return f

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case_idx, z = (int(v) for v in self.index[i])
        f = self._file(case_idx)
        box = self.boxes[case_idx]
        region = np.s_[z] if box is None else np.s_[z, box[0]:box[1], box[2]:box[3]]
        hu = f["image"][region]
        label = f["labels"][self.label][region]
        if self.roi == "mask":
            hu = np.where(f["labels"][self.roi_label][region] > 0, hu, np.int16(self.hu_window[0]))
        image = to_model_input(hu[None], self.image_size, self.hu_window)[0]
        mask = resize_mask(label[None], self.image_size)[0]
        if self.augment:
            generator = torch.Generator().manual_seed(item_seed(self.epoch_seed, i))
            image, mask = augment_pair(image, mask, generator=generator)
        return image, mask

    def close(self) -> None:
        """Close the HDF5 handles opened by this process."""
        if os.getpid() == self._pid:
            for f in self._handles.values():
                f.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
