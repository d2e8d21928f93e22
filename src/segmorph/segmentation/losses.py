"""Segmentation losses: cross-entropy, soft Dice (background excluded) and their weighted sum.

All take logits ``(B, K, *S)`` (never softmax before cross-entropy) and integer targets
``(B, 1, *S)`` or ``(B, *S)`` holding class indices in ``[0, K)``, or
:data:`~segmorph.segmentation.datasets.IGNORE` (-1) for unannotated voxels. Ignored voxels add nothing: not to
the cross-entropy's sum nor to the number of voxels it is averaged over, not to a soft Dice numerator nor
denominator. A batch whose every voxel is ignored has loss 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from segmorph.segmentation.datasets import IGNORE


def _full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 at least (autocast outputs may be bfloat16)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _target_indices(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target: expected one channel, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target: shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return target.long()


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool = False, batch_dice: bool = True,
    smooth: float = 1e-5,
) -> torch.Tensor:  # fmt: skip
    """1 - mean soft Dice over classes.

    Args:
        logits: ``(B, K, *S)`` raw scores.
        target: ``(B, 1, *S)`` or ``(B, *S)`` class indices (``IGNORE`` voxels left out of every sum).
        include_background: Score class 0 too (off by default, as in nnU-Net).
        batch_dice: Pool voxels of the whole batch per class (stabler on small structures).
        smooth: Added to numerator and denominator; a class absent from both scores 1.
    """
    indices = _target_indices(logits, target)
    probabilities = torch.softmax(_full_precision(logits), dim=1)
    ignored = indices == IGNORE
    annotated = (~ignored).unsqueeze(1).to(probabilities.dtype) if bool(ignored.any()) else None
    if annotated is not None:
        probabilities, indices = probabilities * annotated, indices.masked_fill(ignored, 0)
    one_hot = F.one_hot(indices, logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    if annotated is not None:
        one_hot = one_hot * annotated
    if not include_background:
        probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
    axes = [0, *range(2, logits.ndim)] if batch_dice else list(range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(axes)
    denominator = probabilities.sum(axes) + one_hot.sum(axes)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise cross-entropy on logits, over the voxels whose target is not ``IGNORE``."""
    indices = _target_indices(logits, target)
    ignored = indices == IGNORE
    if not bool(ignored.any()):
        return F.cross_entropy(_full_precision(logits), indices)
    total = F.cross_entropy(_full_precision(logits), indices, ignore_index=IGNORE, reduction="sum")
    return total / (~ignored).sum().clamp_min(1)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * soft Dice``; alpha=1 is pure CE, alpha=0 pure Dice."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    loss = logits.new_zeros((), dtype=torch.float32)
    if alpha > 0:
        loss = loss + alpha * cross_entropy_loss(logits, target)
    if alpha < 1:
        loss = loss + (1 - alpha) * soft_dice_loss(logits, target)
    return loss


class SegmentationLoss(nn.Module):
    """Dice+CE with optional deep supervision (outputs coarser by 2x per level, weights halving).

    Args:
        alpha: Weight of cross-entropy; ``1 - alpha`` goes to soft Dice.
        deep_supervision_weights: Relative weights of the full-resolution and coarser outputs;
            normalised to sum to one.
    """

    def __init__(self, alpha: float = 0.5, deep_supervision_weights: Sequence[float] = (1.0, 0.5, 0.25)) -> None:
        super().__init__()
        self.alpha = alpha
        total = sum(deep_supervision_weights)
        self.weights = [w / total for w in deep_supervision_weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return dice_ce_loss(outputs, target, self.alpha)
        weights = self.weights[: len(outputs)]
        scale = 1.0 / sum(weights)
        loss = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, logits in zip(weights, outputs):
            coarse = target if logits.shape[2:] == target.shape[2:] else _downsample_nearest(target, logits.shape[2:])
            loss = loss + weight * scale * dice_ce_loss(logits, coarse, self.alpha)
        return loss


def _downsample_nearest(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(target.float(), size=tuple(size), mode="nearest").long()
