"""Convolution blocks shared by the networks; each works in 2D and 3D (``ndim``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a float32 CPU convolution should call oneDNN directly.

    PyTorch's dispatcher sends a batch of one with few channels x rows (``N*C*D*H <= 20480``, which
    is most registration and sliding-window inputs) to its reference ``slow_conv3d`` kernel, which is
    several times slower there than oneDNN (timings in benchmarks/RESULTS.md). Autocast, other
    dtypes, tracing, ONNX export and ``torch.compile`` keep the
    dispatcher's choice (exporters know ``convolution``, not oneDNN's own operator).
    """
    exporting = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    return (
        not exporting
        and x.device.type == "cpu"
        and x.ndim == weight.ndim  # batched input only
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not x.is_mkldnn
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def convolution(x: torch.Tensor, weight: torch.Tensor, padding: Sequence[int], groups: int = 1) -> torch.Tensor:
    """``F.conv2d``/``F.conv3d`` (stride 1, no bias) through oneDNN where :func:`use_onednn` says so."""
    if use_onednn(x, weight):
        ones = [1] * (x.ndim - 2)
        return torch.mkldnn_convolution(x, weight, None, list(padding), ones, ones, groups)
    conv = F.conv3d if x.ndim == 5 else F.conv2d
    return conv(x, weight, padding=tuple(padding), groups=groups)


class _OneDNNConv:
    """Mix-in for ``nn.ConvNd``: float32 CPU convolutions with explicit zero padding run in oneDNN."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if use_onednn(x, weight) and self.padding_mode == "zeros" and isinstance(self.padding, tuple):
            return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)  # type: ignore[misc]


class Conv2d(_OneDNNConv, nn.Conv2d):
    """``nn.Conv2d`` whose float32 CPU path always uses oneDNN (same parameters and state dict)."""


class Conv3d(_OneDNNConv, nn.Conv3d):
    """``nn.Conv3d`` whose float32 CPU path always uses oneDNN (same parameters and state dict)."""


def conv_layer(ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    """A 2D or 3D convolution with 'same' padding and no bias (a norm follows)."""
    conv = Conv3d if ndim == 3 else Conv2d
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
    conv = Conv3d if ndim == 3 else Conv2d
    return conv(in_channels, num_classes, kernel_size=1)
