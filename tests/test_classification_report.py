"""lungseg classification-metrics, classification-compare and report classification on hand-made prediction TSVs."""

from __future__ import annotations

import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from lungseg.classification.predict import COPIED, PROBABILITY_COLUMNS
from lungseg.cli import main
from lungseg.evaluation.classification import (
    cluster_resamples,
    paired_auc_difference,
    roc_auc,
    roc_auc_ci,
    roc_auc_cluster_ci,
)
from lungseg.evaluation.classification_cli import TASKS, classification_metrics
from lungseg.evaluation.classification_compare import compare_classifiers
from lungseg.ingest.errors import IngestError
from lungseg.report.classification import classification_html, load

SAMPLES = 200
COLUMNS = [*COPIED, "p_malignant", "p_pathology_malignant", "models"]


def write_tsv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    lines = ["\t".join(columns)]
    for row in rows:
        full = {"diameter_mm": "8.00", "at_edge": "false", "pathology": "", "models": "5", **row}
        lines.append("\t".join(str(full.get(c, "")) for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def nodules(labels: list[str], probs: list[float], case_prefix: str = "T", per_patient: int = 1,
            pathology: list[str] | None = None) -> list[dict]:
    """One row per label; consecutive rows share a patient in groups of ``per_patient``."""
    rows = []
    for i, (label, p) in enumerate(zip(labels, probs)):
        patient = f"P{case_prefix}{i // per_patient:03d}"
        rows.append({"case": f"{patient}c", "patient": patient, "nodule": i % per_patient + 1, "label": label,
                     "pathology": (pathology or [""] * len(labels))[i], "p_malignant": f"{p:.6f}",
                     "p_pathology_malignant": f"{1 - p:.6f}"})
    return rows


SEPARATED = nodules(["benign"] * 4 + ["malignant"] * 4 + ["indeterminate", ""],
                    [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.5, 0.5],
                    pathology=["benign", "", "", "", "malignant", "", "", "", "", ""])


def test_task_columns_are_those_of_classify() -> None:
    malignancy = {task: column for task, column in PROBABILITY_COLUMNS.items() if task != "candidate"}
    assert {task: column for task, (_, column) in TASKS.items()} == malignancy


def test_metrics_of_separated_and_reversed_predictions(tmp_path: Path) -> None:
    test = write_tsv(tmp_path / "test.tsv", SEPARATED)
    folds = [write_tsv(tmp_path / "f0.tsv", nodules(["benign", "malignant"] * 3, [0.9, 0.1] * 3, "A")),
             write_tsv(tmp_path / "f1.tsv", nodules(["benign", "malignant"] * 3, [0.2, 0.8] * 3, "B"))]
    out = tmp_path / "summary.json"
    assert main(["classification-metrics", "--out-of-fold", *map(str, folds), "--test", str(test), "--out", str(out),
                 "--samples", str(SAMPLES)]) == 0
    result = json.loads(out.read_text())
    image = result["tasks"]["image"]
    t = image["test"]
    assert (t["rows"], t["n"], t["classes"], t["patients"]) == (10, 8, {"benign": 4, "malignant": 4}, 8)
    assert t["excluded"] == {"indeterminate": 1, "unlabelled": 1}
    m = t["metrics"]
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["confusion_matrix"] == [[4, 0], [0, 4]]
    assert m["auc_ci95"] == [1.0, 1.0] and m["auc_ci_resampling"] == "patients"
    assert t["majority_baseline"] == {"predicts": "benign", "accuracy": 0.5, "balanced_accuracy": 0.5, "auc": 0.5}
    folds_out = image["out_of_fold"]["folds"]
    assert [f["fold"] for f in folds_out] == [0, 1]
    assert folds_out[0]["metrics"]["auc"] == 0.0 and folds_out[0]["metrics"]["accuracy"] == 0.0  # reversed
    assert folds_out[1]["metrics"]["auc"] == 1.0
    pooled = image["out_of_fold"]["pooled"]
    # pooled pairs: malignant 0.1 or 0.8 against benign 0.9 or 0.2: only 0.8 > 0.2 is ordered right -> 1/4
    assert pooled["n"] == 12 and pooled["metrics"]["auc"] == pytest.approx(0.25)
    # pathology: its own target column and probability; empty pathology left out and counted
    path = result["tasks"]["pathology"]["test"]
    assert path["n"] == 2 and path["excluded"] == {"unlabelled": 8}
    assert path["metrics"]["auc"] == 0.0  # p_pathology_malignant = 1 - p: reversed
    assert result["bootstrap"]["resampling"].startswith("patients")


def test_one_class_and_empty_sets_are_reported_not_errors(tmp_path: Path) -> None:
    one = write_tsv(tmp_path / "one.tsv", nodules(["malignant"] * 3, [0.2, 0.7, 0.9]),
                    [c for c in COLUMNS if c != "p_pathology_malignant"])
    empty = write_tsv(tmp_path / "empty.tsv", [], [c for c in COLUMNS if c != "p_pathology_malignant"])
    result = classification_metrics([empty], one, samples=SAMPLES)
    assert list(result["tasks"]) == ["image"]  # only the task whose column is there
    t = result["tasks"]["image"]["test"]
    assert t["metrics"]["auc"] is None and t["metrics"]["auc_ci95"] is None
    assert t["metrics"]["sensitivity"] == pytest.approx(2 / 3) and t["metrics"]["specificity"] is None
    assert "one class only" in t["note"] and t["majority_baseline"]["auc"] is None
    fold = result["tasks"]["image"]["out_of_fold"]["folds"][0]
    assert fold["n"] == 0 and fold["metrics"] is None and "no benign or malignant" in fold["note"]
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("case\tnodule\n")
    with pytest.raises(IngestError, match="lacks the column"):
        classification_metrics([], bad)
    test = write_tsv(tmp_path / "t.tsv", nodules(["benign", "malignant"], [0.1, 0.9]))
    fold = write_tsv(tmp_path / "f.tsv", nodules(["benign"], [0.1]), [c for c in COLUMNS if c != "p_pathology_malignant"])
    with pytest.raises(IngestError, match="task"):
        classification_metrics([fold], test)


def test_cluster_bootstrap_keeps_a_patients_nodules_together() -> None:
    # 4 patients x 10 nodules, one class and one score per patient: the rows are not independent
    patients = np.repeat(["A", "B", "C", "D"], 10)
    y = np.repeat([1, 1, 0, 0], 10)
    p = np.repeat([0.9, 0.4, 0.6, 0.1], 10)
    for idx in cluster_resamples(patients, samples=50, seed=1):
        counts = Counter(idx.tolist())
        for k in "ABCD":
            members = np.flatnonzero(patients == k)
            assert len({counts.get(int(i), 0) for i in members}) == 1  # all of a patient's nodules, or none
        assert len(idx) % 10 == 0
    cluster = roc_auc_cluster_ci(y, p, patients, samples=500)
    rows = roc_auc_ci(y, p, samples=500)
    # resampling 4 patients is far less certain than resampling 40 "independent" nodules
    assert cluster[1] - cluster[0] >= 0.5
    assert rows[1] - rows[0] < 0.5 * (cluster[1] - cluster[0])
    assert roc_auc_cluster_ci(y, p, ["A"] * 40, samples=50) is None  # one patient: no CI


def test_cluster_ci_is_the_percentile_of_the_resampled_aucs() -> None:
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 45), np.round(rng.random(45), 1)  # ties within and across classes
    patients = [f"P{i // 3}" for i in range(45)]
    aucs = np.array([roc_auc(y[idx], p[idx]) for idx in cluster_resamples(patients, samples=300, seed=5)])
    expected = np.percentile(aucs[np.isfinite(aucs)], [2.5, 97.5])
    assert roc_auc_cluster_ci(y, p, patients, samples=300, seed=5) == pytest.approx(tuple(expected), abs=1e-12)


def test_paired_difference_sign() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 3)
    good = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9] * 3)
    poor = np.array([0.6, 0.2, 0.7, 0.4, 0.1, 0.7, 0.3, 0.9] * 3)
    patients = [f"P{i}" for i in range(len(y))]
    worse = paired_auc_difference(y, poor, good, patients, samples=SAMPLES)
    assert worse["difference"] < 0 and worse["ci95"][1] < 0 and worse["p_value"] < 0.05
    better = paired_auc_difference(y, good, poor, patients, samples=SAMPLES)
    assert better["difference"] == pytest.approx(-worse["difference"]) and better["ci95"][0] > 0
    same = paired_auc_difference(y, good, good, patients, samples=SAMPLES)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def _experiment(tmp_path: Path, name: str, rows: list[dict]) -> tuple[Path, Path]:
    test = write_tsv(tmp_path / f"{name}.test.tsv", rows)
    fold = write_tsv(tmp_path / f"{name}.fold0.tsv", nodules(["benign", "malignant"] * 2, [0.3, 0.6] * 2, "F"))
    summary = tmp_path / f"{name}.json"
    summary.write_text(json.dumps(classification_metrics([fold], test, samples=SAMPLES)))
    return summary, test


