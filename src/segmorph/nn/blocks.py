"""Convolution blocks shared by the networks; each works in 2D and 3D (``ndim``)."""

from __future__ import annotations

import torch
from torch import nn


def conv_layer(ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """A 2D or 3D convolution with 'same' padding and no bias (a norm follows)."""
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def norm_layer(ndim: int, channels: int) -> nn.Module:
    """Instance normalisation with learnable scale and shift (nnU-Net's choice)."""
    norm = nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d
    return norm(channels, affine=True, eps=1e-5)


class ConvNormAct(nn.Sequential):
    """conv -> instance norm -> LeakyReLU(0.01)."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            conv_layer(ndim, in_channels, out_channels, 3, stride),
            norm_layer(ndim, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class DoubleConv(nn.Module):
    """Two conv-norm-act layers; with ``residual`` a projection shortcut is added (ResNet style).

    Args:
        ndim: 2 or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (downsampling when 2).
        residual: Add the input (projected by a 1x1 conv when shapes differ) before the last activation.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, stride: int = 1, residual: bool = False):
        super().__init__()
        self.first = ConvNormAct(ndim, in_channels, out_channels, stride)
        self.residual = residual
        if residual:
            self.second = nn.Sequential(conv_layer(ndim, out_channels, out_channels), norm_layer(ndim, out_channels))
            needs_projection = stride != 1 or in_channels != out_channels
            self.shortcut = (
                nn.Sequential(conv_layer(ndim, in_channels, out_channels, 1, stride), norm_layer(ndim, out_channels))
                if needs_projection
                else nn.Identity()
            )
            self.activation = nn.LeakyReLU(0.01, inplace=True)
        else:
            self.second = ConvNormAct(ndim, out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.second(self.first(x))
        if self.residual:
            out = self.activation(out + self.shortcut(x))
        return out


def upsample_layer(ndim: int, in_channels: int, out_channels: int) -> nn.Module:
    """Transposed convolution doubling the spatial size."""
    transposed = nn.ConvTranspose3d if ndim == 3 else nn.ConvTranspose2d
    return transposed(in_channels, out_channels, kernel_size=2, stride=2)


def head_layer(ndim: int, in_channels: int, num_classes: int) -> nn.Module:
    """1x1 convolution to class logits."""
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return conv(in_channels, num_classes, kernel_size=1)
