"""Registration quality measures from the Jacobian of a transform: determinant, folding, SDlogJ.

Displacements are ``(B, n, *S)`` world vectors in mm on a grid of ``n`` (2 or 3) spatial axes.
"""

from __future__ import annotations

import numpy as np
import torch

from segmorph.registration.regularize import check_field, spatial_gradients


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
    check_field(displacement, None)
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
