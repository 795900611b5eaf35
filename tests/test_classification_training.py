"""Nodule classification in the one training core: classifiers, soft / hard parameter sharing, the nodule
dataset, the plateau schedule with resume, DDP equivalence, prediction and a learnability check."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungseg.classification.dataset import NoduleDataset, augment_planes, table_of, transform_batch, transform_planes
from lungseg.classification.models import Classifier, build_classifier
from lungseg.classification.nodule_table import read_nodule_table, write_nodule_table
from lungseg.classification.predict import load_classifiers, predict_probabilities
from lungseg.classification.soft_sharing import INIT, CrossStitchClassifier
from lungseg.classification.synthetic import write_synthetic_cases
from lungseg.training.checkpoint import load_model
from lungseg.training.optim import LRSchedule
from lungseg.training.tasks import CLASSIFICATION_FIELDS, masked_cross_entropy
from lungseg.training.train import TrainConfig, train

TINY = TrainConfig(task="classification", arch="resnet18", image_size=32, epochs=2, batch_size=8, lr=1e-3, seed=0,
                   threads=1, device="cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    d = tmp_path_factory.mktemp("nodules")
    return (write_synthetic_cases(d / "train", 4, 4, seed=1, pathology_share=0.5),
            write_synthetic_cases(d / "val", 2, 4, seed=2, prefix="VAL", pathology_share=1.0))


# ---------------------------------------------------------------- classifiers


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
def test_classifier_outputs_and_one_channel_input(backbone: str) -> None:
    three = build_classifier(backbone, in_channels=3, heads={"image": 3}, dropout=0.3).eval()
    one = build_classifier(backbone, in_channels=1, heads={"image": 2}).eval()
    with torch.no_grad():
        assert three(torch.rand(2, 3, 32, 32))["image"].shape == (2, 3)
        assert one(torch.rand(2, 1, 32, 32))["image"].shape == (2, 2)
    first = next(m for m in one.encoder.stem.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and first.weight.shape[1] == 1  # rebuilt, not a repeated grey image
    assert three.head.dropout.p == 0.3
    with pytest.raises(ValueError, match=r"expects \(N, 1, S, S\)"):
        one(torch.rand(2, 3, 32, 32))


def test_soft_sharing_keeps_stems_apart_and_learns_the_combinations() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", heads={"image": 2, "pathology": 2}, norm="group", sharing="soft")
    assert isinstance(model, CrossStitchClassifier)
    a, b = ({id(p) for p in branch.parameters()} for branch in model.branches)
    assert not a & b  # no parameter shared between the task networks, stems included
    stems = [{p.data_ptr() for p in branch.stem.parameters()} for branch in model.branches]
    assert not stems[0] & stems[1]
    x, y = torch.rand(8, 3, 32, 32), torch.tensor([[0, 1], [1, -1], [0, -1], [1, 0]] * 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        loss = masked_cross_entropy(model(x), y, ["image", "pathology"])
        loss.backward()
        grads = [s.weight.grad for s in model.stitches.values()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        opt.step()
    for weights in model.combination_weights().values():
        assert not torch.allclose(weights, torch.tensor(INIT))


def test_hard_sharing_is_one_backbone_with_two_heads() -> None:
    model = build_classifier("mobilenet_v2", heads={"image": 2, "pathology": 2}, sharing="hard")
    assert isinstance(model, Classifier) and set(model.head.fc) == {"image", "pathology"}
    out = model(torch.rand(2, 3, 32, 32))
    for task in ("image", "pathology"):  # each task's loss reaches the one backbone
        model.zero_grad()
        out[task].sum().backward(retain_graph=True)
        assert all(p.grad is not None for p in model.encoder.parameters())


def test_masked_cross_entropy_ignores_missing_labels() -> None:
    logits = {"image": torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
              "pathology": torch.tensor([[0.5, -0.5], [0.0, 0.0], [3.0, 0.0]], requires_grad=True)}
    target = torch.tensor([[0, -1], [1, -1], [-1, -1]])
    expected = F.cross_entropy(logits["image"][:2], torch.tensor([0, 1]))
    loss = masked_cross_entropy(logits, target, ["image", "pathology"])
    assert torch.isclose(loss, expected)
    loss.backward()
    assert torch.count_nonzero(logits["pathology"].grad) == 0  # no pathology label: no pull on that head
    weighted = masked_cross_entropy(logits, torch.tensor([[0, 1], [1, 1], [0, 0]]), ["image", "pathology"],
                                    {"image": torch.tensor([1.0, 3.0]), "pathology": torch.tensor([1.0, 1.0])})
    w_image = F.cross_entropy(logits["image"], torch.tensor([0, 1, 0]), weight=torch.tensor([1.0, 3.0]))
    p = F.cross_entropy(logits["pathology"], torch.tensor([1, 1, 0]))
    assert torch.isclose(weighted, w_image + p)


# ---------------------------------------------------------------- data


def _case_with_labels(folder: Path, labels: list[str], pathology: list[str]) -> Path:
    (path,) = write_synthetic_cases(folder, 1, len(labels), seed=5, prefix="LAB")
    table = path.with_name("LAB-000.nodules.tsv")
    rows = [{k: str(v) for k, v in r.items()} for r in read_nodule_table(table)]
    for row, label, path_label in zip(rows, labels, pathology):
        row.update(label=label, pathology=path_label, readers="", ratings="", median_rating="", at_edge="false")
    write_nodule_table(table, rows)
    return path


def test_label_protocol_planes_and_windowing(tmp_path: Path) -> None:
    path = _case_with_labels(tmp_path, ["benign", "malignant", "indeterminate", "", "malignant"],
                             ["", "malignant", "benign", "benign", ""])
    common = {"image_size": 16, "hu_window": (-1000.0, 400.0)}
    image = NoduleDataset([path], ["image"], "orthogonal", **common)
    assert image.targets[:, 0].tolist() == [0, 1, 1] and len(image) == 3  # indeterminate and unrated left out
    third = NoduleDataset([path], ["image"], "axial", indeterminate="class", **common)
    assert third.classes["image"] == ("benign", "indeterminate", "malignant")
    assert third.targets[:, 0].tolist() == [0, 2, 1, 2] and third[0][0].shape == (1, 16, 16)
    both = NoduleDataset([path], ["image", "pathology"], "orthogonal", **common)
    assert both.targets.tolist() == [[0, -1], [1, 1], [-1, 0], [-1, 0], [1, -1]]
    x = both[0][0]
    assert x.shape == (3, 16, 16) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    augmented = NoduleDataset([path], ["image", "pathology"], "orthogonal", augment=True, **common)
    augmented.set_epoch_seed(3)
    batch = augmented.__getitems__([4, 0, 2])  # the DataLoader's batched fetch: each item as if fetched alone
    for (item, target), i in zip(batch, (4, 0, 2)):
        alone, alone_target = augmented[i]
        assert torch.allclose(item, alone, atol=1e-6) and torch.equal(target, alone_target)
    assert not torch.allclose(batch[1][0], x)  # augmented


def test_augmentation_is_one_3d_transform_and_seeded() -> None:
    n, c = 9, 4
    vol = torch.rand(n, n, n)  # [z, y, x]
    planes = torch.stack([vol[c], vol[:, c, :], vol[:, :, c]])

    def planes_of(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([v[c], v[:, c, :], v[:, :, c]])

    assert torch.equal(transform_planes(planes, flip_x=True), planes_of(vol.flip(2)))
    assert torch.equal(transform_planes(planes, flip_y=True), planes_of(vol.flip(1)))
    assert torch.equal(transform_planes(planes, flip_z=True), planes_of(vol.flip(0)))
    assert torch.equal(transform_planes(planes, swap_xy=True), planes_of(vol.transpose(1, 2)))
    assert torch.equal(transform_planes(planes[:1], flip_x=True, swap_xy=True), planes_of(vol.flip(2).transpose(1, 2))[:1])
    same = [augment_planes(planes, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*same)
    assert not torch.equal(same[0], augment_planes(planes, torch.Generator().manual_seed(8)))

    # a batch of items with different transforms at once: each item as its own 3-D transform
    flags = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    expected = [vol.flip(2), vol.flip(1).flip(0), vol.flip(2).flip(1).transpose(1, 2), vol.flip(0).transpose(1, 2)]
    batch = transform_batch(torch.stack([planes] * 4), flags, torch.ones(4))
    for item, v in zip(batch, expected):
        assert torch.equal(item, planes_of(v))
    scales = torch.tensor([0.9, 1.0, 1.07, 1.1])
    zoomed = transform_batch(torch.stack([planes] * 4), flags, scales)
    for k in range(4):
        alone = transform_planes(planes, *flags[k].tolist(), scale=float(scales[k]))
        assert torch.allclose(zoomed[k], alone, atol=1e-6)


def test_a_class_without_examples_is_one_clear_error(tmp_path: Path) -> None:
    path = _case_with_labels(tmp_path, ["benign", "benign", ""], ["", "", ""])
    with pytest.raises(ValueError, match=r"no 'malignant' nodules for the image task \(labelled nodules per class: "
                                         r"benign 2, malignant 0") as err:
        train(TINY, [path], [path], tmp_path / "run")
    assert len(str(err.value).splitlines()) == 1


def test_settings_of_the_other_task_are_refused() -> None:
    with pytest.raises(ValueError, match="arch resnet18 is a classifier; use task classification"):
        TrainConfig(arch="resnet18").validate()
    with pytest.raises(ValueError, match="task classification needs a classifier arch"):
        TrainConfig(task="classification").validate()
    with pytest.raises(ValueError, match="mixup is a segmentation setting"):
        replace(TINY, mixup=0.2).validate()


# ---------------------------------------------------------------- schedule


def test_plateau_schedule_matches_torch_reduce_lr_on_plateau() -> None:
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2, min_lr=0.02)
    mine = LRSchedule("plateau", 0.1, 0.02, epochs=len(losses), patience=2, factor=0.5)
    for epoch, loss in enumerate(losses):
        assert mine.lr(epoch) == pytest.approx(opt.param_groups[0]["lr"]), epoch
        reference.step(loss)
        mine.step(epoch, loss)
    assert mine.lr(len(losses)) == pytest.approx(0.025) == pytest.approx(opt.param_groups[0]["lr"])


# ---------------------------------------------------------------- the training loop


def test_train_classify_and_ensemble(cohort, tmp_path: Path) -> None:
    from lungseg.cli import main

    train_files, val_files = cohort
    model_path = train(TINY, train_files, val_files, tmp_path / "run")
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert tuple(rows[0]) == CLASSIFICATION_FIELDS and len(rows) == 2
    model, meta = load_model(model_path)
    assert meta["task"] == "classification" and meta["score"]["metric"] == "val_auc"
    assert meta["score"]["value"] == pytest.approx(max(float(r["val_auc"]) for r in rows), abs=1e-6)
    assert meta["classification"]["heads"] == {"image": ["benign", "malignant"]}
    out = tmp_path / "pred.tsv"
    patches, table = val_files[0], val_files[0].with_name("VAL-000.nodules.tsv")
    assert main(["classify", "--model", str(model_path), str(model_path), "--patches", str(patches),
                 "--table", str(table), "--out", str(out)]) == 0
    pred = read_rows(out)
    assert [r["nodule"] for r in pred] == [r["nodule"] for r in read_rows(table)]
    assert all(0.0 <= float(r["p_malignant"]) <= 1.0 and r["models"] == "2" for r in pred)
    # the ensemble is the mean of its members' probabilities
    from lungseg.classification.dataset import read_case

    hu, _ = read_case(patches)
    models, meta = load_classifiers([model_path])
    other = build_classifier("resnet18", **{k: v for k, v in meta["model_kwargs"].items() if k != "sharing"}).eval()
    one, two = predict_probabilities(models, meta, hu)["image"], predict_probabilities([other], meta, hu)["image"]
    both = predict_probabilities([models[0], other], meta, hu)["image"]
    assert np.allclose(both, (one + two) / 2)
    assert np.allclose(one, [float(r["p_malignant"]) for r in pred], atol=1e-6)
    # several cases in one call (tables beside their patch files): the cases' rows one after the other
    many = tmp_path / "many.tsv"
    assert main(["classify", "--model", str(model_path), str(model_path), "--patches", *map(str, val_files[:2]),
                 "--out", str(many)]) == 0
    rows = read_rows(many)
    assert [r["case"] for r in rows] == [r["case"] for f in val_files[:2] for r in read_rows(table_of(f))]
    assert rows[: len(pred)] == pred
    assert main(["classify", "--model", str(model_path), "--patches", *map(str, val_files[:2]), "--table",
                 str(table), "--out", str(many)]) != 0


def test_two_task_soft_sharing_with_plateau_resumes_exactly(cohort, tmp_path: Path) -> None:
    train_files, val_files = cohort
    config = replace(TINY, arch="mobilenet_v2", cls_task="both", sharing="soft", scheduler="plateau", plateau_patience=0,
                     lr=0.05, optimizer="sgd", epochs=3, class_balance="loss")
    train(config, train_files, val_files, tmp_path / "full")
    train(replace(config, epochs=2), train_files, val_files, tmp_path / "resumed")
    train(config, train_files, val_files, tmp_path / "resumed")
    full, resumed = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "resumed"))
    # epoch 3 brought no lower validation loss than epoch 2 (restored from the checkpoint): the rate was cut
    assert full["scheduler"]["kind"] == "plateau" and full["scheduler"]["current"] == pytest.approx(0.025)
    assert full["scheduler"] == resumed["scheduler"]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    rows = read_rows(tmp_path / "full" / "metrics.csv")
    assert all(r["val_auc_pathology"] != "nan" and r["val_auc_image"] != "nan" for r in rows)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == [float(r["lr"]) for r in read_rows(tmp_path / "resumed" / "metrics.csv")]


def test_ddp_two_processes_equal_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    # 4 training nodules: one step of 2 x 2 under DDP, one step of 4 in one process (GroupNorm: per sample)
    (train_file,) = write_synthetic_cases(tmp_path / "train", 1, 4, seed=3, malignant_share=0.5)
    (val_file,) = write_synthetic_cases(tmp_path / "val", 1, 4, seed=4, prefix="VAL", malignant_share=0.5)
    if min(NoduleDataset([train_file], ["image"], "orthogonal", 32, (-1000, 400)).class_counts("image")) == 0:
        pytest.fail("fixture needs both classes")
    opts = ["--task", "classification", "--arch", "resnet18", "--norm", "group", "--optimizer", "sgd", "--lr", "0.1",
            "--epochs", "1", "--image-size", "32", "--device", "cpu", "--threads", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "lungseg", "train", "--train", str(train_file), "--val", str(val_file), "--out-dir", str(tmp_path / "ddp"),
           *opts, "--batch-size", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = replace(TINY, norm="group", optimizer="sgd", lr=0.1, epochs=1, batch_size=4)
    train(config, [train_file], [val_file], tmp_path / "single")
    ddp, single = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("ddp", "single"))
    torch.manual_seed(0)
    init = build_classifier("resnet18", norm="group").state_dict()
    moved = 0
    for key, value in single.items():
        assert torch.allclose(ddp[key], value, rtol=1e-4, atol=1e-6), key
        moved += not torch.equal(value, init[key])
    assert moved > len(single) // 2
    ddp_row, single_row = (read_rows(tmp_path / d / "metrics.csv")[0] for d in ("ddp", "single"))
    assert ddp_row["val_auc"] == single_row["val_auc"] and ddp_row["train_loss"] == single_row["train_loss"]


def test_resnet18_beats_the_majority_baseline_on_auc(tmp_path: Path) -> None:
    """Learnability on synthetic nodules (class = size and rim): the majority-class baseline's AUC is 0.5."""
    train_files = write_synthetic_cases(tmp_path / "train", 12, 4, seed=11)
    val_files = write_synthetic_cases(tmp_path / "val", 6, 4, seed=12, prefix="VAL")
    config = replace(TINY, epochs=3, batch_size=8, norm="group", optimizer="adam", lr=1e-3)
    train(config, train_files, val_files, tmp_path / "run")
    best = max(float(r["val_auc"]) for r in read_rows(tmp_path / "run" / "metrics.csv"))
    assert best > 0.75  # on three other synthetic cohorts of this size: best validation AUC 0.73-0.95


