"""The ``detection`` section of the workflow config -> the candidate classifier's train settings and names.

The classifier is built as a classifier of ``classification`` (:mod:`lungseg.classification.experiments`): the
``train:`` keys that say how a job runs, the classifier defaults (``image_size`` = ``detection.patch_size``),
then :data:`CANDIDATE_DEFAULTS`, then ``detection.classifier``; checked against the schema's train section like
every experiment. It is named :data:`CANDIDATE_CLASSIFIER` and trains through rule ``train`` in
``results/experiments/candidate_classifier``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lungseg.classification.experiments import check_classifiers, resolve_classifiers
from lungseg.experiments import ExperimentError

CANDIDATE_CLASSIFIER = "candidate_classifier"
#: over the classifier defaults: the candidate head, balanced draws (a scan has tens of false candidates per
#: nodule), fewer epochs (hundreds of candidates per scan against a few nodules)
CANDIDATE_DEFAULTS: dict[str, Any] = {"cls_task": "candidate", "class_balance": "sampling", "epochs": 20}


def _as_classification(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with a classification section holding only the candidate classifier."""
    detection = config.get("detection") or {}
    section = {**(config.get("classification") or {}), "enabled": True, "patch_size": detection.get("patch_size", 64),
               "train": {**CANDIDATE_DEFAULTS, **(detection.get("classifier") or {})},
               "experiments": {CANDIDATE_CLASSIFIER: {}}}
    return {**config, "classification": section}


def candidate_classifier(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None,
                         segmentation: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{CANDIDATE_CLASSIFIER: train settings}`` when ``detection.enabled``, else ``{}``. With ``segmentation``
    (the segmentation experiments) the settings are checked: a one-line :class:`ExperimentError` naming
    ``detection.classifier``."""
    if not (config.get("detection") or {}).get("enabled"):
        return {}
    wrapped = _as_classification(config)
    if segmentation is None:
        return resolve_classifiers(wrapped, schema)
    try:
        settings = check_classifiers(wrapped, schema, segmentation)
    except ExperimentError as exc:
        raise ExperimentError("detection.classifier: " + str(exc).replace(
            f"classification.experiments.{CANDIDATE_CLASSIFIER}", "detection.classifier")) from None
    if settings[CANDIDATE_CLASSIFIER]["cls_task"] != "candidate":
        raise ExperimentError(f"detection.classifier.cls_task = {settings[CANDIDATE_CLASSIFIER]['cls_task']}; the "
                              "candidate classifier tells nodules from false candidates: leave cls_task out")
    return settings


#: the classical nodule detector (lungseg nodule-baseline), a candidate source besides the experiments
CLASSICAL_DETECTOR = "classical_nodule"
#: the candidate threshold of a rescored map (``lungseg rescore-candidates`` paints every candidate at least 1/255):
#: ``lungseg evaluate --candidate-threshold`` of the two-stage method, so every first-stage candidate counts
RESCORED_THRESHOLD = 1.0 / 255.0


def candidate_experiment(config: Mapping[str, Any], segmentation: Mapping[str, Any], reference: str) -> str:
    """What gives the candidates: a segmentation experiment's probability maps, or :data:`CLASSICAL_DETECTOR`'s score
    maps (checked: one of ``segmentation`` or that name)."""
    name = (config.get("detection") or {}).get("candidates") or reference
    if name not in segmentation and name != CLASSICAL_DETECTOR:
        raise ExperimentError(f"detection.candidates = {name}: not a segmentation experiment (they are "
                              f"{', '.join(segmentation)}) nor {CLASSICAL_DETECTOR} (the classical detector)")
    return str(name)


def two_stage_method(candidates: str) -> str:
    """The method name of the two-stage detector in the metrics: ``<candidates>_fp_reduced``."""
    return f"{candidates}_fp_reduced"
