"""The distributed U-Net paper's recipe in the training core: VGG16-BN encoder U-Net on one-channel input,
encoder frozen for the first epochs then trained (resumable across the switch), warmup + cosine learning
rate, loss and F-score per epoch, ImageNet weights only from a local file or the hub cache, never the network."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_training import make_case, read_rows
from test_training_features import assert_same_weights, signal_at_call, weights
from test_training_models import _torchvision_like_checkpoint

from lungseg.training.models import VGG16UNet, build_model
from lungseg.training.optim import lr_at
from lungseg.training.preemption import TrainingInterrupted
from lungseg.training.train import TrainConfig, seed_everything, train

# 3 training cases x 6 slices, batch 4: 5 steps per epoch; whole slices of 32 x 32
VGG = TrainConfig(arch="vgg16_unet", base_channels=4, depth=2, image_size=32, epochs=3, batch_size=4, lr=1e-2,
                  lr_min=1e-4, warmup_epochs=1, freeze_encoder_epochs=2, seed=0, threads=1, roi="none")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    d = tmp_path_factory.mktemp("cases")
    return [make_case(d / f"train{i}.h5", i) for i in range(3)], [make_case(d / "val.h5", 99)]


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every way to reach the network raises (and is recorded): sockets, urllib, torch.hub downloads."""
    attempts: list[str] = []

    def refuse(what: str):
        def raiser(*args, **kwargs):
            attempts.append(what)
            raise AssertionError(f"network access attempted: {what}")
        return raiser

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse("urllib.request.urlopen"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("torch.hub.download_url_to_file"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse("torch.hub.load_state_dict_from_url"))
    return attempts


def encoder_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """Trainable encoder tensors (BatchNorm running statistics follow the data even while frozen)."""
    return [k for k in state if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]


def test_one_channel_input_and_output_shapes() -> None:
    model = build_model("vgg16_unet", in_channels=1, out_channels=1, base_channels=8, depth=4).eval()
    assert model.encoder[0].in_channels == 1
    with torch.no_grad():
        for shape in [(2, 1, 256, 256), (1, 1, 97, 131)]:
            assert model(torch.rand(shape)).shape == (shape[0], 1, *shape[2:])
    with pytest.raises(ValueError, match="depth must be 1-4"):
        VGG16UNet(depth=5)


def test_encoder_frozen_for_the_first_epochs_then_trained(cases, tmp_path: Path) -> None:
    seed_everything(VGG.seed)
    init = build_model(VGG.arch, **VGG.model_kwargs()).state_dict()
    frozen = replace(VGG, epochs=2)  # both epochs frozen (freeze_encoder_epochs=2)
    train(frozen, *cases, tmp_path / "run")
    after_frozen = weights(tmp_path / "run" / "checkpoint.pt")
    enc, dec = encoder_keys(init), [k for k in init if k.startswith("decoder.") and k.endswith("weight")]
    assert enc and all(torch.equal(after_frozen[k], init[k]) for k in enc)
    assert all(not torch.equal(after_frozen[k], init[k]) for k in dec)
    train(VGG, *cases, tmp_path / "run")  # epoch 3: the whole model
    after = weights(tmp_path / "run" / "checkpoint.pt")
    assert all(not torch.equal(after[k], after_frozen[k]) for k in enc if k.endswith("weight"))


@pytest.mark.parametrize("stop_step", [5 + 2, 5 + 5], ids=["mid-frozen-epoch", "end-of-frozen-epoch"])
def test_resume_across_the_unfreeze_switch_equals_an_uninterrupted_run(cases, tmp_path: Path, monkeypatch,
                                                                       stop_step: int) -> None:
    train(VGG, *cases, tmp_path / "straight")
    signal_at_call(monkeypatch, stop_step)  # during epoch 2 (frozen), at step 2 or after its last step (5)
    with pytest.raises(TrainingInterrupted, match=f"epoch 2, step {stop_step - 5}"):
        train(VGG, *cases, tmp_path / "resumed")
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"] == {"epoch": 1, "step": stop_step - 5, "sums": state["position"]["sums"]}
    monkeypatch.undo()
    train(VGG, *cases, tmp_path / "resumed")
    assert_same_weights(weights(tmp_path / "straight" / "checkpoint.pt"), weights(tmp_path / "resumed" / "checkpoint.pt"))
    straight, resumed = read_rows(tmp_path / "straight" / "metrics.csv"), read_rows(tmp_path / "resumed" / "metrics.csv")
    assert [r["train_loss"] for r in straight] == [r["train_loss"] for r in resumed]


def test_metrics_have_loss_f_score_and_the_warmup_cosine_rates(cases, tmp_path: Path) -> None:
    config = replace(VGG, epochs=5, freeze_encoder_epochs=0)
    train(config, *cases, tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    expected = [lr_at(e, 5, config.lr, config.lr_min, config.warmup_epochs) for e in range(5)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    assert expected[0] == pytest.approx(1e-3) and expected[1] == pytest.approx(1e-2) and expected[-1] == pytest.approx(1e-4)
    assert expected[1] > expected[2] > expected[3] > expected[4]  # cosine: strictly down after the warmup
    for row in rows:
        assert float(row["train_loss"]) > 0 and 0.0 <= float(row["val_fscore"]) <= 1.0 and 0.0 <= float(row["val_dice"]) <= 1.0


def test_pretrained_weights_from_a_file_or_the_hub_cache_without_network(cases, tmp_path: Path, monkeypatch,
                                                                         no_network: list[str]) -> None:
    from lungseg.training.pretrained import hub_checkpoint_path

    config = replace(VGG, base_channels=64, depth=1, epochs=1, freeze_encoder_epochs=1, warmup_epochs=0, batch_size=6)
    saved = _torchvision_like_checkpoint(tmp_path / "vgg16_bn.pth")
    train(replace(config, pretrained=str(tmp_path / "vgg16_bn.pth")), *cases, tmp_path / "file")
    state = weights(tmp_path / "file" / "checkpoint.pt")  # after one frozen epoch: still the file's weights
    assert torch.equal(state["encoder.0.weight"], saved["features.0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["encoder.1.weight"], saved["features.1.weight"])

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        train(replace(config, pretrained="hub"), *cases, tmp_path / "hub_missing")
    cached = hub_checkpoint_path()
    cached.parent.mkdir(parents=True)
    (tmp_path / "vgg16_bn.pth").rename(cached)
    train(replace(config, pretrained="hub"), *cases, tmp_path / "hub")
    assert torch.equal(weights(tmp_path / "hub" / "checkpoint.pt")["encoder.0.weight"], state["encoder.0.weight"])
    assert no_network == []


def test_xray_config_is_the_papers_experiment() -> None:
    """config/xray.yaml over config/config.yaml: the VGG16 U-Net recipe, one process vs DDP-4 vs FedAvg-4."""
    import yaml
    from conftest import REPO

    from lungseg.experiments import check_experiments

    def merge(base: dict, overlay: dict) -> dict:
        for key, value in overlay.items():
            base[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return base

    config = merge(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                   yaml.safe_load((REPO / "config/xray.yaml").read_text()))
    experiments = check_experiments(config)
    assert {name: (s["mode"], s["nproc_per_node"]) for name, s in experiments.items()} == {
        "single": ("ddp", 1), "ddp_4": ("ddp", 4), "fedavg_4": ("fedavg", 4)}
    for settings in experiments.values():
        assert settings["arch"] == "vgg16_unet" and settings["image_size"] == 256 and settings["roi"] == "none"
        assert settings["freeze_encoder_epochs"] * 2 == settings["epochs"] and settings["lr_min"] < settings["lr"]
        TrainConfig.from_mapping(settings).validate()
    assert config["source"] == "images" and config["scaling"]["devices"] == [1, 4]
