"""The networks of a label-conditioned GAN: a SPADE U-Net generator and a PatchGAN discriminator, 2D or 3D.

* :class:`LabelToImageGenerator` turns a one-hot label map (plus noise channels) into image channels: a U-Net
  (pix2pix, Isola et al. 2017) whose decoder normalises its features with SPADE (Park et al. 2019), instance
  normalisation whose per-voxel scale and shift are computed from the label map at each resolution, so the
  labels steer every decoder level and not only the input.
* :class:`PatchDiscriminator` scores overlapping patches of a ``(label map, image)`` pair as real or
  synthetic (pix2pix's PatchGAN): strided convolutions, one score per receptive field.

Both store their constructor arguments in ``config`` (``{"name": ..., **arguments}``), rebuilt by
:func:`build_synthesis_network`. Inputs are ``(B, C, *S)``; array axes as in :mod:`segmorph.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segmorph.nn.blocks import Conv2d, Conv3d, DoubleConv, head_layer, upsample_layer

GENERATOR = "spade_generator"
DISCRIMINATOR = "patch_discriminator"


def _conv(ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
          padding: int | None = None) -> nn.Module:  # fmt: skip
    conv = Conv3d if ndim == 3 else Conv2d
    padding = kernel_size // 2 if padding is None else padding
    return conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)


def _check_common(ndim: int, features: Sequence[int]) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3, got {ndim}")
    if not features or not all(isinstance(f, int) and f >= 1 for f in features):
        raise ValueError(f"features: expected positive channel counts, got {list(features)}")


class SpadeNorm(nn.Module):
    """Spatially-adaptive normalisation: ``IN(x) * (1 + gamma(labels)) + beta(labels)``.

    Args:
        ndim: 2 or 3.
        channels: Channels of the normalised features.
        label_channels: Channels of the one-hot label map.
        hidden: Channels of the shared convolution that reads the label map.
    """

    def __init__(self, ndim: int, channels: int, label_channels: int, hidden: int = 32) -> None:
        super().__init__()
        norm = nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d
        self.norm = norm(channels, affine=False, eps=1e-5)
        self.shared = nn.Sequential(_conv(ndim, label_channels, hidden), nn.ReLU(inplace=True))
        self.gamma = _conv(ndim, hidden, channels)
        self.beta = _conv(ndim, hidden, channels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, *S)``; ``labels`` ``(B, K, *S')`` one-hot, averaged down to ``S`` (area) when larger."""
        if tuple(labels.shape[2:]) != tuple(x.shape[2:]):
            labels = F.interpolate(labels, size=x.shape[2:], mode="area")
        hidden = self.shared(labels)
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class SpadeBlock(nn.Module):
    """Two ``conv -> SPADE -> LeakyReLU(0.2)`` layers (a decoder level), with optional dropout between them."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, label_channels: int, dropout: float = 0.0):
        super().__init__()
        self.first = _conv(ndim, in_channels, out_channels)
        self.first_norm = SpadeNorm(ndim, out_channels, label_channels, min(out_channels, 32))
        self.second = _conv(ndim, out_channels, out_channels)
        self.second_norm = SpadeNorm(ndim, out_channels, label_channels, min(out_channels, 32))
        self.dropout = (nn.Dropout3d if ndim == 3 else nn.Dropout2d)(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.first_norm(self.first(x), labels), 0.2)
        x = self.dropout(x)
        return F.leaky_relu(self.second_norm(self.second(x), labels), 0.2)


class LabelToImageGenerator(nn.Module):
    """U-Net from ``(one-hot labels, noise)`` to image channels, with SPADE in the decoder.

    Input ``(B, num_classes + noise_channels, *S)``: the one-hot label map first, then the noise channels
    (standard normal; the caller draws them so that tiled inference is reproducible). Every spatial size is a
    multiple of :attr:`divisor`. Output ``(B, out_channels, *S)``: intensities in the normalised scale of the
    training data (a linear head, no squashing: z-scores are unbounded).

    Args:
        ndim: 2 or 3 spatial dimensions.
        num_classes: Label classes including background (channels of the one-hot map).
        out_channels: Image channels to produce.
        features: Channels per resolution level, e.g. ``(16, 32, 64, 128)``.
        noise_channels: Standard-normal input channels (0: none).
        dropout: Dropout in the decoder blocks while training (pix2pix's source of variety).

    Example:
        >>> generator = LabelToImageGenerator(3, num_classes=3, out_channels=1, features=(8, 16))
        >>> generator(torch.zeros(1, 4, 16, 16, 16)).shape
        torch.Size([1, 1, 16, 16, 16])
    """

    def __init__(self, ndim: int, num_classes: int, out_channels: int, features: Sequence[int] = (16, 32, 64, 128),
                 noise_channels: int = 1, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        _check_common(ndim, features)
        if len(features) < 2:
            raise ValueError(f"features: need at least 2 levels, got {list(features)}")
        if num_classes < 2 or out_channels < 1 or noise_channels < 0:
            raise ValueError(f"num_classes: expected at least 2 classes, 1 output and 0 noise channels, got "
                             f"{num_classes}, {out_channels}, {noise_channels}")  # fmt: skip
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a fraction in [0, 1), got {dropout}")
        self.config = {
            "name": GENERATOR, "ndim": ndim, "num_classes": num_classes, "out_channels": out_channels,
            "features": list(features), "noise_channels": noise_channels, "dropout": dropout,
        }  # fmt: skip
        self.num_classes = num_classes
        inputs = num_classes + noise_channels
        self.encoder = nn.ModuleList(
            DoubleConv(ndim, inputs if i == 0 else features[i - 1], f, 1 if i == 0 else 2) for i, f in enumerate(features)
        )  # fmt: skip
        self.upsample = nn.ModuleList(
            upsample_layer(ndim, features[i + 1], features[i]) for i in range(len(features) - 1)
        )
        self.decoder = nn.ModuleList(
            SpadeBlock(ndim, 2 * features[i], features[i], num_classes, dropout) for i in range(len(features) - 1)
        )  # fmt: skip
        self.head = head_layer(ndim, features[0], out_channels)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (len(self.encoder) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, : self.num_classes]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(len(self.decoder))):
            x = self.decoder[level](torch.cat([self.upsample[level](x), skips[level]], dim=1), labels)
        return self.head(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a map of real-vs-synthetic scores (logits) for a ``(one-hot labels, image)`` pair.

    ``conv(4, stride 2) -> LeakyReLU(0.2)``, then ``len(features) - 1`` more such layers with instance
    normalisation (the last of them with stride 1), then a 1-channel convolution. Each score sees a
    neighbourhood of a few dozen voxels, so the discriminator judges texture and local structure, and the L1
    term of the generator's loss the overall intensities.

    Args:
        ndim: 2 or 3.
        in_channels: Label classes plus image channels.
        features: Channels per layer, e.g. ``(32, 64, 128)``.

    Example:
        >>> PatchDiscriminator(2, 4, (16, 32, 64))(torch.zeros(1, 4, 64, 64)).shape
        torch.Size([1, 1, 15, 15])
    """

    def __init__(self, ndim: int, in_channels: int, features: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        _check_common(ndim, features)
        if in_channels < 2:
            raise ValueError(f"in_channels: expected labels and image channels (at least 2), got {in_channels}")
        self.config = {"name": DISCRIMINATOR, "ndim": ndim, "in_channels": in_channels, "features": list(features)}
        norm = nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d
        layers: list[nn.Module] = [_conv(ndim, in_channels, features[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for index in range(1, len(features)):
            stride = 2 if index < len(features) - 1 else 1
            layers += [_conv(ndim, features[index - 1], features[index], 4, stride, 1), norm(features[index], affine=True),
                       nn.LeakyReLU(0.2, inplace=True)]  # fmt: skip
        layers.append(_conv(ndim, features[-1], 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


CONSTRUCTORS = {GENERATOR: LabelToImageGenerator, DISCRIMINATOR: PatchDiscriminator}


def build_synthesis_network(config: dict[str, Any]) -> nn.Module:
    """The generator or discriminator described by its stored ``config`` (``{"name": ..., **arguments}``).

    Raises:
        ValueError: Unknown name, or arguments the constructor refuses.
    """
    name = config.get("name")
    if name not in CONSTRUCTORS:
        raise ValueError(f"name: expected one of {', '.join(CONSTRUCTORS)}, got {name!r}")
    arguments = {k: v for k, v in config.items() if k != "name"}
    return CONSTRUCTORS[name](**arguments)


MIN_DISCRIMINATOR_PATCH = 8
"""Smallest patch axis (voxels) the PatchGAN scores: one stride-2 layer and two stride-1 layers of kernel 4 leave
at least one score per axis with two voxels at its last normalised layer."""


def discriminator_patch(patch_size: Sequence[int], multiple: int = 1) -> list[int]:
    """``patch_size`` with every axis at least :data:`MIN_DISCRIMINATOR_PATCH`, rounded up to ``multiple`` (the
    generator's divisor): patches of images smaller than that are padded as the sampler pads any patch.

    Example:
        >>> discriminator_patch((2, 40, 40), 2)
        [8, 40, 40]
    """
    return [int(-(-max(int(p), MIN_DISCRIMINATOR_PATCH) // multiple) * multiple) for p in patch_size]


def discriminator_features(patch_size: Sequence[int], width: int = 32, max_halvings: int = 3) -> list[int]:
    """Channels of a PatchGAN for ``patch_size``: as many stride-2 layers (up to ``max_halvings``, at least 1) as keep
    at least 8 voxels per axis, channels doubling from ``width``.

    Example:
        >>> discriminator_features((40, 56, 40)), discriminator_features((256, 256))
        ([32, 64, 128], [32, 64, 128, 256])
    """
    halvings = 1
    while halvings < max_halvings and min(patch_size) / 2 ** (halvings + 1) >= 8:
        halvings += 1
    return [width * 2**i for i in range(halvings + 1)]
