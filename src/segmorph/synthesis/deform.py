"""Random elastic deformation of label maps: new label maps for the generator from the ones a dataset has.

A displacement field is white noise smoothed by a Gaussian (Simard et al. 2003), drawn on a coarse grid (a
quarter of the smoothing length per voxel) and interpolated linearly to the label map's grid, then scaled so
that the root mean square of each component is the asked magnitude in mm. The label map is resampled through
it by nearest neighbour, so every output voxel holds a value of the input: labels stay labels, and the grid
(shape, spacing, origin, direction) is the input's. Draws come from a seeded ``torch.Generator``.

Magnitudes are in mm and converted to voxels with the spacing of each axis, so an anisotropic grid is
deformed by the same physical amount along every axis. Without explicit values they scale with the field
of view (:class:`Deformation`): 5% of its smallest extent for the magnitude, 20% for the smoothing length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segmorph.image import Image
from segmorph.registration.spatial import warp

RELATIVE_MAGNITUDE = 0.05  # of the smallest extent of the field of view, when no magnitude is given
RELATIVE_SMOOTHNESS = 0.2


@dataclass(frozen=True)
class Deformation:
    """How strongly to deform.

    Attributes:
        magnitude_mm: Root mean square of each displacement component in mm (None: 5% of the grid's smallest
            extent in mm). 0 leaves the label map as it is.
        smoothness_mm: Standard deviation in mm of the Gaussian that smooths the random field: points closer
            than about this move together (None: 20% of the smallest extent).
    """

    magnitude_mm: float | None = None
    smoothness_mm: float | None = None

    def __post_init__(self) -> None:
        for name in ("magnitude_mm", "smoothness_mm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite value of at least 0 mm, got {value}")
        if self.smoothness_mm == 0:
            raise ValueError("smoothness_mm: expected a positive length in mm, got 0")

    def resolve(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float]:
        """``(magnitude_mm, smoothness_mm)`` for a grid of ``shape`` voxels of ``spacing`` mm."""
        extent = min(n * float(s) for n, s in zip(shape, spacing))
        magnitude = RELATIVE_MAGNITUDE * extent if self.magnitude_mm is None else float(self.magnitude_mm)
        smoothness = RELATIVE_SMOOTHNESS * extent if self.smoothness_mm is None else float(self.smoothness_mm)
        return magnitude, smoothness

    def to_dict(self) -> dict[str, float | None]:
        return {"magnitude_mm": self.magnitude_mm, "smoothness_mm": self.smoothness_mm}


def elastic_displacement(
    shape: Sequence[int], spacing: Sequence[float], magnitude_mm: float, smoothness_mm: float,
    generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """A smooth random displacement field in mm.

    Args:
        shape: Spatial shape ``S`` of the grid (2 or 3 axes).
        spacing: Voxel size in mm per axis.
        magnitude_mm: Root mean square of each component over the grid.
        smoothness_mm: Standard deviation of the smoothing Gaussian in mm.
        generator: Source of the random draws.

    Returns:
        ``(ndim, *S)`` float32: component ``a`` is the displacement in mm along array axis ``a``.

    Example:
        >>> field = elastic_displacement((32, 32), (1.0, 1.0), 2.0, 6.0, torch.Generator().manual_seed(0))
        >>> field.shape, round(float(field.pow(2).mean().sqrt()), 3)
        (torch.Size([2, 32, 32]), 2.0)
    """
    ndim = len(shape)
    # coarse-grid spacing in mm: four nodes per smoothing length, never finer than half a voxel
    steps = [max(smoothness_mm / 4.0, float(s) / 2.0) for s in spacing]
    coarse = [max(2, int(math.ceil(n * float(s) / step)) + 1) for n, s, step in zip(shape, spacing, steps)]
    sigmas = [smoothness_mm / step for step in steps]
    radii = [int(math.ceil(3 * sigma)) for sigma in sigmas]
    # noise beyond the grid by the kernel's radius, so the smoothed field is as random at the edges as inside
    noise = torch.randn((ndim, *[n + 2 * r for n, r in zip(coarse, radii)]), generator=generator)
    smooth = _gaussian_blur(noise[None], sigmas, radii)
    mode = "trilinear" if ndim == 3 else "bilinear"
    field = F.interpolate(smooth, size=tuple(int(n) for n in shape), mode=mode, align_corners=True)[0]
    rms = field.pow(2).mean(dim=tuple(range(1, ndim + 1)), keepdim=True).sqrt()  # per component
    return field * (magnitude_mm / rms.clamp_min(1e-12))


def _gaussian_blur(x: torch.Tensor, sigmas: Sequence[float], radii: Sequence[int]) -> torch.Tensor:
    """``(1, C, *S)`` convolved along each spatial axis with a Gaussian of ``sigmas[axis]`` voxels truncated at
    ``radii[axis]``, without padding: each axis shrinks by ``2 * radii[axis]``."""
    ndim, channels = x.ndim - 2, x.shape[1]
    conv = F.conv3d if ndim == 3 else F.conv2d
    for axis, (sigma, radius) in enumerate(zip(sigmas, radii)):
        taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        shape = [1] * ndim
        shape[axis] = kernel.numel()
        x = conv(x, (kernel / kernel.sum()).view(1, 1, *shape).repeat(channels, 1, *[1] * ndim), groups=channels)
    return x


def warp_labels(labels: torch.Tensor, displacement_mm: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Resample a label map through a displacement: output voxel ``x`` takes the label nearest ``x + u(x)``.

    Args:
        labels: ``(1, *S)`` integer label map.
        displacement_mm: ``(ndim, *S)`` displacement in mm along each array axis.
        spacing: Voxel size in mm per axis.

    Returns:
        ``(1, *S)`` of ``labels``' dtype; positions beyond the grid take the nearest edge voxel's label.
    """
    shape = labels.shape[1:]
    if tuple(displacement_mm.shape) != (len(shape), *shape):
        raise ValueError(f"displacement_mm: expected shape {(len(shape), *shape)}, got {tuple(displacement_mm.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"labels: expected an integer label map, got {labels.dtype}")
    per_axis = torch.as_tensor([float(s) for s in spacing], dtype=torch.float32).view(-1, *[1] * len(shape))
    voxels = displacement_mm.float() / per_axis
    return warp(labels[None].float(), voxels[None], "nearest", "border")[0].round().to(labels.dtype)


def deform_labels(
    labels: torch.Tensor, spacing: Sequence[float], generator: torch.Generator, deformation: Deformation = Deformation()
) -> torch.Tensor:  # fmt: skip
    """A random elastic deformation of a ``(1, *S)`` integer label map on its own grid (see the module doc).

    Args:
        labels: ``(1, *S)`` integer label map.
        spacing: Voxel size in mm per spatial axis.
        generator: Source of the random draws (seeded: the same seed gives the same deformation).
        deformation: Magnitude and smoothness.

    Returns:
        ``(1, *S)`` label map of ``labels``' dtype holding only values of ``labels``.

    Example:
        >>> labels = torch.zeros(1, 32, 32, dtype=torch.long); labels[0, 8:24, 8:24] = 1
        >>> deformed = deform_labels(labels, (1.0, 1.0), torch.Generator().manual_seed(0), Deformation(2.0, 6.0))
    """
    shape = tuple(int(n) for n in labels.shape[1:])
    magnitude, smoothness = deformation.resolve(shape, spacing)
    if magnitude == 0:
        return labels.clone()
    field = elastic_displacement(shape, spacing, magnitude, smoothness, generator)
    return warp_labels(labels, field, spacing)


def deform_label_image(label: Image, generator: torch.Generator, deformation: Deformation = Deformation()) -> Image:
    """:func:`deform_labels` of a label :class:`Image`; the result has the input's grid and geometry."""
    spacing = np.asarray(label.spacing, dtype=float).tolist()
    return Image(deform_labels(label.data, spacing, generator, deformation), label.affine, is_label=True)
