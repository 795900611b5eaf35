"""The workflow config check: the schema accepts the shipped config, a bad key or value is named in one
or two lines (key, value, allowed form), cross-key rules stop the workflow before any job runs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lungseg.workflow_config import ConfigError, check_config

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def config_error(config: dict, mutate) -> str:
    """The message ``check_config`` raises for ``config`` changed by ``mutate`` (at most two lines)."""
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        check_config(bad, SCHEMA)
    message = str(err.value)
    assert len(message.splitlines()) <= 2, message
    assert "$schema" not in message and "additionalProperties" not in message, message
    return message


def test_shipped_config_is_valid(config):
    check_config(config, SCHEMA)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["train"].update(epoks=3), ["unexpected key train.epoks = 3", "(did you mean epochs?)"]),
        (lambda c: c["train"].update(epochs="ten"), ['train.epochs = "ten" is a string', "allowed: an integer >= 1"]),
        (lambda c: c.update(source="pacs"), ['source = "pacs"', "allowed: one of demo, cases, discover"]),
        (lambda c: c["split"].update(fractions=[0.8, 0.2]), ["split.fractions = [0.8, 0.2] has 2 items", "a list of 3 items"]),
        (lambda c: c["train"].pop("label"), ["missing key train.label", "train needs: label, arch"]),
        (lambda c: (c.update(source="discover"), c.pop("discover")), ["missing key discover; needed when source is discover"]),
        (lambda c: c.pop("demo"), ["missing key demo; needed when source is demo"]),
        (lambda c: c["ingest"].update(target_spacing=[1.0, 1.0]), ["ingest.target_spacing = [1.0, 1.0] has 2 items"]),
        (lambda c: c["ingest"].update(target_spacing=[1.0, 0, 1.0]), ["ingest.target_spacing[1] = 0 is not > 0"]),
        (lambda c: c["demo"].update(n_cases=2), ["demo.n_cases = 2 is not >= 3", "an integer from 3 to 1000"]),
        (lambda c: c["train"].update(label="a b"), ['train.label = "a b"', "a string matching ^[A-Za-z0-9_]+$"]),
        (lambda c: c["cluster"].update(cpu_partition=""), ['cluster.cpu_partition = "" is empty']),
        (lambda c: c["lung_mask"].update(method="radiograph_otsu"), ['lung_mask.method = "radiograph_otsu" is for 2-D images']),
        (lambda c: c.update(source="images", images={"root": "x"}),
         ['lung_mask.method = "threshold_3d" is a CT method; source images needs radiograph_otsu or none']),
        (lambda c: (c.update(source="images", images={"root": "x"}), c["lung_mask"].update(method="radiograph_otsu")),
         ["train.hu_window = [-1000.0, 400.0] barely covers the 0..1000 intensity of 2-D images"]),
        (lambda c: (c.update(source="images", images={"root": "x", "label": "lungs"}),
                    c["lung_mask"].update(method="none"), c["train"].update(hu_window=[0, 1000], roi="none")),
         ['images.label = "lungs" but train.label = "lung"']),
        (lambda c: (c["lung_mask"].update(method="none"), c.update(source="cases"), c["predict"].update(restrict_to_lung=True)),
         ["predict.restrict_to_lung needs a classical lung mask; with lung_mask.method none set it false"]),
    ],
)
def test_bad_config_names_the_key(config, mutate, expected):
    message = config_error(config, mutate)
    for text in expected:
        assert text in message, message


def test_misspelled_top_level_key_is_one_line(config):
    message = config_error(config, lambda c: c.update(reslts="out"))
    assert message.count("\n") == 0, message
    assert 'unexpected key reslts = "out"' in message and "allowed keys: results, source," in message, message
    assert message.endswith("(did you mean results?)"), message


def test_misspelled_nested_key_suggests_the_key(config):
    message = config_error(config, lambda c: c["train"].update(epoks=3, lrr=0.1))
    assert "unexpected keys train.epoks = 3, train.lrr = 0.1; allowed keys in train: label, arch," in message, message
    assert "(did you mean epochs for epoks, lr for lrr?)" in message, message


def test_wrong_enum_lists_the_values(config):
    message = config_error(config, lambda c: c["train"].update(arch="unett"))
    assert 'train.arch = "unett" is not allowed; allowed: one of unet, vgg16_unet, dense_unet' in message, message
    assert "(did you mean unet?)" in message, message


def test_bare_off_in_yaml_is_explained(config):
    """`amp: off` reads as false in YAML: the message says to quote it."""
    message = config_error(config, lambda c: c["train"].update(amp=False))
    assert "train.amp = false is a boolean; allowed: one of auto, off, bf16, fp16" in message, message
    assert 'quote it: "off"' in message, message


def test_long_value_is_shortened(config):
    message = config_error(config, lambda c: c["train"].update(hu_window="x" * 500))
    assert len(message) < 200 and "..." in message, message


def test_ingest_section_defaults(config):
    """A config from before the ingest section still validates; the defaults keep every scan's grid."""
    old = copy.deepcopy(config)
    old.pop("ingest")
    check_config(old, SCHEMA)
    assert old["ingest"] == {"target_spacing": None, "max_gap": 1.5, "lidc_agreement": 0.5, "structure_labels": {}}


