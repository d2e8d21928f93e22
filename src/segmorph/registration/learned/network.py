"""The registration network and the field it predicts: a U-Net on the stacked moving and fixed images
(and, with a segmentation prior, their label probabilities) outputs a stationary velocity field at half
resolution, in voxels of that coarse grid; it is integrated by scaling and squaring and upsampled to a
displacement. Several passes compose, each registering the fixed image to the moving one warped so far."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segmorph.engine.autocast import autocast
from segmorph.nn import UNet
from segmorph.registration import spatial
from segmorph.registration.learned.config import LearnedConfig


def build_registration_network(ndim: int, config: LearnedConfig) -> UNet:
    """U-Net with two input channels (moving, fixed) and ``ndim`` outputs at half resolution.

    The output layer starts near zero (the identity transform), as in VoxelMorph.
    """
    in_channels = 2 + 2 * max(config.prior_classes - 1, 0)
    output_level = 1 if config.input_shrink == 1 else 0
    network = UNet(ndim, in_channels, ndim, config.features, output_level=output_level)
    head = network.heads[output_level]
    nn.init.normal_(head.weight, std=1e-5)
    nn.init.zeros_(head.bias)
    return network


def displacement_from_velocity(velocity: torch.Tensor, shape: Sequence[int], steps: int) -> torch.Tensor:
    """Integrate a coarse velocity ``(B, n, *C)`` (coarse voxels) and upsample to ``(B, n, *shape)`` voxels."""
    return spatial.resize_field(spatial.integrate(velocity, steps), shape)


def _pad_to_multiple(data: torch.Tensor, divisor: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad ``(B, C, *S)`` at the far end of each axis to multiples of ``divisor``."""
    extra = [(-s) % divisor for s in data.shape[2:]]
    pads: list[int] = []
    for e in reversed(extra):
        pads += [0, e]
    return F.pad(data, pads), extra


def network_input(fixed: torch.Tensor, moved: torch.Tensor, fixed_prior=None, moved_prior=None) -> torch.Tensor:
    """Channels in the network's order: moving, fixed, then moving and fixed foreground probabilities."""
    parts = [moved, fixed] + ([moved_prior, fixed_prior] if fixed_prior is not None else [])
    return torch.cat(parts, dim=1)


def coarse_velocity(network: UNet, inputs: torch.Tensor, input_shrink: int, amp: bool) -> torch.Tensor:
    """The network's velocity at half resolution ``(B, n, *C)``, in voxels of that coarse grid.

    ``inputs`` ``(B, C, *S)`` must have sizes divisible by ``network.divisor * input_shrink``. With
    ``input_shrink = 2`` the network sees 2x2x2-averaged inputs and predicts at its own resolution;
    with 1 it sees full-resolution inputs and stops decoding one level early.
    """
    with autocast(inputs.device, amp):
        return network(_shrunk(inputs, input_shrink)).float()


def _shrunk(inputs: torch.Tensor, input_shrink: int) -> torch.Tensor:
    """The inputs the network sees: 2x2(x2)-averaged when ``input_shrink`` is 2."""
    if input_shrink == 1:
        return inputs
    return (F.avg_pool3d if inputs.ndim == 5 else F.avg_pool2d)(inputs, 2)


def predict_velocity(network: UNet, inputs: torch.Tensor, input_shrink: int = 2, amp: bool = False) -> torch.Tensor:
    """Velocity on the fixed grid ``(B, n, *S)`` in fixed voxels from :func:`network_input` ``(B, C, *S)``.

    Inputs of any size are zero-padded to the network's divisor; the coarse output is resized to the
    padded full grid (vectors rescaled) and cropped back.
    """
    shape = inputs.shape[2:]
    stacked, _ = _pad_to_multiple(inputs, network.divisor * input_shrink)
    coarse = coarse_velocity(network, stacked, input_shrink, amp)
    full = spatial.resize_field(coarse, stacked.shape[2:])
    return _crop(full, shape)


def predict_displacement(network: UNet, inputs: torch.Tensor, config: LearnedConfig, amp: bool = False,
                         weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Displacement on the fixed grid ``(B, n, *S)`` in fixed voxels after ``config.passes`` passes.

    Pass 1 is :func:`predict_velocity`'s, integrated on the network's coarse grid. Each further pass
    sees the moving channels of the network's (shrunk) inputs warped by the displacement so far
    (:func:`warp_moving`), and its transform, velocity scaled by ``config.pass_scale``, is applied
    first: ``u = u_new + u_so_far(x + u_new)``, composed on the coarse grid and resized once at the
    end. The result is a composition of diffeomorphisms, not the exponential of one velocity.
    ``weights`` ``(*S)`` multiply every pass's velocity (resampled to the coarse grid) before it is
    integrated, e.g. a taper to 0 at the faces: weighting velocities keeps each pass diffeomorphic,
    weighting the composed displacement would not.
    """
    shape = inputs.shape[2:]
    stacked, _ = _pad_to_multiple(inputs, network.divisor * config.input_shrink)
    shrunk = _shrunk(stacked, config.input_shrink)
    velocity = coarse_velocity(network, shrunk, 1, amp)
    coarse_weights = 1.0 if weights is None else _coarse_weights(weights, stacked.shape[2:], velocity.shape[2:])
    displacement = spatial.integrate(velocity * coarse_weights, config.integration_steps)
    for _ in range(config.passes - 1):
        moved = warp_moving(shrunk, spatial.resize_field(displacement, shrunk.shape[2:]))
        velocity = config.pass_scale * coarse_velocity(network, moved, 1, amp) * coarse_weights
        displacement = spatial.compose(displacement, spatial.integrate(velocity, config.integration_steps))
    full = spatial.resize_field(displacement, stacked.shape[2:])
    return _crop(full, shape)


def _crop(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(B, C, *P)`` cut back to the unpadded ``shape`` (padding sits at the far end of each axis)."""
    return field[(slice(None), slice(None), *[slice(0, s) for s in shape])]


def _coarse_weights(weights: torch.Tensor, padded: Sequence[int], coarse: Sequence[int]) -> torch.Tensor:
    """``weights`` ``(*S)`` zero-padded like the inputs to ``padded`` and resized (corner-aligned) to ``coarse``."""
    pads: list[int] = []
    for size, target in zip(reversed(weights.shape), reversed(padded)):
        pads += [0, target - size]
    padded_weights = F.pad(weights.to(torch.float32)[None, None], pads)
    return spatial.resize_image(padded_weights, coarse)


def warp_moving(inputs: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """:func:`network_input` ``(B, C, *S)`` with the moving image and its prior warped by ``displacement`` (voxels)."""
    moving = [0, *range(2, 2 + (inputs.shape[1] - 2) // 2)]
    warped = inputs.clone()
    warped[:, moving] = spatial.warp(inputs[:, moving], displacement, padding="zeros")
    return warped
