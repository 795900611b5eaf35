"""lungseg compare: paired statistics, cross-validated Dice, training cost, the CSV/JSON schema and the report."""

from __future__ import annotations

import csv
import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import stats

from lungseg.casefile import CaseVolume, write_case
from lungseg.cli import main
from lungseg.evaluation.aggregate import rows_to_csv
from lungseg.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_ci
from lungseg.evaluation.compare import (
    CSV_COLUMNS,
    compare,
    cross_validation,
    is_baseline,
    load_plan,
    model_gpus,
    paired_difference,
    read_metrics,
    training_cost,
    wilcoxon_p,
)
from lungseg.evaluation.metrics import METRICS
from lungseg.geometry import Geometry, write_volume
from lungseg.report.comparison import comparison_html, plot_paired

REF = [0.80, 0.70, 0.90, 0.60, 0.75, 0.85]
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_constant_paired_difference_has_a_point_interval_and_scipys_p():
    ref = {f"c{i}": v for i, v in enumerate(REF)}
    exp = {c: v + 0.1 for c, v in ref.items()}
    d = paired_difference(exp, ref, samples=500, seed=1)
    assert d["n_pairs"] == 6 and d["n_unpaired"] == 0 and d["n_undefined"] == 0
    assert d["mean"] == pytest.approx(0.1)
    assert d["ci95"] == [pytest.approx(0.1), pytest.approx(0.1)]  # paired: the case-to-case spread cancels
    x, y = np.asarray(list(exp.values())), np.asarray(REF)
    assert d["wilcoxon_p"] == stats.wilcoxon(x - y, zero_method="wilcox", alternative="two-sided").pvalue
    assert d["wilcoxon_p"] == pytest.approx(2 / 2**6)  # exact: all six differences positive
    # resampling the two methods independently would give a wide interval around 0.1
    lo, hi = np.subtract(bootstrap_ci(x, seed=1), bootstrap_ci(y, seed=2)[::-1])
    assert hi - lo > 0.1


def test_pairs_leave_out_missing_and_undefined_cases():
    ref = {"a": 0.8, "b": 0.7, "c": 0.9, "d": 0.6, "e": math.nan}
    exp = {"a": 0.85, "b": 0.65, "c": 0.99, "e": 0.5, "f": 0.9}  # d only in ref, f only in exp, e NaN in ref
    d = paired_difference(exp, ref, samples=300, seed=0)
    assert d["n_pairs"] == 3 and d["n_unpaired"] == 2 and d["n_undefined"] == 1
    diffs = np.asarray([0.85 - 0.8, 0.65 - 0.7, 0.99 - 0.9])
    assert d["mean"] == pytest.approx(diffs.mean())
    assert d["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert d["ci95"] == list(paired_bootstrap_ci(np.array([0.85, 0.65, 0.99]), np.array([0.8, 0.7, 0.9]), 300, 0))
    assert d["ci95"][0] < d["mean"] < d["ci95"][1]
    # zero differences are dropped (zero_method="wilcox"), not split or counted as Pratt does
    with_zero = np.array([0.0, 0.0, 0.1, 0.2, -0.05, 0.3, 0.15, -0.02, 0.25])
    assert wilcoxon_p(with_zero) == stats.wilcoxon(with_zero[2:]).pvalue != stats.wilcoxon(with_zero, zero_method="pratt").pvalue
    # too few pairs, or nothing but ties: no test
    assert wilcoxon_p(np.array([0.1])) is None and wilcoxon_p(np.zeros(5)) is None
    one = paired_difference({"a": 0.9}, {"a": 0.8, "b": 0.7})
    assert one["n_pairs"] == 1 and one["ci95"] is None and one["wilcoxon_p"] is None


def test_paired_bootstrap_uses_the_same_cases_for_both():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.5, 0.95, 40)
    x = y + rng.normal(0.02, 0.01, 40)
    ci = paired_bootstrap_ci(x, y, samples=1000, seed=4)
    assert ci == paired_bootstrap_ci(x, y, samples=1000, seed=4)
    np.testing.assert_allclose(ci, bootstrap_ci(x - y, samples=1000, seed=4), atol=1e-12)  # = resampling differences
    assert ci[1] - ci[0] < 0.02 and ci[0] < 0.02 < ci[1]
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap_ci(x, y[:-1])


def _row(case, method, dice, fold=None):
    row = {"case_id": case, "label": "lung", "method": method, **{m: 0.5 for m in METRICS}, "dice": dice,
           "iou": dice / (2 - dice), "hd95_mm": math.nan if dice == 0 else 10 * (1 - dice), "volume_diff_ml": 100 * (dice - 0.9)}
    return row if fold is None else {**row, "fold": fold}


