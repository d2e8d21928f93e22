"""The core data objects: an Image (tensor + geometry) and a Sample (one case)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from segmorph.geometry import Affine


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
