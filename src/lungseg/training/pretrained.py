"""Pretrained VGG16-BN encoder weights from a local file or the torch hub cache; never downloaded.

``source`` is a path to a ``.pth`` file (torchvision's ``vgg16_bn`` checkpoint with ``features.*`` /
``classifier.*`` keys, or a features-only state dict with ``0.weight``, ... keys), or ``"hub"``: the
file torchvision would download, looked up in the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
if it is not there, a clear error says where to put it. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lungseg.training.models import VGG16UNet

#: ImageNet channel statistics (torchvision's), averaged for a grey image replicated to RGB
IMAGENET_GREY_MEAN = (0.485 + 0.456 + 0.406) / 3
IMAGENET_GREY_STD = (0.229 + 0.224 + 0.225) / 3


def hub_checkpoint_path() -> Path:
    """Where torchvision keeps ``vgg16_bn``'s ImageNet weights in the torch hub cache."""
    from torchvision.models import VGG16_BN_Weights

    name = VGG16_BN_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resolve_source(source: str) -> Path:
    """The weights file named by ``source`` (a path or ``"hub"``); errors clearly when it is missing."""
    path = hub_checkpoint_path() if source == "hub" else Path(source)
    if not path.is_file():
        where = f"the torch hub cache ({path})" if source == "hub" else str(path)
        raise FileNotFoundError(
            f"pretrained weights not found: {where}. lungseg never downloads weights: copy torchvision's "
            f"vgg16_bn ImageNet file ({hub_checkpoint_path().name}) there, or set train.pretrained to null"
        )
    return path


def _features_state(state: dict, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if any(k.startswith("features.") for k in state):
        return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if all(k.split(".", 1)[0].isdigit() for k in state):
        return dict(state)
    raise ValueError(f"{path} holds no VGG16-BN features (keys like 'features.0.weight'); "
                     f"is it torchvision's vgg16_bn checkpoint?")


def load_vgg16_pretrained(model: nn.Module, source: str) -> Path:
    """Copy pretrained VGG16-BN feature weights into ``model.encoder``; returns the file used.

    RGB first-layer kernels are summed over the colour axis for a 1-channel model (= a grey image
    replicated to RGB), and the model's input normalisation is set to ImageNet's grey statistics.
    Deeper stages than the model's depth are ignored; any shape mismatch is an error naming the file.
    """
    model = getattr(model, "module", model)
    if not isinstance(model, VGG16UNet):
        raise ValueError(f"pretrained weights are for vgg16_unet, not {type(model).__name__}; "
                         f"set train.pretrained to null or train.arch to vgg16_unet")
    path = resolve_source(source)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt file or disallowed pickle content
        raise ValueError(f"cannot read pretrained weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    features = _features_state(state, path)
    target = model.encoder.state_dict()
    first = "0.weight"
    if first in features and features[first].ndim == 4 and target[first].shape[1] != features[first].shape[1]:
        if target[first].shape[1] != 1:
            raise ValueError(f"{path}: first convolution has {features[first].shape[1]} input channels, "
                             f"the model {target[first].shape[1]}")
        features[first] = features[first].sum(dim=1, keepdim=True)
    missing = [k for k in target if k not in features]
    wrong = [f"{k}: {tuple(features[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
             if k in features and features[k].shape != v.shape]
    if missing or wrong:
        raise ValueError(
            f"{path} does not fit the vgg16_unet encoder (VGG16-BN weights need base_channels 64): "
            + "; ".join(([f"missing {', '.join(missing[:4])}"] if missing else []) + wrong[:4])
        )
    model.encoder.load_state_dict({k: features[k] for k in target})
    model.input_mean.fill_(IMAGENET_GREY_MEAN)
    model.input_std.fill_(IMAGENET_GREY_STD)
    return path
