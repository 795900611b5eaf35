"""Axial-slice dataset over per-case HDF5 files, read lazily (one slice per chunk)."""

from __future__ import annotations

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


def augment_pair(image: torch.Tensor, mask: torch.Tensor, max_degrees: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal / vertical flips and a rotation in [-max_degrees, max_degrees] of ``(1, S, S)`` tensors.

    Draws from the global torch RNG (always the same number of draws), so it is deterministic given
    ``torch.manual_seed``. Pixels rotated in from outside are 0 (= the window's low end, air) / background.
    """
    flip_x, flip_y, u = torch.rand(3).tolist()
    if flip_x < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if flip_y < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    angle = math.radians((2.0 * u - 1.0) * max_degrees)
    if angle != 0.0:
        c, s = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=image.dtype)
        grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
        image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        rotated = F.grid_sample(mask[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        mask = (rotated > 0.5).to(mask.dtype)
    return image.contiguous(), mask.contiguous()


class SliceDataset(Dataset):
    """All axial slices of ``case_paths`` as ``(image (1, S, S), mask (1, S, S))`` float32 pairs.

    The image is the HU slice through :func:`~lungseg.training.preprocess.to_model_input` (the exact
    preprocessing inference uses); the mask is ``labels/<label> > 0`` resized with nearest neighbour.
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
    ) -> None:
        self.case_paths = [str(p) for p in case_paths]
        self.label = label
        self.image_size = int(image_size)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.augment = augment
        index: list[tuple[int, int]] = []
        for case_idx, path in enumerate(self.case_paths):
            n_slices = self._inspect(path)
            index.extend((case_idx, z) for z in range(n_slices))
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def _inspect(self, path: str) -> int:
        """Check that ``path`` is a case file with the label on the image grid; return its slice count."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"case file not found: {path}")
        with open_case(path) as f:
            labels = sorted(f["labels"].keys()) if "labels" in f else []
            if self.label not in labels:
                raise ValueError(
                    f"case file {path} has no label '{self.label}' (it has: {', '.join(labels) or 'no labels'}); "
                    f"choose one of those with --label, or ingest the case with that label"
                )
            image_shape, label_shape = f["image"].shape, f["labels"][self.label].shape
            if image_shape != label_shape:
                raise ValueError(f"case file {path}: label '{self.label}' has shape {label_shape}, image has {image_shape}")
            return int(image_shape[0])

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
        hu = f["image"][z]
        label = f["labels"][self.label][z]
        image = to_model_input(hu[None], self.image_size, self.hu_window)[0]
        mask = resize_mask(label[None], self.image_size)[0]
        if self.augment:
            image, mask = augment_pair(image, mask)
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
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
