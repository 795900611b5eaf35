"""config/xray.yaml (the distributed U-Net paper's experiment) end to end at tiny size: the chest X-ray demo
written by `lungseg demo-xray`, read through `source: images`, a VGG16-encoder U-Net trained with the encoder
frozen for the first half of the epochs, one process against FedAvg, the radiograph baseline, metrics, report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_workflow_experiments import smk

from lungseg.cli import main

pytestmark = pytest.mark.slow


def _merge(base: dict, overlay: dict) -> dict:
    for key, value in overlay.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


@pytest.fixture(scope="module")
def xray_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("xray")
    assert main(["demo-xray", "--out", str(workdir / "resources/xray_demo"), "--n-cases", "10", "--size", "64",
                 "--no-progress"]) == 0
    config = _merge(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                    yaml.safe_load((REPO / "config/xray.yaml").read_text()))
    config["train"].update(base_channels=4, image_size=64, epochs=2, freeze_encoder_epochs=1, warmup_epochs=0,
                           batch_size=4, threads=1)  # 2 FedAvg clients share 1 thread: warned, run
    config["experiments"] = {"reference": "single", "unet": False, "dense_unet": False, "single": {},
                             "fedavg_2": {"mode": "fedavg", "nproc_per_node": 2, "local_epochs": 1}}
    config["scaling"]["enabled"] = False
    config["evaluate"]["bootstrap_samples"] = 100
    (workdir / "config").mkdir()
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    smk(workdir, "--cores", "2")
    return workdir


def test_the_vgg_unet_trains_with_its_encoder_frozen_first(xray_run) -> None:
    results = xray_run / "results_xray"
    with open(results / "experiments/single/folds/0/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "val_fscore" in rows[0]
    import torch

    assert torch.load(results / "experiments/single/folds/0/model.pt", weights_only=True)["arch"] == "vgg16_unet"
    settings = json.loads((results / "experiments/single/train_settings.json").read_text())
    assert settings["freeze_encoder_epochs"] == 1 and settings["lr_min"] < settings["lr"]


def test_single_process_and_fedavg_are_compared_with_the_radiograph_baseline(xray_run) -> None:
    summary = json.loads((xray_run / "results_xray/metrics/summary.json").read_text())
    assert {"single", "fedavg_2", "classical_radiograph_otsu", "all_background"} <= set(summary)
    assert "oversubscribed" in (xray_run / "logs/train/fedavg_2/0.log").read_text()
    assert (xray_run / "results_xray/report/metrics.html").is_file()
