"""Task heads of the one training loop (:mod:`lungseg.training.train`): what differs between segmentation
and nodule classification, and nothing else.

A head provides the data (:meth:`TaskHead.datasets`, checked by :meth:`TaskHead.check_data`), the network
(:meth:`TaskHead.build_model`), the loss, per-item sampling weights (oversampling / class balance), the
validation pass (:meth:`TaskHead.validate`, all ranks' shards together), the columns of ``metrics.csv``
(:attr:`TaskHead.metric_fields`) and the selection metric of the best ``model.pt``
(:attr:`TaskHead.selection`: ``val_dice``, ``val_auc``). The loop, DDP, federated averaging, checkpoints,
resume and signals are the same code for both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lungseg.training.config import TrainConfig
from lungseg.training.dataset import SliceDataset
from lungseg.training.distributed import all_reduce_sum, broadcast_buffers
from lungseg.training.losses import dice_counts, dice_from_counts, fscore_sum, get_loss
from lungseg.training.models import build_model
from lungseg.training.patches import PatchDataset, PatchSpec
from lungseg.training.sampling import oversampling_weights

log = logging.getLogger("lungseg.train")

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]

SEGMENTATION_FIELDS = ("epoch", "train_loss", "val_loss", "val_dice", "val_fscore", "lr", "images_per_s", "epoch_seconds")
CLASSIFICATION_FIELDS = ("epoch", "train_loss", "val_loss", "val_auc", "val_auc_image", "val_auc_pathology",
                         "val_accuracy", "val_balanced_accuracy", "lr", "images_per_s", "epoch_seconds")


class TaskHead:
    """Base of the task heads; ``ctx`` arguments are the loop's shared state (``train._Ctx``)."""

    name = ""
    metric_fields: tuple[str, ...] = ()
    selection = ""
    unit = "items"

    def datasets(self, config: TrainConfig, train_files: list[str], val_files: list[str]) -> tuple[Any, Any]:
        raise NotImplementedError

    def check_data(self, config: TrainConfig, train_ds: Any, val_ds: Any, train_files: list[str]) -> None:
        """ValueError (one line) when the training data cannot teach anything."""

    def build_model(self, config: TrainConfig) -> nn.Module:
        return build_model(config.arch, **config.model_kwargs())

    def loss_fn(self, config: TrainConfig, train_ds: Any, named_loss: Callable[[str], LossFn] = get_loss) -> LossFn:
        """The training loss ``(network output, target) -> scalar``; ``named_loss`` resolves ``config.loss``."""
        raise NotImplementedError

    def sampling_weights(self, config: TrainConfig, train_ds: Any, indices: np.ndarray | None) -> np.ndarray | None:
        return None

    def case_of_item(self, train_ds: Any) -> np.ndarray:
        """The case (file) index of every training item: federated ``case`` partitions keep cases together."""
        return train_ds.index[:, 0]

    def validate(self, ctx: Any) -> dict[str, float]:
        raise NotImplementedError

    def score(self, row: dict[str, float]) -> float:
        """The number the best ``model.pt`` is chosen by (higher is better)."""
        return row[self.selection]

    def model_file_info(self, config: TrainConfig) -> dict[str, Any]:
        """What the model file records besides weights, architecture and settings (keyword arguments of
        :func:`lungseg.training.checkpoint.model_file_state`)."""
        raise NotImplementedError

    def describe_input(self, config: TrainConfig) -> str:
        return f"{config.image_size}x{config.image_size}"

    def log_row(self, row: dict[str, float], improved: bool) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------- segmentation


