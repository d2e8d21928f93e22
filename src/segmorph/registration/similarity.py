"""Differentiable image similarity losses for registration: lower is better.

Every loss takes a ``fixed`` and a ``warped`` image, float tensors ``(B, C, *S)`` with two
(``(B, C, I, J)``) or three (``(B, C, I, J, K)``) spatial axes, and returns a scalar tensor.
Where it makes sense a ``mask`` ``(B, 1, *S)`` (float or bool) restricts the loss to the voxels
where ``mask > 0``; the mask is binarised and never differentiated. Intensities are in any unit;
windows and radii are in voxels, not mm.

Half-precision inputs are computed in float32; float64 stays float64 (for gradchecks).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from segmorph.registration.names import SIMILARITY_NAMES

# ----------------------------------------------------------------------------- input checks


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_pair(fixed: torch.Tensor, warped: torch.Tensor) -> None:
    if fixed.ndim not in (4, 5):
        raise ValueError(f"fixed: expected (B, C, *S) with 2 or 3 spatial axes, got shape {tuple(fixed.shape)}")
    if warped.shape != fixed.shape:
        raise ValueError(f"warped: shape {tuple(warped.shape)} does not match fixed {tuple(fixed.shape)}")


def _mask_weight(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Binary weight ``(B, 1, *S)`` in ``like``'s dtype, or None when there is no mask."""
    if mask is None:
        return None
    expected = (like.shape[0], 1, *like.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask: expected shape {expected}, got {tuple(mask.shape)}")
    return (mask.detach() > 0).to(like.dtype)


def _masked_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``(B, C', *S)`` over the voxels where ``weight`` ``(B, 1, *S)`` is 1."""
    if weight is None:
        return values.mean()
    total = (values * weight).sum()
    return total / (weight.sum() * values.shape[1]).clamp_min(1.0)


# ----------------------------------------------------------------------------- mse


def mse(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared intensity difference (intensity units squared).

    Args:
        fixed: ``(B, C, *S)`` reference image.
        warped: ``(B, C, *S)`` moving image resampled on the fixed grid.
        mask: Optional ``(B, 1, *S)``; only voxels with ``mask > 0`` count.
    """
    _check_pair(fixed, warped)
    fixed, warped = _full_precision(fixed), _full_precision(warped)
    return _masked_mean((fixed - warped) ** 2, _mask_weight(mask, fixed))


# ----------------------------------------------------------------------------- local NCC


def _window_sizes(window: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    sizes = (window,) * ndim if isinstance(window, int) else tuple(window)
    if len(sizes) != ndim or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"window: expected a positive int or {ndim} positive ints, got {window!r}")
    return sizes


def box_sum(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sum of ``x`` ``(B, C, *S)`` over a box of ``sizes`` voxels around every voxel, zero outside.

    Separable: one cumulative sum per spatial axis, so the cost does not grow with the window.
    An even size reaches one voxel further towards lower indices than towards higher ones.
    """
    for axis, size in enumerate(sizes, start=2):
        before = size // 2
        pad = [0, 0] * (x.ndim - 2)
        pad[2 * (x.ndim - 1 - axis)] = before + 1  # the extra leading zero makes the difference below a box sum
        pad[2 * (x.ndim - 1 - axis) + 1] = size - 1 - before
        running = F.pad(x, pad).cumsum(axis)
        length = x.shape[axis]
        x = running.narrow(axis, size, length) - running.narrow(axis, 0, length)
    return x


def _centred(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Subtract each image's (masked, detached) mean: NCC ignores it and float32 sums stay small."""
    axes = tuple(range(2, x.ndim))
    if weight is None:
        return x - x.detach().mean(axes, keepdim=True)
    mean = (x.detach() * weight).sum(axes, keepdim=True) / weight.sum(axes, keepdim=True).clamp_min(1.0)
    return (x - mean) * weight


def local_ncc(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    window: int | Sequence[int] = 9,
    mask: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Negative mean squared local normalised cross-correlation (VoxelMorph's NCC), in ``[-1, 0]``.

    Per voxel, over a box of ``window`` voxels: ``cc = cross**2 / (var_f * var_w + eps)`` where
    ``cross`` and ``var_*`` are sums of centred products over the box (not divided by its size).
    Unlike VoxelMorph, the box statistics use only voxels inside the image (and inside the mask),
    so the loss is exactly invariant to ``a * I + b`` (``a != 0``) up to ``eps``.

    Args:
        fixed: ``(B, C, *S)`` reference image.
        warped: ``(B, C, *S)`` moving image resampled on the fixed grid.
        window: Box size in voxels, one int or one per spatial axis.
        mask: Optional ``(B, 1, *S)``; box statistics and the mean use only ``mask > 0`` voxels.
        eps: Added to the variance product; flat regions score 0.
    """
    _check_pair(fixed, warped)
    fixed, warped = _full_precision(fixed), _full_precision(warped)
    sizes = _window_sizes(window, fixed.ndim - 2)
    weight = _mask_weight(mask, fixed)
    f, w = _centred(fixed, weight), _centred(warped, weight)
    sums = box_sum(torch.cat([f, w, f * f, w * w, f * w], dim=1), sizes)
    sum_f, sum_w, sum_ff, sum_ww, sum_fw = sums.chunk(5, dim=1)
    ones = weight if weight is not None else fixed.new_ones((1, 1, *fixed.shape[2:]))
    count = box_sum(ones, sizes).clamp_min(1.0)  # integer counts; outside the mask they are unused
    cross = sum_fw - sum_f * sum_w / count
    var_f = (sum_ff - sum_f * sum_f / count).clamp_min(0.0)
    var_w = (sum_ww - sum_w * sum_w / count).clamp_min(0.0)
    cc = cross * cross / (var_f * var_w + eps)
    return -_masked_mean(cc, weight)


# ----------------------------------------------------------------------------- mutual information


def _unit_range(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Scale each ``(b, c)`` image to ``[0, 1]`` by its (masked) min and max, both detached."""
    flat = x.detach().flatten(2)
    inside = None if weight is None else weight.flatten(2) > 0
    low = flat if inside is None else flat.masked_fill(~inside, float("inf"))
    high = flat if inside is None else flat.masked_fill(~inside, float("-inf"))
    low, high = low.amin(-1, keepdim=True), high.amax(-1, keepdim=True)
    low, high = low.nan_to_num(0.0, 0.0, 0.0), high.nan_to_num(1.0, 1.0, 1.0)  # empty mask: any range
    return (x.flatten(2) - low) / (high - low).clamp_min(1e-12)


def _sample_voxels(
    weight: torch.Tensor | None, shape: tuple[int, int], num_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices ``(B, num_samples)`` of voxels to use; only ``weight > 0`` voxels when masked."""
    batch, count = shape
    if weight is None:
        chosen = torch.randperm(count, generator=generator)[:num_samples]
        return chosen.expand(batch, -1)
    probabilities = weight.flatten(1).double().cpu() + 1e-30  # keeps multinomial valid for an empty mask
    enough = bool((weight.flatten(1).sum(1) >= num_samples).all())
    return torch.multinomial(probabilities, num_samples, replacement=not enough, generator=generator)


def _parzen_weights(x: torch.Tensor, bins: int, sigma_ratio: float) -> torch.Tensor:
    """Gaussian bin memberships ``(N, V, bins)`` of values ``x`` ``(N, V)`` in ``[0, 1]``, rows sum to 1."""
    centres = torch.linspace(0.0, 1.0, bins, dtype=x.dtype, device=x.device)
    sigma = sigma_ratio / (bins - 1)
    logits = -((x.unsqueeze(-1) - centres) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, dim=-1)


def mutual_information(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    bins: int = 32,
    sigma_ratio: float = 0.5,
    mask: torch.Tensor | None = None,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Negative global mutual information (nats) from a Gaussian Parzen joint histogram.

    As MONAI's ``GlobalMutualInformationLoss``: each image is scaled to ``[0, 1]`` by its own min
    and max (detached, over the mask when given), every voxel votes for ``bins`` evenly spaced
    centres with Gaussian weights of ``sigma = sigma_ratio * bin spacing`` (normalised per voxel),
    and ``MI = sum p_fw * log(p_fw / (p_f p_w))``. Works across modalities: it only asks that
    intensities predict each other, not that they match. Channels are scored separately and
    averaged. Memory is about ``2 * B * C * voxels * bins`` values; use ``num_samples`` on
    large volumes.

    Args:
        fixed: ``(B, C, *S)`` reference image.
        warped: ``(B, C, *S)`` moving image resampled on the fixed grid.
        bins: Number of histogram bins per image.
        sigma_ratio: Parzen window width as a fraction of the bin spacing.
        mask: Optional ``(B, 1, *S)``; only ``mask > 0`` voxels enter the histogram (an empty
            mask scores 0).
        num_samples: Use this many random voxels per image (all voxels when None), drawn without
            replacement (with replacement when a mask holds fewer). Few samples bias MI upwards.
        generator: Seeds the voxel sampling.
    """
    _check_pair(fixed, warped)
    if bins < 2:
        raise ValueError(f"bins: expected at least 2, got {bins}")
    fixed, warped = _full_precision(fixed), _full_precision(warped)
    weight = _mask_weight(mask, fixed)
    f, w = _unit_range(fixed, weight), _unit_range(warped, weight)  # (B, C, V)
    voxel_weight = None if weight is None else weight.flatten(2).expand_as(f)
    if num_samples is not None and num_samples < f.shape[-1]:
        index = _sample_voxels(weight, (f.shape[0], f.shape[-1]), num_samples, generator).to(f.device)
        index = index.unsqueeze(1).expand(-1, f.shape[1], -1)
        f, w = f.gather(2, index), w.gather(2, index)
        voxel_weight = None if voxel_weight is None else voxel_weight.gather(2, index)
    return -_parzen_mi(f.flatten(0, 1), w.flatten(0, 1), voxel_weight, bins, sigma_ratio).mean()


def _parzen_mi(
    f: torch.Tensor, w: torch.Tensor, voxel_weight: torch.Tensor | None, bins: int, sigma_ratio: float
) -> torch.Tensor:
    """Mutual information ``(N,)`` of value rows ``f`` and ``w`` ``(N, V)`` in ``[0, 1]``."""
    eps = 1e-10 if f.dtype == torch.float64 else 1e-7
    parzen_f, parzen_w = _parzen_weights(f, bins, sigma_ratio), _parzen_weights(w, bins, sigma_ratio)
    if voxel_weight is not None:
        voxel_weight = voxel_weight.flatten(0, 1).unsqueeze(-1)
        parzen_f = parzen_f * voxel_weight
    total = parzen_f.sum((1, 2)).clamp_min(1.0).view(-1, 1, 1)
    joint = torch.bmm(parzen_f.transpose(1, 2), parzen_w) / total  # (N, bins, bins)
    marginal_f, marginal_w = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    return (joint * torch.log((joint + eps) / (marginal_f * marginal_w + eps))).sum((1, 2))


# ----------------------------------------------------------------------------- MIND-SSC


def _neighbour_pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of face neighbours that lie on different axes: 12 in 3D, 4 in 2D (unit offsets)."""
    offsets = [tuple(sign * (axis == d) for d in range(ndim)) for axis in range(ndim) for sign in (-1, 1)]
    pairs = itertools.combinations(offsets, 2)
    return [(p, q) for p, q in pairs if sum((a - b) ** 2 for a, b in zip(p, q)) == 2]


def _shifted(padded: torch.Tensor, offset: Sequence[int], margin: int, shape: Sequence[int]) -> torch.Tensor:
    """The image at ``x + offset`` for every ``x``, cut from a copy padded by ``margin`` voxels."""
    for axis, (step, length) in enumerate(zip(offset, shape), start=2):
        padded = padded.narrow(axis, margin + step, length)
    return padded


def _replicate_pad(x: torch.Tensor, margin: int) -> torch.Tensor:
    return F.pad(x, [margin] * (2 * (x.ndim - 2)), mode="replicate") if margin > 0 else x


def _patch_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2 radius + 1)^n`` patch, borders replicated."""
    if radius == 0:
        return x
    pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
    return pool(_replicate_pad(x, radius), 2 * radius + 1, stride=1)


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors (Heinrich et al., MICCAI 2013), in ``(0, 1]``, unitless.

    For every pair of face neighbours ``p, q`` (offsets of ``dilation`` voxels) on different axes,
    ``D = patch mean of (I(x + p) - I(x + q))**2`` over a patch of radius ``radius``; then
    ``MIND = exp(-(D - min D) / V)`` with ``V`` the mean of ``D - min D`` over the pairs at ``x``,
    clamped to ``[0.001, 1000]`` times its (detached) mean over the image. 3D uses the 12 pairs of
    the 6-neighbourhood; 2D the 4 pairs of the 4-neighbourhood. Borders are replicated. The result
    does not change under ``a * I + b`` (any ``a != 0``), so it compares modalities.

    Args:
        image: ``(B, C, *S)`` float image.
        radius: Patch radius in voxels.
        dilation: Neighbour distance in voxels.

    Returns:
        ``(B, P * C, *S)`` with ``P = 12`` in 3D and ``4`` in 2D, channel-major (``P`` per input channel).
    """
    if image.ndim not in (4, 5):
        raise ValueError(f"image: expected (B, C, *S) with 2 or 3 spatial axes, got shape {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"radius, dilation: expected radius >= 0 and dilation >= 1, got {radius}, {dilation}")
    image = _full_precision(image)
    batch, channels, *shape = image.shape
    image = image.reshape(batch * channels, 1, *shape)
    padded = _replicate_pad(image, dilation)
    distances = [
        _shifted(padded, [dilation * s for s in p], dilation, shape)
        - _shifted(padded, [dilation * s for s in q], dilation, shape)
        for p, q in _neighbour_pairs(len(shape))
    ]
    ssd = _patch_mean(torch.cat(distances, dim=1) ** 2, radius)
    ssd = ssd - ssd.amin(1, keepdim=True)
    variance = ssd.mean(1, keepdim=True)
    level = variance.detach().mean().clamp_min(torch.finfo(ssd.dtype).tiny)
    variance = variance.clamp(0.001 * level, 1000 * level)
    return torch.exp(-ssd / variance).reshape(batch, -1, *shape)


def mind_loss(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    radius: int = 1,
    dilation: int = 2,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared difference of MIND-SSC descriptors (unitless, in ``[0, 1]``); see :func:`mind_ssc`.

    Args:
        fixed: ``(B, C, *S)`` reference image.
        warped: ``(B, C, *S)`` moving image resampled on the fixed grid.
        radius: Patch radius in voxels.
        dilation: Neighbour distance in voxels.
        mask: Optional ``(B, 1, *S)``; only ``mask > 0`` voxels are averaged (their descriptors
            still see ``radius + dilation`` voxels around them).
    """
    _check_pair(fixed, warped)
    weight = _mask_weight(mask, _full_precision(fixed))
    difference = mind_ssc(fixed, radius, dilation) - mind_ssc(warped, radius, dilation)
    return _masked_mean(difference**2, weight)


# ----------------------------------------------------------------------------- registry

Similarity = Callable[..., torch.Tensor]

SIMILARITIES: dict[str, Similarity] = {
    "mse": mse,
    "ncc": local_ncc,
    "mi": mutual_information,
    "mind": mind_loss,
}
"""Similarity losses by name; each is ``loss(fixed, warped, ..., mask=None) -> scalar``, lower is better."""
assert tuple(SIMILARITIES) == SIMILARITY_NAMES, "segmorph.registration.names lists the similarity losses"


def get_similarity(name: str) -> Similarity:
    """The similarity loss called ``name`` (one of :data:`SIMILARITIES`)."""
    if name not in SIMILARITIES:
        raise ValueError(f"similarity: unknown name {name!r}; known: {', '.join(sorted(SIMILARITIES))}")
    return SIMILARITIES[name]
