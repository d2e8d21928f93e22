"""Image classifiers for 2D and 3D: a small plain CNN and a ResNet (basic residual blocks, ResNet-18 layout).

Both map ``(B, C, *S)`` to logits ``(B, K)`` (no softmax: the loss takes logits), end in global average pooling
so any input size works, use batch normalisation (classification batches are large enough, and unlike instance
normalisation it keeps each image's overall brightness), carry their constructor arguments in ``.config`` for
checkpoints, and name the block Grad-CAM looks at by default in ``.cam_layer`` (the last convolution block).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segmorph.nn.blocks import conv_layer


def batch_norm(ndim: int, channels: int) -> nn.Module:
    """2D or 3D batch normalisation."""
    return (nn.BatchNorm3d if ndim == 3 else nn.BatchNorm2d)(channels)


def _check_ndim(ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3, got {ndim}")


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> batch norm -> ReLU."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            conv_layer(ndim, in_channels, out_channels, kernel_size, stride),
            batch_norm(ndim, out_channels),
            nn.ReLU(inplace=True),
        )


class _Classifier(nn.Module):
    """Shared tail: global average pooling, dropout, a linear layer to logits."""

    def _init_tail(self, ndim: int, channels: int, num_classes: int, dropout: float) -> None:
        self.pool = (nn.AdaptiveAvgPool3d if ndim == 3 else nn.AdaptiveAvgPool2d)(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(features).flatten(1)))

    @property
    def cam_layer(self) -> nn.Module:
        """The block whose output Grad-CAM uses by default (the last convolution block)."""
        raise NotImplementedError


class SimpleCNN(_Classifier):
    """Plain CNN: per level two conv-BN-ReLU layers, max pooling between levels, global pooling, linear.

    Input ``(B, in_channels, *S)``, any ``S`` of at least ``2 ** (len(features) - 1)`` per axis; output ``(B, K)``.

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: Input channels.
        num_classes: Output logits.
        features: Channels per level.
        dropout: Dropout before the linear layer.
    """

    def __init__(
        self, ndim: int, in_channels: int, num_classes: int, features: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_ndim(ndim)
        self.config = {"name": "simplecnn", "ndim": ndim, "in_channels": in_channels, "num_classes": num_classes,
                       "features": [int(f) for f in features], "dropout": float(dropout)}  # fmt: skip
        pool = nn.MaxPool3d if ndim == 3 else nn.MaxPool2d
        levels = []
        for level, channels in enumerate(features):
            previous = in_channels if level == 0 else features[level - 1]
            layers = [pool(2)] if level else []
            levels.append(
                nn.Sequential(*layers, ConvBNReLU(ndim, previous, channels), ConvBNReLU(ndim, channels, channels))
            )
        self.levels = nn.Sequential(*levels)
        self._init_tail(ndim, features[-1], num_classes, dropout)

    @property
    def cam_layer(self) -> nn.Module:
        return self.levels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.levels(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus the input (1x1 conv-BN projection when shapes change), ReLU."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.first = ConvBNReLU(ndim, in_channels, out_channels, 3, stride)
        self.second = nn.Sequential(conv_layer(ndim, out_channels, out_channels), batch_norm(ndim, out_channels))
        nn.init.zeros_(self.second[1].weight)  # each block starts as the identity: deep nets train from step one
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv_layer(ndim, in_channels, out_channels, 1, stride), batch_norm(ndim, out_channels)
            )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.second(self.first(x)) + self.shortcut(x))


class ResNet(_Classifier):
    """ResNet with basic blocks; the defaults are ResNet-18's layout at a configurable width.

    Stem: a 7x7 convolution with stride ``stem_stride`` and a 3x3 max pooling with stride 2; then four stages of
    ``blocks[s]`` basic blocks with ``width * 2**s`` channels, stages after the first starting with stride 2
    (total downsampling ``stem_stride * 16``); global average pooling; dropout; linear.
    Input ``(B, in_channels, *S)``, any ``S``; output ``(B, K)``.

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: Input channels.
        num_classes: Output logits.
        width: Channels of the first stage (64 in ResNet-18).
        blocks: Basic blocks per stage.
        stem_stride: Stride of the stem convolution (2 in ResNet-18; 1 keeps more detail on small inputs).
        dropout: Dropout before the linear layer.
    """

    def __init__(
        self, ndim: int, in_channels: int, num_classes: int, width: int = 32, blocks: Sequence[int] = (2, 2, 2, 2),
        stem_stride: int = 2, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        _check_ndim(ndim)
        self.config = {"name": "resnet", "ndim": ndim, "in_channels": in_channels, "num_classes": num_classes,
                       "width": int(width), "blocks": [int(b) for b in blocks], "stem_stride": int(stem_stride),
                       "dropout": float(dropout)}  # fmt: skip
        pool = nn.MaxPool3d if ndim == 3 else nn.MaxPool2d
        self.stem = nn.Sequential(ConvBNReLU(ndim, in_channels, width, 7, stem_stride), pool(3, 2, 1))
        stages, channels = [], width
        for stage, count in enumerate(blocks):
            out_channels = width * 2**stage
            layers = [BasicBlock(ndim, channels if b == 0 else out_channels, out_channels, 2 if stage and b == 0 else 1)
                      for b in range(count)]  # fmt: skip
            stages.append(nn.Sequential(*layers))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self._init_tail(ndim, channels, num_classes, dropout)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def cam_layer(self) -> nn.Module:
        return self.stages[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class Ensemble(nn.Module):
    """Classifiers trained apart (different seeds) whose softmax probabilities are averaged.

    ``forward`` returns ``log(mean_m softmax(member_m(x)))`` ``(B, K)``: log-probabilities, so a softmax of the
    output is the members' mean probability and the ensemble fits wherever logits are expected. Grad-CAM
    explains it through the first member's last stage (the gradient of the ensemble's score there).

    Args:
        members: Each member's stored ``.config`` (see :func:`build_classifier`).
    """

    def __init__(self, members: list[dict[str, Any]]) -> None:
        super().__init__()
        if not members:
            raise ValueError("members: an ensemble needs at least one classifier")
        self.config = {"name": "ensemble", "members": [dict(m) for m in members]}
        self.members = nn.ModuleList(build_classifier(m) for m in members)

    @property
    def cam_layer(self) -> nn.Module:
        return self.members[0].cam_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(member(x).float(), dim=1) for member in self.members]).mean(0)
        return probabilities.clamp_min(1e-12).log()


CLASSIFIERS = {"simplecnn": SimpleCNN, "resnet": ResNet, "ensemble": Ensemble}


def build_classifier(config: dict[str, Any]) -> nn.Module:
    """Build a classifier from its stored ``.config`` (``{"name": "simplecnn"|"resnet", ...constructor args}``)."""
    name = config.get("name")
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier name: expected one of {sorted(CLASSIFIERS)}, got {name!r}")
    return CLASSIFIERS[name](**{k: v for k, v in config.items() if k != "name"})
