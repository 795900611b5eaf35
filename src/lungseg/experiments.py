"""Experiments: several training setups side by side in one workflow, each a named variant of ``train:``.

Config form (config/config.yaml)::

    experiments:                  # optional; without it: one experiment made from train:, named after train.arch
      reference: unet             # optional: the experiment the others are compared against (default: the first)
      unet: {}                    # name: overrides of train: (an empty mapping, or nothing, = train: as it is)
      vgg16_unet: {arch: vgg16_unet, freeze_encoder_epochs: 5}
      dense_unet: {arch: dense_unet}
      grid: {arch: [unet, dense_unet], lr: [0.001, 0.01]}   # optional: expands to named experiments
      old_try: false              # left out (an overlay config, --configfile, cannot delete a key of the base)

Each experiment's settings are a deep copy of ``train:`` updated with its overrides. ``grid`` expands,
where it stands in the section, to the Cartesian product of its lists (keys in the given order), each
point named as ``lungseg sweep`` names its runs (:func:`grid_point_name`: ``arch-unet_lr-0.001``).

Rules (:class:`ExperimentError`, one line naming the key): names are safe Snakemake wildcards and path
parts (``^[A-Za-z0-9][A-Za-z0-9_.-]*$``), not ``reference`` / ``grid``, not a baseline method name of
the metrics (``classical_*``, the former ``lungmask_*``, ``all_background``), and unique (also across
grid points); overrides are ``train:`` keys; ``reference`` names an experiment; ``label`` is the same for every experiment (all
are evaluated on the same target, ``train.label``). :func:`check_experiments` also checks each
experiment's settings against the schema's ``train`` section and the train cross-key rules of
:mod:`lungseg.workflow_config`, which calls it when the workflow starts.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any

from lungseg.lungmask.methods import BASELINE_PREFIX, LEGACY_BASELINE_PREFIX

#: an experiment name: a Snakemake wildcard value and a path part
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: keys of the experiments section that are not experiments
RESERVED_KEYS = ("reference", "grid")
#: method names the metrics give the baselines (classical_<lung-mask method>, all_background); the
#: prefix before (lungmask_) stays reserved for one release, as older metrics tables use it
BASELINE_PREFIXES = (BASELINE_PREFIX, LEGACY_BASELINE_PREFIX)
BASELINE_NAMES = ("all_background",)


class ExperimentError(ValueError):
    """An experiments section that cannot run; the one-line message names the key and the fix."""


def slug(value: Any) -> str:
    """A value as a name part: letters, digits and dots only (strings as they are, other values as YAML /
    JSON spells them: ``0.001``, ``true``); ``x`` when nothing is left."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return re.sub(r"[^A-Za-z0-9.]+", "", text) or "x"


def grid_point_name(values: Mapping[str, Any]) -> str:
    """The name of one grid point (experiments and ``lungseg sweep``): ``{"arch": "unet", "lr": 0.001}``
    -> ``arch-unet_lr-0.001``; ``""`` for an empty point."""
    return "_".join(f"{key}-{slug(value)}" for key, value in values.items())


