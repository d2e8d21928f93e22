"""Sliding-window prediction: the hot path from a network and a volume to class scores.

Pure functions, 2D and 3D. The volume is cut into overlapping tiles (nnU-Net's evenly spread steps,
first and last tiles flush with the borders), tiles and their mirrored copies run through the network
in batches, and their logits are blended with a Gaussian weight map into one preallocated float32
buffer ``(K, *S)``. Peak memory is that buffer and one batch of tiles: the weight sum and the softmax
are computed afterwards slab by slab.

Test-time mirroring averages *logits* over all flip combinations (nnU-Net v2's convention); softmax is
taken once, at the end. Spatial axes are numbered ``0..ndim-1`` (the channel axis is not counted).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segmorph.engine.autocast import autocast

MIN_IMPORTANCE = 1e-3  # floor of the Gaussian map: tile borders still count a little, no division by ~0
# On CPU a forward pass is fastest per voxel at about this many voxels per batch: fewer and PyTorch picks
# its slower native convolution for batch 1 on small deep feature maps; more and activations leave the
# cache (on a UNet(16..128), 64^3 tiles ran fastest one by one and 40x56x40 tiles in twos).
CPU_BATCH_VOXELS = 2**18


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 1 / 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian blending weights for one tile, cached per (patch, sigma, device, dtype).

    The Gaussian is centred on the tile centre ``(p - 1) / 2`` with ``sigma = p * sigma_scale`` voxels
    per axis, equal to 1 at the centre (odd sizes) and floored at ``1e-3`` (MONAI's ``mode='gaussian'``;
    nnU-Net's, up to its half-voxel shift on even sizes). The returned tensor is shared: do not modify it.

    Args:
        patch_size: Tile size in voxels per spatial axis.
        sigma_scale: Standard deviation as a fraction of the tile size.
        device: Where the map lives.
        dtype: Its floating dtype.

    Returns:
        Weights ``(*P)``, all in ``[1e-3, 1]``.
    """
    patch = _positive_ints(patch_size, "patch_size")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale: must be positive, got {sigma_scale}")
    return _cached_gaussian(patch, float(sigma_scale), torch.device(device), dtype)


@functools.lru_cache(maxsize=16)
def _cached_gaussian(patch: tuple[int, ...], sigma_scale: float, device: torch.device, dtype: torch.dtype):
    with torch.inference_mode(False):  # a normal tensor, usable later with autograd too
        weights = torch.ones((), dtype=torch.float64)
        for p in patch:
            x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
            weights = weights[..., None] * torch.exp(-(x**2) / (2 * (p * sigma_scale) ** 2))
        return weights.clamp_(min=MIN_IMPORTANCE).to(device=device, dtype=dtype)


