"""Tests of batched augmentation and patch sampling (tiny volumes, CPU)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from segmorph.transforms import (
    AugmentConfig,
    Augmenter,
    IntensityConfig,
    PatchSampler,
    SpatialConfig,
    crop_with_padding,
    random_patches,
    rotation_matrices,
    sampling_grid,
    warp,
)

INTENSITY_PROBABILITIES = (
    "p_noise",
    "p_blur",
    "p_brightness",
    "p_contrast",
    "p_low_resolution",
    "p_gamma_inverted",
    "p_gamma",
)
ALL_SPATIAL = SpatialConfig(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0)
ALL_INTENSITY = IntensityConfig(**dict.fromkeys(INTENSITY_PROBABILITIES, 1.0))
SPATIAL_ONLY = AugmentConfig(spatial=ALL_SPATIAL, intensity=IntensityConfig(enabled=False))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ball_batch(ndim: int, batch: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth images (positive inside an off-centre ball) and labels ``image > 0`` with two classes."""
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * ndim, indexing="ij")
    centre = [size * 0.35, size * 0.6, size * 0.4][:ndim]
    distance = torch.sqrt(sum((a - c) ** 2 for a, c in zip(axes, centre)))
    image = (size * 0.3 - distance)[None, None].repeat(batch, 1, *[1] * ndim)
    labels = (image > 0).long() + (axes[0] > size / 2).long()[None, None] * (image > 0).long()
    return image, labels


# Spatial transforms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_labels_keep_their_values(ndim: int) -> None:
    images, labels = ball_batch(ndim, batch=4)
    labels = labels * 3 + 2 * (labels > 0).long()  # values {0, 5, 8}
    out_images, out_labels = Augmenter(SPATIAL_ONLY, ndim)(images, labels, seeded(1))
    assert out_labels.dtype == labels.dtype and out_images.shape == images.shape
    assert set(out_labels.unique().tolist()) <= {0, 5, 8}
    assert not torch.equal(out_labels, labels)


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_parameters_leave_the_batch_exactly_unchanged(ndim: int) -> None:
    spatial = SpatialConfig(p_rotation=1.0, rotation_deg=(0.0, 0.0), p_scaling=1.0, scaling=(1.0, 1.0), p_flip=0.0)
    config = AugmentConfig(spatial=spatial, intensity=IntensityConfig(enabled=False))
    images, labels = ball_batch(ndim)
    out_images, out_labels = Augmenter(config, ndim)(images, labels, seeded())
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)


def test_identity_grid_and_zero_displacement_resample_to_the_input() -> None:
    images, labels = ball_batch(3)
    eye = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    warped, warped_labels = warp(images, labels, sampling_grid(eye, (16, 16, 16)))
    assert torch.allclose(warped, images, atol=1e-5) and torch.equal(warped_labels, labels)
    zero = torch.zeros(1, 3, 3, 4, 5, dtype=torch.float64)
    matrices = rotation_matrices(torch.tensor([[0.3, -0.2, 0.1], [0.5, 0.0, 0.2]]))
    plain = sampling_grid(matrices, (16, 16, 16))
    displaced = sampling_grid(matrices, (16, 16, 16), zero, torch.tensor([1]))
    assert torch.allclose(plain, displaced, atol=1e-5)


def test_displacement_moves_the_sampling_position() -> None:
    eye = torch.eye(2, dtype=torch.float64).repeat(2, 1, 1)
    shift = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    shift[:, 1] = 2.0  # read two voxels further along J everywhere
    image = (torch.arange(12.0) + 10 * torch.arange(8.0)[:, None]).expand(2, 1, 8, 12)  # value = 10 i + j
    warped, _ = warp(image, None, sampling_grid(eye, (8, 12), shift, torch.tensor([1])))
    assert torch.allclose(warped[1, 0, :, :10], image[1, 0, :, 2:], atol=1e-4)
    assert torch.all(warped[1, 0, :, 11] == 0)  # read outside: zero padding
    assert torch.allclose(warped[0], image[0], atol=1e-4)  # the row without a displacement


