"""Classical registration by instance optimisation (PyTorch, CPU or GPU).

Initialisation by centres of mass (or none), then multi-resolution rigid → affine on an image
pyramid, then a diffeomorphic deformable stage: a stationary velocity field on the fixed grid,
integrated by scaling and squaring, optimised with Adam against image similarity plus diffusion
regularisation. Each stage starts from the previous one. The linear stages sample the moving image
from its own grid at every evaluation; the deformable stage resamples it once per level through the
affine result, then warps that (two interpolations, the first one fixed while the field is fitted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.nn.blocks import convolution
from segmorph.registration import spatial
from segmorph.registration.names import MAX_OPTIMISATION_STEPS
from segmorph.registration.pairs import normalise_intensity
from segmorph.registration.regularize import diffusion
from segmorph.registration.similarity import get_similarity
from segmorph.registration.transform import FieldStep, Transform, voxel_to_world_vectors

METHODS = ("rigid", "affine", "deformable")
INITIALISERS = ("com", "none")


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of :func:`register_classical`; the defaults need no tuning for same-modality MRI.

    The iteration counts are the fewest of a sweep that kept the mean Dice of the hippocampus
    benchmark pairs (benchmarks/reg_hippocampus.py) while cutting the time per pair; the sweep is in
    benchmarks/RESULTS.md.

    Attributes:
        similarity: ``"ncc"`` (local NCC, same modality), ``"mse"``, ``"mi"`` or ``"mind"`` (multi-modal).
        init: ``"com"`` aligns intensity centres of mass first; ``"none"`` starts from identity.
        shrink: Pyramid levels as grid reduction factors, coarse to fine.
        rigid_iterations: Adam steps per level of the rigid stage (0 skips a level).
        affine_iterations: Adam steps per level of the affine stage.
        deformable_iterations: Adam steps per level of the deformable stage.
        linear_lr: Adam step of the linear parameters (rotation in radians, translation in 10 mm units).
        deformable_lr: Adam step of the velocity field (voxels of its grid, ``velocity_shrink`` times coarser
            than each level).
        smoothness: Weight of the diffusion regulariser on the velocity field.
        integration_steps: Scaling-and-squaring steps.
        ncc_window: Local NCC window in voxels.
        velocity_shrink: The velocity field lives on a grid this many times coarser than each level's
            images and is upsampled after integration (VoxelMorph's ``int_downsize``): a smooth field
            at a fraction of the cost.
    """

    similarity: str = "ncc"
    init: str = "com"
    shrink: tuple[int, ...] = (4, 2, 1)
    rigid_iterations: tuple[int, ...] = (30, 0, 0)
    affine_iterations: tuple[int, ...] = (30, 15, 0)
    deformable_iterations: tuple[int, ...] = (40, 30, 0)
    linear_lr: float = 0.02
    deformable_lr: float = 0.25
    smoothness: float = 1.0
    integration_steps: int = 6
    ncc_window: int = 7
    velocity_shrink: int = 2

    def __post_init__(self) -> None:
        get_similarity(self.similarity)
        if self.init not in INITIALISERS:
            raise ValueError(f"init: expected one of {INITIALISERS}, got {self.init!r}")
        for name in ("rigid_iterations", "affine_iterations", "deformable_iterations"):
            if len(getattr(self, name)) != len(self.shrink):
                raise ValueError(f"{name}: needs one value per pyramid level ({len(self.shrink)})")
            if not all(0 <= steps <= MAX_OPTIMISATION_STEPS for steps in getattr(self, name)):
                raise ValueError(
                    f"{name}: expected 0 to {MAX_OPTIMISATION_STEPS:,} steps a level, got {getattr(self, name)}"
                )


# -- pyramid ------------------------------------------------------------------------------------


@dataclass
class Level:
    """One pyramid level: both images resampled onto coarser grids covering the same extent."""

    fixed: torch.Tensor  # (1, C, *S_f)
    moving: torch.Tensor  # (1, C, *S_m)
    fixed_affine: Affine
    moving_affine: Affine


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    ndim = image.ndim - 2
    channels = image.shape[1]
    out = image
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, *[1] * ndim)
        padding = [0] * ndim
        padding[axis] = radius
        out = convolution(F.pad(out, _pad_spec(padding), mode="replicate"), weight, [0] * ndim, groups=channels)
    return out


