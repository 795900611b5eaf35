"""Nodule-level detection, bootstrap CIs, aggregation (CSV + JSON) and the evaluate/aggregate CLIs."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.evaluation.aggregate import rows_to_csv, summarise
from lungseg.evaluation.bootstrap import bootstrap_ci, bootstrap_ratio_ci
from lungseg.evaluation.detection import detection_counts
from lungseg.geometry import Geometry, write_volume

GEOM = Geometry((0.7, 0.7, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SHAPE = (20, 48, 48)


def ball(center, radius, shape=SHAPE) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2).astype(np.uint8)


def test_detection_matches_components_by_overlap():
    ref = ball((5, 10, 10), 3) | ball((14, 35, 35), 3) | ball((10, 10, 38), 2)
    pred = ball((5, 11, 11), 2) | ball((14, 37, 37), 2)  # two nodules hit (partly)
    pred |= ball((15, 20, 20), 2)  # a blob where there is no nodule
    pred[0, 0, 0] = 1  # a one-voxel false positive
    d = detection_counts(pred, ref)
    assert d == {"n_nodules": 3, "n_detected": 2, "n_pred_components": 4, "n_false_positives": 2,
                 "sensitivity": pytest.approx(2 / 3)}


def test_detection_edge_cases():
    empty = np.zeros(SHAPE, np.uint8)
    no_nodule = detection_counts(ball((10, 24, 24), 3), empty)
    assert no_nodule["n_nodules"] == 0 and math.isnan(no_nodule["sensitivity"]) and no_nodule["n_false_positives"] == 1
    missed = detection_counts(empty, ball((10, 24, 24), 3))
    assert missed["sensitivity"] == 0.0 and missed["n_false_positives"] == 0
    # voxels touching only at a corner are one component (26-connectivity)
    diagonal = np.zeros(SHAPE, np.uint8)
    diagonal[5, 5, 5] = diagonal[6, 6, 6] = 1
    assert detection_counts(diagonal, diagonal)["n_nodules"] == 1
    # one predicted blob spanning two nodules detects both; two blobs on one nodule are one detection
    two = ball((10, 20, 14), 2) | ball((10, 20, 22), 2)
    bridge = np.zeros(SHAPE, np.uint8)
    bridge[10, 20, 12:25] = 1
    assert detection_counts(bridge, two)["n_detected"] == 2
    split = np.zeros(SHAPE, np.uint8)
    split[10, 20, 13] = split[10, 20, 15] = 1
    d = detection_counts(split, ball((10, 20, 14), 2))
    assert d["n_detected"] == 1 and d["n_false_positives"] == 0 and d["n_pred_components"] == 2


def test_bootstrap_ci_is_seeded_and_sensible():
    values = np.random.default_rng(1).normal(0.8, 0.05, size=30)
    ci = bootstrap_ci(values, samples=2000, seed=7)
    assert ci == bootstrap_ci(values, samples=2000, seed=7)  # reproducible
    assert ci != bootstrap_ci(values, samples=2000, seed=8)
    lo, hi = ci
    assert lo < values.mean() < hi
    # about 1.96 standard errors each side
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci(values[:1]) is None
    assert bootstrap_ci(np.full(5, 0.9)) == (pytest.approx(0.9), pytest.approx(0.9))
    lo, hi = bootstrap_ratio_ci(np.array([1, 2, 0, 1]), np.array([2, 2, 1, 1]), seed=0)
    assert 0 <= lo <= 4 / 6 <= hi <= 1


def _rows():
    rows = []
    for i, dice in enumerate([0.9, 0.8, 0.85, 0.95]):
        rows.append({"case_id": f"c{i}", "label": "nodule", "method": "unet", "dice": dice, "iou": dice / (2 - dice),
                     "precision": 0.9, "recall": math.nan if i == 3 else 0.8, "fscore": dice, "accuracy": 0.99,
                     "hd95_mm": 2.0 + i, "volume_diff_ml": -0.1 * i, "n_nodules": [2, 1, 0, 3][i],
                     "n_detected": [2, 0, 0, 2][i], "n_pred_components": [2, 1, 1, 2][i],
                     "n_false_positives": [0, 1, 1, 0][i], "sensitivity": [1.0, 0.0, math.nan, 2 / 3][i]})
    return rows


def test_summary_has_ci_and_pooled_detection():
    s = summarise(_rows(), samples=500, seed=3)["unet"]
    dice = s["metrics"]["dice"]
    assert dice["mean"] == pytest.approx(0.875) and dice["median"] == pytest.approx(0.875)
    assert dice["ci95"][0] <= 0.875 <= dice["ci95"][1] and dice["ci95"][0] >= 0.8 and dice["ci95"][1] <= 0.95
    assert s["metrics"]["recall"]["n_undefined"] == 1
    assert s["bootstrap"] == {"samples": 500, "seed": 3, "level": 0.95, "method": "percentile, cases resampled"}
    det = s["detection"]
    assert det["n_nodules"] == 6 and det["n_detected"] == 4
    assert det["sensitivity"] == pytest.approx(4 / 6)  # pooled, not the mean of per-scan sensitivities
    assert det["false_positives_per_scan"] == pytest.approx(0.5)
    assert det["false_positives_per_scan_ci95"][0] <= 0.5 <= det["false_positives_per_scan_ci95"][1]
    assert summarise(_rows(), samples=500, seed=3) == summarise(_rows(), samples=500, seed=3)


def test_csv_writes_undefined_as_blank_and_keeps_detection_columns():
    table = list(csv.DictReader(io.StringIO(rows_to_csv(_rows()))))
    assert table[3]["recall"] == "" and table[2]["sensitivity"] == ""
    assert table[0]["n_detected"] == "2" and "nan" not in rows_to_csv(_rows())


def test_evaluate_and_aggregate_cli_for_the_nodule_target(tmp_path, capsys):
    ref = ball((5, 10, 10), 3) | ball((14, 35, 35), 3)
    pred = ball((5, 10, 10), 3) | ball((15, 20, 20), 2)
    image = np.zeros(SHAPE, np.int16)
    write_case(tmp_path / "c1.h5", CaseVolume("c1", image, GEOM, labels={"nodule": ref}))
    write_volume(str(tmp_path / "pred.nii.gz"), pred, GEOM)
    assert main(["evaluate", "--case", str(tmp_path / "c1.h5"), "--label", "nodule", "--pred",
                 f"unet={tmp_path / 'pred.nii.gz'}", "--detection", "-o", str(tmp_path / "c1.json")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "c1.json").read_text())}
    assert rows["unet"]["n_detected"] == 1 and rows["unet"]["n_false_positives"] == 1 and rows["unet"]["sensitivity"] == 0.5
    assert rows["all_background"]["n_detected"] == 0 and rows["all_background"]["hd95_mm"] is None
    assert main(["aggregate", str(tmp_path / "c1.json"), "--csv", str(tmp_path / "m.csv"), "--json", str(tmp_path / "s.json"),
                 "--bootstrap-samples", "100", "--seed", "1"]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["unet"]["detection"]["sensitivity"] == 0.5
    assert summary["unet"]["metrics"]["dice"]["ci95"] is None  # one case: no interval
    # a label the case does not have, a prediction on another grid: one clear line each
    capsys.readouterr()
    assert main(["evaluate", "--case", str(tmp_path / "c1.h5"), "--label", "lung", "--pred",
                 f"unet={tmp_path / 'pred.nii.gz'}", "-o", str(tmp_path / "x.json")]) == 1
    assert "has no reference label 'lung'" in capsys.readouterr().err
    write_volume(str(tmp_path / "small.nii.gz"), pred[:10], GEOM)
    assert main(["evaluate", "--case", str(tmp_path / "c1.h5"), "--label", "nodule", "--pred",
                 f"unet={tmp_path / 'small.nii.gz'}", "-o", str(tmp_path / "x.json")]) == 1
    assert "is not on the grid of" in capsys.readouterr().err


def test_evaluate_baseline_apart_from_the_experiments(tmp_path):
    """The workflow evaluates each experiment without the all-background row and the baselines once per case."""
    ref = ball((5, 10, 10), 3)
    write_case(tmp_path / "c1.h5", CaseVolume("c1", np.zeros(SHAPE, np.int16), GEOM, labels={"nodule": ref}))
    write_volume(str(tmp_path / "pred.nii.gz"), ref, GEOM)
    case = str(tmp_path / "c1.h5")
    assert main(["evaluate", "--case", case, "--label", "nodule", "--pred", f"exp={tmp_path / 'pred.nii.gz'}",
                 "--no-baseline", "-o", str(tmp_path / "exp.json")]) == 0
    assert [r["method"] for r in json.loads((tmp_path / "exp.json").read_text())] == ["exp"]
    assert main(["evaluate", "--case", case, "--label", "nodule", "-o", str(tmp_path / "base.json")]) == 0
    assert [r["method"] for r in json.loads((tmp_path / "base.json").read_text())] == ["all_background"]
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        main(["evaluate", "--case", case, "--label", "nodule", "--no-baseline", "-o", str(tmp_path / "x.json")])
