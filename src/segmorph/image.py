"""The core data objects: an Image (tensor + geometry) and a Sample (one case)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine

# Two grids are "the same grid" when they have the same shape and no voxel centre lies farther than this
# many mm from where the other geometry puts the same index (see grid_distance_mm). NIfTI stores geometry
# as float32 (about 7 significant digits), so a scan written and read back, or a label map written by
# another tool, lands up to about 1e-4 mm off at the far corners of a large oblique grid (512 x 512 x 400
# voxels of up to 3.3 mm, origin a few hundred mm from the isocentre). 1e-3 mm keeps a tenfold margin above
# that rounding and stays a hundred times below the finest clinical voxels (about 0.1 mm), so grids accepted
# as one never disagree by a visible fraction of a voxel, while a real misplacement is refused. Unlike a
# tolerance on the matrix entries, it bounds spacing and direction errors by what they do at the far side of
# the grid (a spacing error of d mm moves voxel i by i * d mm).
GRID_TOLERANCE_MM = 1e-3


@dataclass
class Image:
    """A channel-first tensor on a voxel grid with known geometry.

    Attributes:
        data: ``(C, I, J, K)`` for 3D or ``(C, I, J)`` for 2D; index order matches
            ``affine.spacing`` (see :mod:`segmorph.geometry`).
        affine: Voxel index to world (mm, LPS) map.
        is_label: True for label maps: resampled with nearest neighbour, stored as integers.
    """

    data: torch.Tensor
    affine: Affine
    is_label: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.data, torch.Tensor):
            self.data = torch.as_tensor(np.ascontiguousarray(self.data))
        if self.data.ndim != self.affine.ndim + 1:
            raise ValueError(
                f"data: expected {self.affine.ndim + 1} axes (C + {self.affine.ndim} spatial) "
                f"for a {self.affine.ndim}D affine, got shape {tuple(self.data.shape)}"
            )
        if min(self.data.shape) < 1:
            raise ValueError(f"data: has an empty axis, shape {tuple(self.data.shape)}")

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.affine.ndim

    @property
    def num_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm per spatial axis."""
        return self.affine.spacing

    def same_grid(self, other: Image, atol_mm: float = GRID_TOLERANCE_MM) -> bool:
        """Whether ``other`` lies on this image's voxel grid.

        True when both have the same number of spatial axes, the same spatial shape, and no voxel
        centre of the grid lies more than ``atol_mm`` mm from where the other affine puts the same
        index (:func:`grid_distance_mm`). Channels, dtype and ``is_label`` are not compared.

        Args:
            other: The image to compare with.
            atol_mm: Largest distance in mm allowed between the two world positions of any voxel index.

        Example:
            >>> image.same_grid(read_image("label.nii.gz", is_label=True))
            True
        """
        return grids_match(self.affine, self.spatial_shape, other.affine, other.spatial_shape, atol_mm)

    def with_data(self, data: torch.Tensor, is_label: bool | None = None) -> Image:
        """A new Image with the same geometry and other voxel values (same spatial shape)."""
        if tuple(data.shape[1:]) != self.spatial_shape:
            raise ValueError(f"data: spatial shape {tuple(data.shape[1:])} differs from {self.spatial_shape}")
        return Image(data, self.affine, self.is_label if is_label is None else is_label)

    def numpy(self) -> np.ndarray:
        """The voxel values as a numpy array, same axes as :attr:`data`."""
        return self.data.detach().cpu().numpy()

    def __repr__(self) -> str:
        kind = "label" if self.is_label else "image"
        return f"Image({kind}, shape={tuple(self.data.shape)}, dtype={self.data.dtype}, {self.affine!r})"


def grid_distance_mm(affine: Affine, other: Affine, shape: Sequence[int]) -> float:
    """Largest distance in mm between where two geometries put the same voxel index of one grid.

    The difference of two affine maps is affine in the index, so its length is largest at a corner of
    the index box ``[0, shape - 1]``: the grid's corner voxels give the maximum over every voxel centre.

    Args:
        affine: One voxel-to-world map (mm).
        other: Another, with the same number of spatial axes ``n``.
        shape: The grid's spatial shape, ``n`` voxel counts.

    Returns:
        The distance in mm; 0.0 for identical geometries.

    Example:
        >>> grid_distance_mm(Affine.identity(3), Affine.from_geometry((1, 1, 1), (0.5, 0, 0)), (4, 4, 4))
        0.5
    """
    if affine.ndim != other.ndim or len(shape) != affine.ndim:
        raise ValueError(f"shape: expected {affine.ndim} values for {affine.ndim}D and {other.ndim}D affines, "
                         f"got {tuple(shape)}")  # fmt: skip
    corners = np.array(list(itertools.product(*[(0, max(int(s) - 1, 0)) for s in shape])), dtype=np.float64)
    apart = affine.voxel_to_world(corners) - other.voxel_to_world(corners)
    return float(np.linalg.norm(apart, axis=-1).max())


