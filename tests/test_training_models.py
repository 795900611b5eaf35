"""lungseg.training.models / pretrained: the three U-Nets, encoder freezing, local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lungseg.training.models import MODELS, SPATIAL_DIMS, VGG16UNet, build_model, count_parameters, set_encoder_trainable
from lungseg.training.pretrained import IMAGENET_GREY_MEAN, hub_checkpoint_path, load_vgg16_pretrained

SMALL = {"unet": {"base_channels": 4, "depth": 3}, "vgg16_unet": {"base_channels": 4, "depth": 3},
         "dense_unet": {"base_channels": 4, "depth": 3}, "unet3d": {"base_channels": 4, "depth": 3}}


def image(arch: str, n: int, h: int, w: int) -> torch.Tensor:
    """A random input batch of ``arch``: (n, 1, h, w), or (n, 1, 5, h, w) for 3-D architectures."""
    return torch.randn(n, 1, h, w) if SPATIAL_DIMS[arch] == 2 else torch.randn(n, 1, 5, h, w)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_every_model_keeps_odd_input_sizes(arch: str, norm: str) -> None:
    if arch == "vgg16_unet" and norm == "group":
        with pytest.raises(ValueError, match="BatchNorm"):
            build_model(arch, norm=norm, **SMALL[arch])
        return
    model = build_model(arch, norm=norm, **SMALL[arch]).eval()
    with torch.no_grad():
        for n, h, w in ((1, 67, 93), (2, 33, 16)):
            x = image(arch, n, h, w)
            assert model(x).shape == (*x.shape[:1], 1, *x.shape[2:])
    with pytest.raises(ValueError, match="at least 8 pixels"):
        model(image(arch, 1, 7, 40))


def test_parameter_counts_are_fixed() -> None:
    assert count_parameters(build_model("unet", base_channels=16, depth=4)) == 1_942_289
    assert count_parameters(build_model("unet", base_channels=16, depth=3)) == 482_449
    assert count_parameters(build_model("dense_unet", base_channels=16, depth=4)) == 2_168_449
    # full width: the VGG16-BN features (14.7 M, first conv for 1 channel) + the U-Net decoder
    vgg = build_model("vgg16_unet", base_channels=64, depth=4)
    assert count_parameters(vgg) == 24_900_353
    assert count_parameters(vgg.encoder) == 14_723_136 - 2 * 64 * 9  # vgg16_bn features with a grey first conv
    assert count_parameters(build_model("vgg16_unet", base_channels=8, depth=3)) == 168_929
    assert count_parameters(build_model("unet3d", base_channels=8, depth=3)) == 331_993


def test_vgg16_encoder_has_torchvision_layout() -> None:
    from torchvision.models.vgg import cfgs, make_layers

    reference = make_layers(cfgs["D"], batch_norm=True).state_dict()  # = vgg16_bn(weights=None).features
    mine = VGG16UNet(in_channels=3, base_channels=64, depth=4).encoder.state_dict()
    assert list(mine) == list(reference)[: len(mine)] and len(mine) == len(reference)  # last pool has no weights
    assert all(mine[k].shape == reference[k].shape for k in mine)
    one_channel = VGG16UNet(in_channels=1, base_channels=64).encoder.state_dict()
    assert one_channel["0.weight"].shape == (64, 1, 3, 3)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_freeze_and_unfreeze_change_which_parameters_get_gradients(arch: str) -> None:
    model = build_model(arch, **SMALL[arch])
    encoder = {id(p) for p in model.encoder.parameters()}
    assert encoder

    def grads() -> tuple[set[bool], set[bool]]:
        model.zero_grad(set_to_none=True)
        model(image(arch, 2, 32, 32)).sum().backward()
        enc = {p.grad is not None for p in model.parameters() if id(p) in encoder}
        rest = {p.grad is not None for p in model.parameters() if id(p) not in encoder}
        return enc, rest

    set_encoder_trainable(model, False)
    assert grads() == ({False}, {True})
    assert count_parameters(model) < sum(p.numel() for p in model.parameters())
    set_encoder_trainable(model, True)
    assert grads() == ({True}, {True})


def _torchvision_like_checkpoint(path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """A full vgg16_bn state dict (3-channel input, classifier too) with random weights, saved to ``path``."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(seed)
    features = make_layers(cfgs["D"], batch_norm=True)
    for m in features.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, path)
    return state


def test_pretrained_weights_load_from_a_local_file(tmp_path: Path) -> None:
    saved = _torchvision_like_checkpoint(tmp_path / "vgg16_bn.pth")
    model = VGG16UNet(base_channels=64, depth=4)
    assert float(model.input_mean) == 0.0
    assert load_vgg16_pretrained(model, str(tmp_path / "vgg16_bn.pth")) == tmp_path / "vgg16_bn.pth"
    enc = model.encoder.state_dict()
    # RGB kernels summed over colour: a grey image replicated to RGB gives the same response
    assert torch.equal(enc["0.weight"], saved["features.0.weight"].sum(dim=1, keepdim=True))
    for key in ("3.weight", "1.running_mean", "40.weight"):
        assert torch.equal(enc[key], saved[f"features.{key}"])
    assert float(model.input_mean) == pytest.approx(IMAGENET_GREY_MEAN)
    grey = torch.rand(1, 1, 32, 32)
    rgb_conv = torch.nn.functional.conv2d(grey.expand(1, 3, 32, 32), saved["features.0.weight"], padding=1)
    assert torch.allclose(torch.nn.functional.conv2d(grey, enc["0.weight"], padding=1), rgb_conv, atol=1e-5)


def test_pretrained_errors_are_clear(tmp_path: Path, monkeypatch) -> None:
    _torchvision_like_checkpoint(tmp_path / "w.pth")
    with pytest.raises(ValueError, match="need base_channels 64"):
        load_vgg16_pretrained(VGG16UNet(base_channels=8), str(tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="for vgg16_unet, not UNet"):
        load_vgg16_pretrained(build_model("unet", base_channels=4, depth=2), str(tmp_path / "w.pth"))
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="holds no VGG16-BN features"):
        load_vgg16_pretrained(VGG16UNet(base_channels=64), str(tmp_path / "other.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match=r"never downloads.*vgg16_bn-"):
        load_vgg16_pretrained(VGG16UNet(base_channels=64), "hub")
    assert hub_checkpoint_path().parent == tmp_path / "empty_cache" / "hub" / "checkpoints"
