"""Smoothness penalties for displacement and velocity fields, and Jacobian-based quality measures.

Fields are ``(B, n, *S)`` tensors on a grid of ``n`` (2 or 3) spatial axes; any number of
components works for the penalties. ``spacing`` is a length-``n`` sequence of mm per array axis
(``spacing[d]`` belongs to array axis ``d``, see :mod:`segmorph.geometry`); without it derivatives
are per voxel. For displacements in mm with spacing given, first derivatives are unitless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _check_field(field: torch.Tensor, spacing: Sequence[float] | None) -> list[float]:
    """Validate ``field`` and return the spacing as a list (ones when None)."""
    if field.ndim not in (4, 5):
        raise ValueError(f"field: expected (B, n, *S) with 2 or 3 spatial axes, got shape {tuple(field.shape)}")
    ndim = field.ndim - 2
    if spacing is None:
        return [1.0] * ndim
    values = [float(s) for s in spacing]
    if len(values) != ndim or any(s <= 0 for s in values):
        raise ValueError(f"spacing: expected {ndim} positive values (mm), got {list(spacing)}")
    return values


def _forward_difference(x: torch.Tensor, axis: int) -> torch.Tensor:
    length = x.shape[axis] - 1
    return x.narrow(axis, 1, length) - x.narrow(axis, 0, length)


def spatial_gradients(
    field: torch.Tensor, spacing: Sequence[float] | None = None, central: bool = False
) -> tuple[torch.Tensor, ...]:
    """First derivatives of every component along each array axis, in field units per mm.

    Args:
        field: ``(B, C, *S)`` with 2 or 3 spatial axes.
        spacing: mm per array axis (length ``n``); per voxel when None.
        central: Central differences, one-sided at the borders as ``numpy.gradient`` (shape
            kept); otherwise forward differences (axis ``d`` one voxel shorter in entry ``d``).

    Returns:
        ``n`` tensors; entry ``d`` is ``d field / d x_d`` along array axis ``d``.
    """
    steps = _check_field(field, spacing)
    if central:
        return tuple(torch.gradient(field, spacing=steps, dim=list(range(2, field.ndim)), edge_order=1))
    return tuple(_forward_difference(field, axis) / step for axis, step in enumerate(steps, start=2))


def diffusion(field: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Diffusion ("grad l2") penalty: squared forward differences, averaged over voxels and axes.

    Same as VoxelMorph's ``Grad("l2")``: ``sum_d mean((d field / d x_d)**2) / n``, in (field units
    per mm) squared. Zero for a constant field.

    Args:
        field: ``(B, C, *S)`` with 2 or 3 spatial axes.
        spacing: mm per array axis (length ``n``); per voxel when None.
    """
    gradients = spatial_gradients(field, spacing)
    return sum(g.pow(2).mean() for g in gradients) / len(gradients)


def bending_energy(field: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Bending energy: ``sum_d mean(d2f/dx_d2 ** 2) + 2 sum_{d<e} mean(d2f/dx_d dx_e ** 2)``.

    Pure second derivatives use the 3-point stencil, mixed ones the 4-point forward stencil, so
    constant and linear fields score exactly zero (up to rounding). Units: (field units / mm^2)^2.
    Averaged over batch, components and voxels.

    Args:
        field: ``(B, C, *S)`` with 2 or 3 spatial axes, at least 3 voxels along each.
        spacing: mm per array axis (length ``n``); per voxel when None.
    """
    steps = _check_field(field, spacing)
    energy = field.new_zeros(())
    for d, step_d in enumerate(steps):
        first = _forward_difference(field, d + 2) / step_d
        for e in range(d, len(steps)):
            second = _forward_difference(first, e + 2) / steps[e]
            energy = energy + (1.0 if d == e else 2.0) * second.pow(2).mean()
    return energy


def _determinant(matrix: torch.Tensor) -> torch.Tensor:
    """Determinant of ``(..., n, n)`` matrices, n in (2, 3), by cofactors (exact for identity)."""
    m = matrix
    if m.shape[-1] == 2:
        return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    return (
        m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
        - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
        + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0])
    )


def jacobian_determinant(displacement: torch.Tensor, linear: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``det(I + du/dx)`` of ``T(x) = x + u(x)`` at every voxel, with ``x`` the world position (mm).

    ``du/dx = (du / d index) @ inv(linear)``, the index derivatives taken by central differences
    (one-sided at the borders, as ``numpy.gradient``), so the shape is kept. A zero field gives
    exactly 1; values ``<= 0`` mark folding.

    Args:
        displacement: ``(B, n, *S)`` world vectors in mm (component ``c`` along world axis ``c``).
        linear: ``(n, n)`` index-to-world linear part, ``affine.matrix[:n, :n]`` =
            ``direction @ diag(spacing)`` (mm per voxel).

    Returns:
        ``(B, *S)`` Jacobian determinants (unitless).
    """
    _check_field(displacement, None)
    ndim = displacement.ndim - 2
    if displacement.shape[1] != ndim:
        raise ValueError(f"displacement: expected {ndim} components, got shape {tuple(displacement.shape)}")
    # a copy: an Affine's matrix is read-only, which torch.as_tensor would warn about on stderr
    linear = linear.double() if torch.is_tensor(linear) else torch.tensor(np.array(linear, dtype=np.float64))
    if tuple(linear.shape) != (ndim, ndim):
        raise ValueError(f"linear: expected shape ({ndim}, {ndim}), got {tuple(linear.shape)}")
    inverse = torch.linalg.inv(linear).to(dtype=displacement.dtype, device=displacement.device)
    by_index = torch.stack(spatial_gradients(displacement, central=True), dim=-1)  # (B, n, *S, n): du_c/di_d
    by_world = by_index.movedim(1, -2) @ inverse  # (B, *S, n, n): du_c/dx_e
    return _determinant(by_world + torch.eye(ndim, dtype=by_world.dtype, device=by_world.device))


def folding_fraction(jacobian: torch.Tensor | np.ndarray) -> float:
    """Fraction of voxels whose Jacobian determinant is ``<= 0`` (folded), in ``[0, 1]``.

    Args:
        jacobian: Determinants of any shape, e.g. ``(B, *S)`` from :func:`jacobian_determinant`.
    """
    values = torch.as_tensor(jacobian)
    return float((values <= 0).to(torch.float64).mean())


def log_jacobian_std(jacobian: torch.Tensor | np.ndarray) -> float:
    """Standard deviation (population, over all voxels) of ``log(det)``: the Learn2Reg SDlogJ.

    Determinants are clipped to ``>= 1e-9`` before the log, so folded voxels count as
    ``log(1e-9) ~= -20.7`` instead of being undefined; a field with folds therefore scores high.

    Args:
        jacobian: Determinants of any shape, e.g. ``(B, *S)`` from :func:`jacobian_determinant`.
    """
    values = torch.as_tensor(jacobian).to(torch.float64)
    return float(torch.log(values.clamp_min(1e-9)).std(correction=0))