def test_defaults_are_filled_and_not_shared(config):
    first, second = copy.deepcopy(config), copy.deepcopy(config)
    for c in (first, second):
        c.pop("scaling")
        c["train"].pop("fed_fractions")
        check_config(c, SCHEMA)
    assert first["scaling"] == {"enabled": False, "epochs": 2, "devices": [1, 2], "threads_per_process": 1,
                                "image_size": None}
    assert first["scaling"]["devices"] is not second["scaling"]["devices"]
    assert first["train"]["fed_fractions"] == [] and first["train"]["fed_fractions"] is not second["train"]["fed_fractions"]


def test_split_folds_and_stratify_defaults(config):
    """A config from before k-fold still validates: one fold (the plain train/val split), stratified."""
    config["split"].pop("folds", None)
    config["split"].pop("stratify", None)
    check_config(config, SCHEMA)
    assert config["split"]["folds"] == 1 and config["split"]["stratify"] is True


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["split"].update(folds=0), ["split.folds = 0 is not >= 1", "allowed: an integer >= 1"]),
        (lambda c: c["split"].update(folds=2.5), ["split.folds = 2.5 is a number"]),
        (lambda c: c["split"].update(stratify="yes"), ['split.stratify = "yes" is a string', "allowed: true or false"]),
        (lambda c: c["split"].update(fold=5), ["unexpected key split.fold = 5", "(did you mean folds?)"]),
    ],
)
def test_bad_split_folds(config, mutate, expected):
    message = config_error(config, mutate)
    for text in expected:
        assert text in message, message


def test_experiments_section_is_checked(config):
    message = config_error(config, lambda c: c.update(experiments={"unet": {}, "grid": {"arch": ["unet"]},
                                                                   "arch-unet": {}}))
    assert message.startswith("invalid config: experiments.arch-unet: grid point arch-unet") and "\n" not in message
    config["experiments"] = {"reference": "dense", "unet": {}, "dense": {"arch": "dense_unet"}}
    check_config(config, SCHEMA)


def test_defaults_wait_for_a_valid_schema(config):
    bad = copy.deepcopy(config)
    bad.pop("ingest")
    bad["train"]["epochs"] = "ten"
    with pytest.raises(ConfigError):
        check_config(bad, SCHEMA)
    assert "ingest" not in bad


# ---------------------------------------------------------------- cross-key rules