def grids_match(
    affine: Affine,
    shape: Sequence[int],
    other: Affine,
    other_shape: Sequence[int],
    atol_mm: float = GRID_TOLERANCE_MM,
) -> bool:
    """:meth:`Image.same_grid` for a geometry and shape without voxel values (e.g. a displacement field's grid).

    Args:
        affine: Voxel-to-world map (mm) of the first grid.
        shape: Spatial shape of the first grid.
        other: Voxel-to-world map (mm) of the second grid.
        other_shape: Spatial shape of the second grid.
        atol_mm: Largest distance in mm allowed between the two world positions of any voxel index.
    """
    if affine.ndim != other.ndim or tuple(int(s) for s in shape) != tuple(int(s) for s in other_shape):
        return False
    return grid_distance_mm(affine, other, shape) <= atol_mm


def grid_difference(image: Image, like: Image, atol_mm: float = GRID_TOLERANCE_MM) -> str:
    """What differs between ``image``'s grid and ``like``'s, in words; '' when they are the same grid.

    Names the shape (and the number of axes when those differ), or each of spacing, origin and
    direction that alone moves a voxel by more than ``atol_mm`` (``image``'s values first), with how
    far apart the grids' voxels lie.

    Args:
        image: The image whose grid is checked.
        like: The image whose grid it should share.
        atol_mm: Largest distance in mm allowed between the two world positions of any voxel index.
    """
    if image.ndim != like.ndim:
        return f"shape {image.spatial_shape} vs {like.spatial_shape} ({image.ndim}D vs {like.ndim}D)"
    if image.spatial_shape != like.spatial_shape:
        return f"shape {image.spatial_shape} vs {like.spatial_shape}"
    shape, mine, theirs = like.spatial_shape, image.affine, like.affine
    apart = grid_distance_mm(mine, theirs, shape)
    if apart <= atol_mm:
        return ""
    parts = []
    for name in ("spacing", "origin", "direction"):
        alone = {key: getattr(mine if key == name else theirs, key) for key in ("spacing", "origin", "direction")}
        if grid_distance_mm(Affine.from_geometry(**alone), theirs, shape) > atol_mm:
            parts.append(f"{name} {_values(getattr(mine, name))} vs {_values(getattr(theirs, name))}")
    if not parts:  # each part within the tolerance, together beyond it
        parts.append(f"geometry {mine!r} vs {theirs!r}")
    return f"{'; '.join(parts)} (voxels up to {apart:.3g} mm apart)"


def check_same_grid(
    image: Image, like: Image, what: str, path: str | Path | None, atol_mm: float = GRID_TOLERANCE_MM
) -> None:
    """Raise :class:`SegmorphError` for ``path`` unless ``image`` lies on ``like``'s grid.

    The message reads ``<what>: <difference>``, the difference as :func:`grid_difference` words it.

    Args:
        image: The image read from ``path``.
        like: The image whose grid it must share.
        what: The start of the message, e.g. ``"label grid differs from its image case_0.nii.gz"``.
        path: The file (or folder) the error names.
        atol_mm: Largest distance in mm allowed between the two world positions of any voxel index.

    Raises:
        SegmorphError: The grids differ in axes, shape or geometry.

    Example:
        >>> check_same_grid(labels, scan, "label grid differs from the scan's", "labels.nii.gz")
    """
    problem = grid_difference(image, like, atol_mm)
    if problem:
        raise SegmorphError(f"{what}: {problem}", path)


def _values(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.7g}" for v in np.ravel(values)) + ")"


@dataclass
class Sample:
    """One case: its input image (channels stacked), optional label map and metadata.

    Attributes:
        case_id: Identifier used in file names and reports.
        image: Input image, channels stacked along axis 0 (e.g. T1 and T2).
        label: Integer label map with one channel, same grid as ``image``; None when unlabelled.
        meta: Free-form facts about the case (source paths, ...), JSON-serialisable.
    """

    case_id: str
    image: Image
    label: Image | None = None
    meta: dict[str, Any] = field(default_factory=dict)
