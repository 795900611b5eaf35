"""Check a workflow config (config/config.yaml) when the workflow starts, in one or two lines.

:func:`check_config` validates the config against the JSON schema (workflow/schemas/
config.schema.yaml), fills the schema's defaults in, renames deprecated values to their new names
(with a one-line warning), then runs :data:`CROSS_KEY_CHECKS`: rules
between keys that the schema cannot express and that would otherwise fail late, in a job after
ingest. Rules that also need the cohort (e.g. a k-fold ``split.folds`` against the number of
patients) take the case table too, so they belong in a second list run once the case sheet is read.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from os import PathLike
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from lungseg.lungmask.methods import DEPRECATED_METHODS, resolve_method
from lungseg.split import split_counts

#: labels every demo case has (lungseg.demo.cohort writes labels/lung.nii.gz and labels/nodule.nii.gz)
DEMO_LABELS = ("lung", "nodule")
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}
#: words YAML 1.1 (PyYAML) reads as booleans
_YAML_BOOLS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


class ConfigError(ValueError):
    """The workflow config breaks the schema or a cross-key rule; the message is one or two lines."""


def check_config(config: dict[str, Any], schema_path: str | PathLike[str]) -> dict[str, Any]:
    """Validate ``config`` (Draft 2020-12), fill in the schema's defaults, then run the cross-key checks;
    returns the loaded schema (the workflow resolves the classifiers' defaults from it).

    Raises :class:`ConfigError` naming the key (as in the YAML, e.g. ``train.epochs``), the value
    and the allowed form. Defaults are filled into ``config`` only once it passes the schema. Last,
    the ``experiments`` section (:func:`lungseg.experiments.check_experiments`): names, overrides, and
    each experiment's train settings against the schema and :data:`TRAIN_CHECKS`; the same for the
    classifiers of ``classification`` (:func:`lungseg.classification.experiments.check_classifiers`) and the
    ``detection`` section's candidate classifier (:mod:`lungseg.detection.settings`).
    """
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(describe_error(error, schema))
    _DefaultFiller(schema).validate(config)
    _rename_deprecated(config)
    for check in CROSS_KEY_CHECKS:
        problem = check(config)
        if problem:
            raise ConfigError(f"invalid config: {problem}")
    from lungseg.classification.experiments import check_classifiers
    from lungseg.detection.settings import CANDIDATE_CLASSIFIER, candidate_classifier, candidate_experiment
    from lungseg.experiments import ExperimentError, check_experiments, reference_experiment  # imports this module's checks

    try:  # each experiment's (and classifier's) train settings: the schema's train section and TRAIN_CHECKS
        segmentation = check_experiments(config, schema)
        classifiers = check_classifiers(config, schema, segmentation)
        if config["detection"]["enabled"]:
            if config["train"]["label"] != "nodule":
                raise ExperimentError(f"detection.enabled needs train.label nodule (it is {config['train']['label']}): "
                                      "candidates are nodule candidates")
            if CANDIDATE_CLASSIFIER in classifiers:
                raise ExperimentError(f"classification.experiments.{CANDIDATE_CLASSIFIER}: the name is the detection "
                                      "section's candidate classifier's; rename the classifier")
            candidate_experiment(config, segmentation, reference_experiment(config))
            candidate_classifier(config, schema, segmentation)
    except ExperimentError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return schema


def _fill_defaults(validator: Any, properties: Mapping[str, Any], instance: Any,
                   schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """``properties`` that first sets missing keys to the schema's default (as snakemake.utils.validate)."""
    if isinstance(instance, dict):
        for key, sub in properties.items():
            if "default" in sub and key not in instance:
                instance[key] = copy.deepcopy(sub["default"])
    yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


_DefaultFiller = validators.extend(Draft202012Validator, {"properties": _fill_defaults})


# ---------------------------------------------------------------- schema errors


def describe_error(error: ValidationError, schema: Mapping[str, Any]) -> str:
    """One or two lines for a schema error: key path, value, allowed form (never the schema)."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        return _unexpected_keys(error)
    if error.validator == "required" and isinstance(error.instance, dict):
        return _missing_keys(error, schema)
    return _bad_value(error)


def _unexpected_keys(error: ValidationError) -> str:
    """``unexpected key train.epoks = 3; allowed keys in train: ... (did you mean epochs?)``"""
    path, allowed = key_path(error.absolute_path), list(error.schema.get("properties", {}))
    extra = [k for k in error.instance if k not in allowed]
    keys = ", ".join(f"{key_path([*error.absolute_path, k])} = {show(error.instance[k])}" for k in extra)
    hints = [(k, m[0]) for k in extra if (m := difflib.get_close_matches(str(k), allowed, n=1))]
    hint = (f" (did you mean {hints[0][1]}?)" if len(extra) == 1 and hints
            else f" (did you mean {', '.join(f'{m} for {k}' for k, m in hints)}?)" if hints else "")
    return (f"invalid config: unexpected key{'s' if len(extra) > 1 else ''} {keys}; "
            f"allowed keys{' in ' + path if path else ''}: {', '.join(allowed)}{hint}")


def _missing_keys(error: ValidationError, schema: Mapping[str, Any]) -> str:
    """``missing key train.label; train needs: ...`` or ``missing key discover; needed when source is discover``"""
    required = error.validator_value
    missing = [k for k in required if k not in error.instance]
    keys = ", ".join(key_path([*error.absolute_path, k]) for k in missing)
    condition = _condition(schema, list(error.schema_path))
    need = (f"needed when {condition}" if condition
            else f"{key_path(error.absolute_path) or 'the config'} needs: {', '.join(required)}")
    return f"invalid config: missing key{'s' if len(missing) > 1 else ''} {keys}; {need}"


def _bad_value(error: ValidationError) -> str:
    """``train.epochs = "ten" is a string; allowed: an integer >= 1`` (+ the schema's description)."""
    path, instance, sub = key_path(error.absolute_path), error.instance, error.schema
    line = (f"invalid config: {path or 'the config'} = {show(instance)} "
            f"{_problem(error.validator, error.validator_value, instance)}; allowed: {allowed_form(sub)}")
    if error.validator == "enum" and isinstance(instance, str):
        match = difflib.get_close_matches(instance, [str(v) for v in error.validator_value], n=1)
        line += f" (did you mean {match[0]}?)" if match else ""
    words = [w for w in _YAML_BOOLS[instance] if w in sub.get("enum", ())] if isinstance(instance, bool) else []
    if words:
        line += f' (quote it: "{words[0]}"; YAML reads a bare {words[0]} as {show(instance)})'
    description = sub.get("description")
    return f"{line}\n  {path}: {_shorten(description, 160)}" if description else line


def key_path(parts: Iterable[str | int]) -> str:
    """``['train', 'epochs']`` -> ``train.epochs``; list indices as ``[i]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def show(value: Any, width: int = 60) -> str:
    """A value as YAML would spell it (JSON flow style), shortened to ``width`` characters."""
    return _shorten(json.dumps(value, default=str), width)


def _plain(value: Any) -> str:
    """Strings as they are (``demo``), anything else as :func:`show` spells it."""
    return value if isinstance(value, str) else show(value)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _problem(kind: str, bound: Any, instance: Any) -> str:
    if kind == "type":
        kind = _json_type(instance)
        return "is a boolean" if kind == "boolean" else f"is {_TYPE_NAMES.get(kind, kind)}"
    if kind in _BOUNDS:
        return f"is not {_BOUNDS[kind]} {bound}"
    if kind in ("minItems", "maxItems"):
        return f"has {len(instance)} item{'s' if len(instance) != 1 else ''}"
    if kind == "minLength" and instance == "":
        return "is empty"
    return "is not allowed"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for name, types in (("integer", int), ("number", float), ("string", str), ("array", list), ("object", dict)):
        if isinstance(value, types):
            return name
    return type(value).__name__


def allowed_form(sub: Mapping[str, Any]) -> str:
    """What a schema node accepts, in words: ``an integer >= 1``, ``one of unet, vgg16_unet``, ..."""
    if "enum" in sub:
        return "one of " + ", ".join(_plain(v) for v in sub["enum"])
    if "const" in sub:
        return f"exactly {show(sub['const'])}"
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    forms = (["null"] if "null" in types else []) + [_type_form(t, sub) for t in types if t != "null"]
    return " or ".join(forms) or "a valid value"


def _type_form(kind: str, sub: Mapping[str, Any]) -> str:
    form = _TYPE_NAMES.get(kind, kind)
    if kind in ("integer", "number"):
        if "minimum" in sub and "maximum" in sub:
            return f"{form} from {sub['minimum']} to {sub['maximum']}"
        bounds = [f"{op} {sub[key]}" for key, op in _BOUNDS.items() if key in sub]
        return " ".join([form, " and ".join(bounds)]) if bounds else form
    if kind == "string":
        extra = [f"matching {sub['pattern']}"] if "pattern" in sub else []
        extra += ["(not empty)"] if sub.get("minLength", 0) >= 1 else []
        return " ".join([form, *extra])
    if kind == "array":
        low, high = sub.get("minItems"), sub.get("maxItems")
        count = (f"{low}" if low == high else f"{low} to {high}" if low is not None and high is not None
                 else f"at least {low}" if low is not None else f"at most {high}" if high is not None else "")
        items = f", each {allowed_form(sub['items'])}" if "items" in sub else ""
        return f"a list of {count} items{items}" if count else f"a list{items}"
    if kind == "object" and "properties" in sub:
        return f"a mapping with keys {', '.join(sub['properties'])}"
    return form


def _condition(schema: Mapping[str, Any], schema_path: list[str | int]) -> str:
    """``source is discover`` for an error under ``if: {properties: {source: {const: discover}}} then: ...``."""
    if "then" not in schema_path:
        return ""
    node: Any = schema
    for part in schema_path[: schema_path.index("then")]:
        node = node[part]
    props = node.get("if", {}).get("properties", {})
    return " and ".join(f"{key} is {_plain(rule['const'])}" for key, rule in props.items() if "const" in rule)


# ---------------------------------------------------------------- deprecated names (schema already passed)


def _rename_deprecated(config: dict[str, Any]) -> None:
    """Old names the schema still accepts for one release -> their new names, with a one-line warning
    on stderr each (``lung_mask.method``: :data:`lungseg.lungmask.methods.DEPRECATED_METHODS`)."""
    lung_mask = config.get("lung_mask")
    if isinstance(lung_mask, dict) and lung_mask.get("method") in DEPRECATED_METHODS:
        lung_mask["method"] = resolve_method(lung_mask["method"], where="lung_mask.method")


# ---------------------------------------------------------------- cross-key checks (schema already passed)


def _fractions_sum(config: Mapping[str, Any]) -> str | None:
    fractions = config["split"]["fractions"]
    total = math.fsum(fractions)
    if abs(total - 1.0) > 1e-6:
        return (f"split.fractions = {show(fractions)} sum to {total:.6g}; "
                "allowed: three fractions (train, val, test) that sum to 1")
    return None


def _val_and_test(config: Mapping[str, Any]) -> str | None:
    """Val and test get cases; with k folds (split.folds > 1) the folds are the validation sets."""
    fractions = config["split"]["fractions"]
    cut = ("val", "test") if config["split"].get("folds", 1) == 1 else ("test",)
    empty = [name for name, f in zip(("val", "test"), fractions[1:]) if f <= 0 and name in cut]
    if empty:
        return (f"split.fractions = {show(fractions)} leave {' and '.join(empty)} without cases; allowed: "
                f"{' and '.join(cut)} fraction{'s' if len(cut) > 1 else ''} > 0 (training validates on val, "
                "the metrics need test cases)")
    return None


def _image_size_for_depth(config: Mapping[str, Any]) -> str | None:
    train = config["train"]
    need = 2 ** train["depth"]
    for key, size in (("train.image_size", train["image_size"]), ("scaling.image_size", config["scaling"]["image_size"])):
        if size is not None and size < need:
            return (f"{key} = {size} is too small for train.depth = {train['depth']}; "
                    f"allowed: image_size >= 2**depth = {need}")
    return None


def _hu_window(config: Mapping[str, Any]) -> str | None:
    low, high = config["train"]["hu_window"]
    if not high > low:
        return f"train.hu_window = {show([low, high])}; allowed: [low, high] with low < high (HU)"
    return None


def _lr_min(config: Mapping[str, Any]) -> str | None:
    train = config["train"]
    if train["lr_min"] > train["lr"]:
        return f"train.lr_min = {train['lr_min']} is above train.lr = {train['lr']}; allowed: lr_min <= lr"
    return None


#: lung_mask.method values for 2-D images (`lungseg image-lung-mask`); the others are CT methods (`lungseg lung-mask`)
IMAGE_LUNG_MASK_METHODS = ("radiograph_otsu", "none")
#: the normalised intensity range of 2-D image cases (lungseg.images.read)
IMAGE_INTENSITY = (0, 1000)


def _lung_mask_for_source(config: Mapping[str, Any]) -> str | None:
    method, source = config["lung_mask"]["method"], config["source"]
    if source == "images" and method not in IMAGE_LUNG_MASK_METHODS:
        return f"lung_mask.method = {show(method)} is a CT method; source images needs radiograph_otsu or none"
    if source in ("demo", "discover", "dicomweb") and method in IMAGE_LUNG_MASK_METHODS:  # CT only (a sheet may hold images)
        return f"lung_mask.method = {show(method)} is for 2-D images; source {source} needs a CT method"
    return None


def _image_label(config: Mapping[str, Any]) -> str | None:
    if config["source"] == "images" and config["images"]["label"] != config["train"]["label"]:
        return (f"images.label = {show(config['images']['label'])} but train.label = {show(config['train']['label'])}: "
                "the models would find no such label in the image cases; name the same label in both")
    return None


def _restrict_needs_a_mask(config: Mapping[str, Any]) -> str | None:
    if config["lung_mask"]["method"] == "none" and config["predict"]["restrict_to_lung"]:
        return "predict.restrict_to_lung needs a classical lung mask; with lung_mask.method none set it false"
    return None


def _image_window_and_roi(config: Mapping[str, Any]) -> str | None:
    if config["source"] != "images":
        return None
    train = config["train"]
    low, high = (float(v) for v in train["hu_window"])
    if min(high, IMAGE_INTENSITY[1]) - max(low, IMAGE_INTENSITY[0]) < 500:
        return (f"train.hu_window = {[low, high]} barely covers the 0..1000 intensity of 2-D images (source images); "
                "allowed: a window over most of it, e.g. [0, 1000]")
    if config["lung_mask"]["method"] == "none" and train.get("roi", "none") != "none":
        return (f"train.roi = {show(train['roi'])} needs a classical lung mask at inference; "
                "with lung_mask.method none set train.roi: none")
    return None


def _pretrained_arch(config: Mapping[str, Any]) -> str | None:
    train = config["train"]
    if train["pretrained"] and train["arch"] != "vgg16_unet":
        return (f"train.pretrained = {show(train['pretrained'])} with train.arch = {train['arch']}; "
                "allowed: pretrained weights only with arch vgg16_unet (else null)")
    return None


def _fedavg_rounds(config: Mapping[str, Any]) -> str | None:
    train = config["train"]
    if train["mode"] == "fedavg" and train["epochs"] % train["local_epochs"]:
        return (f"train.epochs = {train['epochs']} is not a multiple of train.local_epochs = {train['local_epochs']}; "
                "allowed (mode fedavg): epochs = rounds x local_epochs")
    return None


def _fedavg_fractions(config: Mapping[str, Any]) -> str | None:
    """One fraction per FedAvg client: a client is a process, nproc_per_node of them on one node
    (local runs), x cluster.train.nodes under the SLURM profiles."""
    train = config["train"]
    fractions, nproc = train["fed_fractions"], train["nproc_per_node"]
    nodes = config.get("cluster", {}).get("train", {}).get("nodes", 1)
    if train["mode"] != "fedavg" or not fractions or len(fractions) in (nproc, nproc * nodes):
        return None
    clients = f"{nproc}" + (f" (or {nproc * nodes} with cluster.train.nodes = {nodes} under SLURM)" if nodes > 1 else "")
    return (f"train.fed_fractions = {show(fractions)} has {len(fractions)} values for train.nproc_per_node = {nproc} "
            f"FedAvg clients; allowed: [] (equal shares) or {clients} fractions, one per client")


def _demo_labels(config: Mapping[str, Any]) -> str | None:
    if config["source"] != "demo":
        return None
    train = config["train"]
    keys = [("train.label", train["label"])] + ([("train.roi_label", train["roi_label"])] if train["roi"] != "none" else [])
    for key, label in keys:
        if label not in DEMO_LABELS:
            return (f"{key} = {show(label)} is not a label of the demo cohort (source: demo); "
                    f"allowed: {' or '.join(DEMO_LABELS)}")
    return None


def _demo_case_clients(config: Mapping[str, Any]) -> str | None:
    """FedAvg with whole cases per client needs a training case per client (demo: one case per patient)."""
    train = config["train"]
    if config["source"] != "demo" or train["mode"] != "fedavg" or train["fed_partition"] != "case":
        return None
    n_cases = config["demo"]["n_cases"]
    n_train = split_counts(n_cases, config["split"]["fractions"])[0]
    if n_train < train["nproc_per_node"]:
        return (f"train.nproc_per_node = {train['nproc_per_node']} FedAvg clients with fed_partition case, but "
                f"demo.n_cases = {n_cases} gives {n_train} training case(s) with split.fractions "
                f"{show(config['split']['fractions'])}; allowed: a training case per client (or fed_partition iid)")
    return None


def _rating_thresholds(config: Mapping[str, Any]) -> str | None:
    """The label protocol's benign ceiling lies below its malignant floor."""
    settings = config.get("classification") or {}
    if settings.get("benign_max", 2) >= settings.get("malignant_min", 4):
        return (f"classification.benign_max = {settings.get('benign_max', 2)} is not below classification.malignant_min = "
                f"{settings.get('malignant_min', 4)}; allowed: benign_max < malignant_min (e.g. 2 and 4, LIDC's usual protocol)")
    return None


#: the rules that read train: (run again on every experiment's settings, see lungseg.experiments)
TRAIN_CHECKS: tuple[Callable[[Mapping[str, Any]], str | None], ...] = (
    _image_size_for_depth, _hu_window, _lr_min, _pretrained_arch, _image_window_and_roi,
    _fedavg_rounds, _fedavg_fractions, _demo_labels, _demo_case_clients,
)
#: rules between keys, run in order on a schema-valid config with defaults; each returns a problem or None
CROSS_KEY_CHECKS: tuple[Callable[[Mapping[str, Any]], str | None], ...] = (
    _fractions_sum, _val_and_test, _lung_mask_for_source, _image_label, _restrict_needs_a_mask, _rating_thresholds,
    *TRAIN_CHECKS)
