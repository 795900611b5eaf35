"""Segmentation networks and a name -> constructor registry (``build_model``).

Three architectures, all mapping ``(N, in_channels, H, W)`` to logits ``(N, out_channels, H, W)`` for
any input size (odd sizes too; the decoder resizes to each skip's size):

* ``unet``: the seed-004 U-Net (conv-BN-ReLU double convolutions, transposed-convolution upsampling,
  resize-concat skips).
* ``vgg16_unet``: seed 000: the VGG16-BN feature extractor (torchvision's layer layout, so torchvision
  ImageNet weights load into it) as encoder with skip taps at its five stages, and a U-Net decoder.
* ``dense_unet``: seed 001: a BatchNorm encoder and DenseNet-style blocks in the decoder.
* ``unet3d``: a 3-D U-Net (Çiçek et al.) for patches ``(N, in_channels, D, H, W)``: 3x3x3 convolutions;
  each pooling step halves depth, height and width while the depth allows it, else only height and
  width (thick slices, shallow patches); trilinear upsampling in the decoder.

:data:`SPATIAL_DIMS` says which take volumes (3) rather than slices (2).
Every model exposes ``encoder`` (a module): :func:`set_encoder_trainable` freezes / unfreezes it.
Adding an architecture is one line in :data:`MODELS` (keyword-only constructor). The nodule classifiers
(:data:`CLASSIFIERS`, :mod:`lungseg.classification.models`) are in :data:`ARCHITECTURES`, which
:func:`build_model` and model files use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm (the seeds' choice) or GroupNorm (per-sample statistics: DDP-exact, small batches)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def _check_positive(model: str, **values: object) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{model}: {name} must be a positive integer, got {value!r}")


def _check_input(x: torch.Tensor, name: str, depth: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} expects (N, C, H, W) input, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 2**depth:
        raise ValueError(
            f"{name} of depth {depth} needs inputs of at least {2**depth} pixels per side, got {tuple(x.shape[-2:])}"
        )


def _match(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Resize ``x`` (bilinear) to the skip's spatial size when pooling rounded down."""
    if x.shape[-2:] != skip.shape[-2:]:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
    return x


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias -> norm -> ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The seed-004 2-D U-Net.

    ``depth`` is the number of 2x2 max-pool steps: the encoder has ``depth`` DoubleConv blocks with
    ``base_channels * 2**i`` channels, then a bottleneck with ``base_channels * 2**depth``. The decoder
    upsamples with a stride-2 transposed convolution, resizes (bilinear) to the skip's size when the
    pooling rounded down, concatenates the skip and applies a DoubleConv. A 1x1 convolution gives logits.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 4,
                 norm: str = "batch") -> None:
        super().__init__()
        _check_positive(type(self).__name__, in_channels=in_channels, out_channels=out_channels,
                        base_channels=base_channels, depth=depth)
        norm_layer(norm, 8)  # validates the name
        self.depth = depth
        channels = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else channels[i - 1], channels[i], norm) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(channels[depth - 1], channels[depth], norm)
        levels = list(reversed(range(depth)))
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in levels)
        self.decoder = nn.ModuleList(self._decoder_block(2 * channels[i], channels[i], norm) for i in levels)
        self.head = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    def _decoder_block(self, in_channels: int, out_channels: int, norm: str) -> nn.Module:
        """The block after each skip concatenation (a DoubleConv; :class:`DenseUNet` uses a DenseBlock)."""
        return DoubleConv(in_channels, out_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__, self.depth)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = block(torch.cat([skip, _match(up(x), skip)], dim=1))
        return self.head(x)


