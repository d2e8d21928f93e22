"""Transforms in world space (mm, LPS): affine matrices and dense fields, chained, inverted, saved.

A :class:`Transform` maps points of the fixed image's world to points of the moving image's world
(see :mod:`segmorph.registration`). It is a chain of steps applied to a point in order:

* a matrix step ``p -> M p`` (homogeneous ``(n+1, n+1)``, world to world);
* a field step ``p -> p + u(p)``, ``u`` a displacement field ``(n, *S)`` in mm on its own grid, read
  with linear interpolation (border values outside the grid). A field integrated from a stationary
  velocity keeps the velocity, so that its inverse is exact up to integration error.

Registration results are ``[field on the fixed grid, affine]``: ``T(x) = A (x + u(x))``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, grids_match
from segmorph.io import (
    atomic_write_text,
    read_affine_transform,
    read_image,
    write_affine_transform,
    write_image,
)
from segmorph.readchecks import check_voxel_budget
from segmorph.records import read_json
from segmorph.registration import spatial

TRANSFORM_JSON = "transform.json"
AFFINE_FILE = "affine.tfm"
DISPLACEMENT_FILE = "displacement.nii.gz"
VELOCITY_FILE = "velocity.nii.gz"


def world_to_voxel_vectors(vectors: torch.Tensor, affine: Affine) -> torch.Tensor:
    """World vectors (mm) ``(B, n, *S)`` → the same vectors in voxel units of ``affine``'s grid."""
    inverse = torch.tensor(np.linalg.inv(affine.matrix[:-1, :-1]), dtype=vectors.dtype, device=vectors.device)
    return torch.einsum("ij,bj...->bi...", inverse, vectors)


def voxel_to_world_vectors(vectors: torch.Tensor, affine: Affine) -> torch.Tensor:
    """Voxel-unit vectors ``(B, n, *S)`` on ``affine``'s grid → world vectors in mm."""
    linear = torch.tensor(affine.matrix[:-1, :-1], dtype=vectors.dtype, device=vectors.device)
    return torch.einsum("ij,bj...->bi...", linear, vectors)