def test_offsets_shift_the_content_by_whole_voxels() -> None:
    image = (torch.arange(12.0) + 10 * torch.arange(8.0)[:, None]).expand(2, 1, 8, 12)  # value = 10 i + j
    eye = torch.eye(2, dtype=torch.float64).repeat(2, 1, 1)
    offsets = torch.tensor([[0.0, 0.0], [1.0, -3.0]], dtype=torch.float64)  # read 1 voxel on along I, 3 back along J
    warped, _ = warp(image, None, sampling_grid(eye, (8, 12), offsets=offsets))
    assert torch.allclose(warped[1, 0, :7, 3:], image[1, 0, 1:, :9], atol=1e-4)
    assert torch.all(warped[1, 0, 7] == 0) and torch.all(warped[1, 0, :, :3] == 0)  # outside reads as zero
    assert torch.allclose(warped[0], image[0], atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_moves_images_and_labels_within_its_range(ndim: int) -> None:
    spatial = SpatialConfig(p_rotation=0.0, p_scaling=0.0, p_flip=0.0, p_translation=1.0, translation=0.25)
    config = AugmentConfig(spatial=spatial, intensity=IntensityConfig(enabled=False))
    images, labels = ball_batch(ndim, batch=8)
    out_images, out_labels = Augmenter(config, ndim)(images, labels, seeded())
    before = torch.stack([torch.nonzero(labels[0, 0]).float().mean(0)] * 8)
    after = torch.stack([torch.nonzero(out_labels[b, 0]).float().mean(0) for b in range(8)])
    moved = (after - before).abs()
    assert moved.max() > 1.0 and moved.max() <= 0.25 * 16 + 0.5  # shifted, by at most a quarter of the extent
    image_centres = torch.stack([torch.nonzero(out_images[b, 0] > 0).float().mean(0) for b in range(8)])
    assert (image_centres - after).abs().max() < 0.6  # image and labels moved together


def test_translation_off_keeps_the_other_draws() -> None:
    images, labels = ball_batch(2)
    plain = Augmenter(AugmentConfig(spatial=ALL_SPATIAL), 2)(images, labels, seeded())
    zero = replace(ALL_SPATIAL, p_translation=0.0, translation=0.3)
    same = Augmenter(AugmentConfig(spatial=zero), 2)(images, labels, seeded())
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])


@pytest.mark.parametrize("plane, dims", [(0, (3, 4)), (1, (2, 4)), (2, (2, 3))])
def test_quarter_turn_equals_rot90_3d(plane: int, dims: tuple[int, int]) -> None:
    images = torch.randn(2, 2, 5, 5, 5, generator=seeded())
    labels = torch.randint(0, 4, (2, 1, 5, 5, 5), generator=seeded(1))
    angles = torch.zeros(2, 3)
    angles[:, plane] = math.pi / 2
    grid = sampling_grid(rotation_matrices(angles), (5, 5, 5))
    warped, warped_labels = warp(images, labels, grid)
    assert torch.allclose(warped, torch.rot90(images, 1, dims=dims), atol=1e-5)
    assert torch.equal(warped_labels, torch.rot90(labels, 1, dims=dims))


