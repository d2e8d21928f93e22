"""Voxel grid geometry: spacing, origin and direction as one homogeneous matrix.

Conventions, written down once for the whole package:

* World coordinates are in millimetres, in the LPS frame used by ITK and DICOM
  (x grows to the patient's Left, y to Posterior, z to Superior). NIfTI files are
  RAS on disk; SimpleITK converts when reading and writing, and ``io.py`` is the
  only module that talks to SimpleITK.
* Array index order matches ITK's point order: index ``i`` runs along the first
  physical axis (ITK's x), ``j`` the second, ``k`` the third. Image tensors are
  ``(C, I, J, K)`` in 3D and ``(C, I, J)`` in 2D, and ``spacing[0]`` belongs to ``I``.
* ``world = direction @ diag(spacing) @ index + origin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Affine:
    """Map from a voxel index to a world position in mm, as an ``(n+1, n+1)`` matrix.

    ``n`` is the number of spatial dimensions (2 or 3). The matrix is float64 and
    read-only; build new Affines rather than editing one.
    """

    matrix: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.array(self.matrix, dtype=np.float64, copy=True)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] not in (3, 4):
            raise ValueError(f"matrix: expected a 3x3 or 4x4 array, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError("matrix: holds NaN or infinite values")
        bottom = np.zeros(matrix.shape[0])
        bottom[-1] = 1.0
        if not np.allclose(matrix[-1], bottom):
            raise ValueError(f"matrix: last row must be {bottom.tolist()}, got {matrix[-1].tolist()}")
        if abs(np.linalg.det(matrix[:-1, :-1])) < 1e-12:
            raise ValueError("matrix: linear part is singular (zero spacing or degenerate direction)")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)

    @classmethod
    def from_geometry(
        cls,
        spacing: Sequence[float],
        origin: Sequence[float] | None = None,
        direction: np.ndarray | Sequence[float] | None = None,
    ) -> Affine:
        """Build from spacing (mm), origin (mm) and a direction cosine matrix.

        Args:
            spacing: Voxel size in mm along each array axis, length ``n``.
            origin: World position of voxel index 0, length ``n``; zeros when omitted.
            direction: ``(n, n)`` matrix (or its ``n*n`` row-major values) whose
                column ``d`` is the world direction of array axis ``d``; identity when omitted.
        """
        spacing_arr = np.asarray(spacing, dtype=np.float64)
        n = spacing_arr.size
        if n not in (2, 3):
            raise ValueError(f"spacing: expected 2 or 3 values, got {n}")
        if (spacing_arr <= 0).any():
            raise ValueError(f"spacing: must be positive, got {spacing_arr.tolist()}")
        origin_arr = np.zeros(n) if origin is None else np.asarray(origin, dtype=np.float64)
        dir_arr = np.eye(n) if direction is None else np.asarray(direction, dtype=np.float64).reshape(n, n)
        if origin_arr.shape != (n,):
            raise ValueError(f"origin: expected {n} values, got {origin_arr.size}")
        matrix = np.eye(n + 1)
        matrix[:n, :n] = dir_arr * spacing_arr[None, :]
        matrix[:n, n] = origin_arr
        return cls(matrix)

    @classmethod
    def identity(cls, ndim: int = 3) -> Affine:
        """The unit-spacing, zero-origin, identity-direction geometry."""
        return cls(np.eye(ndim + 1))

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return self.matrix.shape[0] - 1

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis, shape ``(n,)``."""
        return np.linalg.norm(self.matrix[:-1, :-1], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """World position (mm) of voxel index 0, shape ``(n,)``."""
        return self.matrix[:-1, -1].copy()

    @property
    def direction(self) -> np.ndarray:
        """Direction cosines, shape ``(n, n)``; column ``d`` is array axis ``d``'s world direction."""
        return self.matrix[:-1, :-1] / self.spacing[None, :]

    def voxel_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., n)`` (may be fractional) to world points in mm ``(..., n)``."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.matrix[:-1, :-1].T + self.matrix[:-1, -1]

    def world_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Map world points in mm ``(..., n)`` to fractional voxel indices ``(..., n)``."""
        points = np.asarray(points, dtype=np.float64)
        inverse = np.linalg.inv(self.matrix)
        return points @ inverse[:-1, :-1].T + inverse[:-1, -1]

    def with_spacing(self, spacing: Sequence[float]) -> Affine:
        """Same origin and direction, another spacing."""
        return Affine.from_geometry(spacing, self.origin, self.direction)

    def shifted(self, index_offset: Sequence[int | float]) -> Affine:
        """Geometry of a sub-grid whose index 0 is ``index_offset`` of this grid (crop or pad)."""
        return Affine.from_geometry(self.spacing, self.voxel_to_world(np.asarray(index_offset)), self.direction)

    def allclose(self, other: Affine, atol: float = 1e-6) -> bool:
        """True when both matrices agree within ``atol`` (mm for origin, mm for spacing)."""
        return self.matrix.shape == other.matrix.shape and bool(
            np.allclose(self.matrix, other.matrix, atol=atol, rtol=0)
        )

    def to_dict(self) -> dict:
        """JSON-friendly form: spacing, origin, direction (row-major)."""
        return {
            "spacing": self.spacing.tolist(),
            "origin": self.origin.tolist(),
            "direction": self.direction.ravel().tolist(),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Affine:
        """Inverse of :meth:`to_dict`."""
        return cls.from_geometry(values["spacing"], values["origin"], values["direction"])

    def __repr__(self) -> str:
        fmt = lambda a: "(" + ", ".join(f"{v:.4g}" for v in np.ravel(a)) + ")"  # noqa: E731
        return f"Affine(spacing={fmt(self.spacing)}, origin={fmt(self.origin)}, direction={fmt(self.direction)})"
