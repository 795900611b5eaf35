"""Command-line options of the training rules, built from the workflow config (kept out of the .smk files)."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from typing import Any

#: config train.<key> -> `lungseg train` option (the keys the train rule's shell line does not spell out)
TRAIN_OPTIONS = {
    "norm": "--norm", "pretrained": "--pretrained", "freeze_encoder_epochs": "--freeze-encoder-epochs",
    "roi": "--roi", "roi_label": "--roi-label", "roi_margin": "--roi-margin", "loss": "--loss",
    "optimizer": "--optimizer", "lr_min": "--lr-min", "warmup_epochs": "--warmup-epochs", "momentum": "--momentum",
    "weight_decay": "--weight-decay", "mixup": "--mixup", "oversample": "--oversample", "mode": "--mode",
    "local_epochs": "--local-epochs", "fed_partition": "--fed-partition", "fed_fractions": "--fed-fractions",
    "amp": "--amp", "channels_last": "--channels-last",
}
TRAIN_FLAGS = {"sync_bn": "--sync-bn", "deterministic": "--deterministic"}
#: settings the scaling study chooses per run
SCALING_OWN = ("mode", "local_epochs", "fed_partition", "fed_fractions")
#: settings of how a run is executed, not of what it computes: changing them continues a run's checkpoint
EXECUTION_ONLY = ("threads", "num_workers")


def checkpoint_key(cfg: Mapping[str, Any]) -> str:
    """12 hex digits naming a run's checkpoint folder: a hash of config ``train:`` without the
    :data:`EXECUTION_ONLY` settings. A checkpoint is resumed only by a run with the same key, so
    any other settings change (epochs, lr, arch, processes, ...) starts over in a new folder."""
    settings = {k: v for k, v in cfg.items() if k not in EXECUTION_ONLY}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def train_options(cfg: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    """The optional settings of config ``train:`` as ``lungseg train`` options (shell-quoted)."""
    args: list[str] = []
    for key, option in TRAIN_OPTIONS.items():
        value = cfg.get(key)
        if key in skip or value is None or value == []:
            continue
        args += [option, *map(str, value)] if isinstance(value, list) else [option, str(value)]
    args += [flag for key, flag in TRAIN_FLAGS.items() if cfg.get(key) and key not in skip]
    if cfg.get("augment") is False:
        args.append("--no-augment")
    return shlex.join(args)


def scaling_train_args(config: Mapping[str, Any]) -> str:
    """``--train-args=...`` of ``lungseg train-scaling``: model and optimisation of ``train:``, the
    study's image size, and no mode / federated settings (the study sets those per run)."""
    t, s = config["train"], config["scaling"]
    args = [
        "--arch", t["arch"], "--label", t["label"], "--base-channels", t["base_channels"], "--depth", t["depth"],
        "--image-size", s.get("image_size") or t["image_size"], "--hu-window", *t["hu_window"],
        "--batch-size", t["batch_size"], "--lr", t["lr"], "--seed", t["seed"], "--num-workers", t["num_workers"],
    ]
    joined = " ".join([shlex.join(map(str, args)), train_options(t, skip=SCALING_OWN)]).strip()
    return shlex.quote(f"--train-args={joined}")
