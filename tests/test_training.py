"""lungseg.training: model, preprocessing, losses, dataset, checkpoints, training loop, resume, DDP (gloo)."""

from __future__ import annotations

import csv
import logging
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lungseg.casefile import CaseVolume, write_case
from lungseg.geometry import Geometry
from lungseg.training import train as train_module
from lungseg.training.checkpoint import load_model
from lungseg.training.dataset import SliceDataset, augment_pair
from lungseg.training.losses import bce_dice_loss, dice_score
from lungseg.training.models import UNet, build_model
from lungseg.training.preprocess import logits_to_mask, normalize_hu, resize_mask, to_model_input
from lungseg.training.train import METRICS_FIELDS, TrainConfig, train

# tiny and fast: 18 training slices, 6 validation slices of 48x48 at 32x32
# whole slices (roi none; the default is crop to the lung box): these tests are about the training mechanics
TINY = TrainConfig(base_channels=4, depth=2, image_size=32, epochs=2, batch_size=4, lr=1e-2, seed=0, threads=1,
                   roi="none")


def make_case(path: Path, seed: int, n: int = 6, size: int = 48, label: str = "lung") -> str:
    """A bright disc (random centre / radius per slice) on a dark noisy background, labelled ``label``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(-800.0, 30.0, (n, size, size))
    mask = np.zeros((n, size, size), np.uint8)
    for z in range(n):
        cy, cx = rng.uniform(14, size - 14, 2)
        r = rng.uniform(6, 11)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[z][disc] += 850.0
        mask[z][disc] = 1
    geometry = Geometry((0.8, 0.8, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_case(path, CaseVolume(f"case{seed}", image.astype(np.int16), geometry, labels={label: mask}))
    return str(path)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    d = tmp_path_factory.mktemp("cases")
    return [make_case(d / f"train{i}.h5", i) for i in range(3)], [make_case(d / "val.h5", 99)]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- model


def test_unet_rejects_too_small_input_and_unknown_arch() -> None:
    with pytest.raises(ValueError, match="at least 16 pixels"):
        UNet(base_channels=2, depth=4)(torch.zeros(1, 1, 15, 40))
    with pytest.raises(ValueError, match="valid choices: dense_unet, unet, unet3d, vgg16_unet"):
        build_model("resnet")


# ---------------------------------------------------------------- preprocessing, losses


def test_normalize_hu_clips_and_scales_numpy_and_torch() -> None:
    hu = np.array([-2000, -1000, -300, 400, 3000], dtype=np.int16)
    expected = np.array([0.0, 0.0, 0.5, 1.0, 1.0], dtype=np.float32)
    out = normalize_hu(hu, (-1000, 400))
    assert out.dtype == np.float32 and np.allclose(out, expected)
    out_t = normalize_hu(torch.from_numpy(hu), (-1000.0, 400.0))
    assert out_t.dtype == torch.float32 and torch.allclose(out_t, torch.from_numpy(expected))
    with pytest.raises(ValueError, match="high > low"):
        normalize_hu(hu, (400, -1000))


def test_preprocess_round_trip_restores_original_size() -> None:
    h, w = 100, 140
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 50) ** 2 / 30**2 + (xx - 70) ** 2 / 45**2 <= 1).astype(np.uint8)[None]
    hu = np.where(mask > 0, 0, -1000).astype(np.int16)
    x = to_model_input(hu, 64, (-1000, 400))
    assert x.shape == (1, 1, 64, 64) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    small = resize_mask(mask, 64)
    assert small.shape == (1, 1, 64, 64) and set(small.unique().tolist()) <= {0.0, 1.0}
    back = logits_to_mask((small * 2 - 1) * 10, (h, w))
    assert back.shape == (1, h, w) and back.dtype == np.uint8
    dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
    assert dice > 0.97


def test_losses_perfect_inverted_and_empty() -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    perfect = (target * 2 - 1) * 50
    assert float(bce_dice_loss(perfect, target)) < 1e-3
    assert dice_score(perfect, target) == 1.0
    assert dice_score(-perfect, target) == 0.0
    assert float(bce_dice_loss(-perfect, target)) > 10
    assert dice_score(torch.full_like(target, -5.0), torch.zeros_like(target)) == 1.0  # empty vs empty


# ---------------------------------------------------------------- dataset


def test_dataset_items_pickling_and_augmentation(cases) -> None:
    train_cases, _ = cases
    ds = SliceDataset(train_cases, "lung", 32, (-1000, 400), augment=False)
    assert len(ds) == 18
    image, mask = ds[7]
    assert image.shape == mask.shape == (1, 32, 32)
    assert image.dtype == mask.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and set(mask.unique().tolist()) == {0.0, 1.0}
    clone = pickle.loads(pickle.dumps(ds))  # open handles are not pickled; the copy re-opens lazily
    assert torch.equal(clone[7][0], image)
    ds.close()
    torch.manual_seed(3)
    a = augment_pair(image, mask)
    torch.manual_seed(3)
    b = augment_pair(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0.0, 1.0}


def test_dataset_missing_label_error_names_file_and_labels(tmp_path: Path) -> None:
    path = make_case(tmp_path / "nolabel.h5", 1, label="lung")
    with pytest.raises(ValueError, match=r"nolabel\.h5 has no label 'nodule' \(it has: lung\)"):
        SliceDataset([path], "nodule", 32, (-1000, 400), augment=False)


# ---------------------------------------------------------------- training


def test_train_writes_checkpoint_model_and_metrics(cases, tmp_path: Path) -> None:
    model_path = train(TINY, *cases, tmp_path)
    assert model_path == tmp_path / "model.pt"
    assert (tmp_path / "checkpoint.pt").is_file()
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == METRICS_FIELDS
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    model, meta = load_model(model_path)
    assert not model.training and meta["label"] == "lung" and meta["image_size"] == 32
    assert meta["hu_window"] == (-1000.0, 400.0) and meta["arch"] == "unet"
    raw = torch.load(model_path, weights_only=True)
    assert raw["format"] == "lungseg-model" and raw["model_kwargs"]["base_channels"] == 4
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(ValueError, match="training checkpoint"):
        load_model(tmp_path / "checkpoint.pt")


def test_resume_continues_at_next_epoch_and_keeps_rows(cases, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="lungseg.train")
    train(replace(TINY, epochs=1), *cases, tmp_path)
    first = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(first) == 2
    caplog.clear()
    train(replace(TINY, epochs=2), *cases, tmp_path)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[:2] == first
    assert "at epoch 2/2" in caplog.text and "epoch 1/2 " not in caplog.text
    caplog.clear()
    train(replace(TINY, epochs=2), *cases, tmp_path)  # complete already: nothing to do
    assert "nothing to train" in caplog.text and (tmp_path / "metrics.csv").read_text().splitlines() == lines


def test_a_checkpoint_of_other_training_data_is_not_resumed(cases, tmp_path: Path, caplog) -> None:
    """A training job rerun because its data changed (a case re-ingested) trains again; the same data resumes."""
    import shutil

    caplog.set_level(logging.INFO, logger="lungseg.train")
    train_files = [Path(shutil.copy(p, tmp_path / Path(p).name)) for p in cases[0]]
    train(replace(TINY, epochs=1), train_files, cases[1], tmp_path / "run")
    first = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    assert len(first["data"]) == 16
    caplog.clear()
    train(replace(TINY, epochs=1), train_files, cases[1], tmp_path / "run")  # the same files: done
    assert "nothing to train" in caplog.text
    stat = train_files[0].stat()
    os.utime(train_files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the case rewritten
    caplog.clear()
    train(replace(TINY, epochs=1), train_files, cases[1], tmp_path / "run")
    assert "was written for other training data" in caplog.text and "nothing to train" not in caplog.text
    again = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    assert again["epoch"] == 1 and again["data"] != first["data"]
    assert len((tmp_path / "run/metrics.csv").read_text().splitlines()) == 2  # one epoch, of the new run
    caplog.clear()
    train(replace(TINY, epochs=1), train_files[:-1], cases[1], tmp_path / "run")  # a case left out: starts over too
    assert "was written for other training data" in caplog.text


def test_resume_refuses_a_checkpoint_of_another_setup(cases, tmp_path: Path) -> None:
    train(replace(TINY, epochs=1), *cases, tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"image_size: 32 -> 48.*refusing"):
        train(replace(TINY, image_size=48), *cases, tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_nan_loss_stops_clearly_and_keeps_last_checkpoint(cases, tmp_path: Path, monkeypatch) -> None:
    train(replace(TINY, epochs=1), *cases, tmp_path)
    monkeypatch.setattr(train_module, "get_loss", lambda name: lambda logits, target: logits.mean() * float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 2.*last good checkpoint"):
        train(replace(TINY, epochs=2), *cases, tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len(read_rows(tmp_path / "metrics.csv")) == 1


def test_empty_case_lists_are_rejected(cases, tmp_path: Path) -> None:
    train_cases, val_cases = cases
    with pytest.raises(ValueError, match="no training cases"):
        train(TINY, [], val_cases, tmp_path)
    with pytest.raises(ValueError, match="no validation cases"):
        train(TINY, train_cases, [], tmp_path)


def test_tiny_model_learns_the_bright_disc(cases, tmp_path: Path) -> None:
    # settings checked over seeds 0-9: final val Dice 0.96-0.99 (batch 4 / base 4 vary much more)
    train(replace(TINY, base_channels=8, batch_size=2, epochs=8, lr=1e-2), *cases, tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert float(rows[-1]["val_dice"]) > 0.8
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    _, meta = load_model(tmp_path / "model.pt")
    assert meta["val_dice"] == pytest.approx(max(float(r["val_dice"]) for r in rows), abs=1e-6)


# ---------------------------------------------------------------- command line


def test_cli_single_process_copies_outputs(cases, tmp_path: Path) -> None:
    from lungseg.cli import main

    train_cases, val_cases = cases
    rc = main(["train", "--train", *train_cases, "--val", *val_cases, "--out-dir", str(tmp_path / "run"),
               "--epochs", "1", "--batch-size", "4", "--base-channels", "4", "--depth", "2", "--image-size", "32",
               "--hu-window", "-1000", "400", "--no-augment", "--threads", "1", "--model-out", str(tmp_path / "m" / "model.pt"),
               "--metrics-out", str(tmp_path / "m" / "metrics.csv")])
    assert rc == 0
    assert (tmp_path / "m" / "model.pt").read_bytes() == (tmp_path / "run" / "model.pt").read_bytes()
    assert len(read_rows(tmp_path / "m" / "metrics.csv")) == 1
    assert main(["train", "--train", *train_cases, "--val", *val_cases, "--out-dir", str(tmp_path / "bad"),
                 "--label", "nodule", "--epochs", "1"]) == 1  # clear error, no traceback



def test_per_item_dice_weighs_a_small_object_as_much_as_a_large_one() -> None:
    from lungseg.training.losses import bce_dice_per_item_loss, get_loss

    target = torch.zeros(3, 1, 32, 32)
    target[0, 0, 2:30, 2:30] = 1  # a large object (784 pixels)
    target[1, 0, 15:17, 15:17] = 1  # a small one (4 pixels); item 2 holds none
    confident = torch.where(target > 0, 12.0, -12.0)
    missed_small = confident.clone()
    missed_small[1] = -12.0  # the small object predicted as background
    pooled, per_item = get_loss("bce_dice"), get_loss("bce_dice_per_item")
    assert per_item is bce_dice_per_item_loss
    assert float(per_item(confident, target)) < 1e-3
    # pooled over the batch, missing 4 of 788 pixels costs little (mostly their BCE); per item, half of the Dice
    assert float(pooled(missed_small, target)) < 0.03
    assert float(per_item(missed_small, target)) > 0.3
    # an item without foreground leaves the Dice term to the others (only BCE sees its false positives)
    false_positive = confident.clone()
    false_positive[2, 0, :4, :4] = 12.0
    rise = float(per_item(false_positive, target)) - float(per_item(confident, target))
    bce_rise = float(torch.nn.functional.binary_cross_entropy_with_logits(false_positive, target)
                     - torch.nn.functional.binary_cross_entropy_with_logits(confident, target))
    assert abs(rise - bce_rise) < 1e-4
    # no foreground anywhere: BCE alone, with a gradient for every logit
    empty = torch.zeros(2, 1, 8, 8, requires_grad=True)
    loss = per_item(empty, torch.zeros(2, 1, 8, 8))
    loss.backward()
    assert abs(loss.item() - float(np.log(2))) < 1e-5 and empty.grad is not None
