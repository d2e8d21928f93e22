"""Differentiable resampling on voxel grids: sample, warp, compose, integrate, resize.

Everything here works in **voxel units of one grid** and is batched: images are ``(B, C, *S)``,
coordinate and displacement fields are ``(B, n, *S)`` whose component ``d`` is an index along array
axis ``d`` (not ``grid_sample``'s reversed x, y, z order; the conversion happens only in
:func:`sample`). :mod:`segmorph.registration.transform` converts to and from world millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("linear", "nearest", "cubic")
LABEL_INTERPOLATIONS = ("label", "nearest")
LABEL_GROUP_VOXELS = 2**25  # label interpolation: the most indicator values (input and output grids) held at once


def identity_grid(shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Voxel indices of every voxel of a grid, shape ``(1, n, *shape)``."""
    axes = [torch.arange(s, dtype=dtype, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def _normalise(coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Voxel coords ``(B, n, *S)`` → ``grid_sample`` grid ``(B, *S, n)`` in reversed axis order."""
    scales = [2.0 / (s - 1) if s > 1 else 0.0 for s in shape]
    scale = torch.tensor(scales, dtype=coords.dtype, device=coords.device).view(1, -1, *[1] * (coords.ndim - 2))
    normalised = coords * scale - (scale > 0).to(coords.dtype)
    return normalised.movedim(1, -1).flip(-1)


def sample(
    image: torch.Tensor, coords: torch.Tensor, interpolation: str = "linear", padding: str = "zeros"
) -> torch.Tensor:
    """Values of ``image`` at fractional voxel positions.

    Args:
        image: ``(B, C, *S_in)``.
        coords: ``(B, n, *S_out)`` voxel indices into ``image`` (array-axis order); broadcast over B when 1.
        interpolation: ``"linear"``, ``"nearest"`` or ``"cubic"`` (Keys cubic convolution, a = -0.5).
        padding: ``"zeros"``, ``"border"`` or ``"reflection"`` for points outside the grid.

    Returns:
        ``(B, C, *S_out)``.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {INTERPOLATIONS}, got {interpolation!r}")
    if coords.shape[0] != image.shape[0]:
        coords = coords.expand(image.shape[0], *coords.shape[1:])
    if interpolation == "cubic":
        return _sample_cubic(image, coords, padding)
    grid = _normalise(coords.to(image.dtype), image.shape[2:])
    mode = "bilinear" if interpolation == "linear" else "nearest"
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def sample_labels(labels: torch.Tensor, coords: torch.Tensor, interpolation: str = "label") -> torch.Tensor:
    """Label values of ``labels`` at fractional voxel positions (zeros outside the grid).

    ``"label"`` interpolates each label's indicator linearly and keeps the label of largest weight
    (ITK's label-wise interpolation; ANTs calls its Gaussian variant ``genericLabel``): boundaries
    move smoothly instead of in whole-voxel steps as with ``"nearest"``. A point takes a label only
    where that label's weight is positive, so outside the grid is 0.

    Args:
        labels: ``(B, C, *S_in)`` integer-valued labels (any dtype).
        coords: ``(B, n, *S_out)`` voxel indices, as for :func:`sample`.
        interpolation: ``"label"`` or ``"nearest"``.

    Returns:
        ``(B, C, *S_out)`` int64 labels.
    """
    if interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {LABEL_INTERPOLATIONS} for labels, got {interpolation!r}")
    dtype = torch.float64 if coords.dtype == torch.float64 else torch.float32
    if interpolation == "nearest":
        return sample(labels.to(dtype), coords, "nearest", "zeros").round().long()
    # Label 0 is not sampled: its weight is 1 minus the others' (points outside the grid count as 0). Indicators
    # are interpolated in groups sharing one grid_sample, a group's indicators before and after sampling at most
    # LABEL_GROUP_VOXELS values (memory bounded whatever the number of labels). Ties: the lowest label, 0 first.
    values = [int(v) for v in torch.unique(labels).tolist() if v != 0]
    channels = labels.shape[1]
    out_shape = labels.shape[:2] + coords.shape[2:]
    best_label = torch.zeros(out_shape, dtype=torch.int64, device=labels.device)
    if not values:
        return best_label
    best_weight = torch.full(out_shape, -1.0, dtype=dtype, device=labels.device)
    total = torch.zeros(out_shape, dtype=dtype, device=labels.device)
    group = max(1, LABEL_GROUP_VOXELS // (labels.numel() + best_label.numel()))
    for start in range(0, len(values), group):
        chunk = values[start : start + group]
        indicators = torch.cat([(labels == value) for value in chunk], dim=1).to(dtype)
        stacked = sample(indicators, coords, "linear", "zeros")
        for k, value in enumerate(chunk):
            weight = stacked[:, k * channels : (k + 1) * channels]
            total += weight
            better = weight > best_weight
            best_weight = torch.where(better, weight, best_weight)
            best_label.masked_fill_(better, value)
    return best_label.masked_fill_(best_weight <= 1.0 - total, 0)


def _keys_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Weights of the four taps at offsets -1, 0, 1, 2 for fractional part ``t`` (a = -0.5)."""
    t2, t3 = t * t, t * t * t
    return [
        -0.5 * t3 + t2 - 0.5 * t,
        1.5 * t3 - 2.5 * t2 + 1.0,
        -1.5 * t3 + 2.0 * t2 + 0.5 * t,
        0.5 * t3 - 0.5 * t2,
    ]


def _sample_cubic(image: torch.Tensor, coords: torch.Tensor, padding: str) -> torch.Tensor:
    base = coords.floor()
    fraction = coords - base
    weights = [_keys_weights(fraction[:, d : d + 1]) for d in range(coords.shape[1])]
    out = torch.zeros(image.shape[:2] + coords.shape[2:], dtype=image.dtype, device=image.device)
    for taps in torch.cartesian_prod(*[torch.arange(4)] * coords.shape[1]).tolist():
        offset = torch.tensor([t - 1 for t in taps], dtype=coords.dtype, device=coords.device)
        weight = weights[0][taps[0]]
        for d in range(1, len(taps)):
            weight = weight * weights[d][taps[d]]
        at = base + offset.view(1, -1, *[1] * (coords.ndim - 2))
        out = out + weight * sample(image, at, "nearest", padding)
    return out.to(image.dtype)


def warp(image: torch.Tensor, displacement: torch.Tensor, interpolation: str = "linear", padding: str = "border"):
    """``image(x + u(x))`` on the image's own grid; ``displacement`` ``(B, n, *S)`` in voxels."""
    grid = identity_grid(displacement.shape[2:], displacement.dtype, displacement.device)
    return sample(image, grid + displacement, interpolation, padding)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``(id + outer) ∘ (id + inner)``: ``inner(x) + outer(x + inner(x))`` (voxels)."""
    return inner + warp(outer, inner)


def integrate(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring (voxels in, voxels out).

    ``steps`` squarings of ``velocity / 2**steps``; the result is a diffeomorphism's displacement
    when the scaled field is small (under about half a voxel), which keeps Jacobians positive.
    """
    displacement = velocity / (2**steps)
    for _ in range(steps):
        displacement = compose(displacement, displacement)
    return displacement


def resize_field(displacement: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a voxel displacement field to another grid over the same extent, rescaling its vectors.

    Grids are corner-aligned (voxel 0 and voxel N-1 of both grids coincide), as in
    :func:`resize_image`, so the displacement in voxels scales by ``(new - 1) / (old - 1)`` per axis.
    """
    old = displacement.shape[2:]
    if tuple(old) == tuple(shape):
        return displacement
    resized = resize_image(displacement, shape)
    factors = [(n - 1) / (o - 1) if o > 1 else 1.0 for n, o in zip(shape, old)]
    scale = torch.tensor(factors, dtype=resized.dtype, device=resized.device).view(1, -1, *[1] * len(shape))
    return resized * scale


def resize_image(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Linear resampling of ``(B, C, *S)`` to ``shape`` with the corner voxels kept in place."""
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(image, size=list(shape), mode=mode, align_corners=True)


def coarse_shape(shape: Sequence[int], factor: float, minimum: int = 8) -> tuple[int, ...]:
    """Grid shape reduced by ``factor`` per axis (corner-aligned, so ``(s - 1) / factor + 1``), not below ``minimum``."""
    return tuple(max(min(s, minimum), int(round((s - 1) / factor)) + 1) for s in shape)


def apply_matrix(matrix: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Apply a homogeneous ``(B or 1, n+1, n+1)`` matrix to coordinate fields ``(B or 1, n, *S)``."""
    n = coords.shape[1]
    flat = coords.flatten(2)
    mapped = torch.einsum("bij,bjk->bik", matrix[:, :n, :n].to(coords.dtype), flat)
    mapped = mapped + matrix[:, :n, n:].to(coords.dtype)
    return mapped.view(mapped.shape[0], n, *coords.shape[2:])
