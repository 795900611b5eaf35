"""Classifier experiments: the ``classification`` section of the workflow config -> one settings dict per classifier.

Config form::

    classification:
      enabled: true
      train: {epochs: 30, batch_size: 64}      # every classifier (keys of train:)
      experiments:                              # optional, as the top-level experiments section
        reference: resnet18
        resnet18: {}
        mobilenet_v2: {arch: mobilenet_v2}
        soft_sharing: {cls_task: both, sharing: soft}

A classifier's settings are the ``train:`` keys that say how a job runs (:data:`INHERITED`: threads,
processes, loader workers, seed, device, precision) from ``train:``, every other key at its schema
default (the segmentation-only settings such as ``patch_size`` or ``roi`` are not inherited), then
:data:`CLASSIFIER_DEFAULTS`, then ``classification.train``, then the experiment's overrides. Names and
overrides are checked as the segmentation experiments are (:func:`lungseg.experiments.check_experiments`),
messages prefixed with ``classification.``; a classifier may not share a name with a segmentation
experiment (both train through rule ``train``, in ``results/experiments/<name>``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lungseg.experiments import ExperimentError, check_experiments, resolve_experiments

#: the classifier architectures (lungseg.training.models.CLASSIFIERS, kept here torch-free for the workflow's start)
CLASSIFIER_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
#: train: keys a classifier takes from train: (how the job runs, not what it learns)
INHERITED = ("threads", "nproc_per_node", "num_workers", "seed", "device", "amp", "deterministic", "log_every")
#: keys the train schema requires (no schema default), with the classifier's values where train:'s do not fit
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "task": "classification", "arch": "resnet18", "hu_window": [-1000, 400], "epochs": 30, "batch_size": 64,
    "lr": 0.001, "optimizer": "adam", "label": "nodule", "base_channels": 16, "depth": 4, "roi": "none",
}


def classifier_base(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings every classifier starts from (see the module docstring); ``schema`` (the workflow schema)
    fills the train keys' defaults."""
    train = config["train"]
    base: dict[str, Any] = {}
    if schema is not None:
        for key, sub in schema["properties"]["train"]["properties"].items():
            if "default" in sub:
                base[key] = copy.deepcopy(sub["default"])
    base.update({k: copy.deepcopy(train[k]) for k in INHERITED if k in train})
    base.update(copy.deepcopy(CLASSIFIER_DEFAULTS))
    section = config.get("classification") or {}
    base["image_size"] = int(section.get("patch_size", 64))
    base["indeterminate"] = section.get("indeterminate", "exclude")
    base.update(copy.deepcopy(section.get("train") or {}))
    return base


def _as_experiments_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    section = config.get("classification") or {}
    return {**config, "train": classifier_base(config, schema), "experiments": section.get("experiments") or {},
            "scaling": {}}


def resolve_classifiers(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Ordered {classifier name: full train settings}; empty when ``classification.enabled`` is off."""
    if not (config.get("classification") or {}).get("enabled"):
        return {}
    try:
        return resolve_experiments(_as_experiments_config(config, schema))
    except ExperimentError as exc:
        raise ExperimentError(f"classification.{exc}") from None


def reference_classifier(config: Mapping[str, Any], classifiers: Mapping[str, Any]) -> str | None:
    """The classifier the others are compared against: ``classification.experiments.reference``, else the first."""
    if not classifiers:
        return None
    reference = ((config.get("classification") or {}).get("experiments") or {}).get("reference")
    return str(reference) if reference is not None else next(iter(classifiers))


def check_classifiers(config: Mapping[str, Any], schema: Mapping[str, Any] | None,
                      segmentation: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`resolve_classifiers` with every classifier's settings checked against the schema's train section
    and the train cross-key rules (one-line :class:`ExperimentError`, ``classification.``-prefixed); names
    must differ from the segmentation experiments' (``segmentation``)."""
    if not (config.get("classification") or {}).get("enabled"):
        return {}
    wrapped = _as_experiments_config(config, schema)
    if not wrapped["experiments"]:  # one classifier from classification.train: check it as an experiment
        wrapped["experiments"] = {str(wrapped["train"]["arch"]): {}}
    try:
        classifiers = check_experiments(wrapped, schema)
    except ExperimentError as exc:
        raise ExperimentError(f"classification.{exc}") from None
    for name, settings in classifiers.items():
        where = f"classification.experiments.{name}"
        if name in segmentation:
            raise ExperimentError(f"{where}: the name is also a segmentation experiment's (both train in "
                                  f"results/experiments/{name}); rename one of them")
        if settings.get("task") != "classification":
            raise ExperimentError(f"{where}.task = {settings.get('task')}; a classifier has task classification")
        if settings.get("arch") not in CLASSIFIER_ARCHS:
            raise ExperimentError(f"{where}.arch = {settings.get('arch')}; a classifier is one of "
                                  f"{', '.join(CLASSIFIER_ARCHS)}")
        if settings.get("mode") == "flower":
            raise ExperimentError(f"{where}.mode = flower; the Flower clients train segmentation models only: "
                                  "use ddp or fedavg for a classifier")
    return classifiers
