"""Segmentation networks and a name -> constructor registry (``build_model``).

Adding an architecture is one line in :data:`MODELS` (its constructor takes keyword arguments and
returns an ``nn.Module`` mapping ``(N, in_channels, H, W)`` to logits ``(N, out_channels, H, W)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias -> BatchNorm -> ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The seed-004 2-D U-Net, for any input size (odd sizes too).

    ``depth`` is the number of 2x2 max-pool steps: the encoder has ``depth`` DoubleConv blocks with
    ``base_channels * 2**i`` channels, then a bottleneck with ``base_channels * 2**depth``. The decoder
    upsamples with a stride-2 transposed convolution, resizes (bilinear) to the skip's size when the
    pooling rounded down, concatenates the skip and applies a DoubleConv. A 1x1 convolution gives logits.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_channels", base_channels), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet: {name} must be a positive integer, got {value!r}")
        self.depth = depth
        channels = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else channels[i - 1], channels[i]) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(channels[depth - 1], channels[depth])
        levels = list(reversed(range(depth)))
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in levels)
        self.decoder = nn.ModuleList(DoubleConv(2 * channels[i], channels[i]) for i in levels)
        self.head = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2**self.depth:
            raise ValueError(
                f"UNet of depth {self.depth} needs inputs of at least {2**self.depth} pixels per side, "
                f"got {tuple(x.shape[-2:])}"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


#: architecture name -> constructor (keyword arguments only)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
}


def build_model(arch: str, **kwargs: object) -> nn.Module:
    """Instantiate architecture ``arch`` (a key of :data:`MODELS`) with ``kwargs``."""
    try:
        constructor = MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown model architecture {arch!r}; valid choices: {', '.join(sorted(MODELS))}") from None
    return constructor(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