def _pad_spec(padding: Sequence[int]) -> list[int]:
    spec: list[int] = []
    for p in reversed(padding):
        spec += [p, p]
    return spec


def _level_affine(affine: Affine, shape: Sequence[int], level_shape: Sequence[int]) -> Affine:
    """Geometry of a corner-aligned coarser grid over the same extent."""
    factors = np.array([(s - 1) / (t - 1) if t > 1 else 1.0 for s, t in zip(shape, level_shape)])
    scale = np.eye(len(shape) + 1)
    scale[:-1, :-1] = np.diag(factors)
    return Affine(affine.matrix @ scale)


def _downsample(image: torch.Tensor, affine: Affine, factor: int) -> tuple[torch.Tensor, Affine]:
    shape = image.shape[2:]
    level_shape = spatial.coarse_shape(shape, factor)
    if tuple(level_shape) == tuple(shape):
        return image, affine
    blurred = _gaussian_blur(image, 0.5 * factor)
    return spatial.resize_image(blurred, level_shape), _level_affine(affine, shape, level_shape)


def build_pyramid(
    fixed: Image, moving: Image, shrink: Sequence[int], device: torch.device, joint: bool = False
) -> list[Level]:
    """Normalised images at each shrink factor, coarse to fine.

    Each image is scaled by its own percentiles, or with ``joint`` both by the fixed image's (for
    MSE, which assumes one intensity scale).
    """
    fixed_data = normalise_intensity(fixed.data.float())[None].to(device)
    reference = fixed.data.float() if joint else None
    moving_data = normalise_intensity(moving.data.float(), reference)[None].to(device)
    levels = []
    for factor in shrink:
        f, fa = _downsample(fixed_data, fixed.affine, factor)
        m, ma = _downsample(moving_data, moving.affine, factor)
        levels.append(Level(f, m, fa, ma))
    return levels


# -- linear stage --------------------------------------------------------------------------------


def centre_of_mass(image: Image) -> np.ndarray:
    """Intensity-weighted centre in world mm (intensities shifted to be non-negative)."""
    data = image.data.float().sum(0)
    return weighted_centre(data - data.min(), image.affine)


def weighted_centre(weights: torch.Tensor, affine: Affine) -> np.ndarray:
    """World centre (mm) of non-negative voxel weights ``(*S)`` on the grid ``affine``."""
    weights = weights.double()
    index = spatial.identity_grid(weights.shape, torch.float64)[0]
    centre = (index * weights).flatten(1).sum(1) / weights.sum().clamp_min(1e-12)
    return affine.voxel_to_world(centre.numpy())


def initial_matrix(fixed: Image, moving: Image, init: str) -> np.ndarray:
    """Translation taking the fixed centre of mass to the moving one (``init="com"``), else identity."""
    matrix = np.eye(fixed.ndim + 1)
    if init == "com":
        matrix[:-1, -1] = centre_of_mass(moving) - centre_of_mass(fixed)
    return matrix