def world_grid(affine: Affine, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """World position (mm) of every voxel centre, ``(n, *shape)``."""
    index = spatial.identity_grid(shape, dtype)
    matrix = torch.tensor(affine.matrix, dtype=dtype)[None]
    return spatial.apply_matrix(matrix, index)[0]


def integrate_velocity(velocity: torch.Tensor, affine: Affine, steps: int = 7, shrink: int = 2) -> torch.Tensor:
    """Displacement (mm) ``(n, *S)`` of the diffeomorphism ``exp(v)`` for a velocity ``(n, *S)`` in mm.

    Scaling and squaring runs on a grid ``shrink`` times coarser (velocities from registration are
    smooth at that scale; it is 8x cheaper in 3D) and the result is resampled back.
    """
    voxels = world_to_voxel_vectors(velocity[None].float(), affine)
    shape = voxels.shape[2:]
    coarse = spatial.resize_field(voxels, spatial.coarse_shape(shape, shrink)) if shrink > 1 else voxels
    displacement = spatial.resize_field(spatial.integrate(coarse, steps), shape)
    return voxel_to_world_vectors(displacement, affine)[0]


@dataclass
class FieldStep:
    """``p -> p + u(p)`` with ``u`` ``(n, *S)`` in mm on the grid ``affine``; ``velocity`` when ``u = exp(v)``."""

    affine: Affine
    displacement: torch.Tensor
    velocity: torch.Tensor | None = None

    @classmethod
    def from_velocity(cls, velocity: torch.Tensor, affine: Affine, steps: int = 7) -> FieldStep:
        return cls(affine, integrate_velocity(velocity, affine, steps), velocity)

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        """Map world points ``(n, *P)`` (float64)."""
        inverse = torch.as_tensor(np.linalg.inv(self.affine.matrix), dtype=points.dtype)[None]
        coords = spatial.apply_matrix(inverse, points[None])
        field = self.displacement[None].float()  # float32 vectors: 1e-5 mm is plenty; the points stay float64
        return points + spatial.sample(field, coords, "linear", "border")[0].to(points.dtype)

    def inverse(self) -> FieldStep:
        if self.velocity is not None:
            return FieldStep.from_velocity(-self.velocity, self.affine)
        return FieldStep(self.affine, _invert_by_iteration(self.displacement, self.affine))


def _invert_by_iteration(displacement: torch.Tensor, affine: Affine, iterations: int = 30) -> torch.Tensor:
    """Inverse displacement ``w`` with ``w(y) = -u(y + w(y))`` by fixed-point iteration (mm)."""
    u = world_to_voxel_vectors(displacement[None].double(), affine)
    w = -u
    for _ in range(iterations):
        w = -spatial.warp(u, w)
    return voxel_to_world_vectors(w, affine)[0].float()


Step = np.ndarray | FieldStep


@dataclass
class Transform:
    """A chain of world-space steps, fixed world → moving world (see the module docstring)."""

    steps: list[Step]

    @classmethod
    def identity(cls) -> Transform:
        return cls([])

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Transform:
        return cls([np.asarray(matrix, dtype=np.float64)])

    @property
    def ndim(self) -> int | None:
        for step in self.steps:
            return step.shape[0] - 1 if isinstance(step, np.ndarray) else step.affine.ndim
        return None

    def then(self, other: Transform) -> Transform:
        """Points through ``self``, then through ``other``."""
        return Transform(self.steps + other.steps)

    def inverse(self) -> Transform:
        """Moving world → fixed world: steps reversed, each inverted."""
        return Transform([np.linalg.inv(s) if isinstance(s, np.ndarray) else s.inverse() for s in self.steps[::-1]])

    def is_affine(self) -> bool:
        return all(isinstance(s, np.ndarray) for s in self.steps)

    def matrix(self) -> np.ndarray:
        """The product of the matrix steps (the whole transform when :meth:`is_affine`)."""
        n = self.ndim or 3
        total = np.eye(n + 1)
        for step in self.steps:
            if isinstance(step, np.ndarray):
                total = step @ total
        return total

    def map_points(self, points: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Map world points given as ``(N, n)`` or as a field ``(n, *S)``; float64 out, same layout."""
        points = torch.as_tensor(points, dtype=torch.float64)
        as_rows = points.ndim == 2  # a field has at least two spatial axes after its component axis
        field = points.T.reshape(points.shape[1], -1, *[1] * (points.shape[1] - 1)) if as_rows else points
        for step in self.steps:
            if isinstance(step, np.ndarray):
                if not np.array_equal(step, np.eye(len(step))):  # the identity (no pre-alignment) costs nothing
                    field = spatial.apply_matrix(torch.as_tensor(step)[None], field[None])[0]
            else:
                field = step.map_points(field)
        return field.reshape(field.shape[0], -1).T.contiguous() if as_rows else field

    def map_grid(self, affine: Affine, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """World positions ``x`` of a grid's voxels and their images ``T(x)``, both ``(n, *shape)`` float64.

        When the first step is a field on this very grid, its displacements are read, not interpolated.
        """
        grid = world_grid(affine, shape)
        first = self.steps[0] if self.steps else None
        if not isinstance(first, FieldStep):
            return grid, self.map_points(grid)
        if not grids_match(first.affine, first.displacement.shape[1:], affine, shape):
            return grid, self.map_points(grid)
        return grid, Transform(self.steps[1:]).map_points(grid + first.displacement.to(grid.dtype))

    def displacement_on(self, affine: Affine, shape: Sequence[int]) -> torch.Tensor:
        """``T(x) - x`` in mm for every voxel ``x`` of a grid, ``(n, *shape)`` float32."""
        grid, mapped = self.map_grid(affine, shape)
        return (mapped - grid).float()

    def warp(
        self, moving: Image, reference: Affine | None = None, shape: Sequence[int] | None = None,
        interpolation: str | None = None, *, like: Image | None = None, labels: bool | None = None,
    ) -> Image:  # fmt: skip
        """Resample ``moving`` onto the reference grid: ``moving(T(x))`` at every voxel ``x`` of that grid.

        Args:
            moving: Image or label map ``(C, *S_moving)`` in the moving image's world.
            reference: Voxel-to-world map (mm) of the output grid; with ``shape``, or give ``like``.
            shape: Spatial shape of the output grid.
            interpolation: For images ``"linear"`` (default), ``"nearest"`` or ``"cubic"``; for label maps
                ``"label"`` (default: each label's indicator interpolated linearly, largest weight wins; see
                :func:`segmorph.registration.spatial.sample_labels`) or ``"nearest"``.
            like: An image whose grid (affine and shape) is the output grid, usually the fixed image.
            labels: Treat ``moving`` as a label map (True) or an image (False); None: ``moving.is_label``.

        Returns:
            An :class:`Image` ``(C, *shape)`` on the output grid: float32 for images (0 outside the moving
            grid), int64 label values for label maps.

        Example:
            >>> warped_labels = T.warp(moving_labels, like=fixed, labels=True)
        """
        if like is not None:
            if reference is not None or shape is not None:
                raise ValueError("like: give either like or reference and shape, not both")
            reference, shape = like.affine, like.spatial_shape
        if reference is None or shape is None:
            raise ValueError("like: give the output grid as like=IMAGE (or reference and shape)")
        if labels is not None and labels != moving.is_label:
            moving = Image(moving.data, moving.affine, is_label=labels)
        if moving.ndim != reference.ndim:
            raise ValueError(f"moving is {moving.ndim}D, the reference grid {reference.ndim}D")
        _, mapped = self.map_grid(reference, shape)
        inverse = torch.as_tensor(np.linalg.inv(moving.affine.matrix))[None]
        coords = spatial.apply_matrix(inverse, mapped[None])
        if moving.is_label:
            warped = spatial.sample_labels(moving.data[None], coords, interpolation or "label")[0]
        else:
            warped = spatial.sample(moving.data.float()[None], coords, interpolation or "linear", "zeros")[0]
        return Image(warped, reference, moving.is_label)


def save_transform(transform: Transform, folder: str | Path, fixed: Affine, shape: Sequence[int]) -> list[Path]:
    """Write ``transform.json`` plus files other tools read.

    ``affine.tfm``: the product of the matrix steps (ITK/SimpleITK/ANTs read it). When the chain has
    a field: ``displacement.nii.gz``, the whole transform as one displacement field on the fixed grid
    (world vectors in mm, LPS, as ITK's DisplacementFieldTransform reads them), and, for velocity
    fields, ``velocity.nii.gz``. ``transform.json`` records the chain so it can be inverted exactly.
    """
    folder = Path(folder)
    written, entries = [], []
    for index, step in enumerate(transform.steps):
        if isinstance(step, np.ndarray):
            entries.append({"type": "matrix", "matrix": step.tolist()})
            continue
        name = f"field_{index}.nii.gz"
        written.append(write_image(Image(step.displacement, step.affine), folder / name))
        entry = {"type": "field", "displacement": name}
        if step.velocity is not None:
            velocity_name = VELOCITY_FILE if index == 0 else f"velocity_{index}.nii.gz"
            written.append(write_image(Image(step.velocity, step.affine), folder / velocity_name))
            entry["velocity"] = velocity_name
        entries.append(entry)
    written.append(write_affine_transform(transform.matrix(), folder / AFFINE_FILE))
    if not transform.is_affine():
        written.append(write_image(Image(transform.displacement_on(fixed, shape), fixed), folder / DISPLACEMENT_FILE))
    record = {"convention": "fixed world -> moving world, LPS mm, steps applied in order", "steps": entries,
              "fixed_grid": {**fixed.to_dict(), "shape": list(shape)}}  # fmt: skip
    written.append(atomic_write_text(folder / TRANSFORM_JSON, json.dumps(record, indent=1) + "\n"))
    return written


def load_transform(path: str | Path) -> Transform:
    """Read a transform: a folder written by :func:`save_transform`, an ITK .tfm/.txt file, or a
    displacement field image (vectors in mm, LPS, fixed → moving, as ANTs and ITK write them)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.exists():
        raise SegmorphError("no such transform file or folder", path)
    if path.suffix.lower() in (".tfm", ".txt", ".mat"):
        return Transform.from_matrix(check_matrix(read_affine_transform(path), "matrix", path))
    return Transform([_field_step(path, None)])


def _field_step(path: Path, velocity_path: Path | None, where: str = "", record: Path | None = None) -> FieldStep:
    """A displacement field file (and its velocity) as a step: one vector component per spatial axis."""
    field = read_image(path)
    if field.num_channels != field.ndim:
        raise SegmorphError(f"{where}a displacement field needs {field.ndim} components, {path.name} has "
                            f"{field.num_channels}", record or path)  # fmt: skip
    velocity = None
    if velocity_path is not None:
        velocity = read_image(velocity_path).data.float()
        if velocity.shape != field.data.shape:
            raise SegmorphError(f"{where}velocity {velocity_path.name} has shape {tuple(velocity.shape)}, its field "
                                f"{tuple(field.data.shape)}", record or velocity_path)  # fmt: skip
    return FieldStep(field.affine, field.data.float(), velocity)


def _load_folder(folder: Path) -> Transform:
    record_path = folder / TRANSFORM_JSON
    if not record_path.exists() and not record_path.is_symlink():
        raise SegmorphError(f"no {TRANSFORM_JSON} here (expected a folder written by segmorph register)", folder)
    record = _read_record(record_path)
    entries = record.get("steps")
    if not isinstance(entries, list):
        raise SegmorphError("malformed transform record (steps: expected a list of steps)", record_path)
    steps: list[Step] = []
    for index, entry in enumerate(entries):
        where = f"steps[{index}]: "
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind == "matrix":
            steps.append(check_matrix(entry.get("matrix"), f"steps[{index}]", record_path))
        elif kind == "field":
            names = [entry.get("displacement"), *([entry["velocity"]] if "velocity" in entry else [])]
            for name in names:
                if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
                    raise SegmorphError(f"{where}field files must be named by a file name in the folder, got {name!r}",
                                        record_path)  # fmt: skip
            steps.append(_field_step(folder / names[0], folder / names[1] if len(names) > 1 else None, where,
                                     record_path))  # fmt: skip
        else:
            raise SegmorphError(f"{where}unknown step type {kind!r} (matrix or field)", record_path)
        ndim = steps[-1].shape[0] - 1 if isinstance(steps[-1], np.ndarray) else steps[-1].affine.ndim
        if ndim != (steps[0].shape[0] - 1 if isinstance(steps[0], np.ndarray) else steps[0].affine.ndim):
            raise SegmorphError(f"{where}a {ndim}D step in a {Transform(steps[:1]).ndim}D transform chain", record_path)
    grid = record.get("fixed_grid")
    grid_ndim = (
        len(grid.get("spacing") or []) if isinstance(grid, dict) and isinstance(grid.get("spacing"), list) else 0
    )
    if steps and grid_ndim in (2, 3) and Transform(steps).ndim != grid_ndim:
        raise SegmorphError(f"a {Transform(steps).ndim}D transform chain on a {grid_ndim}D fixed_grid", record_path)
    return Transform(steps)


def _read_record(record_path: Path) -> dict:
    """``transform.json`` as an object (see :func:`segmorph.records.read_json`); its problems named as a record's."""
    try:
        return read_json(record_path, "transform record", finite=True)
    except SegmorphError as err:
        raise SegmorphError(f"malformed transform record ({err.problem})", record_path) from None


MAX_SCALE = 1e3
"""Largest stretch (and 1 / smallest) a matrix step may apply: beyond it a matrix is singular or absurd."""
MAX_TRANSLATION_MM = 1e5
"""Largest translation a matrix step may apply (100 m)."""


def check_matrix(values: object, where: str, path: str | Path) -> np.ndarray:
    """A homogeneous world matrix of a transform, checked: 3x3 (2D) or 4x4 (3D), finite, last row ``0 ... 0 1``,
    not singular, stretching by at most :data:`MAX_SCALE` and moving by at most :data:`MAX_TRANSLATION_MM`.

    Raises:
        SegmorphError: Naming ``where`` (e.g. ``"steps[0]"``) and ``path``.
    """
    try:
        matrix = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SegmorphError(f"{where}: expected a 3x3 or 4x4 matrix of numbers", path) from None
    if matrix.shape not in ((3, 3), (4, 4)) or not np.isfinite(matrix).all():
        raise SegmorphError(f"{where}: expected a finite 3x3 or 4x4 matrix, got shape {matrix.shape}", path)
    n = len(matrix) - 1
    if not np.allclose(matrix[n], np.eye(n + 1)[n], atol=1e-9):
        raise SegmorphError(f"{where}: the last row of a homogeneous matrix must be {[0] * n + [1]}", path)
    stretch = np.linalg.svd(matrix[:n, :n], compute_uv=False)
    if stretch[-1] < 1 / MAX_SCALE or stretch[0] > MAX_SCALE:
        state = "singular" if stretch[-1] < 1e-12 else "absurd"
        raise SegmorphError(f"{where}: {state} matrix (it stretches by {stretch[-1]:.3g} to {stretch[0]:.3g}; "
                            f"expected within 1/{MAX_SCALE:g} to {MAX_SCALE:g})", path)  # fmt: skip
    if np.abs(matrix[:n, n]).max() > MAX_TRANSLATION_MM:
        raise SegmorphError(f"{where}: absurd translation {matrix[:n, n].tolist()} mm", path)
    return matrix


def read_fixed_grid(record_path: str | Path) -> tuple[Affine, tuple[int, ...]]:
    """The fixed grid stored in a ``transform.json``: its geometry and shape, checked (finite, positive spacing,
    a shape of positive sizes matching the geometry's dimensions, within the voxel budget).

    Raises:
        SegmorphError: ``malformed transform record: no valid fixed_grid (...)``, naming the file.
    """
    record_path = Path(record_path)
    grid = _read_record(record_path).get("fixed_grid")

    def refuse(problem: str) -> SegmorphError:
        return SegmorphError(f"malformed transform record: no valid fixed_grid ({problem})", record_path)

    if not isinstance(grid, dict):
        raise refuse("expected an object with spacing, origin, direction and shape")
    try:
        affine = Affine.from_dict(grid)
        shape = tuple(grid["shape"])
    except KeyError as err:
        raise refuse(f"missing key {err}") from None
    except (TypeError, ValueError) as err:
        raise refuse(str(err).splitlines()[0]) from None
    if not np.isfinite(affine.matrix).all() or abs(np.linalg.det(affine.matrix)) < 1e-12:
        raise refuse("its geometry is not finite or is singular")
    if len(shape) != affine.ndim or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise refuse(f"shape: expected {affine.ndim} positive whole numbers, got {list(shape)}")
    check_voxel_budget(float(np.prod(shape, dtype=np.float64)) * affine.ndim, f"fixed_grid shape {list(shape)}",
                       record_path)  # fmt: skip
    return affine, shape
