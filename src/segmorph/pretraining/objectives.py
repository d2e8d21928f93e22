"""Corruptions of image patches, and the reconstruction loss and score of self-supervised pretraining.

Patches are ``(B, C, *P)`` float tensors of intensity-normalised images (2 or 3 spatial axes, array order);
the voxels a loss or score looks at are given by a ``(B, 1, *P)`` bool ``target`` mask. Two objectives:

* ``mask``: a masked-image autoencoder (the convolutional form of MAE / SimMIM, Xie et al. 2022). The patch is
  cut into cubes of ``block`` voxels a side on a grid shifted at random per patch, and a random ``mask_ratio``
  of the cubes is hidden: set to 0 (the mean of z-scored intensities) or to standard normal noise. The loss is
  the mean squared error over the hidden voxels plus ``visible_weight`` times that over the visible ones.
* ``denoise``: a denoising autoencoder with the local pixel shuffling of Models Genesis (Zhou et al. 2021): in
  ``shuffle_fraction`` of the cubes the voxels are permuted within the cube, then Gaussian noise of a standard
  deviation drawn per patch from ``[noise_std / 2, noise_std]`` is added; the loss is the mean squared error
  over every voxel.

The validation score (:func:`reconstruction_r2`) is ``1 - NMSE`` over the target voxels (the hidden ones;
every voxel for ``denoise``): one minus the sum of squared errors over the sum of squared deviations of the
true values from their mean, pooled over the patches. It is the R² of the reconstruction: 1 is perfect, 0 is
no better than filling in the mean, and it does not depend on the intensity scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from segmorph.configs import check, refuse_unknown_keys

OBJECTIVES = ("mask", "denoise")
FILLS = ("zero", "noise")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the autoencoder reconstructs (see the module docstring).

    Attributes:
        name: ``"mask"`` (masked-image autoencoder) or ``"denoise"`` (denoising, with local shuffling).
        block: Side of the masked (``mask``) or shuffled (``denoise``) cubes, in voxels.
        mask_ratio: Share of the cubes hidden (``mask``).
        fill: What hidden voxels hold: ``"zero"`` (the normalised mean) or ``"noise"`` (standard normal).
        visible_weight: Weight of the visible voxels' mean squared error beside the hidden voxels' (``mask``).
        noise_std: Largest standard deviation of the added noise, in normalised intensity units (``denoise``).
        shuffle_fraction: Share of the cubes whose voxels are shuffled (``denoise``; 0: noise only).
    """

    name: str = "mask"
    block: int = 8
    mask_ratio: float = 0.6
    fill: str = "zero"
    visible_weight: float = 0.1
    noise_std: float = 0.5
    shuffle_fraction: float = 0.25

    def __post_init__(self) -> None:
        check(self.name in OBJECTIVES, f"objective: expected one of {', '.join(OBJECTIVES)}, got {self.name!r}")
        check(self.fill in FILLS, f"fill: expected one of {', '.join(FILLS)}, got {self.fill!r}")
        check(isinstance(self.block, int) and self.block >= 1, f"block: expected at least 1 voxel, got {self.block}")
        check(0.0 < self.mask_ratio < 1.0, f"mask_ratio: expected a share in (0, 1), got {self.mask_ratio}")
        check(self.visible_weight >= 0, f"visible_weight: expected at least 0, got {self.visible_weight}")
        check(self.noise_std >= 0, f"noise_std: expected at least 0, got {self.noise_std}")
        check(0.0 <= self.shuffle_fraction <= 1.0,
              f"shuffle_fraction: expected a share in [0, 1], got {self.shuffle_fraction}")  # fmt: skip

    @property
    def target_name(self) -> str:
        """The voxels the score is over: ``"hidden"`` or ``"all"``."""
        return "hidden" if self.name == "mask" else "all"

    def describe(self) -> str:
        """One line for the console and the report."""
        if self.name == "mask":
            return (f"masked autoencoder: {self.mask_ratio:.0%} of {self.block}-voxel blocks hidden ({self.fill}), "
                    f"loss on the hidden voxels + {self.visible_weight:g} x the visible")  # fmt: skip
        shuffled = f", voxels shuffled in {self.shuffle_fraction:.0%} of {self.block}-voxel blocks"
        return f"denoising autoencoder: Gaussian noise up to sd {self.noise_std:g}" + (
            shuffled if self.shuffle_fraction > 0 else "")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ObjectiveConfig:
        refuse_unknown_keys(cls, values, "objective")
        return cls(**values)