def _fedavg(**settings):
    return lambda c: c["train"].update(mode="fedavg", **settings)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["split"].update(fractions=[0.8, 0.1, 0.2]),
         ["split.fractions = [0.8, 0.1, 0.2] sum to 1.1", "allowed: three fractions (train, val, test) that sum to 1"]),
        (lambda c: c["split"].update(fractions=[0.9, 0.1, 0.0]), ["split.fractions = [0.9, 0.1, 0.0] leave test without cases"]),
        (lambda c: c["split"].update(fractions=[1.0, 0.0, 0.0]), ["leave val and test without cases"]),
        (lambda c: c["train"].update(image_size=16, depth=5),
         ["train.image_size = 16 is too small for train.depth = 5", ">= 2**depth = 32"]),
        (lambda c: (c["train"].update(depth=5), c["scaling"].update(image_size=16)),
         ["scaling.image_size = 16 is too small for train.depth = 5"]),
        (lambda c: c["train"].update(hu_window=[400, -1000]), ["train.hu_window = [400, -1000]", "low < high"]),
        (lambda c: c["train"].update(lr_min=0.01), ["train.lr_min = 0.01 is above train.lr = 0.002"]),
        (lambda c: c["train"].update(pretrained="hub"),
         ['train.pretrained = "hub" with train.arch = unet', "only with arch vgg16_unet"]),
        (_fedavg(local_epochs=3), ["train.epochs = 10 is not a multiple of train.local_epochs = 3"]),
        (_fedavg(nproc_per_node=3, fed_fractions=[0.5, 0.5]),
         ["train.fed_fractions = [0.5, 0.5] has 2 values for train.nproc_per_node = 3", "or 3 fractions, one per client"]),
        (lambda c: c["train"].update(label="heart"),
         ['train.label = "heart" is not a label of the demo cohort', "lung or nodule"]),
        (lambda c: c["train"].update(roi="crop", roi_label="heart"),
         ['train.roi_label = "heart" is not a label of the demo cohort']),
        (_fedavg(fed_partition="case", nproc_per_node=7),
         ["train.nproc_per_node = 7 FedAvg clients with fed_partition case", "demo.n_cases = 8 gives 6 training case(s)"]),
    ],
)
def test_cross_key_rule(config, mutate, expected):
    message = config_error(config, mutate)
    assert message.startswith("invalid config: ") and message.count("\n") == 0, message
    for text in expected:
        assert text in message, message


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["split"].update(fractions=[0.7, 0.2, 0.1]),  # 0.7 + 0.2 + 0.1 != 1.0 in floating point
        lambda c: c["split"].update(fractions=[0.9, 0.0, 0.1], folds=5),  # k folds: the folds validate
        lambda c: (c["train"].update(pretrained="hub", arch="vgg16_unet"), c.pop("experiments")),
        lambda c: (c["train"].update(label="heart"), c.update(source="cases")),  # a case sheet may have any label
        lambda c: c["train"].update(label="nodule", roi="none", roi_label="heart"),  # roi_label unused with roi none
        lambda c: c["train"].update(fed_fractions=[0.5, 0.5], nproc_per_node=3),  # ddp ignores fed_fractions
        _fedavg(nproc_per_node=3, fed_fractions=[0.5, 0.3, 0.2], local_epochs=5),
        _fedavg(fed_partition="case", nproc_per_node=6),
        lambda c: (_fedavg(nproc_per_node=3, fed_fractions=[0.1] * 6)(c), c["cluster"]["train"].update(nodes=2)),
    ],
)
def test_cross_key_rules_accept_valid_neighbours(config, mutate):
    mutate(config)
    check_config(config, SCHEMA)


def test_fed_fractions_message_names_multi_node_clients(config):
    message = config_error(config, lambda c: (_fedavg(nproc_per_node=3, fed_fractions=[0.5, 0.5])(c),
                                              c["cluster"]["train"].update(nodes=2)))
    assert "3 (or 6 with cluster.train.nodes = 2 under SLURM) fractions, one per client" in message, message


# ---------------------------------------------------------------- the workflow stops at once


def dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(reslts="out"), ['unexpected key reslts = "out"', "did you mean results?"]),
        (lambda c: c["split"].update(fractions=[0.8, 0.1, 0.2]), ["split.fractions = [0.8, 0.1, 0.2] sum to 1.1"]),
        (lambda c: c.update(experiments={"unet": {}, "dense": {"arch": "dense_unet", "epoks": 3}}),
         ["experiments.dense.epoks is not a train setting", "(did you mean epochs?)"]),
    ],
    ids=["misspelled-key", "fractions", "experiments"],
)
def test_snakemake_stops_with_a_short_message(tmp_path, config, mutate, expected):
    mutate(config)
    proc = dry_run(tmp_path, config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for text in expected:
        assert text in out, out
    assert len(out.splitlines()) < 15, out
    assert "Traceback" not in out and "additionalProperties" not in out and "Job stats" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"], out  # no job ran, nothing written
