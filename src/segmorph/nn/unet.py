"""U-Net for 2D and 3D segmentation (nnU-Net's layout: strided-conv encoder, instance norm, deep supervision)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segmorph.nn.blocks import DoubleConv, head_layer, upsample_layer


class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    Input ``(B, in_channels, *S)`` with every spatial size divisible by ``2 ** (len(features) - 1)``;
    output logits ``(B, num_classes, *S)``. In training mode with ``deep_supervision`` the forward
    returns a list: full-resolution logits first, then those of the coarser decoder stages.

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: Input channels (modalities).
        num_classes: Output classes including background.
        features: Channels per resolution level, e.g. ``(16, 32, 64, 128)``.
        residual: Residual double-conv blocks instead of plain ones.
        deep_supervision: Extra heads on the coarser decoder stages (training only).
        output_level: Stop decoding at this level: the output has ``1 / 2**output_level`` of the
            input's size per axis (0: full resolution). Registration networks predict coarse fields.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] = (16, 32, 64, 128),
        residual: bool = False,
        deep_supervision: bool = False,
        output_level: int = 0,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim: expected 2 or 3, got {ndim}")
        if len(features) < 2:
            raise ValueError(f"features: need at least 2 levels, got {list(features)}")
        self.config = {
            "ndim": ndim, "in_channels": in_channels, "num_classes": num_classes, "features": list(features),
            "residual": residual, "deep_supervision": deep_supervision, "output_level": output_level,
        }  # fmt: skip
        if not 0 <= output_level < len(features) - 1:
            raise ValueError(f"output_level: expected 0..{len(features) - 2}, got {output_level}")
        self.output_level = output_level
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList(
            DoubleConv(ndim, in_channels if i == 0 else features[i - 1], f, 1 if i == 0 else 2, residual)
            for i, f in enumerate(features)
        )
        self.upsample = nn.ModuleList(
            upsample_layer(ndim, features[i + 1], features[i]) for i in range(len(features) - 1)
        )
        self.decoder = nn.ModuleList(DoubleConv(ndim, 2 * features[i], features[i]) for i in range(len(features) - 1))
        self.heads = nn.ModuleList(head_layer(ndim, features[i], num_classes) for i in range(len(features) - 1))

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (len(self.encoder) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        outputs = []
        x = skips.pop()
        for level in reversed(range(self.output_level, len(self.decoder))):
            x = self.decoder[level](torch.cat([self.upsample[level](x), skips[level]], dim=1))
            if self.training and self.deep_supervision and level > 0 and level <= 2:
                outputs.append(self.heads[level](x))
        logits = self.heads[self.output_level](x)
        if self.training and self.deep_supervision:
            return [logits] + outputs[::-1]
        return logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
