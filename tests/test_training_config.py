"""One training-config contract: the workflow schema's ``train`` keys, :class:`TrainConfig`'s fields and
the ``lungseg train`` options are the same settings with the same defaults, and ``lungseg train --config
train_settings.json`` trains with exactly the settings the workflow resolved (no training here)."""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lungseg.training.cli import IO_OPTIONS, config_from_args, configure, default_text
from lungseg.training.config import (
    CHOICES,
    CLI_ONLY,
    RESUME_KEYS,
    WORKFLOW_ONLY,
    TrainConfig,
    config_from_settings,
    setting_names,
)
from lungseg.training.rule_args import (
    EXECUTION_ONLY,
    checkpoint_key,
    scaling_train_settings,
    train_settings_json,
    write_train_settings,
)
from lungseg.workflow_config import check_config

SCHEMA_PATH = REPO / "workflow/schemas/config.schema.yaml"
IO = ["--train", "a.h5", "--val", "b.h5", "--out-dir", "run"]


def schema_train() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["train"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lungseg train")
    configure(p)
    return p


def setting_actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser()._actions if a.option_strings and a.dest not in (*IO_OPTIONS, "help")}


def plain(value):
    """Schema / YAML values as TrainConfig holds them (lists -> tuples of floats)."""
    return tuple(float(v) for v in value) if isinstance(value, list) else value


def shipped_config() -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    check_config(config, SCHEMA_PATH)  # fills the schema's defaults, as the workflow does
    return config


# ---------------------------------------------------------------- one set of keys, one set of defaults


def test_schema_keys_dataclass_fields_and_cli_options_are_the_same_set() -> None:
    names = set(setting_names())
    assert set(CLI_ONLY) <= names and not set(WORKFLOW_ONLY) & names
    assert set(schema_train()["properties"]) == (names - set(CLI_ONLY)) | set(WORKFLOW_ONLY)
    assert set(setting_actions()) == names
    assert set(EXECUTION_ONLY) <= names and set(RESUME_KEYS) <= names


def test_defaults_and_choices_agree_between_schema_dataclass_and_cli() -> None:
    section, defaults = schema_train(), TrainConfig()
    required = set(section["required"])
    for key, prop in section["properties"].items():
        # every schema key either has a default or must be spelled out by the config (required)
        assert ("default" in prop) != (key in required), key
        if "default" in prop and key not in WORKFLOW_ONLY:
            assert plain(prop["default"]) == getattr(defaults, key), key
        if key in CHOICES:
            assert set(prop["enum"]) == set(CHOICES[key]), key
    assert section["properties"]["roi"]["default"] == defaults.roi == "crop"
    actions = setting_actions()
    for name, action in actions.items():
        assert action.default is argparse.SUPPRESS, name  # the default is TrainConfig's, never argparse's own
        assert f"(default: {default_text(name)})" in action.help, name
        if name in CHOICES:
            assert set(action.choices) == set(CHOICES[name]), name
    # what a hand run without the option gets: TrainConfig's default, for every setting
    assert config_from_args(parser().parse_args(IO)) == defaults


def test_shipped_config_sets_optional_keys_to_their_defaults() -> None:
    """config/config.yaml spells out every train key; those with a schema default carry that default, so
    the comments there and `lungseg train --help` tell the same story (roi: crop)."""
    raw = yaml.safe_load((REPO / "config/config.yaml").read_text())["train"]
    section = schema_train()["properties"]
    for key, value in raw.items():
        if "default" in section[key]:
            assert value == section[key]["default"], key


# ---------------------------------------------------------------- the settings file


def test_settings_file_reproduces_the_workflow_rule(tmp_path: Path) -> None:
    from lungseg.experiments import resolve_experiments

    config = shipped_config()
    settings = next(iter(resolve_experiments(config).values()))  # the one experiment: train: itself
    path = tmp_path / "experiments" / "unet" / "train_settings.json"
    write_train_settings(settings, path)
    assert json.loads(path.read_text()) == settings
    expected = TrainConfig(**{k: plain(v) for k, v in settings.items() if k not in WORKFLOW_ONLY})
    assert expected.roi == "crop" and expected.lr == 0.002 and expected.epochs == 10

    from_file = config_from_args(parser().parse_args([*IO, "--config", str(path)]))
    assert from_file == expected
    # the rule passes the job's thread count on the command line: options override the file
    rule = config_from_args(parser().parse_args([*IO, "--config", str(path), "--threads", "4"]))
    assert rule == replace(expected, threads=4)
    override = config_from_args(parser().parse_args([*IO, "--config", str(path), "--epochs", "3", "--no-augment",
                                                     "--fed-fractions", "--roi", "none"]))
    assert override == replace(expected, epochs=3, augment=False, roi="none")
    # the same settings as YAML
    yaml_path = tmp_path / "settings.yaml"
    yaml_path.write_text(yaml.safe_dump(dict(settings)))
    assert config_from_settings(yaml_path) == expected
    # every setting as an option gives the same config as the file
    every = [*IO]
    for name in setting_names():
        value, option = getattr(expected, name), f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            every.append(option if value else f"--no-{name.replace('_', '-')}")
        elif value is not None:
            every += [option, *map(str, value)] if isinstance(value, tuple) else [option, str(value)]
    assert config_from_args(parser().parse_args(every)) == expected


