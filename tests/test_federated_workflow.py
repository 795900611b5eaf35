"""train.mode flower in the DAG: the demo's simulated hospitals train a global model with a Flower server and
one client per site (local processes, TLS), which then flows into predict and evaluate like any model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_workflow_experiments import smk, tiny_config

from lungseg.demo.cohort import demo_site
from lungseg.training.checkpoint import load_model

pytestmark = pytest.mark.slow


def test_flower_experiment_trains_per_site_and_its_model_is_evaluated(tmp_path: Path) -> None:
    tiny_config(tmp_path, demo={"n_cases": 8}, train={"epochs": 2},
                split={"fractions": [0.5, 0.25, 0.25], "seed": 3}, experiments={"flower": {"mode": "flower"}})
    smk(tmp_path, "--cores", "2", "results/split.tsv")
    split = [line.split("\t") for line in (tmp_path / "results/split.tsv").read_text().splitlines()[1:]]
    val_sites = {demo_site(case) for case, _, part, *_ in split if part == "val"}
    test_case = next(case for case, _, part, *_ in split if part == "test")
    evaluated = f"results/experiments/flower/metrics/cases/{test_case}.json"
    smk(tmp_path, "--cores", "2", evaluated)

    model, meta = load_model(tmp_path / "results/experiments/flower/folds/0/model.pt")
    assert meta["epoch"] in (1, 2) and 0.0 <= meta["val_dice"] <= 1.0
    run = next((tmp_path / "results/experiments/flower/folds/0/checkpoints").iterdir())
    with open(run / "server/rounds.csv", newline="") as f:
        rounds = list(csv.DictReader(f))
    train_sites = {demo_site(case) for case, _, part, *_ in split if part == "train"}
    assert [r["round"] for r in rounds] == ["1", "2"]
    assert rounds[-1]["sites_ok"].split(";") == sorted(train_sites & val_sites)
    (metrics,) = json.loads((tmp_path / evaluated).read_text())  # the federated model, evaluated like any other
    assert metrics["method"] == "flower" and metrics["case_id"] == test_case and 0.0 <= metrics["dice"] <= 1.0