def _rotation(angles: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotation matrix from 1 (2D) or 3 (3D, axis-angle) parameters."""
    if ndim == 2:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    skew = torch.zeros(3, 3, dtype=angles.dtype)
    skew[0, 1], skew[0, 2], skew[1, 2] = -angles[2], angles[1], -angles[0]
    skew = skew - skew.T
    return torch.linalg.matrix_exp(skew)


class LinearModel(torch.nn.Module):
    """World affine ``p -> L (p - c) + c + t`` about the fixed centre ``c``, composed after ``start``.

    Rigid: ``L`` is a rotation. Affine: ``L = R (I + S)`` with a free matrix ``S`` (scale and shear).
    """

    def __init__(self, ndim: int, centre: np.ndarray, start: np.ndarray, affine: bool) -> None:
        super().__init__()
        self.ndim = ndim
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float64))
        self.register_buffer("start", torch.tensor(start, dtype=torch.float64))
        self.angles = torch.nn.Parameter(torch.zeros(1 if ndim == 2 else 3, dtype=torch.float64))
        self.translation = torch.nn.Parameter(torch.zeros(ndim, dtype=torch.float64))
        self.shear = torch.nn.Parameter(torch.zeros(ndim, ndim, dtype=torch.float64), requires_grad=affine)

    def matrix(self) -> torch.Tensor:
        n = self.ndim
        linear = _rotation(self.angles, n) @ (torch.eye(n, dtype=torch.float64) + self.shear)
        step = torch.eye(n + 1, dtype=torch.float64)
        step = step.clone()
        step[:n, :n] = linear
        step[:n, n] = self.centre - linear @ self.centre + 10.0 * self.translation
        return step @ self.start


def _decay(iteration: int, iterations: int) -> float:
    """Step-size factor within a level: linear from 1 down to 0.1 (Adam otherwise keeps oscillating)."""
    return 1.0 - 0.9 * iteration / max(iterations - 1, 1)


def _set_lr(optimiser: torch.optim.Optimizer, lr: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = lr


def _voxel_matrix(world: torch.Tensor, level: Level) -> torch.Tensor:
    """Fixed-level voxel → moving-level voxel map for a world matrix (fixed → moving)."""
    fixed = torch.tensor(level.fixed_affine.matrix)
    moving_inverse = torch.tensor(np.linalg.inv(level.moving_affine.matrix))
    return moving_inverse @ world @ fixed


def _warp_linear(level: Level, world: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving level image on the fixed level grid, and the mask of voxels that map inside its view.

    Like ITK's metrics, the similarity counts only those voxels: padding values must not pull.
    """
    coords = spatial.apply_matrix(_voxel_matrix(world, level)[None].to(grid.device), grid)
    upper = torch.tensor(level.moving.shape[2:], dtype=coords.dtype, device=coords.device) - 1
    inside = ((coords >= 0) & (coords <= upper.view(1, -1, *[1] * (coords.ndim - 2)))).all(1, keepdim=True)
    return spatial.sample(level.moving, coords, "linear", "border"), inside.detach().float()


def _similarity(config: ClassicalConfig):
    function = get_similarity(config.similarity)
    if config.similarity == "ncc":
        return lambda f, w, mask=None: function(f, w, window=config.ncc_window, mask=mask)
    return function


def optimise_linear(levels: Sequence[Level], config: ClassicalConfig, start: np.ndarray, affine: bool) -> np.ndarray:
    """Rigid (``affine=False``) or affine world matrix, fixed → moving, refined from ``start``."""
    ndim = levels[-1].fixed.ndim - 2
    centre = levels[-1].fixed_affine.voxel_to_world((np.array(levels[-1].fixed.shape[2:]) - 1) / 2)
    model = LinearModel(ndim, centre, start, affine)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.linear_lr)
    similarity = _similarity(config)
    schedule = config.affine_iterations if affine else config.rigid_iterations
    for number, (level, iterations) in enumerate(zip(levels, schedule)):
        if iterations == 0:
            continue
        grid = spatial.identity_grid(level.fixed.shape[2:], torch.float64, level.fixed.device)
        for iteration in range(iterations):
            _set_lr(optimiser, config.linear_lr * 0.5**number * _decay(iteration, iterations))
            moved, inside = _warp_linear(level, model.matrix(), grid)
            loss = similarity(level.fixed, moved.float(), mask=inside)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model.matrix().detach().numpy()


# -- deformable stage ----------------------------------------------------------------------------


