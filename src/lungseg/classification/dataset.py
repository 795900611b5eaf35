"""Nodule patches as classification training data.

Inputs: the per-case nodule patch files ``<case>.patches.h5`` (what ``lungseg train --train/--val`` take
for ``task: classification``); each one's table is the ``<case>.nodules.tsv`` beside it (row i <->
``/patches[i]``; :mod:`lungseg.classification.patches`, :mod:`lungseg.classification.nodule_table`).

Items: ``(patch (C, S, S) float32, target (T,) int64)``. The patch is the HU planes (the 3 orthogonal
planes, or the axial one) windowed with ``hu_window`` to 0..1 and resized to ``image_size`` by the
preprocessing inference uses (:func:`lungseg.training.preprocess.to_model_input`). ``target[t]`` is the
class index of head ``t`` (``heads``: ``image`` = the readers' label, classes as
:meth:`lungseg.classification.labels.LabelProtocol.classes`; ``pathology`` = benign 0 / malignant 1),
``candidate`` = non_nodule 0 / nodule 1, the ``label`` of a candidate table of :mod:`lungseg.detection.candidates`),
``-1`` where that label is unknown (or indeterminate and excluded); rows unknown for every head are
left out, so an image-only dataset holds exactly the labelled nodules.

Augmentation (training): flips along x, y and z, the x <-> y swap (with the flips: the 90-degree
rotations about z) and an isotropic scale in [0.9, 1.1], each applied consistently to all three planes
(the same 3-D transform: an x flip flips the axial and coronal columns, the swap transposes the axial
plane and exchanges coronal and sagittal). Drawn from ``item_seed(epoch seed, index)``, as the
segmentation data: the same item gets the same transform on any rank, worker or resumed run. The DataLoader
fetches a batch at once (``__getitems__``), which transforms all its items together (:func:`transform_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lungseg.classification.labels import BENIGN, MALIGNANT, LabelProtocol
from lungseg.classification.nodule_table import read_nodule_table
from lungseg.classification.patches import read_patches
from lungseg.training.dataset import EpochSeeded, item_seed
from lungseg.training.preprocess import to_model_input

PATCH_SUFFIX, TABLE_SUFFIX = ".patches.h5", ".nodules.tsv"
PATHOLOGY_CLASSES = (BENIGN, MALIGNANT)
#: classes of the candidate head (false-positive reduction): a detector's candidate that is no nodule, or one that is
CANDIDATE_CLASSES = ("non_nodule", "nodule")
#: per head: the class whose probability the classifier reports (its AUC's positive class)
POSITIVE_CLASS = {"image": MALIGNANT, "pathology": MALIGNANT, "candidate": "nodule"}
SCALE_RANGE = (0.9, 1.1)


def table_of(patch_file: str | Path) -> Path:
    """The nodule table beside a patch file: ``A.patches.h5`` -> ``A.nodules.tsv``."""
    path = Path(patch_file)
    if not path.name.endswith(PATCH_SUFFIX):
        raise ValueError(f"{path} is not a nodule patch file (<case>{PATCH_SUFFIX}); classification trains on the "
                         f"files of `lungseg nodule-patches`")
    return path.with_name(path.name[: -len(PATCH_SUFFIX)] + TABLE_SUFFIX)


def head_classes(head: str, indeterminate: str) -> tuple[str, ...]:
    """The class words of a head, in index order."""
    if head == "image":
        return LabelProtocol(indeterminate=indeterminate).classes()
    if head == "pathology":
        return PATHOLOGY_CLASSES
    if head == "candidate":
        return CANDIDATE_CLASSES
    raise ValueError(f"unknown classification head {head!r}; valid: image, pathology, candidate")


def read_case(patch_file: str | Path, table: str | Path | None = None) -> tuple[np.ndarray, list[dict]]:
    """``(patches int16 (N, 3, S, S), table rows)`` of one case, checked to belong together."""
    table = table_of(patch_file) if table is None else Path(table)
    if not Path(patch_file).is_file():
        raise FileNotFoundError(f"nodule patch file not found: {patch_file}")
    if not table.is_file():
        raise FileNotFoundError(f"nodule table {table} (beside {patch_file}) not found; "
                                f"run `lungseg nodule-patches` for the case")
    patches, _ = read_patches(patch_file)
    rows = read_nodule_table(table)
    if len(rows) != len(patches):
        raise ValueError(f"{table} has {len(rows)} nodule row(s) but {patch_file} has {len(patches)} patch(es); "
                         f"rewrite both with `lungseg nodule-patches`")
    return patches, rows


def model_input(patches: np.ndarray, planes: str, image_size: int, hu_window: Sequence[float]) -> torch.Tensor:
    """HU patches (N, 3, S, S) -> network input (N, C, image_size, image_size) float32 in 0..1."""
    x = torch.from_numpy(np.ascontiguousarray(patches[:, :1] if planes == "axial" else patches))
    n, c, s, _ = x.shape
    if n == 0:
        return torch.zeros(0, c, image_size, image_size)
    return to_model_input(x.reshape(n * c, s, s), image_size, hu_window).reshape(n, c, image_size, image_size)


def transform_planes(x: torch.Tensor, flip_x: bool = False, flip_y: bool = False, flip_z: bool = False,
                     swap_xy: bool = False, scale: float = 1.0) -> torch.Tensor:
    """A 3-D transform of the volume around the nodule, applied to its planes (C, S, S): C = 3 (axial[y, x],
    coronal[z, x], sagittal[z, y]) or C = 1 (axial). Flips along x / y / z, then the x <-> y swap, then an
    isotropic zoom by ``scale`` about the centre (bilinear; 0 = air outside)."""
    flags = torch.tensor([[flip_x, flip_y, flip_z, swap_xy]])
    return transform_batch(x[None], flags, torch.tensor([float(scale)]))[0]


def transform_batch(x: torch.Tensor, flags: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """:func:`transform_planes` of every item of a batch (B, C, S, S) at once: ``flags`` (B, 4) bool = flip x,
    flip y, flip z, swap; ``scales`` (B,). The flips and the swap are exact index moves on the items concerned,
    the zoom one bilinear resampling of the zoomed items (a grid per item, shared by its planes)."""
    flip_x, flip_y, flip_z, swap = (flags[:, k].bool() for k in range(4))
    out = _flip_and_swap(x, flip_x, flip_y, flip_z, swap)
    zoomed = scales != 1.0
    if not bool(zoomed.any()):
        return out
    every = bool(zoomed.all())  # the usual case in training: no gather and scatter of the zoomed items
    theta = torch.zeros(int(zoomed.sum()), 2, 3, dtype=out.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scales[zoomed].to(out.dtype)
    grid = F.affine_grid(theta, [len(theta), *out.shape[1:]], align_corners=False)
    resampled = F.grid_sample(out if every else out[zoomed], grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
    if every:
        return resampled
    out[zoomed] = resampled
    return out


def _flip_and_swap(x: torch.Tensor, flip_x: torch.Tensor, flip_y: torch.Tensor, flip_z: torch.Tensor,
                   swap: torch.Tensor) -> torch.Tensor:
    """The flips and the swap of :func:`transform_batch` as exact index moves, on the items concerned only."""
    out = x.clone()
    axial = out[:, 0]

    def apply(plane: torch.Tensor, mask: torch.Tensor, move) -> None:
        if bool(mask.any()):
            plane[mask] = move(plane[mask])

    apply(axial, flip_x, lambda t: t.flip(-1))
    apply(axial, flip_y, lambda t: t.flip(-2))
    apply(axial, swap, lambda t: t.transpose(-1, -2))
    if x.shape[1] == 3:
        coronal, sagittal = out[:, 1], out[:, 2]
        apply(coronal, flip_x, lambda t: t.flip(-1))
        apply(sagittal, flip_y, lambda t: t.flip(-1))
        apply(coronal, flip_z, lambda t: t.flip(-2))
        apply(sagittal, flip_z, lambda t: t.flip(-2))
        if bool(swap.any()):
            kept = coronal[swap].clone()
            coronal[swap] = sagittal[swap]
            sagittal[swap] = kept
    return out


def augmentation_draw(generator: torch.Generator) -> tuple[list[bool], float]:
    """One item's random transform: flips and swap (each 1/2), scale (uniform in :data:`SCALE_RANGE`)."""
    flip_x, flip_y, flip_z, swap, u = torch.rand(5, generator=generator).tolist()
    return [flip_x < 0.5, flip_y < 0.5, flip_z < 0.5, swap < 0.5], SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u