def _experiment_files(tmp_path):
    """Test metrics of unet (reference), dense_unet (+0.1 on every case) and two baselines; benchmarks; OOF table."""
    rows = []
    for i, v in enumerate(REF):
        rows += [_row(f"t{i}", "unet", v), _row(f"t{i}", "dense_unet", v + 0.1), _row(f"t{i}", "all_background", 0.0),
                 _row(f"t{i}", "classical_threshold_3d", 0.9)]
    rows.append(_row("t9", "dense_unet", 0.5))  # a case the reference lacks: left out of the pairs
    (tmp_path / "metrics.csv").write_text(rows_to_csv(rows))
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "unet.tsv").write_text(BENCH_HEADER + "3600.5\t1:00:00\t900\t1\t1\t1\t0\t0\t90\t3000\n")
    for k, s in enumerate((1800.0, 2700.0, 900.0)):
        (bench / f"dense_{k}.tsv").write_text(BENCH_HEADER + f"{s}\t0:30:00\t900\t1\t1\t1\t0\t0\t90\t3000\n")
    oof = [_row(f"v{i}", "dense_unet", d, fold=i % 3) for i, d in enumerate([0.9, 0.8, 0.7, 0.95, 0.85, 0.75])]
    oof += [_row(f"v{i}", "all_background", 0.0, fold=i % 3) for i in range(6)]
    (tmp_path / "oof.csv").write_text(rows_to_csv(oof))
    return {"reference": "unet", "experiments": {
        "unet": {"folds": 1, "gpus_per_job": 0, "train_benchmarks": [str(bench / "unet.tsv")], "oof_metrics": None},
        "dense_unet": {"folds": 3, "gpus_per_job": 2, "train_benchmarks": [str(bench / f"dense_{k}.tsv") for k in range(3)],
                       "oof_metrics": str(tmp_path / "oof.csv")}}}


def test_cross_validated_dice_and_training_cost(tmp_path):
    plan = _experiment_files(tmp_path)
    cv = cross_validation(tmp_path / "oof.csv", "dense_unet", 3, samples=200, seed=0)
    assert [f["fold"] for f in cv["folds"]] == [0, 1, 2] and cv["missing_folds"] == []
    assert [f["dice"] for f in cv["folds"]] == [pytest.approx((0.9 + 0.95) / 2), pytest.approx((0.8 + 0.85) / 2),
                                                 pytest.approx((0.7 + 0.75) / 2)]
    assert [f["n"] for f in cv["folds"]] == [2, 2, 2]
    assert cv["pooled"]["mean"] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.95, 0.85, 0.75])) and cv["pooled"]["n"] == 6
    assert cv["method"] == "dense_unet"  # the all_background rows of the table are not the experiment's
    assert cross_validation(tmp_path / "oof.csv", "dense_unet", 4)["missing_folds"] == [3]
    cost = training_cost(plan["experiments"]["dense_unet"]["train_benchmarks"], 2)
    assert cost["jobs"] == 3 and cost["wall_s"] == pytest.approx(5400.0)
    assert cost["gpu_hours"] == pytest.approx(5400.0 / 3600 * 2)
    cpu = training_cost(plan["experiments"]["unet"]["train_benchmarks"], 0)
    assert cpu["wall_s"] == pytest.approx(3600.5) and cpu["gpu_hours"] == 0.0
    with pytest.raises(Exception, match="training benchmark file not found"):
        training_cost([str(tmp_path / "missing.tsv")], 1)
    # GPUs per job as each job's model recorded them (2, 0 and 4 GPUs for the three fold jobs)
    mixed = training_cost(plan["experiments"]["dense_unet"]["train_benchmarks"], [2, 0, 4])
    assert mixed["gpus_per_job"] == [2, 0, 4] and mixed["gpu_hours"] == pytest.approx((1800 * 2 + 900 * 4) / 3600)
    with pytest.raises(Exception, match="has rows without a fold"):
        cross_validation(tmp_path / "metrics.csv", "dense_unet", 3)


