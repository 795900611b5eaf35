"""What the training rules hand to ``lungseg train``, built from the workflow config (kept out of the .smk files).

The contract: each experiment's resolved ``train:`` settings go to ``lungseg train`` as a settings
file (:func:`write_train_settings`, passed as ``--config FILE``; options on the command line, e.g.
``--threads``, override it), and its checkpoints live in a folder named by :func:`checkpoint_key`.
The scaling study gets :func:`scaling_train_settings` the same way (``lungseg train-scaling --train-config``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from os import PathLike
from typing import Any

from lungseg.atomic import write_text_atomic

# (torch-free: the Snakefile imports this module; lungseg.training.config is imported where needed)

#: settings the scaling study chooses per run
SCALING_OWN = ("mode", "local_epochs", "fed_partition", "fed_fractions")
#: how a run is executed, not what it computes: left out of :func:`checkpoint_key` (changing them continues
#: a run); TrainConfig fields, see :mod:`lungseg.training.config` for which settings continue and which start over
EXECUTION_ONLY = ("threads", "num_workers", "device", "log_every")
__all__ = ["EXECUTION_ONLY", "SCALING_OWN", "checkpoint_key", "scaling_train_settings", "train_settings_json",
           "write_train_settings"]


def checkpoint_key(cfg: Mapping[str, Any]) -> str:
    """12 hex digits naming a run's checkpoint folder: a hash of the run's ``train:`` settings (one
    experiment's) without the :data:`EXECUTION_ONLY` settings (threads, num_workers, device,
    log_every). A checkpoint is resumed only by a run with the same key, so any other settings change
    (epochs, lr, arch, processes, ...) starts over in a new folder (the old one is kept); see
    :mod:`lungseg.training.config` for why ``epochs`` does."""
    settings = {k: v for k, v in cfg.items() if k not in EXECUTION_ONLY}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def train_settings_json(settings: Mapping[str, Any]) -> str:
    """The text of a settings file for ``lungseg train --config``: ``settings`` (one experiment's
    resolved ``train:``) as sorted, indented JSON. Raises ValueError (one line) for a key ``lungseg
    train`` would refuse or settings that do not validate, so a bad file is never written."""
    from lungseg.training.config import TrainConfig

    TrainConfig.from_mapping(settings, source="train settings").validate()
    return json.dumps(dict(settings), indent=2, sort_keys=True) + "\n"


def write_train_settings(settings: Mapping[str, Any], path: str | PathLike[str]) -> None:
    """Write :func:`train_settings_json` of ``settings`` to ``path`` atomically (parent folders made)."""
    write_text_atomic(path, train_settings_json(settings))


def scaling_train_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings file of ``lungseg train-scaling --train-config``: ``train:`` with the study's image
    size and without the settings the study chooses per run (:data:`SCALING_OWN`)."""
    t, s = config["train"], config["scaling"]
    settings = {k: v for k, v in t.items() if k not in SCALING_OWN}
    settings["image_size"] = s.get("image_size") or t["image_size"]
    return settings
