"""Training features in one process: schedule, sampling, partitions, ROI, mixup, AMP path, freezing,
federated averaging with one client, stopping on SIGTERM mid-epoch and resuming exactly, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import make_case, read_rows
from torch.utils.data import DistributedSampler

from lungseg.training import train as train_module
from lungseg.training.checkpoint import load_model
from lungseg.training.dataset import SliceDataset
from lungseg.training.distributed import DistEnv, DistributedSetupError, available_cpus, select_device
from lungseg.training.losses import fscore_sum, get_loss
from lungseg.training.models import build_model
from lungseg.training.optim import lr_at
from lungseg.training.preemption import REQUEUE_EXIT_CODE, TrainingInterrupted
from lungseg.training.sampling import SliceSampler, oversampling_weights, partition_clients
from lungseg.training.train import TrainConfig, seed_everything, train

# whole slices (roi none; the default is crop to the lung box): these tests are about the training mechanics
TINY = TrainConfig(base_channels=4, depth=2, image_size=32, epochs=2, batch_size=4, lr=1e-2, seed=0, threads=1,
                   roi="none")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    d = tmp_path_factory.mktemp("cases")
    return [make_case(d / f"train{i}.h5", i) for i in range(3)], [make_case(d / "val.h5", 99)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def signal_at_call(monkeypatch, n: int, sig: int = signal.SIGTERM) -> None:
    """Make the training loss send ``sig`` to this process on its ``n``-th call (= during step ``n``)."""
    calls = {"n": 0}

    def patched(name: str):
        loss = get_loss(name)

        def wrapped(logits, target):
            calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
            if calls["n"] == n and torch.is_grad_enabled():
                os.kill(os.getpid(), sig)
            return loss(logits, target)

        return wrapped

    monkeypatch.setattr(train_module, "get_loss", patched)


# ---------------------------------------------------------------- schedule, sampling, partitions


def test_lr_schedule_reproduces_seed_000_table_4() -> None:
    table4 = [1e-5, 1e-4, 9.62e-5, 8.55e-5, 6.94e-5, 5.05e-5, 3.16e-5, 1.55e-5, 4.77e-6, 1e-6]
    got = [lr_at(e, 10, 1e-4, 1e-6, warmup_epochs=1) for e in range(10)]
    assert got == pytest.approx(table4, rel=5e-3)
    assert lr_at(0, 1, 0.1, 0.0) == 0.1 and lr_at(4, 5, 0.1, 0.0) == 0.0


def test_slice_sampler_matches_distributed_sampler_skips_and_oversamples() -> None:
    data = list(range(10))
    for rank in (0, 1):
        ours, ref = SliceSampler(data, 2, rank, seed=3), DistributedSampler(data, 2, rank, shuffle=True, seed=3)
        ours.set_epoch(1), ref.set_epoch(1)
        assert list(ours) == list(ref)
        ours.skip(2)
        assert list(ours) == list(ref)[2:] and len(ours) == 3
        ours.set_epoch(2)  # a new epoch forgets the skip
        assert len(list(ours)) == 5
    positive = np.array([True] + [False] * 9)
    over = SliceSampler(list(range(10)), 1, 0, seed=0, weights=oversampling_weights(positive, 9.0))
    drawn = []
    for epoch in range(200):
        over.set_epoch(epoch)
        drawn += list(over)
    share = drawn.count(0) / len(drawn)  # expected 9 / (9 + 9) = 0.5
    assert 0.45 < share < 0.55
    assert oversampling_weights(positive, 1.0) is None


def test_partitions_iid_and_by_case_with_uneven_sizes() -> None:
    case_of_item = np.repeat([0, 1, 2, 3], [10, 10, 20, 20])
    iid = partition_clients(case_of_item, 2, "iid", seed=0)
    assert [len(p) for p in iid] == [30, 30]
    assert sorted(np.concatenate(iid).tolist()) == list(range(60))
    uneven = partition_clients(case_of_item, 3, "iid", seed=0, fractions=[0.5, 0.3, 0.2])
    assert [len(p) for p in uneven] == [30, 18, 12]
    by_case = partition_clients(case_of_item, 2, "case", seed=0, fractions=[1, 2])
    assert [sorted(set(case_of_item[p])) for p in by_case] == [[0, 1], [2, 3]]  # whole cases, uneven 20 / 40
    assert partition_clients(case_of_item, 1, "iid", seed=5)[0].tolist() == list(range(60))
    with pytest.raises(ValueError, match="need 2 positive client fractions"):
        partition_clients(case_of_item, 2, "iid", seed=0, fractions=[1.0])


# ---------------------------------------------------------------- dataset, losses


def test_augmentation_is_per_item_and_roi_crop_and_mask(cases, tmp_path: Path) -> None:
    train_cases, _ = cases
    ds = SliceDataset(train_cases, "lung", 32, (-1000, 400), augment=True)
    ds.set_epoch_seed(7)
    a = [ds[i] for i in (5, 2, 9)]
    b = [ds[i] for i in (9, 5, 2)]  # another order, as on another rank or worker
    assert torch.equal(a[0][0], b[1][0]) and torch.equal(a[2][1], b[0][1])
    ds.set_epoch_seed(8)
    assert not torch.equal(ds[5][0], a[0][0])
    assert ds.positive.all() and len(ds.positive) == 18
    # ROI: a case whose "roi" label covers a corner box
    path = make_case(tmp_path / "roi.h5", 4)
    import h5py

    with h5py.File(path, "a") as f:
        roi = np.zeros(f["image"].shape, np.uint8)
        roi[:, 10:30, 5:21] = 1
        f["labels"].create_dataset("roi", data=roi)
        hu = f["image"][0]
    crop = SliceDataset([path], "lung", 32, (-1000, 400), roi="crop", roi_label="roi", roi_margin=2)
    assert crop.boxes == [(8, 32, 1, 25)]  # square 24 px box around rows 10-29 / cols 5-20 (+2), inside the slice
    from lungseg.training.preprocess import to_model_input

    assert torch.allclose(crop[0][0], to_model_input(hu[None, 8:32, 1:25], 32, (-1000, 400))[0])
    masked = SliceDataset([path], "lung", 48, (-1000, 400), roi="mask", roi_label="roi")
    image = masked[0][0][0]
    assert float(image[0, 0]) == 0.0 and float(image[40, 40]) == 0.0  # outside the ROI: window low
    assert torch.allclose(image[10:30, 5:21], to_model_input(hu[None], 48, (-1000, 400))[0, 0, 10:30, 5:21])
    with pytest.raises(ValueError, match="has no label 'liver'"):
        SliceDataset([path], "lung", 32, (-1000, 400), roi="crop", roi_label="liver")


def test_fscore_is_the_mean_per_slice_harmonic_mean_of_precision_and_recall() -> None:
    target = torch.zeros(3, 1, 4, 4)
    target[0, 0, :2] = 1  # 8 px
    target[1, 0, 0, 0] = 1
    logits = torch.full_like(target, -5.0)
    logits[0, 0, :1] = 5  # slice 0: TP 4, P 4, G 8 -> precision 1, recall 0.5 -> F 2/3
    # slice 1: missed -> 0; slice 2: both empty -> 1
    assert float(fscore_sum(logits, target)) == pytest.approx(2 / 3 + 0 + 1)
    with pytest.raises(ValueError, match="valid choices: bce_dice, bce_dice_per_item, bce, dice"):
        get_loss("focal")


# ---------------------------------------------------------------- training options


def test_freeze_encoder_epochs_keep_the_encoder_fixed_then_train_it(cases, tmp_path: Path) -> None:
    config = replace(TINY, arch="dense_unet", freeze_encoder_epochs=1, epochs=1)
    seed_everything(config.seed)
    init = build_model(config.arch, **config.model_kwargs()).state_dict()
    train(config, *cases, tmp_path)
    after1 = weights(tmp_path / "checkpoint.pt")
    enc = [k for k in init if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    dec = [k for k in init if k.startswith("decoder.") and k.endswith("weight")]
    assert enc and all(torch.equal(after1[k], init[k]) for k in enc)
    assert all(not torch.equal(after1[k], init[k]) for k in dec)
    train(replace(config, epochs=2), *cases, tmp_path)
    after2 = weights(tmp_path / "checkpoint.pt")
    assert all(not torch.equal(after2[k], after1[k]) for k in enc if k.endswith("weight"))


def test_amp_bf16_channels_last_mixup_oversampling_sgd_run_on_cpu(cases, tmp_path: Path) -> None:
    config = replace(TINY, epochs=1, amp="bf16", channels_last="on", mixup=0.4, oversample=3.0, optimizer="sgd",
                     loss="dice", warmup_epochs=1, arch="vgg16_unet", base_channels=4, depth=2)
    train(config, *cases, tmp_path / "a")
    train(config, *cases, tmp_path / "b")
    rows = read_rows(tmp_path / "a" / "metrics.csv")
    assert np.isfinite(float(rows[0]["train_loss"])) and float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert_same_weights(weights(tmp_path / "a" / "checkpoint.pt"), weights(tmp_path / "b" / "checkpoint.pt"))
    model, meta = load_model(tmp_path / "a" / "model.pt")
    assert meta["arch"] == "vgg16_unet" and meta["roi"]["mode"] == "none"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train(replace(TINY, amp="fp16"), *cases, tmp_path / "c")
    with pytest.raises(ValueError, match="sync-bn needs CUDA"):
        train(replace(TINY, sync_bn=True), *cases, tmp_path / "d")


# ---------------------------------------------------------------- stop on SIGTERM, resume, federated K=1


@pytest.mark.parametrize("mode", ["ddp", "fedavg"])
def test_sigterm_mid_epoch_checkpoints_and_resume_equals_uninterrupted(cases, tmp_path: Path, monkeypatch,
                                                                      mode: str) -> None:
    config = replace(TINY, epochs=2, batch_size=2, mode=mode)  # 9 steps per epoch
    train(config, *cases, tmp_path / "straight")
    signal_at_call(monkeypatch, 9 + 4)  # during step 4 of epoch 2
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at epoch 2, step 4"):
        train(config, *cases, tmp_path / "resumed")
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    if mode == "ddp":
        assert state["epoch"] == 1 and state["position"]["epoch"] == 1 and state["position"]["step"] == 4
    else:
        assert state["epoch"] == 1 and state["clients"][0]["position"] == {"epoch": 1, "step": 4}
    assert len(read_rows(tmp_path / "resumed" / "metrics.csv")) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    monkeypatch.undo()
    train(config, *cases, tmp_path / "resumed")
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"), weights(tmp_path / "resumed" / "checkpoint.pt"))
    assert read_rows(tmp_path / "straight" / "metrics.csv")[-1]["train_loss"] == \
        read_rows(tmp_path / "resumed" / "metrics.csv")[-1]["train_loss"]


def test_fedavg_with_one_client_equals_plain_training(cases, tmp_path: Path) -> None:
    plain = replace(TINY, epochs=2)
    train(plain, *cases, tmp_path / "plain")
    train(replace(plain, mode="fedavg", local_epochs=1), *cases, tmp_path / "fed")
    assert_same_weights(weights(tmp_path / "plain" / "checkpoint.pt"), weights(tmp_path / "fed" / "checkpoint.pt"))
    assert [r["val_dice"] for r in read_rows(tmp_path / "plain" / "metrics.csv")] == \
        [r["val_dice"] for r in read_rows(tmp_path / "fed" / "metrics.csv")]


def test_cli_exits_75_when_stopped_and_guard_maps_signals(cases, tmp_path: Path, monkeypatch) -> None:
    from lungseg.cli import main

    train_cases, val_cases = cases
    signal_at_call(monkeypatch, 2, signal.SIGUSR1)
    args = ["train", "--train", *train_cases, "--val", *val_cases, "--out-dir", str(tmp_path), "--epochs", "1",
            "--batch-size", "4", "--base-channels", "4", "--depth", "2", "--image-size", "32", "--threads", "1"]
    assert main(args) == REQUEUE_EXIT_CODE
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["position"]["step"] == 2
    guard = [sys.executable, "-m", "lungseg", "train-guard", "--"]
    sleeper = [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(1)); "
               "print('up', flush=True); time.sleep(60)"]
    proc = subprocess.Popen([*guard, *sleeper], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == REQUEUE_EXIT_CODE
    assert "stopped by SIGUSR1" in proc.stderr.read()
    assert subprocess.run([*guard, sys.executable, "-c", "raise SystemExit(3)"]).returncode == 3


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_clearly(cases, tmp_path: Path) -> None:
    from lungseg.cli import main

    train_cases, val_cases = cases
    empty = make_case(tmp_path / "empty.h5", 5)
    import h5py

    with h5py.File(empty, "a") as f:
        f["labels"]["lung"][...] = 0
    with pytest.raises(ValueError, match=r"no slice with 'lung' foreground.*empty\.h5"):
        train(TINY, [empty], val_cases, tmp_path / "neg")
    assert main(["train", "--train", "--val", *val_cases, "--out-dir", str(tmp_path / "e")]) == 1
    assert not (tmp_path / "e").exists()
    with pytest.raises(DistributedSetupError, match=r"processes per node but only \d+ CPU core"):
        select_device(DistEnv(0, available_cpus() + 1, 0, available_cpus() + 1), "cpu")
    train(replace(TINY, epochs=1), *cases, tmp_path / "run")
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"arch: 'unet' -> 'dense_unet'.*refusing"):
        train(replace(TINY, arch="dense_unet"), *cases, tmp_path / "run")
    with pytest.raises(ValueError, match=r"mode: 'ddp' -> 'fedavg'"):
        train(replace(TINY, mode="fedavg"), *cases, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ValueError, match="multiple of local_epochs"):
        train(replace(TINY, mode="fedavg", epochs=3, local_epochs=2), *cases, tmp_path / "f")
    with pytest.raises(ValueError, match="only for arch vgg16_unet"):
        train(replace(TINY, pretrained="hub"), *cases, tmp_path / "p")


def test_scaling_study_settings_from_config() -> None:
    """The scaling study's settings file: train: with the study's image size, without what each run chooses."""
    from lungseg.training.rule_args import scaling_train_settings

    train = {"arch": "unet", "image_size": 128, "mode": "fedavg", "local_epochs": 2, "fed_partition": "case",
             "fed_fractions": [0.6, 0.4], "norm": "group", "lr": 0.01}
    settings = scaling_train_settings({"train": train, "scaling": {"image_size": 64}})
    assert settings == {"arch": "unet", "image_size": 64, "norm": "group", "lr": 0.01}
    assert scaling_train_settings({"train": train, "scaling": {"image_size": None}})["image_size"] == 128


def test_checkpoint_key_continues_only_across_execution_settings() -> None:
    """threads / num_workers continue a run's checkpoint; any setting of what is computed starts over."""
    from lungseg.training.rule_args import checkpoint_key

    cfg = {"arch": "unet", "epochs": 10, "lr": 0.002, "threads": 2, "num_workers": 0, "nproc_per_node": 1}
    key = checkpoint_key(cfg)
    assert len(key) == 12 and int(key, 16) >= 0
    assert checkpoint_key({**cfg, "threads": 8, "num_workers": 4}) == key
    for change in ({"epochs": 20}, {"lr": 0.01}, {"arch": "dense_unet"}, {"nproc_per_node": 2}):
        assert checkpoint_key({**cfg, **change}) != key, change


