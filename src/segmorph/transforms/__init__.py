"""Batched training-time augmentation and patch sampling (torch, on the training device)."""

from segmorph.transforms.augment import AugmentConfig, Augmenter, AugmentParams
from segmorph.transforms.intensity import IntensityConfig, IntensityParams, apply_intensity, draw_intensity_params
from segmorph.transforms.patches import PatchSampler, crop_with_padding, random_patches
from segmorph.transforms.spatial import (
    SpatialConfig,
    SpatialParams,
    apply_spatial,
    draw_spatial_params,
    rotation_matrices,
    sampling_grid,
    warp,
)

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "Augmenter",
    "IntensityConfig",
    "IntensityParams",
    "PatchSampler",
    "SpatialConfig",
    "SpatialParams",
    "apply_intensity",
    "apply_spatial",
    "crop_with_padding",
    "draw_intensity_params",
    "draw_spatial_params",
    "random_patches",
    "rotation_matrices",
    "sampling_grid",
    "warp",
]
