"""The training-time augmentation pipeline: draw all parameters, then apply spatial and intensity transforms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from segmorph.configs import refuse_unknown_keys
from segmorph.transforms.intensity import IntensityConfig, IntensityParams, apply_intensity, draw_intensity_params
from segmorph.transforms.spatial import SpatialConfig, SpatialParams, apply_spatial, draw_spatial_params


@dataclass(frozen=True)
class AugmentConfig:
    """All augmentation settings; the defaults are nnU-Net v2's.

    Attributes:
        enabled: False makes the augmenter return its inputs unchanged.
        spatial: Rotation, scaling, elastic deformation and mirroring settings.
        intensity: Noise, blur, brightness, contrast, low-resolution and gamma settings.
    """

    enabled: bool = True
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        """Build from nested JSON/YAML values, e.g. ``{"spatial": {"p_elastic": 0.1}}``; lists become tuples."""
        refuse_unknown_keys(cls, values, "config")
        return cls(
            enabled=bool(values.get("enabled", True)),
            spatial=_section(SpatialConfig, values.get("spatial", {}), "spatial"),
            intensity=_section(IntensityConfig, values.get("intensity", {}), "intensity"),
        )


def _section(kind: type, values: dict[str, Any], name: str) -> Any:
    refuse_unknown_keys(kind, values, name)
    return kind(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one augmented batch; None for a disabled stage."""

    spatial: SpatialParams | None
    intensity: IntensityParams | None


class Augmenter:
    """Batched nnU-Net style augmentation of ``(B, C, *S)`` images and ``(B, 1, *S)`` label maps.

    Runs on whatever device the tensors are on; parameters come from a ``torch.Generator`` (CPU or the
    tensors' device), so the same seed gives the same batch. Inputs are never modified.

    Args:
        config: Probabilities and ranges.
        ndim: Number of spatial dimensions, 2 or 3.
    """

    def __init__(self, config: AugmentConfig, ndim: int) -> None:
        if ndim not in (2, 3):
            raise ValueError(f"ndim: expected 2 or 3 spatial dimensions, got {ndim}")
        if not isinstance(config, AugmentConfig):
            raise TypeError(f"config: expected an AugmentConfig, got {type(config).__name__}")
        self.config = config
        self.ndim = ndim

    def draw(
        self, batch_size: int, num_channels: int, spatial_shape: tuple[int, ...], generator: torch.Generator
    ) -> AugmentParams:
        """Draw the parameters of one batch (spatial first, then intensity)."""
        spatial = intensity = None
        if self.config.enabled and self.config.spatial.enabled:
            spatial = draw_spatial_params(self.config.spatial, batch_size, spatial_shape, generator)
        if self.config.enabled and self.config.intensity.enabled:
            intensity = draw_intensity_params(self.config.intensity, batch_size, num_channels, spatial_shape, generator)
        return AugmentParams(spatial, intensity)

    def apply(
        self, images: torch.Tensor, labels: torch.Tensor | None, params: AugmentParams
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply drawn parameters: spatial transforms to images and labels, then intensity to images."""
        self._check(images, labels)
        if params.spatial is not None:
            images, labels = apply_spatial(images, labels, params.spatial)
        if params.intensity is not None:
            images = apply_intensity(images, params.intensity)
        return images, labels

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment one batch.

        Args:
            images: ``(B, C, *S)`` floating tensor, intensity-normalised.
            labels: ``(B, 1, *S)`` integer tensor on the same device, or None.
            generator: Source of randomness.

        Returns:
            New ``(images, labels)`` of the same shapes, dtypes and device (labels None when given None).
        """
        self._check(images, labels)
        params = self.draw(images.shape[0], images.shape[1], tuple(images.shape[2:]), generator)
        return self.apply(images, labels, params)

    def _check(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        axes = "(B, C, I, J)" if self.ndim == 2 else "(B, C, I, J, K)"
        if not isinstance(images, torch.Tensor) or images.ndim != self.ndim + 2:
            raise ValueError(
                f"images: expected a {axes} tensor for ndim={self.ndim}, got "
                f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images: expected a floating tensor, got {images.dtype}")
        if labels is None:
            return
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (images.shape[0], 1, *images.shape[2:]):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels: expected shape {(images.shape[0], 1, *images.shape[2:])}, got {got}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
        if labels.device != images.device:
            raise ValueError(f"labels: on {labels.device}, images on {images.device}")
