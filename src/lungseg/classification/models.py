"""Nodule classifiers: torchvision ResNet18/34/50 and MobileNetV2 (``weights=None``: nothing downloads)
adapted to nodule patches, with one or two task heads.

Input ``(N, C, S, S)``: ``C = 3`` (the axial, coronal and sagittal planes through the nodule as the three
channels, which the backbones take natively) or ``C = 1`` (the axial plane; the first convolution is
rebuilt with one input channel, not fed a repeated image). Output: ``{task: logits (N, classes)}``, one
entry per head (``heads``: task -> classes, e.g. ``{"image": 2}``; ``{"image": 2, "pathology": 2}``
for the two-task networks).

Each backbone is cut into a **stem** (first convolution(s), up to and including the first
downsampling block) and four **stages** (the resolution levels), so that the sharing variants can
choose what the two tasks share:

* one head, or ``sharing="hard"``: one backbone, global average pooling, dropout, a linear head per task
  (:class:`Classifier`);
* ``sharing="soft"``: two backbones with learned linear combinations of their later stages
  (:class:`lungseg.classification.soft_sharing.CrossStitchClassifier`).

``norm``: ``batch`` (torchvision's layers) or ``group`` (GroupNorm: per-sample, so data-parallel training
is exactly the doubled batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
SHARING = ("none", "hard", "soft")


def _norm_factory(norm: str) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(channels, 8), channels)
    raise ValueError(f"norm must be batch or group, got {norm!r}")


class Backbone(nn.Module):
    """A torchvision network as ``stem`` + four ``stages``; ``features`` channels come out of the last stage."""

    def __init__(self, name: str, in_channels: int = 3, norm: str = "batch") -> None:
        super().__init__()
        from torchvision import models  # slow to import: here, not at module level

        if name not in BACKBONES:
            raise ValueError(f"unknown classifier backbone {name!r}; valid choices: {', '.join(BACKBONES)}")
        if in_channels not in (1, 3):
            raise ValueError(f"{name}: in_channels must be 3 (orthogonal planes) or 1 (axial plane), got {in_channels}")
        norm_layer = _norm_factory(norm)
        if name.startswith("resnet"):
            net = getattr(models, name)(weights=None, norm_layer=norm_layer)
            if in_channels != 3:
                net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
                nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
            self.features = net.fc.in_features
        else:
            net = models.mobilenet_v2(weights=None, norm_layer=norm_layer)
            f = net.features
            if in_channels != 3:
                old = f[0][0]
                f[0][0] = nn.Conv2d(in_channels, old.out_channels, kernel_size=3, stride=2, padding=1, bias=False)
                nn.init.kaiming_normal_(f[0][0].weight, mode="fan_out")
            # the resolution levels of MobileNetV2: 1/2 (stem), 1/4, 1/8, 1/16, 1/32 (+ the 1x1 conv to 1280)
            self.stem = nn.Sequential(*f[0:2])
            self.stages = nn.ModuleList([nn.Sequential(*f[2:4]), nn.Sequential(*f[4:7]), nn.Sequential(*f[7:14]),
                                         nn.Sequential(*f[14:19])])
            self.features = net.last_channel
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class Heads(nn.Module):
    """Global average pooling, dropout and one linear layer per task."""

    def __init__(self, features: int, heads: dict[str, int], dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.ModuleDict({task: nn.Linear(features, int(classes)) for task, classes in heads.items()})

    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        pooled = self.dropout(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        tasks = [task] if task is not None else list(self.fc)
        return {t: self.fc[t](pooled) for t in tasks}


class Classifier(nn.Module):
    """One backbone and one head per task: a single-task classifier, or hard parameter sharing (two heads)."""

    def __init__(self, backbone: str, in_channels: int, heads: dict[str, int], dropout: float = 0.0,
                 norm: str = "batch") -> None:
        super().__init__()
        self.encoder = Backbone(backbone, in_channels, norm)
        self.head = Heads(self.encoder.features, heads, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input(x, self.encoder.stem)
        return self.head(self.encoder(x))


def _check_input(x: torch.Tensor, stem: nn.Module) -> None:
    expected = next(m for m in stem.modules() if isinstance(m, nn.Conv2d)).in_channels
    if x.ndim != 4 or x.shape[1] != expected:
        raise ValueError(f"classifier expects (N, {expected}, S, S) patches, got shape {tuple(x.shape)}")


def build_classifier(backbone: str, *, in_channels: int = 3, heads: dict[str, int] | None = None, dropout: float = 0.0,
                     norm: str = "batch", sharing: str = "none") -> nn.Module:
    """The classifier of a model file's ``arch`` (= ``backbone``) and ``model_kwargs``."""
    heads = dict(heads or {"image": 2})
    if not heads or any(int(c) < 2 for c in heads.values()):
        raise ValueError(f"heads must map each task to >= 2 classes, got {heads}")
    if sharing not in SHARING:
        raise ValueError(f"sharing must be one of {', '.join(SHARING)}, got {sharing!r}")
    if sharing == "soft":
        from lungseg.classification.soft_sharing import CrossStitchClassifier

        return CrossStitchClassifier(backbone, in_channels, heads, dropout, norm)
    if len(heads) > 1 and sharing == "none":
        raise ValueError("two heads need sharing hard or soft")
    return Classifier(backbone, in_channels, heads, dropout, norm)