def test_comparison_sign_and_refusal_of_another_test_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = ["benign", "malignant"] * 8
    good = _experiment(tmp_path, "good", nodules(labels, [0.2, 0.8] * 8, per_patient=2))
    poor = _experiment(tmp_path, "poor", nodules(labels, [0.2, 0.8, 0.9, 0.1] * 4, per_patient=2))
    result = compare_classifiers([good[0], poor[0]], [good[1], poor[1]], ["good", "poor"], "good", samples=SAMPLES)
    d = result["experiments"]["poor"]["tasks"]["image"]["difference"]
    # poor: malignant 0.8 or 0.1 against benign 0.2 or 0.9: only 0.8 > 0.2 is ordered right -> AUC 1/4
    assert d["auc_reference"] == 1.0 and d["auc"] == pytest.approx(0.25) and d["difference"] == pytest.approx(-0.75)
    assert d["patients"] == 8 and d["ci95"][1] <= 0
    assert result["experiments"]["good"]["tasks"]["image"]["difference"] is None
    assert result["experiments"]["good"]["tasks"]["image"]["summary"]["test_auc"] == 1.0
    other = _experiment(tmp_path, "other", nodules(labels[:-1], [0.2, 0.8] * 7 + [0.2], per_patient=2))
    out = tmp_path / "comparison.json"
    rc = main(["classification-compare", "--summaries", str(good[0]), str(other[0]), "--test-predictions",
               str(good[1]), str(other[1]), "--names", "good", "other", "--reference", "good", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "different test set" in err and err.count("\n") == 1 and not out.exists()


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter = Counter()
        self.headings: list[str] = []
        self._in_h3 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] += 1
        self._in_h3 = tag == "h3"

    def handle_data(self, data: str) -> None:
        if self._in_h3:
            self.headings.append(data)
            self._in_h3 = False


def test_report_page_has_every_section_and_no_paths(tmp_path: Path) -> None:
    labels = ["benign", "malignant"] * 6
    ref = _experiment(tmp_path, "resnet18_processes-1", nodules(labels, [0.3, 0.7] * 6, per_patient=2))
    two = _experiment(tmp_path, "resnet18_processes-2", nodules(labels, [0.3, 0.7, 0.8, 0.2] * 3, per_patient=2))
    names = ["resnet18_processes-1", "resnet18_processes-2"]
    comparison = tmp_path / "comparison.json"
    comparison.write_text(json.dumps(compare_classifiers([ref[0], two[0]], [ref[1], two[1]], names, names[0],
                                                         samples=SAMPLES)))
    csvs = []
    for i, seconds in enumerate((4.0, 3.0, 2.5)):  # two folds of processes-1, one run of processes-2
        csvs.append(tmp_path / f"metrics{i}.csv")
        csvs[-1].write_text(f"epoch,train_loss,images_per_s,epoch_seconds\n1,0.7,100.0,{seconds}\n2,0.6,110.0,{seconds}\n")
    out = tmp_path / "classification.html"
    assert main(["report", "classification", "--summaries", str(ref[0]), str(two[0]), "--test-predictions", str(ref[1]),
                 str(two[1]), "--names", *names, "--comparison", str(comparison), "--training-metrics", *map(str, csvs),
                 "--training-names", names[0], *names, "--out", str(out)]) == 0
    page = out.read_text()
    parser = _Parser()
    parser.feed(page)
    assert parser.headings == ["Experiments", "ROC curves (test)", "Confusion matrices (test)", "Calibration (test)",
                               "Paired comparison", "Test nodules", "Training time"]
    assert parser.tags["img"] == 3  # ROC per experiment + reliability
    assert parser.tags["table"] == 6  # experiments, folds, confusion, comparison, nodules, training
    assert "Δ AUC vs resnet18_processes-1" in page and "p malignant: resnet18_processes-2 (image)" in page
    # experiment, runs, epochs, mean epoch s, mean images/s, summed s
    assert ('<tr><td>resnet18_processes-1</td><td class="num">2</td><td class="num">4</td><td class="num">3.500</td>'
            '<td class="num">105.000</td><td class="num">14.000</td></tr>') in page
    assert '<tr><td>resnet18_processes-2</td><td class="num">1</td><td class="num">2</td><td class="num">2.500</td>' in page
    for needle in (str(tmp_path), ".tsv", ".h5", ".csv", ".json"):
        assert needle not in page


def test_report_renders_an_empty_and_a_one_class_test_set(tmp_path: Path) -> None:
    empty = _experiment(tmp_path, "empty", [])
    one = _experiment(tmp_path, "one", nodules(["benign"] * 3, [0.1, 0.2, 0.3]))
    for summary, test in (empty, one):
        page = classification_html(**load([summary], [test], ["x"], None, [], []))
        assert "No comparison" in page and "No training metrics" in page
    assert "The test cases hold no nodule" in classification_html(**load([empty[0]], [empty[1]], ["x"], None, [], []))
    assert "one class only" in classification_html(**load([one[0]], [one[1]], ["x"], None, [], []))


@pytest.mark.parametrize("command", [["classification-metrics"], ["classification-compare"], ["report", "classification"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
