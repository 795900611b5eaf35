"""The LIDC-style demo archive through `source: discover` with no case sheet (config/lidc_demo.yaml, issue 14):
discovery finds every series and its readers' XML in folders named with spaces, quotes and brackets, ingest
builds the nodule label from the readers' consensus, and a nodule model trains, predicts and is evaluated."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import h5py
import pytest
import yaml
from conftest import REPO
from test_workflow_experiments import smk

from lungseg.cli import main
from lungseg.demo.cohort import demo_identity

pytestmark = pytest.mark.slow
SEED = 5


def _overlay(config: dict, path: Path) -> dict:
    for key, value in yaml.safe_load(path.read_text()).items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


@pytest.fixture(scope="module")
def archive_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("lidc archive")
    archive = workdir / "resources" / "lidc_demo_archive"
    argv = ["demo-cohort", "--layout", "lidc_archive", "--out", str(archive), "--n-cases", "6", "--seed", str(SEED),
            "--slices", "24", "--size", "96", "--nodules-per-case", "1", "3", "--nodule-diameter-mm", "12", "30"]
    assert main(argv) == 0
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    _overlay(_overlay(config, REPO / "config/nodule.yaml"), REPO / "config/lidc_demo.yaml")
    config["discover"]["root"] = str(archive)
    config["train"].update(epochs=1, base_channels=4, depth=2, batch_size=4, patch_size=32, patches_per_epoch=16)
    config["experiments"] = {"reference": "unet_2_5d", "unet": False, "dense_unet": False, "unet_2_5d": {}}
    config["evaluate"]["bootstrap_samples"] = 100
    (workdir / "config").mkdir()
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    os.environ.setdefault("LUNGSEG_PSEUDONYM_KEY", "lidc-archive-workflow-secret")
    smk(workdir, "--cores", "2")
    return workdir


def test_discovery_attaches_every_series_xml_and_ingest_builds_the_consensus(archive_run) -> None:
    results = archive_run / config_results(archive_run)
    with open(results / "discovered/cases.tsv", newline="") as f:
        cases = list(csv.DictReader(f, delimiter="\t"))
    assert len(cases) == 6 and all(row["lidc_xml"] for row in cases)
    for row in cases:
        with h5py.File(results / "ingest" / f"{row['case_id']}.h5", "r") as f:
            assert f["labels/nodule"][()].any(), row["case_id"]
            assert "lidc_readers" in f["annotations"]


def test_a_nodule_model_is_trained_and_evaluated_without_a_sheet(archive_run) -> None:
    results = archive_run / config_results(archive_run)
    assert (results / "experiments/unet_2_5d/folds/0/model.pt").is_file()
    summary = json.loads((results / "metrics/summary.json").read_text())
    assert {"unet_2_5d", "classical_nodule", "all_background"} <= set(summary)
    assert "froc" in summary["unet_2_5d"]


def test_no_identity_of_the_archive_reaches_results_or_logs(archive_run) -> None:
    identities = [demo_identity(f"demo{k:03d}", SEED) for k in range(1, 7)]
    needles = {v for i in identities for v in (i.patient_name, i.patient_id, i.accession_number) if len(v) >= 4}
    for folder in (archive_run / config_results(archive_run), archive_run / "logs"):
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".tsv", ".json", ".log", ".html", ".csv", ".txt"):
                text = path.read_text(errors="ignore")
                assert not [n for n in needles if n in text], path


def config_results(workdir: Path) -> str:
    return yaml.safe_load((workdir / "config/config.yaml").read_text())["results"]