def resolve_experiments(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Ordered {name: full train settings}: ``train:`` updated with each experiment's overrides.

    Without an ``experiments`` section (or an empty one): ``{train.arch: train settings}``. Raises
    :class:`ExperimentError` for a bad name, a duplicate, an unknown override key, an unknown
    ``reference`` or a ``label`` that differs from ``train.label``.
    """
    train = config["train"]
    section = config.get("experiments") or {}
    if not isinstance(section, Mapping):
        raise ExperimentError(f"experiments = {_show(section)}; allowed: a mapping of experiment name -> "
                              "overrides of train: (plus optional reference and grid)")
    experiments: dict[str, dict[str, Any]] = {}
    from_grid: set[str] = set()
    for name, overrides in section.items():
        if name == "reference" or overrides is False:  # false: the experiment is left out
            continue
        grid = name == "grid"
        for point, point_overrides in _grid_points(section["grid"], train) if grid else [(name, overrides)]:
            _check_name(point, from_grid=grid)
            if point in experiments:
                raise _duplicate(point, grid, point in from_grid)
            experiments[point] = _settings(train, point, point_overrides, grid=grid)
            if grid:
                from_grid.add(point)
    if not experiments:
        experiments = {str(train["arch"]): copy.deepcopy(dict(train))}
    reference = section.get("reference")
    if reference is not None and reference not in experiments:
        match = difflib.get_close_matches(str(reference), list(experiments), n=1)
        raise ExperimentError(f"experiments.reference = {_show(reference)} is not an experiment; allowed: one of "
                              f"{', '.join(experiments)}" + (f" (did you mean {match[0]}?)" if match else ""))
    return experiments


def reference_experiment(config: Mapping[str, Any]) -> str:
    """The experiment the others are compared against: ``experiments.reference``, else the first."""
    experiments = resolve_experiments(config)
    reference = (config.get("experiments") or {}).get("reference")
    return str(reference) if reference is not None else next(iter(experiments))


def check_experiments(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`resolve_experiments`, then each experiment's settings against the schema's ``train``
    section (when ``schema`` is given) and the train cross-key rules; returns the resolved experiments.

    Expects a config that passed the schema with its defaults filled in (as after
    :func:`lungseg.workflow_config.check_config`'s first steps).
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from lungseg.workflow_config import TRAIN_CHECKS, describe_error

    experiments = resolve_experiments(config)
    if not config.get("experiments"):
        return experiments  # train: itself, checked by the config's own rules
    for name, settings in experiments.items():
        if schema is not None:
            # validated inside a wrapper so that errors name the key as experiments.<name>.<key>
            wrapper = {"type": "object", "properties": {"experiments": {
                "type": "object", "properties": {name: schema["properties"]["train"]}}}}
            error = best_match(Draft202012Validator(wrapper).iter_errors({"experiments": {name: settings}}))
            if error is not None:
                message = describe_error(error, wrapper).splitlines()[0]
                raise ExperimentError(message.removeprefix("invalid config: "))
        scaling = dict(config.get("scaling") or {}, image_size=None)  # the scaling study uses train: itself
        for check in TRAIN_CHECKS:
            problem = check({**config, "train": settings, "scaling": scaling})
            if problem:
                raise ExperimentError(f"experiments.{name}: {problem}")
    return experiments


# ---------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_name(name: Any, from_grid: bool = False) -> None:
    what = f"grid point {name}" if from_grid else f"experiment name {_show(name)}"
    if not isinstance(name, str):
        raise ExperimentError(f"experiments: {what} is not a string; quote it in the YAML (e.g. \"{name}\")")
    if not NAME_PATTERN.fullmatch(name):
        raise ExperimentError(f"experiments: {what} is not allowed; allowed: letters, digits, '_', '.', '-' "
                              "starting with a letter or digit (it names a wildcard and a folder)")
    if name.startswith(BASELINE_PREFIXES) or name in BASELINE_NAMES:
        raise ExperimentError(f"experiments: {what} is reserved for a baseline in the metrics "
                              f"({', '.join(p + '*' for p in BASELINE_PREFIXES)}, {', '.join(BASELINE_NAMES)}); "
                              "choose another name")


def _unknown_key(where: str, key: Any, train: Mapping[str, Any]) -> ExperimentError:
    match = difflib.get_close_matches(str(key), [str(k) for k in train], n=1)
    return ExperimentError(f"{where}.{key} is not a train setting; an experiment overrides keys of train:"
                           + (f" (did you mean {match[0]}?)" if match else ""))


def _duplicate(name: str, grid: bool, earlier_from_grid: bool) -> ExperimentError:
    """Two experiments with one name: a grid point and a named experiment, or two grid points."""
    if grid and earlier_from_grid:
        return ExperimentError(f"experiments.grid: two grid points are both named {name} (their values differ only "
                               "in characters a name drops); allowed: values that differ in letters, digits or dots")
    if grid:
        return ExperimentError(f"experiments.grid: grid point {name} has the name of experiment {name}; allowed: "
                               f"unique names (rename experiments.{name} or change the grid)")
    return ExperimentError(f"experiments.{name}: grid point {name} already has this name; allowed: unique names "
                           f"(rename experiments.{name} or change the grid)")


def _settings(train: Mapping[str, Any], name: str, overrides: Any, grid: bool) -> dict[str, Any]:
    """train: updated with one experiment's overrides (checked: mapping, train keys, same label)."""
    where = "experiments.grid" if grid else f"experiments.{name}"
    if overrides is None:
        overrides = {}
    if overrides is True:
        raise ExperimentError(f"experiments.{name} = true; allowed: a mapping of train settings to override, "
                              "{} for train: as it is, or false to leave the experiment out")
    if not isinstance(overrides, Mapping):
        raise ExperimentError(f"experiments.{name} = {_show(overrides)}; allowed: a mapping of train settings "
                              "to override (e.g. {arch: dense_unet}), or {} for train: as it is")
    for key in overrides:
        if key not in train:
            raise _unknown_key(where, key, train)
    if "label" in overrides and overrides["label"] != train["label"]:
        raise ExperimentError(f"{where}.label = {_show(overrides['label'])} differs from "
                              f"train.label = {_show(train['label'])}; every experiment is evaluated on the same "
                              "target: set the label once, in train.label")
    settings = copy.deepcopy(dict(train))
    settings.update(copy.deepcopy(dict(overrides)))
    return settings


def _grid_points(grid: Any, train: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) of every point of the grid, in product order of its keys."""
    if grid is None:
        return []
    if not isinstance(grid, Mapping):
        raise ExperimentError(f"experiments.grid = {_show(grid)}; allowed: a mapping of train setting -> "
                              "list of values (e.g. {arch: [unet, dense_unet], lr: [0.001, 0.01]})")
    for key, values in grid.items():
        if key not in train:
            raise _unknown_key("experiments.grid", key, train)
        if not isinstance(values, list) or not values:
            raise ExperimentError(f"experiments.grid.{key} = {_show(values)}; allowed: a list of at least 1 "
                                  f"values (e.g. {key}: [{_show(train[key])}])")
    keys = list(grid)
    if not keys:
        return []
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    return [(grid_point_name(point), point) for point in points]