def test_compare_cli_writes_the_csv_and_json(tmp_path, capsys):
    plan = _experiment_files(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "out"
    base = ["compare", str(tmp_path / "metrics.csv"), "--bootstrap-samples", "300", "--seed", "5"]
    assert main([*base, "--plan", json.dumps(plan), "--csv", str(out / "c.csv"), "--json", str(out / "c.json")]) == 0
    result = json.loads((out / "c.json").read_text())
    assert list(result["methods"]) == ["unet", "dense_unet", "all_background", "classical_threshold_3d"]
    assert [e["kind"] for e in result["methods"].values()] == ["reference", "experiment", "baseline", "baseline"]
    assert result["metrics"] == list(METRICS) and result["reference"] == "unet"
    assert result["bootstrap"]["samples"] == 300 and result["bootstrap"]["seed"] == 5
    assert result["wilcoxon"]["zero_method"] == "wilcox" and result["wilcoxon"]["alternative"] == "two-sided"
    unet, dense = result["methods"]["unet"], result["methods"]["dense_unet"]
    assert unet["difference"] is None and unet["cross_validation"] is None and unet["folds"] == 1
    assert unet["metrics"]["dice"]["mean"] == pytest.approx(np.mean(REF))
    assert unet["metrics"]["dice"]["ci95"][0] < np.mean(REF) < unet["metrics"]["dice"]["ci95"][1]
    assert dense["metrics"]["dice"]["n"] == 7  # its own mean covers all its cases
    diff = dense["difference"]["dice"]
    assert diff["n_pairs"] == 6 and diff["n_unpaired"] == 1
    assert diff["mean"] == pytest.approx(0.1) and diff["ci95"] == [pytest.approx(0.1), pytest.approx(0.1)]
    assert diff["wilcoxon_p"] == pytest.approx(2 / 2**6)
    assert dense["difference"]["hd95_mm"]["mean"] == pytest.approx(-1.0)
    assert dense["difference"]["volume_diff_ml"]["mean"] == pytest.approx(10.0)
    assert dense["training"]["wall_s"] == pytest.approx(5400.0) and dense["training"]["gpu_hours"] == pytest.approx(3.0)
    assert unet["training"]["gpu_hours"] == 0.0
    assert dense["cross_validation"]["pooled"]["mean"] == pytest.approx(0.825)
    background = result["methods"]["all_background"]
    assert "difference" not in background and background["metrics"]["hd95_mm"]["n_undefined"] == 6
    with open(out / "c.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS and len(table) == 4 * len(METRICS)
    row = next(r for r in table if r["method"] == "dense_unet" and r["metric"] == "dice")
    assert float(row["diff_mean"]) == pytest.approx(0.1) and row["diff_n_pairs"] == "6" and row["folds"] == "3"
    assert float(row["cv_dice"]) == pytest.approx(0.825) and float(row["gpu_hours"]) == pytest.approx(3.0)
    ref_row = next(r for r in table if r["method"] == "unet" and r["metric"] == "dice")
    assert ref_row["kind"] == "reference" and ref_row["diff_mean"] == "" and ref_row["cv_dice"] == ""
    assert "dense_unet (experiment): mean Dice" in capsys.readouterr().out
    # the plan as a file gives the same; the seed makes it reproducible
    assert main([*base, "--plan", str(tmp_path / "plan.json"), "--csv", str(out / "d.csv"), "--json", str(out / "d.json")]) == 0
    assert (out / "d.json").read_text() == (out / "c.json").read_text()
    assert (out / "d.csv").read_text() == (out / "c.csv").read_text()
    other = compare(read_metrics(tmp_path / "metrics.csv"), load_plan(json.dumps(plan)), samples=300, seed=6)
    assert other["methods"]["unet"]["metrics"]["dice"]["ci95"] != unet["metrics"]["dice"]["ci95"]


def test_compare_errors_are_one_line(tmp_path, capsys):
    plan = _experiment_files(tmp_path)
    base = ["compare", str(tmp_path / "metrics.csv"), "--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json")]
    bad = {
        json.dumps({**plan, "reference": "vgg"}): "reference 'vgg' is not one of its experiments",
        json.dumps({"reference": "unet", "experiments": {**plan["experiments"], "vgg16_unet": {"folds": 1}}}):
            r"has no test rows of experiment\(s\) \['vgg16_unet'\]",
        "{not json": "is not valid JSON",
        str(tmp_path / "nope.json"): "cannot be read",
    }
    for spec, reason in bad.items():
        capsys.readouterr()
        assert main([*base, "--plan", spec]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Fix:" in err, err
        assert __import__("re").search(reason, err), err
    assert not (tmp_path / "c.json").exists()


def test_evaluate_fold_adds_a_fold_column_and_feeds_cross_validation(tmp_path):
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ref = np.zeros((6, 20, 20), np.uint8)
    ref[1:5, 4:16, 4:16] = 1
    jsons = []
    for k in range(2):
        pred = np.zeros_like(ref)
        pred[1:5, 4:16, 4 + 4 * k:16] = 1  # fold 0 perfect, fold 1 a third smaller
        write_case(tmp_path / f"v{k}.h5", CaseVolume(f"v{k}", np.zeros(ref.shape, np.int16), geometry, labels={"lung": ref}))
        write_volume(str(tmp_path / f"p{k}.nii.gz"), pred, geometry)
        jsons.append(tmp_path / f"v{k}.json")
        assert main(["evaluate", "--case", str(tmp_path / f"v{k}.h5"), "--pred", f"dense_unet={tmp_path / f'p{k}.nii.gz'}",
                     "--fold", str(k), "-o", str(jsons[-1])]) == 0
    rows = json.loads(jsons[1].read_text())
    assert {r["fold"] for r in rows} == {1} and {r["method"] for r in rows} == {"dense_unet", "all_background"}
    assert main(["aggregate", *map(str, jsons), "--csv", str(tmp_path / "oof.csv"), "--json", str(tmp_path / "s.json"),
                 "--bootstrap-samples", "50"]) == 0
    with open(tmp_path / "oof.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:4] == ["case_id", "label", "method", "fold"]
    assert [(r["method"], r["case_id"], r["fold"]) for r in table][-2:] == [("dense_unet", "v0", "0"), ("dense_unet", "v1", "1")]
    cv = cross_validation(tmp_path / "oof.csv", "dense_unet", 2, samples=50)
    assert [f["dice"] for f in cv["folds"]] == [pytest.approx(1.0), pytest.approx(2 * 8 / (12 + 8))]
    assert cv["pooled"]["mean"] == pytest.approx((1.0 + 0.8) / 2)
    # without --fold nothing changes: no fold key, no fold column
    assert main(["evaluate", "--case", str(tmp_path / "v0.h5"), "--pred", f"unet={tmp_path / 'p0.nii.gz'}",
                 "-o", str(tmp_path / "t.json")]) == 0
    assert all("fold" not in r for r in json.loads((tmp_path / "t.json").read_text()))
    assert "fold" not in rows_to_csv(json.loads((tmp_path / "t.json").read_text())).splitlines()[0]


def test_report_comparison_page_and_paired_figure(tmp_path):
    plan = _experiment_files(tmp_path)
    assert main(["compare", str(tmp_path / "metrics.csv"), "--plan", json.dumps(plan), "--bootstrap-samples", "100",
                 "--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json")]) == 0
    assert main(["report", "comparison", "--json", str(tmp_path / "c.json"), "-o", str(tmp_path / "c.html")]) == 0
    page = (tmp_path / "c.html").read_text()
    for text in ("dense_unet", "unet", "classical_threshold_3d (baseline)", "all_background (baseline)", "Δ Dice vs unet",
                 "+0.100 [+0.100, +0.100]", "zero_method=wilcox", "1:30:00", "Cross-validation: out-of-fold Dice per fold"):
        assert text in page, text
    assert page.index("<td>unet</td>") < page.index("<td>dense_unet</td>") < page.index("classical_threshold_3d (baseline)")
    assert "0.825 [" in comparison_html(json.loads((tmp_path / "c.json").read_text()))  # pooled CV Dice with its CI
    assert main(["report", "paired-dice", "--csv", str(tmp_path / "metrics.csv"), "--reference", "unet",
                 "-o", str(tmp_path / "paired.png")]) == 0
    image = mpimg.imread(tmp_path / "paired.png")
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01
    assert plot_paired(tmp_path / "metrics.csv", "unet", tmp_path / "p2.png") == ["unet", "dense_unet"]  # no baselines
    assert plot_paired(tmp_path / "metrics.csv", "dense_unet", tmp_path / "p3.png",
                       methods=["unet", "classical_threshold_3d"]) == ["dense_unet", "unet", "classical_threshold_3d"]
    assert main(["report", "paired-dice", "--csv", str(tmp_path / "metrics.csv"), "--reference", "vgg",
                 "-o", str(tmp_path / "x.png")]) == 1


def test_baselines_by_name():
    """The classical lung mask (classical_<method>) and the empty prediction are baselines; so is the former
    lungmask_<method> of metrics tables written before the rename; experiments are not."""
    for name in ("all_background", "classical_threshold_3d", "classical_per_slice_otsu", "lungmask_default"):
        assert is_baseline(name), name
    for name in ("unet", "dense_unet", "classical", "arch-unet_lr-0.001"):
        assert not is_baseline(name), name


def test_gpus_per_job_come_from_the_model_files(tmp_path):
    """The workflow's plan names the fold models; each records the GPUs its training ran on."""
    import torch

    from lungseg.training.checkpoint import model_file_state
    from lungseg.training.models import build_model

    model = build_model("unet", base_channels=2, depth=2)
    state = model_file_state(model, arch="unet", model_kwargs={"base_channels": 2, "depth": 2}, label="lung",
                             image_size=32, hu_window=(-1000, 400), epoch=1, val_dice=0.5, gpus=4)
    torch.save(state, tmp_path / "gpu.pt")
    old = {k: v for k, v in state.items() if k != "gpus"}  # a model file from before the field
    torch.save(old, tmp_path / "old.pt")
    assert model_gpus(tmp_path / "gpu.pt") == 4 and model_gpus(tmp_path / "old.pt") == 0