def test_quarter_turn_equals_rot90_2d() -> None:
    images = torch.randn(1, 1, 6, 6, generator=seeded())
    grid = sampling_grid(rotation_matrices(torch.tensor([[math.pi / 2]])), (6, 6))
    assert torch.allclose(warp(images, None, grid)[0], torch.rot90(images, 1, dims=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_flips_mirror_images_and_labels_together(ndim: int) -> None:
    config = AugmentConfig(spatial=SpatialConfig(p_flip=1.0), intensity=IntensityConfig(enabled=False))
    images, labels = ball_batch(ndim)
    out_images, out_labels = Augmenter(config, ndim)(images, labels, seeded())
    dims = tuple(range(2, 2 + ndim))
    assert torch.equal(out_images, images.flip(dims)) and torch.equal(out_labels, labels.flip(dims))
    only_j = AugmentConfig(spatial=SpatialConfig(p_flip=1.0, flip_axes=(1,)), intensity=IntensityConfig(enabled=False))
    assert torch.equal(Augmenter(only_j, ndim)(images, labels, seeded())[0], images.flip(3))


@pytest.mark.parametrize("ndim", [2, 3])
def test_images_and_labels_stay_aligned(ndim: int) -> None:
    images, labels = ball_batch(ndim, batch=4, size=32)  # image = signed distance to the ball surface, voxels
    spatial = SpatialConfig(p_rotation=1.0, p_scaling=1.0, p_elastic=0.5, p_flip=0.5)
    config = AugmentConfig(spatial=spatial, intensity=IntensityConfig(enabled=False))
    out_images, out_labels = Augmenter(config, ndim)(images, labels, seeded(3))
    disagree = (out_images > 0) != (out_labels > 0)
    assert 1.0 - disagree.float().mean() > 0.98
    # Nearest and linear interpolation differ by at most half a voxel (times the scale, <= 1.4): only at the surface.
    assert out_images[disagree].abs().max() < 1.0
    assert (out_labels > 0).sum() > 0.3 * (labels > 0).sum()


# Intensity transforms -----------------------------------------------------------------------------------------


def only(**changes: object) -> AugmentConfig:
    """Intensity config with every probability 0 except ``changes``; spatial transforms off."""
    values = dict.fromkeys(INTENSITY_PROBABILITIES, 0.0) | changes
    return AugmentConfig(spatial=SpatialConfig(enabled=False), intensity=IntensityConfig(**values))


def test_intensity_known_answers() -> None:
    images = torch.randn(3, 2, 12, 12, 12, generator=seeded())

    def run(config):
        return Augmenter(config, 3)(images, None, seeded(4))[0]

    assert torch.allclose(run(only(p_brightness=1.0, brightness=(2.0, 2.0))), 2 * images)
    assert torch.allclose(run(only(p_gamma=1.0, gamma=(1.0, 1.0))), images, atol=1e-4)
    assert torch.allclose(run(only(p_gamma_inverted=1.0, gamma=(1.0, 1.0))), images, atol=1e-4)
    assert torch.allclose(run(only(p_low_resolution=1.0, low_resolution=(1.0, 1.0))), images, atol=1e-5)
    noisy = run(only(p_noise=1.0, noise_variance=(0.1, 0.1)))
    assert abs(float((noisy - images).std()) - math.sqrt(0.1)) < 0.02
    blurred = run(only(p_blur=1.0))
    assert blurred.std() < 0.8 * images.std() and abs(float(blurred.mean() - images.mean())) < 0.02
    contrasted = run(only(p_contrast=1.0, contrast=(0.5, 0.5)))
    assert torch.allclose(contrasted.mean((2, 3, 4)), images.mean((2, 3, 4)), atol=1e-5)
    assert torch.allclose(contrasted.std((2, 3, 4)), 0.5 * images.std((2, 3, 4)), atol=1e-4)


def test_gamma_keeps_mean_and_std() -> None:
    images = torch.randn(2, 1, 10, 10, 10, generator=seeded())
    for config in (only(p_gamma=1.0, gamma=(1.4, 1.5)), only(p_gamma_inverted=1.0, gamma=(0.7, 0.8))):
        out = Augmenter(config, 3)(images, None, seeded())[0]
        assert not torch.allclose(out, images, atol=1e-2)
        assert torch.allclose(out.mean((2, 3, 4)), images.mean((2, 3, 4)), atol=1e-4)
        assert torch.allclose(out.std((2, 3, 4)), images.std((2, 3, 4)), atol=1e-4)


def test_unselected_samples_are_untouched() -> None:
    images = torch.randn(8, 1, 6, 6, 6, generator=seeded())
    spatial_only = AugmentConfig(
        spatial=SpatialConfig(p_rotation=0.5, p_flip=0.0), intensity=IntensityConfig(enabled=False)
    )
    for config in (
        spatial_only,
        only(p_blur=0.5),
        only(p_gamma=0.5),
        only(p_low_resolution=0.5, low_resolution=(1.5, 2.0)),
    ):
        out = Augmenter(config, 3)(images, None, seeded(2))[0]
        same = [torch.equal(a, b) for a, b in zip(out, images)]
        assert any(same) and not all(same)


# The pipeline -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_same_seed_same_batch_different_seed_different_batch(ndim: int) -> None:
    images, labels = ball_batch(ndim, batch=3)
    augment = Augmenter(AugmentConfig(spatial=ALL_SPATIAL, intensity=ALL_INTENSITY), ndim)
    first, again, other = (augment(images, labels, seeded(seed)) for seed in (7, 7, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_inputs_are_not_mutated_and_disabled_is_identity() -> None:
    images, labels = ball_batch(3, batch=3)
    images_copy, labels_copy = images.clone(), labels.clone()
    Augmenter(AugmentConfig(spatial=ALL_SPATIAL, intensity=ALL_INTENSITY), 3)(images, labels, seeded())
    assert torch.equal(images, images_copy) and torch.equal(labels, labels_copy)
    out_images, out_labels = Augmenter(AugmentConfig(enabled=False), 3)(images, labels, seeded())
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)


def test_config_from_dict() -> None:
    config = AugmentConfig.from_dict({"spatial": {"p_elastic": 0.1, "scaling": [0.8, 1.2]}, "intensity": {}})
    assert config.spatial.p_elastic == 0.1 and config.spatial.scaling == (0.8, 1.2)
    with pytest.raises(ValueError, match="spatial"):
        AugmentConfig.from_dict({"spatial": {"p_elastik": 0.1}})


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: Augmenter(AugmentConfig(), 4), "ndim"),
        (lambda: Augmenter(AugmentConfig(), 3)(torch.zeros(1, 1, 4, 4), None, seeded()), "images"),
        (lambda: Augmenter(AugmentConfig(), 2)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), seeded()), "labels"),
        (
            lambda: Augmenter(AugmentConfig(), 2)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5).long(), seeded()),
            "labels",
        ),
        (lambda: SpatialConfig(p_rotation=1.5), "p_rotation"),
        (lambda: SpatialConfig(rotation_deg=(30.0, -30.0)), "rotation_deg"),
        (lambda: SpatialConfig(translation=0.7), "translation"),
        (lambda: SpatialConfig(p_translation=-0.1), "p_translation"),
        (lambda: IntensityConfig(gamma=(0.0, 1.0)), "gamma"),
        (lambda: PatchSampler([torch.zeros(1, 4, 4)], [torch.zeros(1, 4, 4).long()], (2, 2, 2)), "patch_size"),
        (
            lambda: PatchSampler([torch.zeros(1, 4, 4)], [torch.zeros(1, 4, 4).long()], (2, 2), 1.5),
            "foreground_fraction",
        ),
        (lambda: PatchSampler([torch.zeros(1, 4, 4)], [torch.zeros(1, 4, 5).long()], (2, 2)), "labels"),
        (lambda: PatchSampler([torch.zeros(1, 4, 4)], [], (2, 2)), "labels"),
        (
            lambda: PatchSampler([torch.zeros(1, 4, 4)], [torch.zeros(1, 4, 4).long()], (2, 2)).sample(0, seeded()),
            "count",
        ),
    ],
)
def test_bad_arguments_name_the_argument(build, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build()


# Patches ------------------------------------------------------------------------------------------------------


def sparse_cases(ndim: int, cases: int = 3, size: int = 24) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Volumes whose only foreground is one voxel of class 2 and a 3-voxel bar of class 1 near a corner."""
    images, labels = [], []
    for case in range(cases):
        label = torch.zeros((1,) + (size,) * ndim, dtype=torch.long)
        label[(0,) + (size - 2,) * ndim] = 2
        label[(0, slice(1, 4)) + (1 + case,) * (ndim - 1)] = 1
        images.append(
            label.float() + 0.3 * torch.sin(torch.arange(label.numel(), dtype=torch.float32)).view(label.shape)
        )
        labels.append(label)
    return images, labels


@pytest.mark.parametrize("ndim", [2, 3])
def test_foreground_patches_contain_foreground_and_pick_classes_first(ndim: int) -> None:
    images, labels = sparse_cases(ndim)
    patch_images, patch_labels = random_patches(images, labels, (6,) * ndim, 60, 1.0, seeded())
    assert patch_images.shape == (60, 1) + (6,) * ndim and patch_labels.dtype == torch.long
    assert all(bool((p > 0).any()) for p in patch_labels)
    with_class_2 = sum(bool((p == 2).any()) for p in patch_labels)
    assert 20 <= with_class_2 <= 40  # one voxel of class 2 against three of class 1: classes drawn first
    assert torch.equal(patch_images.round().long(), patch_labels)  # image and label crops aligned


def test_random_patches_rarely_hit_sparse_foreground_and_are_reproducible() -> None:
    images, labels = sparse_cases(3)
    sampler = PatchSampler(images, labels, (6, 6, 6), foreground_fraction=0.0)
    _, patch_labels = sampler.sample(20, seeded())
    assert sum(bool((p > 0).any()) for p in patch_labels) < 5
    first, again = sampler.sample(5, seeded(3)), sampler.sample(5, seeded(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_small_volumes_are_padded_with_zeros(fraction: float) -> None:
    image = torch.rand(2, 4, 5, 3) + 1.0
    label = torch.ones(1, 4, 5, 3, dtype=torch.long)
    patch_images, patch_labels = random_patches([image], [label], (8, 8, 8), 4, fraction, seeded())
    assert patch_images.shape == (4, 2, 8, 8, 8) and patch_labels.shape == (4, 1, 8, 8, 8)
    assert not all(torch.equal(patch_labels[0], other) for other in patch_labels[1:])  # placed at random
    for patch_image, patch_label in zip(patch_images, patch_labels):
        assert int(patch_label.sum()) == label.numel()  # the whole volume, surrounded by zeros
        assert torch.allclose(patch_image.sum((1, 2, 3)), image.sum((1, 2, 3)))
        assert torch.equal(patch_image[0] > 0, patch_label[0] > 0)


def test_crop_with_padding_known_answer() -> None:
    volume = torch.arange(1, 10).view(1, 3, 3)
    expected = torch.tensor([[[0, 0, 0], [0, 1, 2], [0, 4, 5]]])
    assert torch.equal(crop_with_padding(volume, (-1, -1), (3, 3)), expected)
    assert torch.equal(crop_with_padding(volume, (5, 0), (2, 2)), torch.zeros(1, 2, 2, dtype=volume.dtype))