def test_scaling_study_commands_and_runs(tmp_path: Path) -> None:
    from lungseg.training import scaling

    assert scaling._command("single", 1, ["--epochs", "1"])[1:5] == ["-m", "lungseg", "train", "--epochs"]
    ddp, fed = scaling._command("ddp", 2, ["--x"]), scaling._command("fedavg", 2, ["--x"])
    assert "--nproc_per_node=2" in ddp and "--mode" not in ddp
    assert fed[-6:] == ["--mode", "fedavg", "--local-epochs", "1", "--fed-partition", "iid"]
    # the runs of a study: the single process always (the speed-up's baseline), DDP and FedAvg for each N > 1
    assert scaling.study_runs([1, 2]) == [("single", 1), ("ddp", 2), ("fedavg", 2)]
    assert scaling.study_runs([4, 2]) == [("single", 1), ("ddp", 2), ("fedavg", 2), ("ddp", 4), ("fedavg", 4)]
    assert scaling.study_runs([1]) == [("single", 1)]
    with pytest.raises(ValueError, match="--mode ddp needs --devices >= 2"):
        scaling.run_one("ddp", 1, ["a.h5"], ["b.h5"], tmp_path / "r", 1, 1)
    with pytest.raises(ValueError, match="--mode single runs on one device"):
        scaling.run_one("single", 2, ["a.h5"], ["b.h5"], tmp_path / "r", 1, 1)
    with pytest.raises(ValueError, match="--train / --val are empty"):
        scaling.run_one("single", 1, [], ["b.h5"], tmp_path / "r", 1, 1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="refusing to delete"):
        scaling.run_one("single", 1, ["a.h5"], ["b.h5"], tmp_path / "mine", 1, 1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