def test_classify_refuses_a_segmentation_model_and_a_missing_table(cohort, tmp_path: Path, capsys) -> None:
    from lungseg.cli import main
    from lungseg.training.checkpoint import model_file_state, save_checkpoint
    from lungseg.training.models import build_model

    seg = tmp_path / "seg.pt"
    save_checkpoint(seg, model_file_state(build_model("unet", base_channels=2, depth=2), arch="unet",
                                          model_kwargs={"base_channels": 2, "depth": 2}, label="lung", image_size=32,
                                          hu_window=(-1000, 400), epoch=1, val_dice=0.5))
    patches = cohort[1][0]
    args = ["--patches", str(patches), "--table", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "p.tsv")]
    assert main(["classify", "--model", str(seg), *args]) == 1
    assert "is a segmentation model file" in capsys.readouterr().err
    cls = train(replace(TINY, epochs=1), *cohort, tmp_path / "run")
    capsys.readouterr()  # the progress bar
    assert main(["classify", "--model", str(cls), *args]) == 1
    err = capsys.readouterr().err
    assert "none.tsv" in err and "not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.tsv").exists()


def test_a_damaged_classifier_file_is_diagnosed_by_its_weights_not_as_an_unknown_architecture(cohort, tmp_path: Path):
    from lungseg.inference.model import load_predictor
    from lungseg.ingest.errors import IngestError
    from lungseg.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(train(replace(TINY, epochs=1), *cohort, tmp_path / "run"))
    name, weight = next((k, v) for k, v in state["state_dict"].items() if v.ndim == 4)
    state["state_dict"][name] = torch.zeros(weight.shape[0] + 1, *weight.shape[1:])
    save_checkpoint(tmp_path / "damaged.pt", state)
    with pytest.raises(IngestError, match=f"weight '{name}' has shape") as err:
        load_predictor(tmp_path / "damaged.pt")
    assert "does not have" not in str(err.value)


def test_persistent_loader_workers_see_each_epochs_seed(cohort, tmp_path: Path) -> None:
    """Loader workers are kept between epochs (persistent); the augmentation seed of each epoch reaches them, so
    training with 2 workers gives the weights of training in the main process."""
    train_files, val_files = cohort
    weights = {}
    for workers in (0, 2):
        config = dataclasses.replace(TINY, num_workers=workers, epochs=3)
        train(config, train_files, val_files, tmp_path / f"workers{workers}")
        weights[workers] = torch.load(tmp_path / f"workers{workers}/model.pt", weights_only=True)["state_dict"]
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
