"""Classifier experiments (config classification): settings resolved from the classifier defaults, not from the
segmentation settings of train:, checked like the experiments with one-line messages naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from lungseg.classification.experiments import reference_classifier, resolve_classifiers
from lungseg.workflow_config import ConfigError, check_config

SCHEMA_PATH = REPO / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


@pytest.fixture
def config():
    """config/config.yaml with config/nodule.yaml's train: (segmentation patches) and config/classification.yaml."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for overlay in ("nodule", "classification"):
        for key, value in yaml.safe_load((REPO / f"config/{overlay}.yaml").read_text()).items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


def checked(config) -> dict:
    config = copy.deepcopy(config)
    check_config(config, SCHEMA_PATH)
    return config


def test_off_unless_enabled(config):
    config["classification"]["enabled"] = False
    assert resolve_classifiers(checked(config), SCHEMA) == {}


def test_classifiers_inherit_how_jobs_run_but_not_the_segmentation_settings(config):
    config["train"].update(threads=3, nproc_per_node=2, seed=7)
    classifiers = resolve_classifiers(checked(config), SCHEMA)
    assert list(classifiers) == ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "pathology_only",
                                 "pathology_hard_sharing", "pathology_soft_sharing"]
    assert reference_classifier(config, classifiers) == "resnet18"
    soft = classifiers["pathology_soft_sharing"]
    assert soft["task"] == "classification" and soft["cls_task"] == "both" and soft["sharing"] == "soft"
    assert (soft["threads"], soft["nproc_per_node"], soft["seed"]) == (3, 2, 7)
    # config/nodule.yaml's patch U-Net settings stay with the segmentation experiments
    assert config["train"]["patch_size"] == 64 and soft["patch_size"] == 0 and soft["context_slices"] == 0
    assert soft["image_size"] == config["classification"]["patch_size"]
    assert classifiers["resnet34"]["arch"] == "resnet34" and soft["epochs"] == 20  # classification.train


def test_one_classifier_from_classification_train_without_experiments(config):
    config["classification"]["experiments"] = None
    config["classification"]["train"] = {"arch": "mobilenet_v2", "epochs": 2}
    classifiers = resolve_classifiers(checked(config), SCHEMA)
    assert list(classifiers) == ["mobilenet_v2"] and classifiers["mobilenet_v2"]["epochs"] == 2


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["classification"]["experiments"].update(unet_2_5d={}),
     "classification.experiments.unet_2_5d: the name is also a segmentation experiment's"),
    (lambda c: c["classification"]["experiments"].update(fl={"mode": "flower"}),
     "classification.experiments.fl.mode = flower"),
    (lambda c: c["classification"]["experiments"].update(seg={"task": "segmentation"}),
     "classification.experiments.seg"),
    (lambda c: c["classification"]["experiments"].update(bad={"epoks": 3}), "classification.experiments.bad"),
    (lambda c: c["classification"]["train"].update(arch="unet"), "classification.experiments.resnet18"),
])
def test_bad_classifiers_stop_in_one_line_naming_the_key(config, change, expected):
    change(config)
    with pytest.raises(ConfigError) as err:
        checked(config)
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_the_torch_free_architecture_list_is_the_models_list():
    from lungseg.classification.experiments import CLASSIFIER_ARCHS
    from lungseg.training.models import CLASSIFIERS

    assert set(CLASSIFIER_ARCHS) == set(CLASSIFIERS)
