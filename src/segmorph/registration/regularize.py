"""Smoothness penalties for displacement and velocity fields (Jacobian-based quality: :mod:`segmorph.metrics.registration`).

Fields are ``(B, n, *S)`` tensors on a grid of ``n`` (2 or 3) spatial axes; any number of
components works for the penalties. ``spacing`` is a length-``n`` sequence of mm per array axis
(``spacing[d]`` belongs to array axis ``d``, see :mod:`segmorph.geometry`); without it derivatives
are per voxel. For displacements in mm with spacing given, first derivatives are unitless.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_field(field: torch.Tensor, spacing: Sequence[float] | None) -> list[float]:
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
    steps = check_field(field, spacing)
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
    steps = check_field(field, spacing)
    energy = field.new_zeros(())
    for d, step_d in enumerate(steps):
        first = _forward_difference(field, d + 2) / step_d
        for e in range(d, len(steps)):
            second = _forward_difference(first, e + 2) / steps[e]
            energy = energy + (1.0 if d == e else 2.0) * second.pow(2).mean()
    return energy
