"""Training checkpoints and the model file (``model.pt``), all loadable with ``weights_only=True``.

Model file format (only primitives and tensors)::

    {"format": "lungseg-model", "arch": str, "model_kwargs": dict, "label": str, "image_size": int,
     "hu_window": [lo, hi], "epoch": int, "val_dice": float, "state_dict": {name: tensor},
     "roi": {"mode": "none" | "crop" | "mask", "label": str, "margin": int},   # optional
     "input": {"kind": "slices"} | {"kind": "patches", "patch_size": [D, S, S], "context_slices": K,
               "spacing_mm": float | None, "overlap": float}}                    # optional: slices

Classification model files (``"task": "classification"``; a file without ``task`` is a segmentation
model) have ``label`` ``"malignancy"``, no ``val_dice`` but ``score`` (``{"metric": "val_auc", "value": v}``),
``input`` ``{"kind": "nodule_patches", "planes": "orthogonal" | "axial"}`` and ``classification``:
``{"heads": {task: [class words in index order]}, "planes", "indeterminate", "cls_task", "sharing"}``
(:mod:`lungseg.classification.predict`).

``roi`` says how training restricted slices to a region (crop to / mask outside a label's box);
an inference step must apply the same to its input (``none`` = whole slices, the default).
``input`` says what the network sees: whole slices resized to ``image_size`` (the default), or patches
(:class:`lungseg.training.patches.PatchSpec`), predicted by sliding window inside the ROI grown by its margin.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungseg.atomic import atomic_path
from lungseg.training.models import build_model

#: zip directory, pickled structure and per-record headers of a torch.save file, roughly
SAVE_OVERHEAD_BYTES = 1 << 16
MODEL_FORMAT = "lungseg-model"
CHECKPOINT_FORMAT = "lungseg-checkpoint"
META_KEYS = ("arch", "model_kwargs", "label", "image_size", "hu_window", "epoch", "val_dice")
#: what a classification model file has instead of val_dice
CLASSIFICATION_KEYS = ("score", "classification")


def saved_size_estimate(obj: Any) -> int:
    """About the size of ``torch.save(obj)`` in bytes: the tensors' storages (each once) plus overhead."""
    storages: dict[tuple[str, int], int] = {}
    pending = [obj]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(str(item.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return SAVE_OVERHEAD_BYTES + sum(storages.values())


def data_fingerprint(train_files: Sequence[str | Path], val_files: Sequence[str | Path]) -> str:
    """16 hex digits of the training and validation files as given: each one's name, size and modification time
    (cheap on multi-GB case files). A checkpoint records it and is resumed only by a run on the same files: a
    training job rerun because its data changed (a case re-ingested, added or removed, another split) starts over
    instead of taking the old run's finished model. A file a copy gave a new time counts as changed."""
    def describe(path: str | Path) -> list[Any]:
        stat = os.stat(path)
        return [Path(path).name, stat.st_size, stat.st_mtime_ns]

    listing = {"train": [describe(p) for p in train_files], "val": [describe(p) for p in val_files]}
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file + rename).

    The free space is checked first; lack of space raises :class:`lungseg.atomic.DiskFullError`
    (torch alone reports an iostream error). Writing through a Python file keeps the OSError's errno.
    """
    with atomic_path(path, expected_bytes=saved_size_estimate(state)) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by :func:`save_checkpoint` with ``weights_only=True`` (no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt file, pickle with disallowed types, ...
        raise ValueError(f"cannot read {path} as a lungseg checkpoint/model file: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a dict (got {type(state).__name__}); not a lungseg file")
    return state


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as detached CPU tensors (unwraps DDP)."""
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def model_file_state(
    model: nn.Module,
    *,
    arch: str,
    model_kwargs: dict[str, Any],
    label: str,
    image_size: int,
    hu_window: tuple[float, float] | list[float],
    epoch: int,
    val_dice: float | None = None,
    roi: dict[str, Any] | None = None,
    gpus: int = 0,
    input_spec: dict[str, Any] | None = None,
    task: str = "segmentation",
    score: dict[str, Any] | None = None,
    classification: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``model.pt`` dictionary for ``model`` (see the module docstring); ``gpus``: the GPUs its training
    ran on (all processes, 0 on CPU), for the GPU-hours of a comparison. Segmentation needs ``val_dice``;
    classification ``score`` and ``classification``."""
    if task == "classification":
        if score is None or classification is None:
            raise ValueError("a classification model file needs score and classification")
        return {"gpus": int(gpus), "roi": {"mode": "none", "label": "", "margin": 0}, "input": dict(input_spec or {}),
                "format": MODEL_FORMAT, "task": task, "arch": str(arch), "model_kwargs": dict(model_kwargs),
                "label": str(label), "image_size": int(image_size), "hu_window": [float(hu_window[0]), float(hu_window[1])],
                "epoch": int(epoch), "score": {"metric": str(score["metric"]), "value": float(score["value"])},
                "classification": dict(classification), "state_dict": cpu_state_dict(model)}
    if val_dice is None:
        raise ValueError("a segmentation model file needs val_dice")
    return {
        "gpus": int(gpus),
        "roi": dict(roi) if roi else {"mode": "none", "label": "", "margin": 0},
        "input": dict(input_spec) if input_spec else {"kind": "slices"},
        "format": MODEL_FORMAT,
        "arch": str(arch),
        "model_kwargs": dict(model_kwargs),
        "label": str(label),
        "image_size": int(image_size),
        "hu_window": [float(hu_window[0]), float(hu_window[1])],
        "epoch": int(epoch),
        "val_dice": float(val_dice),
        "state_dict": cpu_state_dict(model),
    }


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a ``model.pt``; returns ``(model in eval mode, metadata)``."""
    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != MODEL_FORMAT:
        hint = (
            " (this is a training checkpoint; pass the model.pt written next to it)"
            if state.get("format") == CHECKPOINT_FORMAT
            else ""
        )
        raise ValueError(f"{path} is not a lungseg model file (format={state.get('format')!r}){hint}")
    task = state.get("task", "segmentation")
    keys = META_KEYS if task == "segmentation" else (*META_KEYS[:-1], *CLASSIFICATION_KEYS)
    missing = [k for k in (*keys, "state_dict") if k not in state]
    if missing:
        raise ValueError(f"{path}: lungseg model file lacks {', '.join(missing)}; re-train with this lungseg version")
    try:
        model = build_model(state["arch"], **state["model_kwargs"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot build architecture {state['arch']!r} with {state['model_kwargs']}: {exc}") from exc
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match architecture {state['arch']!r} {state['model_kwargs']}: {exc}") from exc
    model.to(map_location).eval()
    meta = {k: state[k] for k in keys}
    meta["task"] = task
    meta["roi"] = dict(state.get("roi") or {"mode": "none", "label": "", "margin": 0})
    meta["input"] = dict(state.get("input") or {"kind": "slices"})
    meta["hu_window"] = (float(meta["hu_window"][0]), float(meta["hu_window"][1]))
    return model, meta