class VGG16UNet(nn.Module):
    """Seed 000's U-Net with a VGG16-BN encoder.

    The encoder is torchvision's ``vgg16_bn`` ``features`` (built with ``make_layers(cfgs["D"],
    batch_norm=True)``: identical module indices, so ``features.*`` weights of torchvision's ImageNet
    checkpoint load into ``encoder``), with channels scaled by ``base_channels / 64`` (64 = VGG16).
    Its five convolution stages (64, 128, 256, 512, 512 channels at full, 1/2, ..., 1/16 resolution)
    are the skip taps; the fifth is the bottleneck, the last max-pool is not used. ``depth`` (1-4) is
    the number of down-sampling steps kept (stages ``depth + 1``). The decoder upsamples bilinearly,
    concatenates the tap and applies a DoubleConv, as seed 000's "unetUp" (plus BatchNorm).

    CT input has one channel: the first convolution takes ``in_channels`` (1) channels; pretrained RGB
    kernels are summed over their colour axis when loaded (:func:`load_vgg16_pretrained`), and the
    ``input_mean`` / ``input_std`` buffers (identity by default, ImageNet's grey statistics once
    pretrained weights are loaded) normalise the [0, 1] input as the pretrained network expects.
    """

    STAGE_MULTIPLIERS = (1, 2, 4, 8, 8)

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 64, depth: int = 4,
                 norm: str = "batch") -> None:
        super().__init__()
        _check_positive("VGG16UNet", in_channels=in_channels, out_channels=out_channels,
                        base_channels=base_channels, depth=depth)
        if depth > 4:
            raise ValueError(f"VGG16UNet: depth must be 1-4 (VGG16 has five stages), got {depth}")
        if norm != "batch":
            raise ValueError(f"VGG16UNet: the VGG16-BN encoder uses BatchNorm; norm must be 'batch', got {norm!r}")
        from torchvision.models.vgg import cfgs, make_layers  # imported here: torchvision is slow to import

        self.depth = depth
        cfg: list[str | int] = []
        for v in cfgs["D"]:
            cfg.append(v if v == "M" else int(v) // 64 * base_channels)
        self.encoder = make_layers(cfg, batch_norm=True)
        if in_channels != 3:
            first = self.encoder[0]
            self.encoder[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        pools = [i for i, layer in enumerate(self.encoder) if isinstance(layer, nn.MaxPool2d)]
        # stage s spans encoder[start_s:pools[s]]; taps are the stage outputs (before pooling)
        self._stage_ends = pools[: depth + 1]
        self.encoder = self.encoder[: self._stage_ends[-1]]  # unused deeper stages would get no gradients
        channels = [base_channels * m for m in self.STAGE_MULTIPLIERS][: depth + 1]
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))
        self.decoder = nn.ModuleList(
            DoubleConv(channels[i] + channels[i + 1], channels[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "VGG16UNet", self.depth)
        x = (x - self.input_mean) / self.input_std
        taps, start = [], 0
        for end in self._stage_ends:
            for layer in self.encoder[start:end]:
                x = layer(x)
            taps.append(x)
            start = end + 1
            if len(taps) <= self.depth:
                x = self.encoder[end](x)  # the stage's max-pool
        x = taps.pop()
        for block, skip in zip(self.decoder, reversed(taps)):
            x = _match(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), skip)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


class DenseLayer(nn.Sequential):
    """DenseNet layer: norm -> ReLU -> 3x3 conv producing ``growth`` new channels."""

    def __init__(self, in_channels: int, growth: int, norm: str) -> None:
        super().__init__(norm_layer(norm, in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, growth, kernel_size=3, padding=1, bias=False))


class DenseBlock(nn.Module):
    """``layers`` DenseLayers, each fed the concatenation of the block input and all earlier outputs,
    then a 1x1 transition (conv -> norm -> ReLU) to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, growth: int, layers: int, norm: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth, growth, norm) for i in range(layers))
        self.transition = nn.Sequential(
            nn.Conv2d(in_channels + layers * growth, out_channels, kernel_size=1, bias=False),
            norm_layer(norm, out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return self.transition(torch.cat(features, dim=1))


class DenseUNet(UNet):
    """Seed 001's improved U-Net: BatchNorm in the encoder, DenseNet blocks in the decoder.

    Encoder and bottleneck as :class:`UNet` (conv-BN-ReLU). Each decoder level upsamples (stride-2
    transposed convolution), concatenates the skip and applies a :class:`DenseBlock` of
    ``dense_layers`` layers with growth ``max(1, channels // 2)``, whose transition brings the level
    back to ``base_channels * 2**i`` channels (feature reuse, as the seed proposes).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 4,
                 norm: str = "batch", dense_layers: int = 3) -> None:
        _check_positive("DenseUNet", dense_layers=dense_layers)
        self.dense_layers = dense_layers  # read by _decoder_block during UNet.__init__
        super().__init__(in_channels, out_channels, base_channels, depth, norm)

    def _decoder_block(self, in_channels: int, out_channels: int, norm: str) -> nn.Module:
        return DenseBlock(in_channels, out_channels, max(1, out_channels // 2), self.dense_layers, norm)


class DoubleConv3d(nn.Sequential):
    """(3x3x3 conv without bias -> norm -> ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        def norm3d(channels: int) -> nn.Module:
            return nn.BatchNorm3d(channels) if norm == "batch" else nn.GroupNorm(math.gcd(channels, 8), channels)

        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False), norm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), norm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """A 3-D U-Net for ``(N, C, D, H, W)`` patches, laid out as :class:`UNet` (``depth`` pooling steps,
    ``base_channels * 2**i`` channels). Pooling halves D only while D >= 2 at that level, so shallow
    patches of thick-slice scans work; the decoder upsamples trilinearly to each skip's size."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        _check_positive("UNet3D", in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                        depth=depth)
        norm_layer(norm, 8)  # validates the name
        self.depth = depth
        channels = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            DoubleConv3d(in_channels if i == 0 else channels[i - 1], channels[i], norm) for i in range(depth))
        self.bottleneck = DoubleConv3d(channels[depth - 1], channels[depth], norm)
        levels = list(reversed(range(depth)))
        self.reduce = nn.ModuleList(nn.Conv3d(channels[i + 1], channels[i], kernel_size=1) for i in levels)
        self.decoder = nn.ModuleList(DoubleConv3d(2 * channels[i], channels[i], norm) for i in levels)
        self.head = nn.Conv3d(channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"UNet3D expects (N, C, D, H, W) input, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2**self.depth:
            raise ValueError(f"UNet3D of depth {self.depth} needs patches of at least {2**self.depth} pixels per "
                             f"side in-plane, got {tuple(x.shape[-3:])}")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, (2 if x.shape[2] >= 2 else 1, 2, 2))
        x = self.bottleneck(x)
        for reduce, block, skip in zip(self.reduce, self.decoder, reversed(skips)):
            x = F.interpolate(reduce(x), size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


#: nodule classifiers (:mod:`lungseg.classification.models`; torchvision backbones, imported on first use)
CLASSIFIERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")


def _classifier(backbone: str) -> Callable[..., nn.Module]:
    def build(**kwargs: object) -> nn.Module:
        from lungseg.classification.models import build_classifier  # torchvision: slow to import

        return build_classifier(backbone, **kwargs)

    build.__name__ = backbone
    return build


#: segmentation architecture name -> constructor (keyword arguments only)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "vgg16_unet": VGG16UNet,
    "dense_unet": DenseUNet,
    "unet3d": UNet3D,
}
#: every architecture :func:`build_model` (and so a model file) can build: the segmentation networks and the classifiers
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {**MODELS, **{name: _classifier(name) for name in CLASSIFIERS}}

#: spatial dimensions of each architecture's input: 2 = slices / 2-D patches (N, C, H, W), 3 = volumes (N, C, D, H, W)
SPATIAL_DIMS: dict[str, int] = {"unet": 2, "vgg16_unet": 2, "dense_unet": 2, "unet3d": 3, **dict.fromkeys(CLASSIFIERS, 2)}


def build_model(arch: str, **kwargs: object) -> nn.Module:
    """Instantiate architecture ``arch`` (a key of :data:`ARCHITECTURES`) with ``kwargs``."""
    try:
        constructor = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown model architecture {arch!r}; valid choices: {', '.join(sorted(MODELS))} "
                         f"(segmentation), {', '.join(CLASSIFIERS)} (classification)") from None
    return constructor(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze the model's ``encoder``: its parameters stop / start getting gradients."""
    model = getattr(model, "module", model)
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(model).__name__} has no encoder to freeze")
    for p in encoder.parameters():
        p.requires_grad_(trainable)