def augment_planes(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """:func:`transform_planes` with a random transform (:func:`augmentation_draw`)."""
    flags, scale = augmentation_draw(generator)
    return transform_planes(x, *flags, scale=scale)


class NoduleDataset(EpochSeeded, Dataset):
    """The labelled nodules of ``patch_files`` (see the module docstring); all patches held in memory."""

    def __init__(self, patch_files: Sequence[str | Path], heads: Sequence[str], planes: str, image_size: int,
                 hu_window: Sequence[float], indeterminate: str = "exclude", augment: bool = False,
                 keep_unlabelled: bool = False) -> None:
        self.files = [str(p) for p in patch_files]
        self.heads = list(heads)
        self.classes = {h: head_classes(h, indeterminate) for h in self.heads}
        self.augment = augment
        images, targets, cases, rows = [], [], [], []
        for case_idx, path in enumerate(self.files):
            patches, table = read_case(path)
            target = np.array([[self._index(h, row) for h in self.heads] for row in table], dtype=np.int64).reshape(
                len(table), len(self.heads))
            keep = np.ones(len(table), bool) if keep_unlabelled else (target >= 0).any(axis=1)
            images.append(model_input(patches[keep], planes, image_size, hu_window))
            targets.append(target[keep])
            cases.append(np.full(int(keep.sum()), case_idx, dtype=np.int64))
            rows.extend(r for r, k in zip(table, keep) if k)
        channels = 3 if planes == "orthogonal" else 1
        self.images = torch.cat(images) if images else torch.zeros(0, channels, image_size, image_size)
        self.targets = np.concatenate(targets) if targets else np.zeros((0, len(self.heads)), np.int64)
        self.case_of_item = np.concatenate(cases) if cases else np.zeros(0, np.int64)
        self.rows = rows

    def _index(self, head: str, row: dict) -> int:
        word = row["pathology"] if head == "pathology" else row["label"]
        classes = self.classes[head]
        return classes.index(word) if word in classes else -1

    def class_counts(self, head: str) -> np.ndarray:
        """Examples per class of ``head`` (labelled rows only)."""
        t = self.targets[:, self.heads.index(head)]
        return np.bincount(t[t >= 0], minlength=len(self.classes[head]))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The items of one batch (the DataLoader's batched fetch), augmented together by
        :func:`transform_batch`; item i gets the transform of ``item_seed(epoch seed, i)`` as if alone."""
        x = self.images[list(indices)]
        if self.augment:
            epoch_seed = self.epoch_seed
            draws = [augmentation_draw(torch.Generator().manual_seed(item_seed(epoch_seed, int(i)))) for i in indices]
            x = transform_batch(x, torch.tensor([f for f, _ in draws]), torch.tensor([s for _, s in draws]))
        return [(item, torch.from_numpy(self.targets[i])) for item, i in zip(x, indices)]