def test_schema_defaults_fill_in_what_a_hand_run_defaults_to(tmp_path: Path) -> None:
    """A config with only the required train keys: the workflow fills the schema's defaults in, and the
    resulting settings file trains what `lungseg train` with just those keys as options trains."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    required = schema_train()["required"]
    config["train"] = {k: config["train"][k] for k in required}
    check_config(config, SCHEMA_PATH)
    path = tmp_path / "train_settings.json"
    write_train_settings(config["train"], path)
    given = {k: plain(config["train"][k]) for k in required if k not in WORKFLOW_ONLY}
    assert config_from_settings(path) == TrainConfig(**given)


@pytest.mark.parametrize("content, suffix, message", [
    ({"epoks": 3}, ".json", r"key epoks is not a training setting \(did you mean epochs\?\)"),
    ({"lr": 0.1, "foo": 1, "bar": 2}, ".json", r"keys foo, bar are not training settings"),
    ({"epochs": "ten"}, ".json", r'epochs = "ten" is not an integer'),
    ({"augment": "yes"}, ".json", r'augment = "yes" is not true or false'),
    ({"hu_window": [1, 2, 3]}, ".json", r"hu_window = \[1, 2, 3\] is not a list of two numbers"),
    ([1, 2], ".json", r"expected a mapping of training settings"),
    ("{not json", ".json", r"cannot parse it"),
])
def test_bad_settings_files_are_refused_in_one_line(tmp_path: Path, content, suffix: str, message: str) -> None:
    path = tmp_path / f"s{suffix}"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        config_from_settings(path)
    assert len(str(err.value).splitlines()) == 1 and str(path) in str(err.value)


def test_settings_file_details(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    # workflow-only keys are ignored; YAML's 1e-3 (a string in YAML 1.1) and unquoted off are read as meant
    path.write_text("nproc_per_node: 4\nlr: 1e-3\namp: off\nhu_window: [-1000, 400]\nfed_fractions: [3, 1]\n")
    assert config_from_settings(path) == TrainConfig(lr=1e-3, amp="off", fed_fractions=(3.0, 1.0))
    (tmp_path / "empty.yaml").write_text("")
    assert config_from_settings(tmp_path / "empty.yaml") == TrainConfig()
    with pytest.raises(FileNotFoundError, match="settings file .*missing.json not found"):
        config_from_settings(tmp_path / "missing.json")


def test_cli_exits_1_naming_a_bad_settings_key(tmp_path: Path, caplog) -> None:
    from lungseg.cli import main

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"arch": "unet", "epoks": 3}))
    assert main(["train", *IO[:4], "--out-dir", str(tmp_path / "run"), "--config", str(path)]) == 1
    assert "key epoks is not a training setting" in caplog.text
    assert not (tmp_path / "run").exists()


def test_write_train_settings_refuses_what_train_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "train_settings.json"
    write_train_settings({"arch": "unet", "nproc_per_node": 2, "hu_window": [-1000, 400]}, path)
    assert path.read_text() == train_settings_json({"hu_window": [-1000, 400], "arch": "unet", "nproc_per_node": 2})
    assert list(json.loads(path.read_text())) == ["arch", "hu_window", "nproc_per_node"]  # sorted: stable bytes
    with pytest.raises(ValueError, match="key lrr is not a training setting"):
        write_train_settings({"lrr": 0.1}, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown arch"):
        write_train_settings({"arch": "resnet"}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------- resuming


def test_checkpoint_folder_key_and_resume_keys_are_consistent() -> None:
    """The folder key ignores exactly the execution-only settings; every other schema key starts a new
    folder (epochs too: the cosine schedule is laid out over all epochs). RESUME_KEYS, checked inside
    one folder, never names an execution-only setting, so a run in a workflow folder always resumes."""
    assert not set(RESUME_KEYS) & set(EXECUTION_ONLY)
    settings = shipped_config()["train"]
    key = checkpoint_key(settings)
    for name in EXECUTION_ONLY:
        assert checkpoint_key({**settings, name: 7}) == key, name
    changed = {"epochs": 11, "lr": 0.5, "hu_window": [-900, 400], "augment": False, "fed_fractions": [1, 2],
               "pretrained": "hub", "amp": "bf16"}
    for name, value in settings.items():
        if name in EXECUTION_ONLY:
            continue
        other = changed.get(name, value + 1 if isinstance(value, int) and not isinstance(value, bool) else f"{value}x")
        assert checkpoint_key({**settings, name: other}) != key, name
    # the settings file holds the same mapping the key is computed from
    assert checkpoint_key(json.loads(train_settings_json(settings))) == key


# ---------------------------------------------------------------- scaling study


def test_scaling_study_passes_one_settings_file(tmp_path: Path) -> None:
    from lungseg.training import scaling

    config = copy.deepcopy(shipped_config())
    config["train"].update(mode="fedavg", local_epochs=2, fed_fractions=[0.5, 0.5], batch_size=6)
    source = tmp_path / "scaling_settings.json"
    write_train_settings(scaling_train_settings(config), source)
    args, batch = scaling._study_settings(source, tmp_path / "runs")
    assert batch == 6 and args == ["--config", str(tmp_path / "runs" / "train_settings.json")]
    written = json.loads((tmp_path / "runs" / "train_settings.json").read_text())
    assert not {"mode", "local_epochs", "fed_partition", "fed_fractions"} & set(written)
    assert written["image_size"] == (config["scaling"].get("image_size") or config["train"]["image_size"])
    run = config_from_args(parser().parse_args([*IO, *args, "--epochs", "2"]))
    assert run.mode == "ddp" and run.epochs == 2 and run.batch_size == 6
    assert {f.name for f in fields(TrainConfig)} >= set(written) - set(WORKFLOW_ONLY)