def optimise_velocity(levels: Sequence[Level], config: ClassicalConfig, matrix: np.ndarray, velocity=None,
                      similarity=None):  # fmt: skip
    """Velocity field (voxels of the finest fixed level, ``(1, n, *S)``) after the linear ``matrix``.

    ``velocity`` (same units and grid) starts the optimisation, e.g. from a network's prediction;
    ``similarity(fixed, warped)`` replaces the configured one (e.g. for multi-channel levels).
    """
    world = torch.tensor(matrix)
    similarity = similarity or _similarity(config)
    fine_shape = levels[-1].fixed.shape[2:]
    current = velocity
    for level, iterations in zip(levels, config.deformable_iterations):
        if iterations == 0:
            continue
        shape = level.fixed.shape[2:]
        grid = spatial.identity_grid(shape, torch.float64, level.fixed.device)
        moved = _warp_linear(level, world, grid)[0].float().detach()
        field_shape = spatial.coarse_shape(shape, config.velocity_shrink)
        start = (
            torch.zeros(1, len(shape), *field_shape, device=level.fixed.device)
            if current is None else spatial.resize_field(current.detach(), field_shape)
        )  # fmt: skip
        current = _fit_velocity(level.fixed, moved, start, iterations, config, similarity)
    if current is None:
        return torch.zeros(1, len(fine_shape), *fine_shape)
    return spatial.resize_field(current, fine_shape).detach()


def _fit_velocity(fixed, moved, start, iterations, config: ClassicalConfig, similarity) -> torch.Tensor:
    velocity = torch.nn.Parameter(start.clone())
    optimiser = torch.optim.Adam([velocity], lr=config.deformable_lr)
    shape = fixed.shape[2:]
    for _ in range(iterations):
        displacement = spatial.resize_field(spatial.integrate(velocity, config.integration_steps), shape)
        loss = similarity(fixed, spatial.warp(moved, displacement)) + config.smoothness * diffusion(velocity)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return velocity.detach()


# -- entry point ---------------------------------------------------------------------------------


def register_classical(
    fixed: Image,
    moving: Image,
    method: str = "deformable",
    config: ClassicalConfig | None = None,
    start: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> Transform:
    """Align ``moving`` to ``fixed``; returns the fixed → moving :class:`Transform`.

    Args:
        fixed: Reference image (its grid is the output grid).
        moving: Image to align (any grid; only world positions matter).
        method: ``"rigid"``, ``"affine"`` or ``"deformable"`` (affine first, then a velocity field).
        config: Optimisation settings; defaults when None.
        start: Initial world matrix (fixed → moving) replacing the configured initialiser, e.g. from
            label centroids.
        device: Where to optimise.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    config = config or ClassicalConfig()
    levels = build_pyramid(fixed, moving, config.shrink, torch.device(device), joint=config.similarity == "mse")
    matrix = initial_matrix(fixed, moving, config.init) if start is None else np.asarray(start, dtype=np.float64)
    matrix = optimise_linear(levels, config, matrix, affine=False)
    if method == "rigid":
        return Transform.from_matrix(matrix)
    matrix = optimise_linear(levels, config, matrix, affine=True)
    if method == "affine":
        return Transform.from_matrix(matrix)
    # The finest pyramid level may be coarser than the fixed grid (shrink not ending in 1): carry the field over.
    velocity = spatial.resize_field(optimise_velocity(levels, config, matrix), fixed.spatial_shape)
    return velocity_transform(velocity, fixed.affine, matrix, config.integration_steps)


def velocity_transform(velocity_voxels: torch.Tensor, fixed: Affine, matrix: np.ndarray, steps: int) -> Transform:
    """``[exp(v) on the fixed grid, matrix]`` from a velocity in fixed-grid voxels ``(1, n, *S)``."""
    return Transform([FieldStep.from_velocity(_field_mm(velocity_voxels, fixed), fixed, steps), np.asarray(matrix)])


def displacement_transform(displacement_voxels: torch.Tensor, fixed: Affine, matrix: np.ndarray) -> Transform:
    """``[u on the fixed grid, matrix]`` from a displacement in fixed-grid voxels ``(1, n, *S)``."""
    return Transform([FieldStep(fixed, _field_mm(displacement_voxels, fixed)), np.asarray(matrix)])


def _field_mm(field_voxels: torch.Tensor, fixed: Affine) -> torch.Tensor:
    """A fixed-grid voxel vector field ``(1, n, *S)`` as float32 millimetres ``(n, *S)`` (world axes)."""
    return voxel_to_world_vectors(field_voxels.double().cpu(), fixed)[0].float()