def block_mask(shape: Sequence[int], count: int, block: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Hidden blocks of ``count`` patches: ``(count, 1, *shape)`` bool, True where hidden (on the CPU).

    Each patch gets its own grid of ``block``-voxel cubes, shifted by a random 0..block-1 voxels per axis, and
    ``round(ratio * cubes)`` of the cubes of that (one cube larger per axis) grid are hidden, so about ``ratio``
    of the patch is.

    Example:
        >>> hidden = block_mask((32, 32), 2, 4, 0.6, torch.Generator().manual_seed(0))
        >>> hidden.shape, round(hidden.float().mean().item(), 1)
        (torch.Size([2, 1, 32, 32]), 0.6)
    """
    shape = tuple(int(s) for s in shape)
    coarse = [math.ceil(s / block) + 1 for s in shape]
    cubes = math.prod(coarse)
    order = torch.rand((count, cubes), generator=generator, device=generator.device).cpu().argsort(dim=1)
    hidden = torch.zeros((count, cubes), dtype=torch.bool)
    hidden.scatter_(1, order[:, : round(ratio * cubes)], True)
    hidden = hidden.view(count, *coarse)
    offsets = torch.randint(0, block, (count, len(shape)), generator=generator, device=generator.device).cpu()
    patches = []
    for i in range(count):  # voxel v of an axis lies in cube (v + offset) // block: no block-sized copy is made
        index = [((torch.arange(s) + int(o)) // block).view(*[-1 if a == axis else 1 for a in range(len(shape))])
                 for axis, (s, o) in enumerate(zip(shape, offsets[i]))]  # fmt: skip
        patches.append(hidden[i][tuple(index)])
    return torch.stack(patches)[:, None]


def local_shuffle(
    images: torch.Tensor, block: int, fraction: float, generator: torch.Generator
) -> torch.Tensor:  # fmt: skip
    """``images`` ``(B, C, *P)`` with the voxels of ``fraction`` of the ``block``-voxel cubes permuted within
    their cube (one permutation for every channel of a cube). Returns a new tensor."""
    shape = tuple(images.shape[2:])
    padded = [math.ceil(s / block) * block for s in shape]
    pad = [amount for s, p in zip(reversed(shape), reversed(padded)) for amount in (0, p - s)]
    x = F.pad(images, pad)
    blocks = _to_blocks(x, block)  # (B, C, N, block**ndim)
    batch, channels, cubes, voxels = blocks.shape
    keys = torch.rand((batch, cubes, voxels), generator=generator, device=generator.device).cpu()
    chosen = torch.rand((batch, cubes, 1), generator=generator, device=generator.device).cpu() < fraction
    order = torch.where(chosen, keys.argsort(dim=-1), torch.arange(voxels).expand(batch, cubes, voxels))
    order = order.to(images.device)[:, None].expand(batch, channels, cubes, voxels)
    shuffled = _from_blocks(blocks.gather(-1, order), padded, block)
    return shuffled[(slice(None), slice(None), *(slice(0, s) for s in shape))].contiguous()


def _to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, C, *S)`` with every side a multiple of ``block`` -> ``(B, C, cubes, block**ndim)``."""
    ndim = x.ndim - 2
    grid = [s // block for s in x.shape[2:]]
    split = x.reshape(*x.shape[:2], *(n for g in grid for n in (g, block)))
    order = [0, 1, *(2 + 2 * a for a in range(ndim)), *(3 + 2 * a for a in range(ndim))]
    return split.permute(order).reshape(*x.shape[:2], math.prod(grid), block**ndim)


def _from_blocks(blocks: torch.Tensor, shape: Sequence[int], block: int) -> torch.Tensor:
    """Inverse of :func:`_to_blocks` for a spatial ``shape`` (every side a multiple of ``block``)."""
    ndim = len(shape)
    grid = [s // block for s in shape]
    x = blocks.reshape(*blocks.shape[:2], *grid, *([block] * ndim))
    order = [0, 1, *(i for a in range(ndim) for i in (2 + a, 2 + ndim + a))]
    return x.permute(order).reshape(*blocks.shape[:2], *shape)


def corrupt(
    images: torch.Tensor, objective: ObjectiveConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Corrupt clean patches as ``objective`` says.

    Args:
        images: Clean patches ``(B, C, *P)`` float, on any device; not modified.
        objective: The corruption.
        generator: Source of every random draw (CPU; the same seed gives the same corruption).

    Returns:
        ``(corrupted (B, C, *P), target (B, 1, *P) bool)``, on the device of ``images``: ``target`` marks the
        voxels the loss is about (the hidden ones; all of them for ``denoise``).
    """
    count, shape = images.shape[0], tuple(images.shape[2:])
    if objective.name == "mask":
        hidden = block_mask(shape, count, objective.block, objective.mask_ratio, generator).to(images.device)
        if objective.fill == "noise":
            fill = torch.randn(images.shape, generator=generator, device=generator.device).to(images)
        else:
            fill = images.new_zeros(())
        return torch.where(hidden, fill, images), hidden
    corrupted = images
    if objective.shuffle_fraction > 0:
        corrupted = local_shuffle(images, objective.block, objective.shuffle_fraction, generator)
    sd = objective.noise_std * (0.5 + 0.5 * torch.rand(count, generator=generator, device=generator.device).cpu())
    noise = torch.randn(images.shape, generator=generator, device=generator.device).cpu() * sd.view(-1, *[1] * (
        images.ndim - 1))  # fmt: skip
    target = torch.ones((count, 1, *shape), dtype=torch.bool, device=images.device)
    return corrupted + noise.to(images), target


def reconstruction_loss(
    output: torch.Tensor, clean: torch.Tensor, target: torch.Tensor, visible_weight: float = 0.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Mean squared error over the ``target`` voxels, plus ``visible_weight`` times that over the others.

    Args:
        output: Reconstruction ``(B, C, *P)`` (any float type; computed in float32).
        clean: The clean patches ``(B, C, *P)``.
        target: ``(B, 1, *P)`` bool, the voxels the loss is about.
        visible_weight: Weight of the other voxels' error (0: ignored).
        valid: ``(B, 1, *P)`` bool, the voxels that hold image (not the padding of a patch that passes the
            volume's border); None: all. Voxels outside it count for neither term.

    Example:
        >>> clean = torch.zeros(1, 1, 2, 2)
        >>> output = torch.tensor([[[[1.0, 0.0], [2.0, 0.0]]]])
        >>> target = torch.tensor([[[[True, False], [True, False]]]])
        >>> float(reconstruction_loss(output, clean, target))
        2.5
    """
    error = (output.float() - clean.float()).square()
    inside = torch.ones_like(target) if valid is None else valid
    weight = (target & inside).expand_as(error).float()
    loss = (error * weight).sum() / weight.sum().clamp_min(1.0)
    if visible_weight > 0:
        other = (~target & inside).expand_as(error).float()
        loss = loss + visible_weight * (error * other).sum() / other.sum().clamp_min(1.0)
    return loss


@dataclass
class R2Sums:
    """Running sums over target voxels for :func:`reconstruction_r2` (float64)."""

    squared_error: float = 0.0
    total: float = 0.0
    squares: float = 0.0
    count: int = 0

    def add(self, output: torch.Tensor, clean: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``output`` and ``clean`` ``(B, C, *P)``, ``target`` ``(B, 1, *P)`` bool."""
        mask = target.expand_as(clean)
        truth, guess = clean[mask].double(), output.double()[mask]
        self.squared_error += float((guess - truth).square().sum())
        self.total += float(truth.sum())
        self.squares += float(truth.square().sum())
        self.count += int(truth.numel())

    def score(self) -> float:
        """``1 - SSE / SST``; NaN without target voxels or when their true values are all equal (SST 0)."""
        if self.count == 0:
            return math.nan
        deviation = self.squares - self.total**2 / self.count
        return 1.0 - self.squared_error / deviation if deviation > 0 else math.nan


def reconstruction_r2(output: torch.Tensor, clean: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - NMSE`` of ``output`` over the ``target`` voxels (see the module docstring).

    Example:
        >>> clean = torch.tensor([[[[0.0, 2.0]]]])
        >>> reconstruction_r2(torch.ones(1, 1, 1, 2), clean, torch.ones(1, 1, 1, 2, dtype=torch.bool))
        0.0
    """
    sums = R2Sums()
    sums.add(output, clean, target)
    return sums.score()
