"""The workflow's JSON schema accepts the shipped config and names the key of a bad one."""

import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import REPO

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_shipped_config_is_valid(config):
    validate(config, SCHEMA)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["train"].update(epoks=3), "'epoks' was unexpected"),
        (lambda c: c["train"].update(epochs="ten"), "['train']['epochs']"),
        (lambda c: c.update(source="pacs"), "['source']"),
        (lambda c: c["split"].update(fractions=[0.8, 0.2]), "['split']['fractions']"),
        (lambda c: c["train"].pop("label"), "'label' is a required property"),
        (lambda c: (c.update(source="discover"), c.pop("discover")), "'discover' is a required property"),
        (lambda c: c["ingest"].update(target_spacing=[1.0, 1.0]), "['ingest']['target_spacing']"),
        (lambda c: c["ingest"].update(target_spacing=[1.0, 0, 1.0]), "['ingest']['target_spacing']"),
    ],
)
def test_bad_config_names_the_key(config, mutate, expected):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(WorkflowError) as err:
        validate(bad, SCHEMA)
    assert expected in str(err.value)


def test_ingest_section_defaults(config):
    """A config from before the ingest section still validates; the defaults keep every scan's grid."""
    old = copy.deepcopy(config)
    old.pop("ingest")
    validate(old, SCHEMA)
    assert old["ingest"] == {"target_spacing": None, "max_gap": 1.5, "lidc_agreement": 0.5}
