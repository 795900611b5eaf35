"""Experiments in the config: one from train: without the section, named variants and grid points in
order, every bad input stopped with one line naming the key (also through check_config)."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from lungseg.experiments import (
    ExperimentError,
    check_experiments,
    grid_point_name,
    reference_experiment,
    resolve_experiments,
)
from lungseg.workflow_config import ConfigError, check_config

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def with_experiments(config, section):
    out = copy.deepcopy(config)
    out["experiments"] = section
    return out


def error_of(config, section) -> str:
    with pytest.raises(ExperimentError) as err:
        resolve_experiments(with_experiments(config, section))
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_without_the_section_one_experiment_from_train(config):
    config.pop("experiments", None)  # the shipped config compares two experiments
    for c in (config, with_experiments(config, {}), with_experiments(config, None)):
        experiments = resolve_experiments(c)
        assert experiments == {"unet": config["train"]}
        assert experiments["unet"] is not c["train"]
        assert reference_experiment(c) == "unet"


def test_named_and_grid_experiments_in_order(config):
    section = {
        "reference": "dense_unet",
        "unet": {},
        "vgg16_unet": {"arch": "vgg16_unet", "freeze_encoder_epochs": 5},
        "dense_unet": {"arch": "dense_unet"},
        "grid": {"arch": ["unet", "dense_unet"], "lr": [0.001, 0.01]},
    }
    c = with_experiments(config, section)
    experiments = resolve_experiments(c)
    assert list(experiments) == ["unet", "vgg16_unet", "dense_unet", "arch-unet_lr-0.001", "arch-unet_lr-0.01",
                                 "arch-denseunet_lr-0.001", "arch-denseunet_lr-0.01"]
    assert experiments["unet"] == config["train"]
    assert experiments["vgg16_unet"] == {**config["train"], "arch": "vgg16_unet", "freeze_encoder_epochs": 5}
    assert experiments["arch-denseunet_lr-0.01"] == {**config["train"], "arch": "dense_unet", "lr": 0.01}
    assert reference_experiment(c) == "dense_unet"
    del section["reference"]
    assert reference_experiment(with_experiments(config, section)) == "unet"  # default: the first


def test_grid_expands_where_it_stands_and_overrides_are_not_shared(config):
    c = with_experiments(config, {"grid": {"hu_window": [[-1000, 400], [-1200, 600]]}, "last": None})
    experiments = resolve_experiments(c)
    assert list(experiments) == ["hu_window-1000400", "hu_window-1200600", "last"]
    experiments["last"]["hu_window"].append(0)
    assert config["train"]["hu_window"] == [-1000, 400] and c["experiments"]["grid"]["hu_window"][0] == [-1000, 400]


def test_grid_names_match_the_sweep():
    from lungseg.cluster.sweep import expand_grid

    assert grid_point_name({"arch": "dense_unet", "lr": 0.001}) == "arch-denseunet_lr-0.001"
    assert grid_point_name({"augment": False, "mixup": 0.2}) == "augment-false_mixup-0.2"
    assert expand_grid({"arch": ["dense_unet"], "lr": ["0.001"]})[0].name == "arch-denseunet_lr-0.001"


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"a": {"epoks": 3}}, ["experiments.a.epoks is not a train setting", "(did you mean epochs?)"]),
        ({"grid": {"lrr": [0.1]}}, ["experiments.grid.lrr is not a train setting", "(did you mean lr?)"]),
        ({"arch-unet": {}, "grid": {"arch": ["unet", "dense_unet"]}},
         ["experiments.grid: grid point arch-unet has the name of experiment arch-unet"]),
        ({"grid": {"arch": ["unet"]}, "arch-unet": {"lr": 0.1}}, ["experiments.arch-unet: grid point arch-unet"]),
        ({"grid": {"roi": ["none", "no-ne"]}}, ["two grid points are both named roi-none"]),
        ({"a/b": {}}, ['experiment name "a/b" is not allowed', "letters, digits"]),
        ({"_a": {}}, ['experiment name "_a" is not allowed']),
        ({"classical_threshold_3d": {}}, ['"classical_threshold_3d" is reserved for a baseline', "classical_*"]),
        ({"lungmask_default": {}}, ['"lungmask_default" is reserved for a baseline']),  # the former baseline name
        ({"all_background": {}}, ['"all_background" is reserved for a baseline']),
        ({1: {}}, ["experiment name 1 is not a string", 'quote it']),
        ({"reference": "unte", "unet": {}, "dense": {"arch": "dense_unet"}},
         ['experiments.reference = "unte" is not an experiment; allowed: one of unet, dense', "(did you mean unet?)"]),
        ({"reference": "dense_unet"}, ['experiments.reference = "dense_unet" is not an experiment; allowed: one of unet']),
        ({"a": {}, "b": {"label": "nodule"}},
         ['experiments.b.label = "nodule" differs from train.label = "lung"', "evaluated on the same target"]),
        ({"grid": {"label": ["lung", "nodule"]}}, ['experiments.grid.label = "nodule" differs from train.label']),
        ({"a": [1]}, ["experiments.a = [1]; allowed: a mapping of train settings"]),
        ({"grid": {"lr": 0.1}}, ["experiments.grid.lr = 0.1; allowed: a list"]),
    ],
)
def test_bad_experiments_name_the_key(config, section, expected):
    message = error_of(config, section)
    for text in expected:
        assert text in message, message


def test_same_label_may_be_repeated(config):
    assert list(resolve_experiments(with_experiments(config, {"a": {"label": "lung"}}))) == ["a"]


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"a": {"epochs": "ten"}}, ['experiments.a.epochs = "ten" is a string; allowed: an integer >= 1']),
        ({"a": {"arch": "unett"}}, ['experiments.a.arch = "unett" is not allowed', "(did you mean unet?)"]),
        ({"a": {}, "b": {"lr_min": 1}}, ["experiments.b: train.lr_min = 1 is above train.lr = 0.002"]),
        ({"a": {"image_size": 16, "depth": 5}}, ["experiments.a: train.image_size = 16 is too small for train.depth = 5"]),
        ({"a": {"pretrained": "hub"}}, ['experiments.a: train.pretrained = "hub" with train.arch = unet']),
        ({"grid": {"mode": ["ddp", "fedavg"], "local_epochs": [3]}},
         ["experiments.mode-fedavg_local_epochs-3: train.epochs = 10 is not a multiple of train.local_epochs = 3"]),
    ],
)
def test_each_experiment_passes_the_train_schema_and_rules(config, section, expected):
    bad = with_experiments(config, section)
    check_config(copy.deepcopy(config), SCHEMA)  # the base config is fine
    with pytest.raises(ConfigError) as err:
        check_config(bad, SCHEMA)
    message = str(err.value)
    assert message.startswith("invalid config: experiments") and "\n" not in message, message
    for text in expected:
        assert text in message, message


@pytest.mark.parametrize(
    "section",
    [
        {"a": {"epoks": 3}},
        {"lungmask_x": {}},
        {"reference": "nope", "a": {}},
        {"grid": {"arch": ["unet"]}, "arch-unet": {}},
        {"a": {"label": "nodule"}},
    ],
)
def test_check_config_stops_a_bad_section_in_one_line(config, section):
    with pytest.raises(ConfigError) as err:
        check_config(with_experiments(config, section), SCHEMA)
    message = str(err.value)
    assert message.startswith("invalid config: experiments") and "\n" not in message, message


def test_schema_types_the_section(config):
    for section, expected in [({"reference": {"a": 1}}, "experiments.reference = "),
                              ({"a": 3}, "experiments.a = 3 is an integer"),
                              ({"grid": {"lr": 0.1}}, "experiments.grid.lr = 0.1 is a number")]:
        with pytest.raises(ConfigError) as err:
            check_config(with_experiments(config, section), SCHEMA)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_valid_section_passes_check_config_unchanged(config):
    section = {"reference": "unet", "unet": {}, "vgg16_unet": {"arch": "vgg16_unet", "pretrained": "hub",
               "freeze_encoder_epochs": 5}, "dense_unet": {"arch": "dense_unet"},
               "grid": {"arch": ["unet", "dense_unet"], "lr": [0.001, 0.01]}}
    c = with_experiments(config, copy.deepcopy(section))
    check_config(c, SCHEMA)
    assert c["experiments"] == section  # no defaults filled into the overrides
    assert len(check_experiments(c, None)) == 7


def test_false_leaves_an_experiment_out_so_an_overlay_can_drop_the_base_configs_experiments(config):
    c = with_experiments(config, {"reference": "b", "a": False, "b": {"lr": 0.01}, "c": None})
    check_config(c, SCHEMA)
    assert list(resolve_experiments(c)) == ["b", "c"] and reference_experiment(c) == "b"
    with pytest.raises(ConfigError, match="or false to leave the experiment out"):
        check_config(with_experiments(config, {"a": True}), SCHEMA)