class SegmentationTask(TaskHead):
    """Slice-wise (or patch-wise) segmentation of ``config.label`` on ingested case files."""

    name = "segmentation"
    metric_fields = SEGMENTATION_FIELDS
    selection = "val_dice"

    def datasets(self, config: TrainConfig, train_files: list[str], val_files: list[str]) -> tuple[Any, Any]:
        """Whole slices, or patches (a fixed validation set of ``max(64, patches_per_epoch // 4)`` patches,
        drawn once with the run's seed)."""
        self.unit = "patches" if config.patches else "slices"
        roi = {"roi": config.roi, "roi_label": config.roi_label, "roi_margin": config.roi_margin}
        if not config.patches:
            return (SliceDataset(train_files, config.label, config.image_size, config.hu_window, augment=config.augment, **roi),
                    SliceDataset(val_files, config.label, config.image_size, config.hu_window, augment=False, **roi))
        spec = PatchSpec.from_input(config.input_spec())
        common = {"label": config.label, "spec": spec, "hu_window": config.hu_window,
                  "foreground_rate": config.foreground_rate, **roi, "seed": config.seed}
        train_ds = PatchDataset(train_files, n_items=config.patches_per_epoch, augment=config.augment, **common)
        val_ds = PatchDataset(val_files, n_items=max(64, config.patches_per_epoch // 4), augment=False, **common)
        val_ds.set_epoch_seed(config.seed + 7919)  # the same validation patches in every epoch and every run
        return train_ds, val_ds

    def check_data(self, config: TrainConfig, train_ds: Any, val_ds: Any, train_files: list[str]) -> None:
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise ValueError(f"no slices to learn from: {len(train_ds)} training and {len(val_ds)} validation slices")
        if not train_ds.has_foreground:
            raise ValueError(
                f"the training split has no slice with '{config.label}' foreground in any of its {len(train_files)} "
                f"case(s) ({', '.join(Path(p).name for p in train_files[:5])}{', ...' if len(train_files) > 5 else ''}); "
                f"nothing to learn. Choose another --label, or a split whose training cases contain that label"
            )

    def loss_fn(self, config: TrainConfig, train_ds: Any, named_loss: Callable[[str], LossFn] = get_loss) -> LossFn:
        return named_loss(config.loss)

    def sampling_weights(self, config: TrainConfig, train_ds: Any, indices: np.ndarray | None) -> np.ndarray | None:
        positive = train_ds.positive if indices is None else train_ds.positive[indices]
        return oversampling_weights(positive, config.oversample)

    @torch.no_grad()
    def validate(self, ctx: Any) -> dict[str, float]:
        """Validation loss, slice-aggregated Dice and mean per-slice F-score over all ranks' shards."""
        model = ctx.model
        broadcast_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics
        model.eval()
        sums = torch.zeros(6, dtype=torch.float64, device=ctx.device)  # loss * n, n, TP, P, G, sum of F-scores
        for images, masks in ctx.val_loader:
            images, masks = ctx.to_device(images, masks)
            with ctx.autocast():
                logits = model(images)
            logits = logits.float()
            n = images.shape[0]
            sums[0] += ctx.loss_fn(logits, masks).to(torch.float64) * n
            sums[1] += n
            sums[2:5] += dice_counts(logits, masks)
            sums[5] += fscore_sum(logits, masks)
        all_reduce_sum(sums)
        if sums[1] == 0:
            raise ValueError("the validation cases have no slices")
        return {"val_loss": float(sums[0] / sums[1]), "val_dice": dice_from_counts(sums[2:5]),
                "val_fscore": float(sums[5] / sums[1])}

    def model_file_info(self, config: TrainConfig) -> dict[str, Any]:
        return {"label": config.label,
                "roi": {"mode": config.roi, "label": config.roi_label if config.roi != "none" else "",
                        "margin": config.roi_margin if config.roi == "crop" or config.patches else 0},
                "input_spec": config.input_spec()}

    def describe_input(self, config: TrainConfig) -> str:
        return str(config.input_spec()) if config.patches else f"{config.image_size}x{config.image_size}"

    def log_row(self, row: dict[str, float], improved: bool) -> str:
        return (f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  val_dice {row['val_dice']:.4f}"
                f"{' (best)' if improved else ''}  val_F {row['val_fscore']:.4f}")


# ---------------------------------------------------------------- classification


def masked_cross_entropy(logits: dict[str, torch.Tensor], target: torch.Tensor, heads: list[str],
                         weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Sum over the heads of each head's (class-weighted) mean cross-entropy over the rows where its label is
    known (``target[:, t] >= 0``); a head without any known label in the batch adds 0 (and a zero gradient)."""
    total = torch.zeros((), dtype=torch.float32, device=target.device)
    for t, head in enumerate(heads):
        y = target[:, t]
        known = y >= 0
        per_row = F.cross_entropy(logits[head].float(), y.clamp(min=0), reduction="none")
        row_weight = known.to(per_row.dtype)
        if weights is not None:  # torch's weighted mean: sum(w_y * loss) / sum(w_y)
            row_weight = row_weight * weights[head].to(target.device)[y.clamp(min=0)]
        total = total + (per_row * row_weight).sum() / row_weight.sum().clamp(min=1e-12)
    return total


class ClassificationTask(TaskHead):
    """Nodule classification on nodule patch files (:mod:`lungseg.classification.dataset`): malignancy, or a
    detector's candidates as nodule or not (``cls_task: candidate``, :mod:`lungseg.detection`)."""

    name = "classification"
    metric_fields = CLASSIFICATION_FIELDS
    selection = "val_auc"
    unit = "nodules"

    def datasets(self, config: TrainConfig, train_files: list[str], val_files: list[str]) -> tuple[Any, Any]:
        from lungseg.classification.dataset import NoduleDataset

        common = {"heads": list(config.heads()), "planes": config.planes, "image_size": config.image_size,
                  "hu_window": config.hu_window, "indeterminate": config.indeterminate}
        return NoduleDataset(train_files, augment=config.augment, **common), NoduleDataset(val_files, **common)

    def check_data(self, config: TrainConfig, train_ds: Any, val_ds: Any, train_files: list[str]) -> None:
        for head in train_ds.heads:
            counts = train_ds.class_counts(head)
            empty = [c for c, n in zip(train_ds.classes[head], counts) if n == 0]
            if empty:
                listing = ", ".join(f"{c} {n}" for c, n in zip(train_ds.classes[head], counts))
                raise ValueError(
                    f"the training split has no {' or '.join(repr(c) for c in empty)} nodules for the {head} task "
                    f"(labelled nodules per class: {listing}; {len(train_files)} case file(s)); nothing to tell apart. "
                    f"Use more cases or other folds{', or indeterminate: exclude' if 'indeterminate' in empty else ''}")
        if len(val_ds) == 0:
            raise ValueError(f"the validation cases have no labelled nodules for {', '.join(val_ds.heads)}; "
                             f"choose a split whose validation cases have rated nodules")
        for head in val_ds.heads:
            counts = val_ds.class_counts(head)
            if (counts[:2] == 0).any() if head == "pathology" else (counts == 0).any():
                log.warning("the validation cases lack a class of the %s task (per class: %s): its val_auc is "
                            "undefined (NaN); the best model.pt then follows the lowest val_loss", head, counts.tolist())

    def loss_fn(self, config: TrainConfig, train_ds: Any, named_loss: Callable[[str], LossFn] = get_loss) -> LossFn:
        """:func:`masked_cross_entropy` over the heads (``config.loss`` is a segmentation setting)."""
        heads = list(config.heads())
        weights = None
        if config.class_balance == "loss":  # n / (classes * n_c): every class weighs the same in total
            weights = {}
            for head in heads:
                counts = train_ds.class_counts(head).astype(np.float64)
                weights[head] = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
        return lambda logits, target: masked_cross_entropy(logits, target, heads, weights)

    def sampling_weights(self, config: TrainConfig, train_ds: Any, indices: np.ndarray | None) -> np.ndarray | None:
        """``class_balance: sampling``: each class of the first head drawn equally often (rows without its label
        get the mean weight)."""
        if config.class_balance != "sampling":
            return None
        y = train_ds.targets[:, 0] if indices is None else train_ds.targets[indices, 0]
        counts = np.bincount(y[y >= 0], minlength=len(train_ds.classes[train_ds.heads[0]])).astype(np.float64)
        w = np.where(y >= 0, 1.0 / np.maximum(counts[np.maximum(y, 0)], 1.0), np.nan)
        return np.where(np.isnan(w), np.nanmean(w) if np.isfinite(w).any() else 1.0, w)

    def case_of_item(self, train_ds: Any) -> np.ndarray:
        return train_ds.case_of_item

    @torch.no_grad()
    def validate(self, ctx: Any) -> dict[str, float]:
        """Loss and metrics over the whole validation set: every rank's shard of logits lands in its rows of
        one (items x logits) tensor, summed over the ranks, so every rank computes the same metrics."""
        from lungseg.classification.dataset import POSITIVE_CLASS
        from lungseg.evaluation.classification import accuracy, balanced_accuracy, roc_auc

        model, val_ds = ctx.model, ctx.val_loader.dataset.dataset
        positions = torch.as_tensor(list(ctx.val_loader.dataset.indices), dtype=torch.long, device=ctx.device)
        broadcast_buffers(model)
        model.eval()
        sizes = {h: len(val_ds.classes[h]) for h in val_ds.heads}
        width = sum(sizes.values())
        gathered = torch.zeros(len(val_ds), width, dtype=torch.float64, device=ctx.device)
        start = 0
        for images, targets in ctx.val_loader:
            images, _ = ctx.to_device(images, targets)
            with ctx.autocast():
                out = model(images)
            rows = positions[start:start + images.shape[0]]
            gathered[rows] = torch.cat([out[h].float() for h in val_ds.heads], dim=1).to(torch.float64)
            start += images.shape[0]
        all_reduce_sum(gathered)
        logits, offset = {}, 0
        for head, k in sizes.items():
            logits[head] = gathered[:, offset:offset + k].float().cpu()
            offset += k
        targets = torch.from_numpy(val_ds.targets)
        row = {"val_loss": float(ctx.loss_fn(logits, targets))}
        aucs = {}
        for t, head in enumerate(val_ds.heads):
            known = val_ds.targets[:, t] >= 0
            y, prob = val_ds.targets[known, t], torch.softmax(logits[head][known], dim=1).numpy()
            positive = val_ds.classes[head].index(POSITIVE_CLASS[head])
            aucs[head] = roc_auc((y == positive).astype(np.int64), prob[:, positive])
            if t == 0:
                pred = prob.argmax(axis=1)
                row["val_accuracy"] = accuracy(y, pred)
                row["val_balanced_accuracy"] = balanced_accuracy(y, pred, len(val_ds.classes[head]))
        defined = [v for v in aucs.values() if math.isfinite(v)]
        row["val_auc"] = float(np.mean(defined)) if defined else math.nan
        row["val_auc_image"] = aucs.get("image", math.nan)
        row["val_auc_pathology"] = aucs.get("pathology", math.nan)
        return row

    def score(self, row: dict[str, float]) -> float:
        """``val_auc`` (the mean of the heads' AUCs); ``-val_loss`` when no AUC is defined (one class only)."""
        return row["val_auc"] if math.isfinite(row["val_auc"]) else -row["val_loss"]

    def model_file_info(self, config: TrainConfig) -> dict[str, Any]:
        from lungseg.classification.dataset import head_classes

        return {"label": "nodule_candidate" if config.cls_task == "candidate" else "malignancy", "roi": None,
                "input_spec": {"kind": "nodule_patches", "planes": config.planes},
                "classification": {"heads": {h: list(head_classes(h, config.indeterminate)) for h in config.heads()},
                                   "planes": config.planes, "indeterminate": config.indeterminate,
                                   "cls_task": config.cls_task, "sharing": config.model_kwargs()["sharing"]}}

    def describe_input(self, config: TrainConfig) -> str:
        return f"{config.planes} planes at {config.image_size}x{config.image_size}"

    def log_row(self, row: dict[str, float], improved: bool) -> str:
        return (f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  val_auc {row['val_auc']:.4f}"
                f"{' (best)' if improved else ''}  val_acc {row['val_accuracy']:.4f}")


TASK_HEADS: dict[str, type[TaskHead]] = {"segmentation": SegmentationTask, "classification": ClassificationTask}


def task_head(config: TrainConfig) -> TaskHead:
    """The head of ``config.task``."""
    return TASK_HEADS[config.task]()
