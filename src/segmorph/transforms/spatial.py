"""Batched spatial augmentation: rotation, scaling, translation, elastic deformation and mirroring.

Conventions:

* Tensors are ``(B, C, I, J, K)`` in 3D and ``(B, C, I, J)`` in 2D, with the array axes of
  :mod:`segmorph.geometry`; spatial axis ``d`` is tensor axis ``2 + d``.
* A *sampling matrix* ``A`` (``n x n``) maps an output voxel's offset from the volume centre to the
  input position it reads, in voxels: ``v_in = A @ (v_out + displacement(v_out)) + t``, with a
  translation ``t`` (voxels; ``t > 0`` along an axis moves the content towards lower indices). Voxels
  are taken as isotropic (resample to the target spacing before augmenting).
* A rotation by ``+angle`` in the plane of spatial axes ``(p, q)``, ``p < q``, turns the content from
  axis ``p`` towards axis ``q``: 90 degrees equals ``torch.rot90(x, 1, dims=(2 + p, 2 + q))``. In 3D the
  angles are about axes I, J and K, i.e. in the planes (J, K), (I, K) and (I, J).
* A scale ``s`` multiplies the sampling offsets (nnU-Net's convention): ``s > 1`` shows more of the
  volume, so structures shrink.

Everything outside the input reads as 0, for images and labels alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_PLANES = {2: [(0, 1)], 3: [(1, 2), (0, 2), (0, 1)]}


@dataclass(frozen=True)
class SpatialConfig:
    """Probabilities (per sample) and ranges of the spatial augmentation; defaults follow nnU-Net v2.

    Attributes:
        enabled: False turns every spatial transform off.
        p_rotation: Probability of a rotation (all planes at once when drawn).
        rotation_deg: Range of each rotation angle in degrees.
        p_scaling: Probability of an isotropic scaling.
        scaling: Range of the scale factor (half the draws below 1, half above, as in nnU-Net).
        p_translation: Probability of a translation (off by default: segmentation patches are
            already drawn at random positions; whole-image classifiers need it).
        translation: Largest shift along each spatial axis, as a fraction of the extent along it.
        p_elastic: Probability of an elastic deformation.
        elastic_magnitude: Range of the standard deviation of control-point displacements, in voxels.
        elastic_spacing: Distance between control points of the coarse displacement grid, in voxels.
        p_flip: Probability of mirroring, drawn independently per sample and spatial axis.
        flip_axes: Spatial axes that may be mirrored; None means all.
    """

    enabled: bool = True
    p_rotation: float = 0.2
    rotation_deg: tuple[float, float] = (-30.0, 30.0)
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_translation: float = 0.0
    translation: float = 0.1
    p_elastic: float = 0.0
    elastic_magnitude: tuple[float, float] = (0.0, 2.0)
    elastic_spacing: int = 8
    p_flip: float = 0.5
    flip_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("p_rotation", "p_scaling", "p_translation", "p_elastic", "p_flip"):
            check_probability(name, getattr(self, name))
        for name in ("rotation_deg", "scaling", "elastic_magnitude"):
            check_range(name, getattr(self, name))
        if self.scaling[0] <= 0:
            raise ValueError(f"scaling: factors must be positive, got {self.scaling}")
        if self.elastic_magnitude[0] < 0:
            raise ValueError(f"elastic_magnitude: must be >= 0 voxels, got {self.elastic_magnitude}")
        if not 0.0 <= self.translation <= 0.5:
            raise ValueError(f"translation: expected a fraction of the extent in [0, 0.5], got {self.translation}")
        if self.elastic_spacing < 1:
            raise ValueError(f"elastic_spacing: must be >= 1 voxel, got {self.elastic_spacing}")
        if self.flip_axes is not None and any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"flip_axes: spatial axes must be in 0..2, got {self.flip_axes}")


@dataclass(frozen=True)
class SpatialParams:
    """Drawn spatial parameters for one batch (CPU tensors).

    Attributes:
        rows: ``(k,)`` batch members that are resampled; the others skip ``grid_sample``.
        matrices: ``(k, n, n)`` float64 sampling matrices of those members (see module docstring).
        offsets: ``(k, n)`` float64 translations ``t`` of those members in voxels (see module docstring).
        elastic_rows: ``(e,)`` positions within ``rows`` that also get an elastic displacement.
        elastic: ``(e, n, *G)`` coarse displacement grids in voxels (channel ``d`` along spatial axis ``d``),
            upsampled (bi/trilinear) to the volume; None when ``e == 0``.
        flips: ``(B, n)`` bool, True where a sample is mirrored along a spatial axis (after resampling).
    """

    rows: torch.Tensor
    matrices: torch.Tensor
    offsets: torch.Tensor
    elastic_rows: torch.Tensor
    elastic: torch.Tensor | None
    flips: torch.Tensor


def check_probability(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: probability must be in [0, 1], got {value}")


def check_range(name: str, value: Sequence[float]) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a (low, high) pair with low <= high."""
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name}: expected (low, high) with low <= high, got {value}")


def uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Float64 CPU draws from U(low, high), taken from ``generator`` on its own device."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return low + (high - low) * u


def split_uniform(bounds: Sequence[float], shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """nnU-Net's factor draw: when ``bounds`` straddle 1, half the draws come from [low, 1], half from [1, high]."""
    low, high = bounds
    below = uniform(0.0, 1.0, shape, generator) < 0.5
    u = uniform(0.0, 1.0, shape, generator)
    if low < 1.0 < high:
        return torch.where(below, low + (1.0 - low) * u, 1.0 + (high - 1.0) * u)
    return low + (high - low) * u


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Sampling matrices of content rotations.

    Args:
        angles: ``(B, 1)`` in 2D or ``(B, 3)`` in 3D, radians, ordered as the planes in the module docstring.

    Returns:
        ``(B, n, n)`` float64: the product of one plane rotation per angle.
    """
    n = 2 if angles.shape[1] == 1 else 3
    out = torch.eye(n, dtype=torch.float64).repeat(angles.shape[0], 1, 1)
    for column, (p, q) in enumerate(_PLANES[n]):
        plane = torch.eye(n, dtype=torch.float64).repeat(angles.shape[0], 1, 1)
        cos, sin = torch.cos(angles[:, column].double()), torch.sin(angles[:, column].double())
        plane[:, p, p], plane[:, p, q], plane[:, q, p], plane[:, q, q] = cos, sin, -sin, cos
        out = out @ plane
    return out


def draw_spatial_params(
    config: SpatialConfig, batch_size: int, spatial_shape: Sequence[int], generator: torch.Generator
) -> SpatialParams:
    """Draw every random spatial parameter of a batch, in a fixed order.

    Args:
        config: Probabilities and ranges.
        batch_size: Number of samples ``B``.
        spatial_shape: ``(I, J)`` or ``(I, J, K)`` in voxels.
        generator: Source of randomness; the same seed gives the same parameters.
    """
    n = len(spatial_shape)
    rotate = uniform(0, 1, (batch_size,), generator) < config.p_rotation
    scale = uniform(0, 1, (batch_size,), generator) < config.p_scaling
    elastic = uniform(0, 1, (batch_size,), generator) < config.p_elastic
    angles = uniform(*config.rotation_deg, (batch_size, len(_PLANES[n])), generator) * (math.pi / 180.0)
    factors = split_uniform(config.scaling, (batch_size,), generator)
    magnitudes = uniform(*config.elastic_magnitude, (batch_size,), generator)
    flips = uniform(0, 1, (batch_size, n), generator) < config.p_flip
    offsets = _draw_offsets(config, batch_size, spatial_shape, generator)
    if config.flip_axes is not None:
        flips[:, [a for a in range(n) if a not in config.flip_axes]] = False
    angles = torch.where(rotate[:, None], angles, 0.0)
    factors = torch.where(scale, factors, 1.0)
    # A zero angle with a unit scale and no shift is the identity: such members are left exactly as they are.
    moved = (angles != 0).any(1) | (factors != 1.0) | (offsets != 0).any(1) | (elastic & (magnitudes > 0))
    rows = moved.nonzero().flatten()
    matrices = rotation_matrices(angles[rows]) * factors[rows, None, None]
    elastic_rows = (elastic & (magnitudes > 0))[rows].nonzero().flatten()
    grids = None
    if elastic_rows.numel():
        coarse = [math.ceil(s / config.elastic_spacing) + 1 for s in spatial_shape]
        noise = torch.randn((elastic_rows.numel(), n, *coarse), generator=generator, device=generator.device)
        scale_e = magnitudes[rows[elastic_rows]].float().view(-1, *[1] * (n + 1))
        grids = noise.cpu() * scale_e
    return SpatialParams(rows, matrices, offsets[rows], elastic_rows, grids, flips)


def _draw_offsets(
    config: SpatialConfig, batch_size: int, spatial_shape: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """``(B, n)`` translations in voxels; drawn only when translation is on, so other settings keep their draws."""
    n = len(spatial_shape)
    if config.p_translation == 0 or config.translation == 0:
        return torch.zeros(batch_size, n, dtype=torch.float64)
    shift = uniform(0, 1, (batch_size,), generator) < config.p_translation
    extent = torch.tensor(spatial_shape, dtype=torch.float64)
    offsets = uniform(-config.translation, config.translation, (batch_size, n), generator) * extent
    return torch.where(shift[:, None], offsets, 0.0)


def _normalised_linear(matrices: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Sampling matrices ``(k, n, n)`` in voxels -> the same map on normalised coordinates, index order."""
    size = torch.tensor(spatial_shape, dtype=torch.float64)
    # Normalised coordinates (align_corners=False) are voxel offsets from the centre times 2 / size.
    return matrices / size[:, None] * size[None, :]


def _linear_grid(linear: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``affine_grid`` of normalised linear maps ``(k, n, n)`` in index order, as ``(k, *S, n)`` in (K, J, I) order.

    Built from broadcast sums of per-axis coordinates, which is faster than ``F.affine_grid`` on a CPU.
    """
    k, n = linear.shape[0], len(spatial_shape)
    grid = torch.empty((k, *spatial_shape, n), dtype=linear.dtype, device=linear.device)
    axes = []
    for axis, size in enumerate(spatial_shape):
        line = torch.linspace(-1.0 + 1.0 / size, 1.0 - 1.0 / size, size, dtype=linear.dtype, device=linear.device)
        axes.append(line.view([1] + [size if d == axis else 1 for d in range(n)]))
    for row in range(n):  # grid channel ``c`` holds index-order row ``n - 1 - c``
        grid[..., n - 1 - row] = sum(linear[:, row, axis].view(k, *[1] * n) * axes[axis] for axis in range(n))
    return grid


def _displaced_grid(linear: torch.Tensor, displacement: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Grid of ``linear`` (``(e, n, n)``, normalised, index order) after coarse displacements ``(e, n, *G)``.

    The map is evaluated on the control points only and then upsampled: the affine part is linear, so
    (tri)linear upsampling of it is exact, and one ``interpolate`` replaces a dense grid plus a dense field.
    """
    n = len(spatial_shape)
    coarse = displacement.shape[2:]
    axes = [
        torch.linspace(-1.0 + 1.0 / s, 1.0 - 1.0 / s, g, dtype=torch.float64) for s, g in zip(spatial_shape, coarse)
    ]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (n, *G), normalised, index order
    size = torch.tensor(spatial_shape, dtype=torch.float64).view(1, n, *[1] * n)
    points = points + displacement.double() * (2.0 / size)
    return torch.einsum("eij,ej...->ei...", linear, points).flip(1)  # channel order (K, J, I)


def sampling_grid(
    matrices: torch.Tensor,
    spatial_shape: Sequence[int],
    displacement: torch.Tensor | None = None,
    displaced_rows: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``grid_sample`` grid of sampling matrices and optional coarse displacements.

    Args:
        matrices: ``(k, n, n)`` sampling matrices about the volume centre, voxel units.
        spatial_shape: Output (= input) spatial shape ``(I, J[, K])``.
        displacement: ``(e, n, *G)`` displacements in voxels at a lattice of control points that spans the
            volume (first and last points on the first and last voxels), interpolated (bi/trilinear) between.
        displaced_rows: ``(e,)`` rows of ``matrices`` that ``displacement`` belongs to.
        dtype: Floating type of the grid.
        device: Device of the grid.
        offsets: ``(k, n)`` translations in voxels, added to every read position; None: none.

    Returns:
        ``(k, *spatial_shape, n)`` normalised coordinates, last axis ordered (K, J, I) as ``grid_sample`` wants.
    """
    grid = _unshifted_grid(matrices, spatial_shape, displacement, displaced_rows, dtype, device)
    if offsets is None or not offsets.any():
        return grid
    # Normalised coordinates (align_corners=False) span 2 over an axis of ``size`` voxels.
    n = len(spatial_shape)
    normalised = offsets.double() * 2.0 / torch.tensor(spatial_shape, dtype=torch.float64)
    return grid + normalised.flip(1).to(dtype=dtype, device=device).view(offsets.shape[0], *[1] * n, n)


def _unshifted_grid(
    matrices: torch.Tensor, spatial_shape: Sequence[int], displacement: torch.Tensor | None,
    displaced_rows: torch.Tensor | None, dtype: torch.dtype, device: torch.device | str,
) -> torch.Tensor:  # fmt: skip
    n, k = len(spatial_shape), matrices.shape[0]
    linear = _normalised_linear(matrices, spatial_shape)
    plain = torch.ones(k, dtype=torch.bool)
    if displacement is None or displaced_rows is None:
        displaced_rows = torch.zeros(0, dtype=torch.long)
    plain[displaced_rows] = False
    affine = dense = None
    if plain.any():
        affine = _linear_grid(linear[plain].to(dtype=dtype, device=device), spatial_shape)
    if displaced_rows.numel():
        mapped = _displaced_grid(linear[displaced_rows], displacement, spatial_shape)
        dense = F.interpolate(
            mapped.to(dtype=dtype, device=device),
            size=list(spatial_shape),
            mode="bilinear" if n == 2 else "trilinear",
            align_corners=True,
        ).movedim(1, -1)
    if dense is None or affine is None:
        return affine if dense is None else dense
    grid = torch.empty((k, *spatial_shape, n), dtype=dtype, device=device)
    grid[plain.to(device)] = affine
    grid[displaced_rows.to(device)] = dense
    return grid


def warp(
    images: torch.Tensor, labels: torch.Tensor | None, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample images (bi/trilinear) and labels (nearest) on one grid, zeros outside.

    Args:
        images: ``(k, C, *S)`` floating tensor.
        labels: ``(k, 1, *S)`` integer tensor, or None.
        grid: ``(k, *S, n)`` from :func:`sampling_grid`.
    """
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    if labels is None:
        return out, None
    warped = F.grid_sample(labels.to(grid.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, warped.round().to(labels.dtype)


def apply_spatial(
    images: torch.Tensor, labels: torch.Tensor | None, params: SpatialParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply drawn spatial parameters; returns new tensors, the inputs are left untouched.

    Args:
        images: ``(B, C, *S)`` floating tensor on any device.
        labels: ``(B, 1, *S)`` integer tensor on the same device, or None.
        params: From :func:`draw_spatial_params` for this batch size and spatial shape.
    """
    n = images.ndim - 2
    if params.rows.numel():
        grid = sampling_grid(
            params.matrices,
            images.shape[2:],
            params.elastic,
            params.elastic_rows,
            images.dtype,
            images.device,
            params.offsets,
        )
        images, labels = _on_rows(images, labels, params.rows, lambda x, y: warp(x, y, grid))
    for axis in range(n):
        rows = params.flips[:, axis].nonzero().flatten()
        if rows.numel():
            images, labels = _on_rows(images, labels, rows, lambda x, y, a=2 + axis: (x.flip(a), _flip(y, a)))
    return images, labels


def _flip(labels: torch.Tensor | None, axis: int) -> torch.Tensor | None:
    return None if labels is None else labels.flip(axis)


_Pair = tuple[torch.Tensor, "torch.Tensor | None"]


def _on_rows(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    rows: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor | None], _Pair],
) -> _Pair:
    """Apply ``fn(images, labels)`` to the batch members ``rows`` (sorted, unique); new tensors."""
    if rows.numel() == images.shape[0]:
        return fn(images, labels)
    rows = rows.to(images.device)
    moved, moved_labels = fn(images[rows], None if labels is None else labels[rows])
    return images.index_copy(0, rows, moved), None if labels is None else labels.index_copy(0, rows, moved_labels)
