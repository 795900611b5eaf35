"""Two-stage nodule detection (lungseg.detection): candidates of a probability map as a labelled table and patches,
the candidate head of the classification core, rescoring a scan with the classifier's scores, and the settings."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from lungseg.casefile import CaseVolume, write_case
from lungseg.classification.dataset import NoduleDataset
from lungseg.classification.nodule_table import read_nodule_table, write_nodule_table
from lungseg.classification.patches import read_patches, write_patches
from lungseg.cli import main
from lungseg.detection.settings import CANDIDATE_CLASSIFIER, RESCORED_THRESHOLD, candidate_classifier, two_stage_method
from lungseg.evaluation.detection import find_candidates, label_nodules
from lungseg.geometry import Geometry, read_volume, write_volume
from lungseg.training.config import TrainConfig
from lungseg.workflow_config import ConfigError, check_config

SHAPE = (12, 40, 40)
GEOMETRY = Geometry((0.8, 0.8, 2.0), (-16.0, -16.0, 100.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
SETTINGS = json.dumps({"patch_mm": 20.0, "patch_size": 16})


def _scene(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A case with two reference nodules and a probability map with four candidates: one on each nodule (one of
    them in two pieces: two candidates on one nodule), one on nothing; and the network's mask (p >= 0.5)."""
    image = np.full(SHAPE, -800, np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[4:7, 8:13, 8:13] = 1  # nodule 1 (z-first label order)
    label[5:8, 25:31, 25:31] = 1  # nodule 2
    image[label > 0] = 40
    write_case(tmp_path / "C1.h5", CaseVolume("C1", image, GEOMETRY, labels={"nodule": label}))
    prob = np.zeros(SHAPE, np.uint8)
    prob[4:7, 9:12, 9:12] = 230  # on nodule 1
    prob[5:8, 25:31, 25:28] = 200  # nodule 2, left half
    prob[5:8, 25:31, 29:31] = 60  # nodule 2, right half (a column apart: a second candidate)
    prob[1:3, 30:34, 5:9] = 180  # on no nodule
    prob[10, 2, 2] = 20  # below the candidate threshold (0.1 -> 26)
    write_volume(str(tmp_path / "C1.probabilities.nii.gz"), prob, GEOMETRY)
    write_volume(str(tmp_path / "C1.nii.gz"), (prob >= 128).astype(np.uint8), GEOMETRY)
    return tmp_path / "C1.h5", tmp_path / "C1.probabilities.nii.gz", tmp_path / "C1.nii.gz"


def _candidates(tmp_path: Path, case: Path, prob: Path, *extra: str) -> tuple[list[dict], np.ndarray]:
    patches, table = tmp_path / "C1.patches.h5", tmp_path / "C1.nodules.tsv"
    assert main(["candidates", str(case), "--probabilities", str(prob), "--out-patches", str(patches),
                 "--out-table", str(table), "--settings", SETTINGS, *extra]) == 0
    return read_nodule_table(table), read_patches(patches)[0]


def test_candidates_are_the_froc_components_labelled_against_the_reference(tmp_path: Path) -> None:
    case, prob, _ = _scene(tmp_path)
    rows, patches = _candidates(tmp_path, case, prob)
    assert patches.shape == (4, 3, 16, 16) and [r["nodule"] for r in rows] == [1, 2, 3, 4]
    assert [r["label"] for r in rows] == ["non_nodule", "nodule", "nodule", "nodule"]
    assert all(r["source"] == "candidate" and r["ratings"] == [] for r in rows)
    # the FROC finds the same candidates with the same hits (nodule 1 is reference index 0, ...)
    volume, _ = read_volume(str(prob))
    ref_labels, _ = label_nodules(read_volume(str(tmp_path / "C1.nii.gz"))[0] * 0 + _reference(case))
    froc = find_candidates(volume, ref_labels, 0.1, scale=255)
    assert sorted(h >= 0 for _, h in froc) == sorted(r["label"] == "nodule" for r in rows)
    # centre: the mean of the component's voxels (candidate 1: z 1-2, y 30-33, x 5-8)
    first = rows[0]
    assert (first["centre_x_mm"], first["centre_y_mm"], first["centre_z_mm"]) == pytest.approx(
        (-16 + 6.5 * 0.8, -16 + 31.5 * 0.8, 100 + 1.5 * 2.0), abs=0.01)
    assert first["volume_mm3"] == pytest.approx(2 * 4 * 4 * 0.8 * 0.8 * 2.0, abs=0.1)
    # the patch is centred on the candidate: its axial centre is the bright square's HU? (air here: -800)
    assert patches[1, 0, 8, 8] == 40  # candidate 2 sits on nodule 1 (40 HU)


def _reference(case: Path) -> np.ndarray:
    import h5py

    with h5py.File(case) as f:
        return f["labels/nodule"][()]


def test_with_reference_the_reference_nodules_follow_the_candidates(tmp_path: Path) -> None:
    case, prob, _ = _scene(tmp_path)
    rows, patches = _candidates(tmp_path, case, prob, "--with-reference")
    assert len(rows) == len(patches) == 6 and [r["nodule"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [(r["label"], r["source"]) for r in rows[4:]] == [("nodule", "label")] * 2
    assert rows[4]["centre_x_mm"] == pytest.approx(-16 + 10 * 0.8, abs=0.01)  # nodule 1: x 8-12
    assert patches[4, 0, 8, 8] == 40


def test_a_case_without_a_nodule_label_gives_unlabelled_candidates(tmp_path: Path) -> None:
    image = np.full(SHAPE, -800, np.int16)
    write_case(tmp_path / "C1.h5", CaseVolume("C1", image, GEOMETRY, labels={}))
    prob = np.zeros(SHAPE, np.uint8)
    prob[3:5, 10:14, 10:14] = 255
    write_volume(str(tmp_path / "C1.probabilities.nii.gz"), prob, GEOMETRY)
    rows, patches = _candidates(tmp_path, tmp_path / "C1.h5", tmp_path / "C1.probabilities.nii.gz")
    assert len(rows) == 1 and rows[0]["label"] == "" and len(patches) == 1


def test_a_map_on_another_grid_is_refused_naming_the_file(tmp_path: Path, capsys) -> None:
    case, _, _ = _scene(tmp_path)
    other = tmp_path / "other.nii.gz"
    write_volume(str(other), np.zeros((12, 40, 41), np.uint8), GEOMETRY)
    assert main(["candidates", str(case), "--probabilities", str(other), "--out-patches", str(tmp_path / "x.patches.h5"),
                 "--out-table", str(tmp_path / "x.nodules.tsv")]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "other.nii.gz: is not on the grid" in error[0] and "Fix:" in error[0]
    assert not (tmp_path / "x.nodules.tsv").exists()


def _scores(path: Path, case: str, p: list[float]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["case", "nodule", "p_nodule"])
        writer.writerows([case, i + 1, v] for i, v in enumerate(p))
    return path


def test_rescore_paints_the_classifier_scores_and_keeps_every_candidate_for_the_froc(tmp_path: Path) -> None:
    case, prob, mask = _scene(tmp_path)
    scores = _scores(tmp_path / "scores.tsv", "C1", [0.9, 0.2, 0.0001, 0.7])
    out_mask, out_prob = tmp_path / "r.nii.gz", tmp_path / "r.probabilities.nii.gz"
    assert main(["rescore-candidates", str(case), "--mask", str(mask), "--probabilities", str(prob), "--scores",
                 str(scores), "-o", str(out_mask), "--out-probabilities", str(out_prob)]) == 0
    rescored, geometry = read_volume(str(out_prob))
    assert geometry.spacing == pytest.approx(GEOMETRY.spacing)
    assert rescored[1, 31, 6] == 230 and rescored[5, 28, 9] == 0  # 0.9; outside every candidate
    assert rescored[4, 9, 9] == 51 and rescored[6, 27, 25] == 1  # 0.2; 0.0001 floored to 1/255
    assert rescored[5, 27, 30] == 178 and rescored[10, 2, 2] == 0  # 0.7 (rint 178.5); the sub-threshold voxel stays out
    # the FROC at the rescored threshold: the same four candidates, scored by the classifier
    froc = find_candidates(rescored, label_nodules(_reference(case))[0], RESCORED_THRESHOLD, scale=255)
    assert [round(s, 2) for s, _ in froc] == [0.9, 0.7, 0.2, 0.0] and [h for _, h in froc] == [-1, 1, 0, 1]
    # the mask: the network's mask inside candidates scored >= 0.5 (candidates 1 and 4; 4 is below p 0.5)
    network, kept = read_volume(str(mask))[0], read_volume(str(out_mask))[0]
    assert kept.sum() == network[1:3, 30:34, 5:9].sum() > 0 and not kept[4:8].any()


def test_scores_of_another_candidate_count_are_refused(tmp_path: Path, capsys) -> None:
    case, prob, mask = _scene(tmp_path)
    scores = _scores(tmp_path / "scores.tsv", "C1", [0.9, 0.2, 0.5])
    assert main(["rescore-candidates", str(case), "--mask", str(mask), "--probabilities", str(prob), "--scores",
                 str(scores), "-o", str(tmp_path / "r.nii.gz"), "--out-probabilities", str(tmp_path / "p.nii.gz")]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "scores.tsv: scores 3 candidate(s) of case C1, its probability map has 4" in error[0]
    assert not (tmp_path / "r.nii.gz").exists()


def test_rescore_with_the_product_score_and_with_a_score_choice_file(tmp_path: Path, capsys) -> None:
    case, prob, mask = _scene(tmp_path)
    scores = _scores(tmp_path / "scores.tsv", "C1", [0.9, 0.2, 0.0001, 0.7])
    common = ["rescore-candidates", str(case), "--mask", str(mask), "--probabilities", str(prob), "--scores", str(scores),
              "-o", str(tmp_path / "r.nii.gz"), "--out-probabilities", str(tmp_path / "r.probabilities.nii.gz")]
    assert main([*common, "--score", "product"]) == 0
    rescored = read_volume(str(tmp_path / "r.probabilities.nii.gz"))[0]
    # p_nodule x the candidate's mean first-stage p (each candidate is uniform: 180, 230, 200, 60 / 255)
    assert rescored[1, 31, 6] == round(0.9 * 180) and rescored[4, 9, 9] == round(0.2 * 230)
    assert rescored[6, 27, 25] == 1 and rescored[5, 27, 30] == round(0.7 * 60)
    assert not read_volume(str(tmp_path / "r.nii.gz"))[0][4:8].any()  # 0.635 kept, 0.165 not
    choice = tmp_path / "score.json"
    choice.write_text(json.dumps({"chosen": "product"}))
    assert main([*common, "--score-choice", str(choice)]) == 0
    assert np.array_equal(read_volume(str(tmp_path / "r.probabilities.nii.gz"))[0], rescored)
    choice.write_text(json.dumps({"chosen": "mean"}))
    assert main([*common, "--score-choice", str(choice)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "score.json: names the score 'mean', not one of classifier, product" in error[0]


def _choose(tmp_path: Path, case: Path, prob: Path, p: list[float], *extra: str) -> dict:
    scores = _scores(tmp_path / "validation.scores.tsv", "C1", p)
    out = tmp_path / "score.json"
    assert main(["choose-detection-score", "--case", str(case), "--probabilities", str(prob), "--scores", str(scores),
                 "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_the_score_is_chosen_by_the_validation_froc(tmp_path: Path) -> None:
    case, prob, _ = _scene(tmp_path)
    # the classifier puts the false candidate (1, first-stage p 0.71) above the nodules' (0.90, 0.78, 0.24); times
    # the first stage's mean p the nodule candidates 2 and 3 come first: the product has the higher CPM
    choice = _choose(tmp_path, case, prob, [0.6, 0.55, 0.55, 0.1])
    assert choice["chosen"] == "product" and choice["n_scans"] == 1 and choice["n_nodules"] == 2
    assert choice["froc"]["product"]["cpm"] == 1.0 > choice["froc"]["classifier"]["cpm"]
    assert set(choice["froc"]) == {"first_stage", "classifier", "product"} and "CPM" in choice["reason"]
    # the same ranking by both: a tie goes to the classifier alone
    assert _choose(tmp_path, case, prob, [0.1, 0.9, 0.8, 0.7])["chosen"] == "classifier"
    # set in the configuration: that score, the FROCs still measured
    forced = _choose(tmp_path, case, prob, [0.6, 0.55, 0.55, 0.1], "--score", "classifier")
    assert forced["chosen"] == "classifier" and forced["froc"]["product"]["cpm"] == 1.0


def test_without_validation_nodules_the_classifier_score_is_named(tmp_path: Path) -> None:
    from lungseg.detection.score import choose

    assert choose([])["chosen"] == "classifier" and "no validation nodule" in choose([])["reason"]
    image = np.full(SHAPE, -800, np.int16)
    write_case(tmp_path / "C1.h5", CaseVolume("C1", image, GEOMETRY))  # no nodule label: left out
    write_volume(str(tmp_path / "p.nii.gz"), np.zeros(SHAPE, np.uint8), GEOMETRY)
    choice = _choose(tmp_path, tmp_path / "C1.h5", tmp_path / "p.nii.gz", [])
    assert choice["chosen"] == "classifier" and choice["n_scans"] == 0
    with pytest.raises(SystemExit, match=r"^lungseg choose-detection-score: error: 1 --case file\(s\) but 0 --prob"):
        main(["choose-detection-score", "--case", str(tmp_path / "C1.h5"), "--probabilities", "--scores",
              "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def _candidate_files(folder: Path, n_cases: int, seed: int) -> list[Path]:
    """Candidate patch files: nodules are bright discs, false candidates elongated bright bars (vessels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:16, :16] - 7.5
    files = []
    for c in range(n_cases):
        patches, rows = [], []
        for k in range(8):
            nodule = k % 4 == 0
            shape = np.hypot(yy, xx) <= rng.uniform(3, 5) if nodule else np.abs(yy + rng.uniform(-2, 2)) <= 1.2
            patches.append(np.stack([np.where(shape, 40, -850) + rng.normal(0, 30, (16, 16))] * 3).astype(np.int16))
            rows.append({"case": f"K{c}", "patient": f"K{c}", "nodule": str(k + 1), "centre_x_mm": "0", "centre_y_mm": "0",
                         "centre_z_mm": "0", "diameter_mm": "5", "volume_mm3": "65", "readers": "", "ratings": "",
                         "median_rating": "", "label": "nodule" if nodule else "non_nodule", "pathology": "",
                         "at_edge": "false", "source": "candidate"})
        write_patches(folder / f"K{c}.patches.h5", np.asarray(patches), 20.0, 16)
        write_nodule_table(folder / f"K{c}.nodules.tsv", rows)
        files.append(folder / f"K{c}.patches.h5")
    return files


def test_the_candidate_head_trains_in_the_classification_core_and_classify_reports_p_nodule(tmp_path: Path) -> None:
    from lungseg.training.train import train

    train_files, val_files = _candidate_files(tmp_path / "t", 4, 0), _candidate_files(tmp_path / "v", 2, 1)
    data = NoduleDataset(train_files, ["candidate"], "orthogonal", 16, [-1000, 400])
    assert data.classes == {"candidate": ("non_nodule", "nodule")} and data.class_counts("candidate").tolist() == [24, 8]
    config = TrainConfig(task="classification", cls_task="candidate", class_balance="sampling", arch="resnet18",
                         image_size=16, epochs=3, batch_size=8, lr=3e-3, seed=0, threads=1, device="cpu")
    assert config.heads() == {"candidate": 2}
    model = train(config, train_files, val_files, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv") as f:
        aucs = [float(r["val_auc"]) for r in csv.DictReader(f)]
    assert max(aucs) > 0.9  # discs against bars: the AUC of the candidate head (positive class: nodule)
    out = tmp_path / "scores.tsv"
    assert main(["classify", "--model", str(model), "--patches", *map(str, val_files), "--out", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 16 and "p_nodule" in rows[0] and "p_malignant" not in rows[0]
    nodule = [float(r["p_nodule"]) for r in rows if r["label"] == "nodule"]
    other = [float(r["p_nodule"]) for r in rows if r["label"] == "non_nodule"]
    assert min(nodule) > max(other) - 0.5 and np.mean(nodule) > np.mean(other)
    # --flips all: the mean over the 16 flipped / swapped views of each patch
    import torch

    from lungseg.classification.dataset import model_input, read_case, transform_batch
    from lungseg.classification.predict import FLIP_VIEWS, load_classifiers, predict_probabilities

    models, meta = load_classifiers([model])
    patches, _ = read_case(val_files[0])
    x = model_input(patches, "orthogonal", 16, [-1000, 400])
    by_hand = np.zeros(len(x))
    with torch.no_grad():
        for view in FLIP_VIEWS:
            flipped = transform_batch(x, torch.tensor([view] * len(x)), torch.ones(len(x)))
            by_hand += torch.softmax(models[0](flipped)["candidate"], dim=1)[:, 1].numpy() / 16
    assert len(set(FLIP_VIEWS)) == 16 and not any(FLIP_VIEWS[0])
    assert np.allclose(predict_probabilities(models, meta, patches, batch_size=5, flips=True)["candidate"], by_hand,
                       atol=1e-5)
    plain = predict_probabilities(models, meta, patches)["candidate"]
    assert not np.allclose(plain, by_hand, atol=1e-4)
    flipped_out = tmp_path / "flipped.tsv"
    assert main(["classify", "--model", str(model), "--patches", str(val_files[0]), "--out", str(flipped_out),
                 "--flips", "all"]) == 0
    with open(flipped_out) as f:
        assert np.allclose([float(r["p_nodule"]) for r in csv.DictReader(f, delimiter="\t")], by_hand, atol=2e-6)


def _config(**detection) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    nodule = yaml.safe_load((REPO / "config/nodule.yaml").read_text())
    for key, value in nodule.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    config["detection"] = {"enabled": True, **detection}
    return config


def test_detection_settings_and_their_one_line_errors() -> None:
    schema_path = REPO / "workflow/schemas/config.schema.yaml"
    config = _config(candidates="unet_2d", classifier={"epochs": 7})
    schema = check_config(config, schema_path)
    settings = candidate_classifier(config, schema)[CANDIDATE_CLASSIFIER]
    assert (settings["cls_task"], settings["class_balance"], settings["epochs"], settings["task"]) == (
        "candidate", "sampling", 7, "classification")
    assert settings["image_size"] == config["detection"]["patch_size"] == 64 and two_stage_method("x") == "x_fp_reduced"
    assert candidate_classifier({**config, "detection": {"enabled": False}}, schema) == {}
    check_config(_config(candidates="classical_nodule"), schema_path)  # the classical detector's candidates
    bad = {
        "detection.candidates = nope: not a segmentation experiment .* nor classical_nodule": _config(candidates="nope"),
        "detection.classifier.cls_task = image": _config(classifier={"cls_task": "image"}),
        "detection.enabled needs train.label nodule": {**_config(), "train": {**_config()["train"], "label": "lung"}},
        "detection.classifier: .*epochs": _config(classifier={"epochs": 0}),
    }
    for message, config in bad.items():
        with pytest.raises(ConfigError, match=message):
            check_config(copy.deepcopy(config), schema_path)
