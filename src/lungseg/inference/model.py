"""Load a ``model.pt`` for inference, turning every way it can be wrong into one clear error."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungseg.ingest.errors import IngestError
from lungseg.training.checkpoint import CHECKPOINT_FORMAT, MODEL_FORMAT, load_checkpoint, load_model
from lungseg.training.models import ARCHITECTURES, build_model

FIX = "pass the model.pt written by `lungseg train` (results/model/<label>/model.pt)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _diagnose(path: Path, exc: Exception) -> str:
    """Why ``path`` is not a usable lungseg model file, in one phrase."""
    try:
        state = load_checkpoint(path)
    except ValueError as unreadable:
        if "does not hold a dict" in str(unreadable):
            return _first_line(unreadable).replace(f"{path} ", "", 1)
        return "cannot be read by torch.load(weights_only=True): not a PyTorch weights file, or one that holds pickled code"
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(list(state)[:2])
        return f"holds a bare state_dict of another network (keys {keys}, ...), not a lungseg model file"
    if state.get("format") == CHECKPOINT_FORMAT:
        return "is a training checkpoint, not the model file written next to it"
    if state.get("format") != MODEL_FORMAT:
        return f"is not a lungseg model file (format={state.get('format')!r}, keys {sorted(state)[:5]})"
    if state.get("arch") not in ARCHITECTURES:
        return (f"was written for architecture {state.get('arch')!r}, which this lungseg does not have "
                f"(it has {sorted(ARCHITECTURES)})")
    mismatch = _first_mismatch(state)
    return mismatch or _first_line(exc).replace(f"{path}: ", "", 1)


def _first_mismatch(state: dict[str, Any]) -> str | None:
    """The first weight whose name or shape differs from what the file's own architecture settings build."""
    try:
        expected = build_model(state["arch"], **state["model_kwargs"]).state_dict()
    except (TypeError, ValueError) as exc:
        return f"its settings {state['model_kwargs']} do not build architecture {state['arch']!r} ({_first_line(exc)})"
    weights = state["state_dict"]
    for name, tensor in weights.items():
        if name not in expected:
            return f"holds weight {name!r}, which architecture {state['arch']!r} {state['model_kwargs']} does not have"
        if tuple(tensor.shape) != tuple(expected[name].shape):
            return (f"weight {name!r} has shape {tuple(tensor.shape)}, but architecture {state['arch']!r} "
                    f"{state['model_kwargs']} expects {tuple(expected[name].shape)}: the weights come from another network")
    missing = [name for name in expected if name not in weights]
    return f"lacks weight {missing[0]!r} of architecture {state['arch']!r} {state['model_kwargs']}" if missing else None


def load_predictor(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on CPU, metadata)`` of a lungseg model file; :class:`IngestError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "model file not found", FIX)
    try:
        return load_model(path, map_location="cpu")
    except ValueError as exc:
        raise IngestError(path, _diagnose(path, exc), FIX) from exc


def load_ensemble(paths: Sequence[str | Path]) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """The models of ``paths`` (one, or the folds of one experiment) with their metadata; an
    IngestError naming the file when a model cannot be averaged with the first one."""
    from lungseg.inference.predict import ensemble_mismatch

    models, metas = zip(*(load_predictor(path) for path in paths))
    mismatch = ensemble_mismatch(metas)
    if mismatch:
        i, reason = mismatch
        raise IngestError(paths[i], f"{reason} ({paths[0]})",
                          "ensemble only models of one target and region of interest (the folds of one experiment)")
    return list(models), list(metas)
