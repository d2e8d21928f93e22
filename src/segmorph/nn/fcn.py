"""A fully convolutional baseline: a plain encoder and one upsampling head, no skip connections."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from segmorph.nn.blocks import DoubleConv, head_layer


class FCN(nn.Module):
    """FCN-style network: strided encoder, class logits upsampled back to the input size.

    Input ``(B, in_channels, *S)`` with sizes divisible by ``2 ** (len(features) - 1)``; output ``(B, num_classes, *S)``.
    """

    def __init__(self, ndim: int, in_channels: int, num_classes: int, features: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim: expected 2 or 3, got {ndim}")
        self.config = {"ndim": ndim, "in_channels": in_channels, "num_classes": num_classes, "features": list(features)}
        self.deep_supervision = False
        self.encoder = nn.Sequential(
            *(
                DoubleConv(ndim, in_channels if i == 0 else features[i - 1], f, 1 if i == 0 else 2)
                for i, f in enumerate(features)
            )
        )
        self.head = head_layer(ndim, features[-1], num_classes)
        self.mode = "trilinear" if ndim == 3 else "bilinear"

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.encoder) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(x))
        return F.interpolate(logits, size=x.shape[2:], mode=self.mode, align_corners=False)
