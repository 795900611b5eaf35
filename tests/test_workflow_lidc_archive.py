"""The LIDC-style demo archive through `source: discover` with no case sheet (config/lidc_demo.yaml, issue 14):
discovery finds every series and its readers' XML in folders named with spaces, quotes and brackets, ingest
builds the nodule label from the readers' consensus, and a nodule model trains, predicts and is evaluated;
with config/classification.yaml (issue 16) two classifiers learn the readers' malignancy from the nodule
patches through rule train, classify the test nodules, and get metrics, a paired comparison and a report page."""

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
from lungseg.split import read_split_table

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
            "--slices", "24", "--size", "96", "--nodules-per-case", "2", "4", "--nodule-diameter-mm", "4", "20"]
    assert main(argv) == 0
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for overlay in ("nodule", "lidc_demo", "classification"):
        _overlay(config, REPO / f"config/{overlay}.yaml")
    config["discover"].update(root=str(archive), diagnosis_table=str(archive / "tcia-diagnosis-data.csv"))
    config["split"]["folds"] = 1
    config["classification"]["train"].update(epochs=1, batch_size=8, image_size=32)
    config["classification"]["patch_size"] = 32
    config["classification"]["bootstrap_samples"] = 100
    config["classification"]["experiments"] = {"reference": "resnet18", "resnet18": {},
                                               "mobilenet_v2": {"arch": "mobilenet_v2"}}
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
        status = json.loads((results / "ingest" / f"{row['case_id']}.status.json").read_text())
        assert len(status["malignancy_medians"]) == len(json.loads(lidc_nodule_table_json(results, row["case_id"])))
    split_log = (archive_run / "logs/split/split.log").read_text()  # the classifiers' strata reach the split
    assert "by malignancy (median rating >= 4)" in split_log, split_log


def lidc_nodule_table_json(results: Path, case: str) -> str:
    """The case file's LIDC nodule table (JSON)."""
    with h5py.File(results / "ingest" / f"{case}.h5", "r") as f:
        return f["annotations"].attrs["lidc_nodules"]


def test_a_nodule_model_is_trained_and_evaluated_without_a_sheet(archive_run) -> None:
    results = archive_run / config_results(archive_run)
    assert (results / "experiments/unet_2_5d/folds/0/model.pt").is_file()
    summary = json.loads((results / "metrics/summary.json").read_text())
    assert {"unet_2_5d", "classical_nodule", "all_background"} <= set(summary)
    assert "froc" in summary["unet_2_5d"]


def test_classifiers_train_on_the_nodule_patches_and_are_compared(archive_run) -> None:
    results = archive_run / config_results(archive_run)
    with open(results / "nodules/nodules.tsv", newline="") as f:
        nodules = list(csv.DictReader(f, delimiter="\t"))
    assert nodules and {row["source"] for row in nodules} == {"lidc"}
    for name in ("resnet18", "mobilenet_v2"):
        settings = json.loads((results / f"experiments/{name}/train_settings.json").read_text())
        assert settings["task"] == "classification" and settings["image_size"] == 32
        assert (results / f"experiments/{name}/folds/0/model.pt").is_file()
        with open(results / f"experiments/{name}/classification/test.tsv", newline="") as f:
            test = list(csv.DictReader(f, delimiter="\t"))
        split = {case: part for case, (part, _) in read_split_table(results / "split.tsv").items()}
        assert {row["case"] for row in test} == {row["case"] for row in nodules if split[row["case"]] == "test"}
        assert all(0.0 <= float(row["p_malignant"]) <= 1.0 for row in test)
        summary = json.loads((results / f"experiments/{name}/classification/summary.json").read_text())
        assert summary
    comparison = json.loads((results / "classification/comparison.json").read_text())
    assert "mobilenet_v2" in json.dumps(comparison)
    # the nodule target: each test case diagnosed end to end and matched to its reference nodules
    test_cases = sorted(case for case, (part, _) in read_split_table(results / "split.tsv").items() if part == "test")
    evaluation = json.loads((results / "diagnosis/evaluation.json").read_text())
    assert evaluation["cases"] == len(test_cases)
    assert evaluation["reference_nodules"] == sum(split[row["case"]] == "test" for row in nodules)
    for case in test_cases:
        assert (results / f"diagnosis/{case}/overlay.png").is_file()
    page = (results / "report/classification.html").read_text()
    assert "resnet18" in page and "mobilenet_v2" in page and str(archive_run) not in page


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