def tile_starts(image_size: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[list[int]]:
    """Tile start indices per axis (nnU-Net style).

    Along each axis the number of tiles is the smallest that keeps the step at most
    ``patch * (1 - overlap)``; the steps are then spread evenly so that the first tile starts at 0 and
    the last ends at the border. An axis no longer than the patch gets one tile at 0.

    Args:
        image_size: Spatial size ``S`` in voxels.
        patch_size: Tile size ``P`` in voxels, same length.
        overlap: Fraction of a tile shared with its neighbour, in ``[0, 1)``.

    Returns:
        One sorted list of start indices per axis.
    """
    starts = []
    for size, patch in zip(image_size, patch_size):
        if size <= patch:
            starts.append([0])
            continue
        num = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
        step = (size - patch) / (num - 1)
        starts.append([round(step * i) for i in range(num)])
    return starts


def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 4,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    amp: bool = False,
    return_probabilities: bool = True,
) -> torch.Tensor:
    """Class scores for a whole volume from a network that sees one tile at a time.

    Args:
        model: Network mapping ``(B, C, *P)`` to logits ``(B, K, *P)``, already on ``device``. It is run
            in eval mode (its mode is restored afterwards); ``model.divisor``, when present, must divide
            every tile size.
        image: Input ``(C, *S)``, 2D or 3D, any device; it is padded with zeros (centred) on axes shorter
            than the tile.
        patch_size: Tile size ``P`` in voxels per spatial axis.
        overlap: Fraction of a tile shared with its neighbour, in ``[0, 1)``.
        batch_size: Most tiles (mirrored copies included) per forward pass; on CPU also at most
            ``max(1, 2**18 // prod(P))``, the fastest there.
        mirror_axes: Spatial axes to flip for test-time augmentation; logits are averaged over all
            ``2 ** len(mirror_axes)`` flip combinations.
        device: Where the network runs and the score buffer lives.
        amp: Autocast to bfloat16 on CPU, float16 on CUDA, where the hardware runs half precision
            fast (see :mod:`segmorph.engine.autocast`), ignored elsewhere;
            probabilities differ by about 1e-2.
        return_probabilities: Softmax over classes; otherwise the Gaussian-weighted mean logits.

    Returns:
        Float32 ``(K, *S)`` on ``device``: probabilities summing to 1 over ``K``, or logits.

    Raises:
        ValueError: A bad argument (the message names it).
    """
    device = torch.device(device)
    patch = _check_arguments(model, image, patch_size, overlap, batch_size, mirror_axes, device)
    padded, crop = pad_to_patch(image, patch)
    flips = [dims for n in range(len(mirror_axes) + 1) for dims in itertools.combinations(mirror_axes, n)]
    corners = list(itertools.product(*tile_starts(padded.shape[1:], patch, overlap)))
    jobs = [(corner, tuple(a + 1 for a in dims)) for corner in corners for dims in flips]  # dims of (C|K, *P)
    weights = gaussian_importance_map(patch, device=device)
    if device.type == "cpu":
        batch_size = max(1, min(batch_size, CPU_BATCH_VOXELS // math.prod(patch)))
    scores: torch.Tensor | None = None
    with (
        _eval_mode(model),
        torch.inference_mode(),
        autocast(device, amp, torch.float16 if device.type == "cuda" else torch.bfloat16),
    ):
        for chunk in _chunks(jobs, batch_size):
            logits = model(_gather_tiles(padded, chunk, patch, device))
            if scores is None:
                with torch.inference_mode(False):  # a normal tensor: callers may modify the result in place
                    scores = torch.zeros((logits.shape[1], *padded.shape[1:]), dtype=torch.float32, device=device)
            for tile_logits, (corner, dims) in zip(logits, chunk):
                window = (slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, patch))
                scores[window].addcmul_(tile_logits.flip(dims) if dims else tile_logits, weights)
    _normalise_(scores, corners, patch, weights, len(flips), return_probabilities)
    return scores[(slice(None),) + crop].contiguous()


def compile_for_inference(model: nn.Module) -> nn.Module:
    """The model compiled by TorchInductor with frozen weights (prepacked convolutions, fused pointwise ops).

    Compilation costs seconds once per process and tile shape and makes every later forward pass
    faster with the same probabilities (to float32 rounding), so it pays off from a few dozen cases on
    (timings in benchmarks/RESULTS.md). Falls back to the eager model, with a warning, where compilation fails
    (no C++ compiler, unsupported platform).
    """
    # Static shapes: a new tile batch size compiles once more instead of a symbolic-shape graph.
    return _CompiledNetwork(torch.compile(model, dynamic=False, options={"freezing": True}), model)


class _CompiledNetwork(nn.Module):
    """A compiled network that still exposes ``divisor`` and ``config`` and falls back if compiling fails."""

    def __init__(self, compiled: nn.Module, eager: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled
        self.eager = eager
        self.divisor = getattr(eager, "divisor", 1)
        self.config = getattr(eager, "config", {})
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                return self.compiled(x)
            except Exception as err:  # noqa: BLE001 -- compilation happens on the first call
                warnings.warn(f"torch.compile failed, predicting without it ({type(err).__name__})", stacklevel=2)
                self.failed = True
        return self.eager(x)


def predict_labels(model: nn.Module, image: torch.Tensor, patch_size: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """Most likely class per voxel: int64 ``(1, *S)``; keyword arguments as :func:`sliding_window_logits`."""
    kwargs["return_probabilities"] = False  # softmax keeps the argmax; skip it
    return sliding_window_logits(model, image, patch_size, **kwargs).argmax(0, keepdim=True)


def _check_arguments(model, image, patch_size, overlap, batch_size, mirror_axes, device) -> tuple[int, ...]:
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image: expected a tensor (C, *S) with 2 or 3 spatial axes, got {shape}")
    ndim = image.ndim - 1
    patch = _positive_ints(patch_size, "patch_size")
    if len(patch) != ndim:
        raise ValueError(f"patch_size: expected {ndim} sizes for image shape {tuple(image.shape)}, got {patch}")
    divisor = int(getattr(model, "divisor", 1))
    if any(p % divisor for p in patch):
        raise ValueError(f"patch_size: every size must be a multiple of the model divisor {divisor}, got {patch}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap: expected a fraction in [0, 1), got {overlap}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    axes = list(mirror_axes)
    if any(a not in range(ndim) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror_axes: expected distinct spatial axes in 0..{ndim - 1}, got {axes}")
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != device.type:
        raise ValueError(f"device: the model is on {parameter.device}, not on {device}")
    return patch


def _positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        result = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of positive integers, got {values!r}") from None
    if not result or min(result) < 1 or any(r != v for r, v in zip(result, values)):
        raise ValueError(f"{name}: expected a sequence of positive integers, got {values!r}")
    return result


def pad_to_patch(image: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad (centred, extra voxel after) axes shorter than the tile; the slices undo it."""
    missing = [max(p - s, 0) for s, p in zip(image.shape[1:], patch)]
    crop = tuple(slice(m // 2, m // 2 + s) for m, s in zip(missing, image.shape[1:]))
    if not any(missing):
        return image, crop
    pads = [n for m in reversed(missing) for n in (m // 2, m - m // 2)]  # F.pad wants the last axis first
    return F.pad(image, pads), crop


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _gather_tiles(image: torch.Tensor, chunk: list, patch: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Stack the chunk's tiles ``(B, C, *P)`` on ``device``, each flipped as its job says."""
    dtype = image.dtype if image.is_floating_point() else torch.float32
    batch = torch.empty((len(chunk), image.shape[0], *patch), dtype=dtype, device=device)
    for tile, (corner, dims) in zip(batch, chunk):
        source = image[(slice(None),) + tuple(slice(c, c + p) for c, p in zip(corner, patch))]
        tile.copy_(source.flip(dims) if dims else source)
    return batch


def _normalise_(
    scores: torch.Tensor, corners: list, patch: tuple[int, ...], weights: torch.Tensor, copies: int, softmax: bool,
    slab_voxels: int = 1 << 22,
) -> None:  # fmt: skip
    """Divide summed weighted logits ``(K, *S)`` by their summed weights (times ``copies``), then softmax.

    One slab of the first spatial axis at a time, so the weight sum and the softmax temporaries never
    exist for the whole volume; per voxel the sums run in the same order as over the whole volume.
    """
    size, rest = scores.shape[1], scores.shape[2:]
    step = max(1, slab_voxels // max(1, math.prod(rest)))
    for start in range(0, size, step):
        stop = min(start + step, size)
        weight_sum = torch.zeros((stop - start, *rest), dtype=scores.dtype, device=scores.device)
        for corner in corners:
            low, high = max(corner[0], start), min(corner[0] + patch[0], stop)
            if low < high:
                others = tuple(slice(c, c + p) for c, p in zip(corner[1:], patch[1:]))
                weight_sum[(slice(low - start, high - start), *others)] += weights[low - corner[0] : high - corner[0]]
        block = scores[:, start:stop]
        block.div_(weight_sum.mul_(copies))
        if softmax:
            _softmax_(block)


def _softmax_(scores: torch.Tensor) -> None:
    """Softmax over axis 0 in place (``torch.softmax`` would allocate a second ``(K, *S)`` buffer)."""
    scores.sub_(scores.amax(0, keepdim=True)).exp_()
    scores.div_(scores.sum(0, keepdim=True))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def slicewise_logits(
    model: nn.Module,
    image: torch.Tensor,
    slice_axis: int,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 4,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    amp: bool = False,
    return_probabilities: bool = True,
) -> torch.Tensor:
    """Class scores for a 3D volume from a 2D network, one slice across ``slice_axis`` at a time.

    Each slice ``(C, A, B)`` (``A``, ``B``: the volume's other two spatial axes, in order) is predicted as
    :func:`sliding_window_logits` predicts a 2D image (tiles, Gaussian blending, mirroring); the tiles of
    several slices share a forward pass, and the slices' scores fill one preallocated ``(K, *S)`` buffer.

    Args:
        model: 2D network mapping ``(B, C, *P)`` to logits ``(B, K, *P)``, already on ``device``.
        image: Input ``(C, I, J, K)``, any device.
        slice_axis: The spatial axis (0, 1 or 2) the slices are cut across.
        patch_size: 2D tile size ``P`` in voxels along ``A`` and ``B``.
        overlap, batch_size, device, amp, return_probabilities: As for :func:`sliding_window_logits`.
        mirror_axes: In-plane axes to flip for test-time augmentation: 0 (``A``) and/or 1 (``B``).

    Returns:
        Float32 ``(K, I, J, K)`` on ``device``: probabilities summing to 1 over ``K``, or logits.

    Raises:
        ValueError: A bad argument (the message names it).
    """
    device = torch.device(device)
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image: expected a tensor (C, I, J, K) with 3 spatial axes, got {shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis: expected 0, 1 or 2, got {slice_axis!r}")
    slices = image.movedim(slice_axis + 1, 0)  # (N, C, A, B), a view
    patch = _check_arguments(model, slices[0], patch_size, overlap, batch_size, mirror_axes, device)
    count, channels = slices.shape[:2]
    padded, crop = pad_to_patch(slices.reshape(count * channels, *slices.shape[2:]), patch)
    padded = padded.reshape(count, channels, *padded.shape[1:])
    flips = [dims for n in range(len(mirror_axes) + 1) for dims in itertools.combinations(mirror_axes, n)]
    corners = list(itertools.product(*tile_starts(padded.shape[2:], patch, overlap)))
    jobs = [(index, corner, tuple(a + 1 for a in dims)) for index in range(count) for corner in corners
            for dims in flips]  # fmt: skip
    weights = gaussian_importance_map(patch, device=device)
    if device.type == "cpu":
        batch_size = max(1, min(batch_size, CPU_BATCH_VOXELS // math.prod(patch)))
    scores: torch.Tensor | None = None
    stack: torch.Tensor | None = None  # (K, N, A', B'): a view of ``scores`` (K, *S') with the slice axis first
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    with _eval_mode(model), torch.inference_mode(), autocast(device, amp, half):
        for chunk in _chunks(jobs, batch_size):
            logits = model(_gather_tiles_of_slices(padded, chunk, patch, device))
            if stack is None:
                shape = list(padded.shape[2:])
                shape.insert(slice_axis, count)
                with torch.inference_mode(False):  # a normal tensor: callers may modify the result in place
                    scores = torch.zeros((logits.shape[1], *shape), dtype=torch.float32, device=device)
                stack = scores.movedim(slice_axis + 1, 1)
            for tile_logits, (index, corner, dims) in zip(logits, chunk):
                window = (slice(None), index, *(slice(c, c + p) for c, p in zip(corner, patch)))
                stack[window].addcmul_(tile_logits.flip(dims) if dims else tile_logits, weights)
    _normalise_slices_(stack, corners, patch, weights, len(flips), return_probabilities)
    in_plane = iter(crop)
    window = tuple(slice(None) if axis == slice_axis else next(in_plane) for axis in range(3))
    return scores[(slice(None), *window)].contiguous()


def _gather_tiles_of_slices(
    slices: torch.Tensor, chunk: list, patch: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Stack the chunk's 2D tiles ``(B, C, *P)`` of the slices ``(N, C, A, B)`` on ``device``, each flipped as its
    job ``(slice index, corner, flip dims)`` says."""
    dtype = slices.dtype if slices.is_floating_point() else torch.float32
    batch = torch.empty((len(chunk), slices.shape[1], *patch), dtype=dtype, device=device)
    for tile, (index, corner, dims) in zip(batch, chunk):
        source = slices[(index, slice(None), *(slice(c, c + p) for c, p in zip(corner, patch)))]
        tile.copy_(source.flip(dims) if dims else source)
    return batch


def _normalise_slices_(
    stack: torch.Tensor, corners: list, patch: tuple[int, ...], weights: torch.Tensor, copies: int, softmax: bool,
    slab_voxels: int = 1 << 22,
) -> None:  # fmt: skip
    """Divide the summed weighted logits of every slice ``(K, N, A, B)`` by their summed weights (the same map for
    every slice, times ``copies``), then softmax; a slab of slices at a time."""
    weight_sum = torch.zeros(stack.shape[2:], dtype=stack.dtype, device=stack.device)
    for corner in corners:
        weight_sum[tuple(slice(c, c + p) for c, p in zip(corner, patch))] += weights
    weight_sum.mul_(copies)
    step = max(1, slab_voxels // max(1, weight_sum.numel()))
    for start in range(0, stack.shape[1], step):
        block = stack[:, start : start + step]
        block.div_(weight_sum)
        if softmax:
            _softmax_(block)
