"""Similarity losses and regularisers for registration: gradchecks, known answers, masks, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import oblique_direction
from segmorph.metrics.registration import folding_fraction, jacobian_determinant, log_jacobian_std
from segmorph.registration.regularize import bending_energy, diffusion, spatial_gradients
from segmorph.registration.similarity import (
    SIMILARITIES,
    get_similarity,
    local_ncc,
    mind_loss,
    mind_ssc,
    mse,
    mutual_information,
)

SPACING = (0.8, 1.1, 2.5)


def smooth_image(shape: tuple[int, ...], seed: int = 0, sigma: float = 1.5) -> torch.Tensor:
    """A ``(1, 1, *shape)`` float64 image in ``[0, 1]``: blurred noise, so shifts change it everywhere."""
    noise = np.random.default_rng(seed).normal(size=shape)
    blurred = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    blurred = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    return torch.from_numpy(blurred)[None, None]


def shifted(image: torch.Tensor, voxels: int = 2) -> torch.Tensor:
    return torch.roll(image, voxels, dims=2)


def gradcheck_warped(loss, fixed: torch.Tensor, warped: torch.Tensor) -> bool:
    warped = warped.clone().requires_grad_(True)
    return torch.autograd.gradcheck(lambda w: loss(fixed, w), (warped,), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- gradchecks


def test_mse_gradcheck():
    assert gradcheck_warped(mse, torch.rand(1, 2, 5, 5, 5, dtype=torch.float64), torch.rand(1, 2, 5, 5, 5).double())


@pytest.mark.parametrize(("shape", "window"), [((6, 6, 6), 3), ((8, 8), (3, 5))])
def test_local_ncc_gradcheck(shape, window):
    fixed, warped = smooth_image(shape, 1, 1.0), smooth_image(shape, 2, 1.0)
    assert gradcheck_warped(lambda f, w: local_ncc(f, w, window=window), fixed, warped)


def test_local_ncc_gradcheck_with_mask():
    fixed, warped = smooth_image((6, 6, 6), 1, 1.0), smooth_image((6, 6, 6), 2, 1.0)
    mask = torch.zeros(1, 1, 6, 6, 6, dtype=torch.bool)
    mask[..., 1:5, :, 2:] = True
    assert gradcheck_warped(lambda f, w: local_ncc(f, w, window=3, mask=mask), fixed, warped)


def test_mutual_information_gradcheck():
    # Min and max are pinned to fixed voxels: the [0, 1] scaling is detached, so a gradcheck that
    # moved an extreme voxel would see the scale change that the analytic gradient ignores.
    def pinned(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., 0, 0, 0], x[..., -1, -1, -1] = 0.0, 1.0
        return x

    generator = torch.Generator().manual_seed(0)
    fixed = pinned(0.1 + 0.8 * torch.rand(1, 1, 6, 6, 6, dtype=torch.float64, generator=generator))
    warped = 0.1 + 0.8 * torch.rand(1, 1, 6, 6, 6, dtype=torch.float64, generator=generator)
    assert gradcheck_warped(lambda f, w: mutual_information(f, pinned(w), bins=8), fixed, warped)


@pytest.mark.parametrize("shape", [pytest.param((6, 6, 6), marks=pytest.mark.slow), (8, 8)])  # 3D: many MIND terms
def test_mind_loss_gradcheck(shape):
    fixed, warped = smooth_image(shape, 3, 1.0), smooth_image(shape, 4, 1.0)
    assert gradcheck_warped(lambda f, w: mind_loss(f, w, radius=1, dilation=1), fixed, warped)


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
@pytest.mark.parametrize("shape", [(16, 16, 12), (24, 20)])
def test_identical_images_score_better_than_shifted(name, shape):
    image = smooth_image(shape)
    loss = get_similarity(name)
    assert loss(image, image).item() < loss(image, shifted(image)).item() - 1e-3


def test_local_ncc_is_minus_one_for_identical_images():
    image = smooth_image((16, 16, 12))
    assert local_ncc(image, image).item() == pytest.approx(-1.0, abs=1e-4)


def test_local_ncc_ignores_affine_intensity_changes():
    fixed, warped = smooth_image((16, 16, 12), 0), shifted(smooth_image((16, 16, 12), 0), 1)
    reference = local_ncc(fixed, warped, window=5).item()
    assert -1.0 < reference < -0.1
    assert local_ncc(fixed, 3.0 * warped + 5.0, window=5).item() == pytest.approx(reference, rel=1e-4)
    assert local_ncc(0.5 * fixed - 2.0, warped, window=5).item() == pytest.approx(reference, rel=1e-4)


def test_mutual_information_rewards_a_monotonic_remap_over_a_shift():
    image = smooth_image((16, 16, 12))
    remapped = 1.0 - image**2  # another "modality": decreasing and non-linear on [0, 1]
    assert mutual_information(image, remapped).item() < mutual_information(image, shifted(image)).item() - 0.1
    # MSE, a mono-modal loss, prefers the shifted copy: the test separates the two kinds.
    assert mse(image, remapped).item() > mse(image, shifted(image)).item()


def test_mutual_information_of_an_image_with_itself_is_its_entropy():
    image = torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64)
    image[..., 4:, :, :] = 1.0  # two equal halves: MI = entropy = log 2
    assert mutual_information(image, image, bins=8).item() == pytest.approx(-np.log(2), abs=1e-3)


def test_mutual_information_sampling_is_seeded():
    image, other = smooth_image((16, 16, 12)), shifted(smooth_image((16, 16, 12)))

    def sampled(seed: int) -> float:
        generator = torch.Generator().manual_seed(seed)
        return mutual_information(image, other, num_samples=1000, generator=generator).item()

    assert sampled(0) == sampled(0)
    assert sampled(0) != sampled(1)
    assert sampled(0) == pytest.approx(mutual_information(image, other).item(), abs=0.1)


@pytest.mark.parametrize("shape", [(16, 16, 12), (24, 20)])
def test_mind_is_contrast_invariant_but_sees_shifts(shape):
    image = smooth_image(shape)
    inverted = 2.0 - 3.0 * image
    assert mind_loss(image, inverted).item() < 1e-12
    assert mind_loss(image, shifted(image)).item() > 1e-3


def test_mind_ssc_descriptor_shape_and_range():
    descriptors = mind_ssc(torch.rand(2, 3, 8, 7, 6))
    assert descriptors.shape == (2, 36, 8, 7, 6)
    assert mind_ssc(torch.rand(1, 1, 9, 8)).shape == (1, 4, 9, 8)
    assert descriptors.min() > 0 and descriptors.max() <= 1
    assert torch.allclose(descriptors.amax(1), torch.ones(()))  # the nearest pair scores exp(0)


# ----------------------------------------------------------------------------- masks


def _mask_and_outside_change(shape: tuple[int, ...], margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A box mask and a boolean map of voxels at least ``margin`` voxels outside it."""
    mask = torch.zeros(1, 1, *shape, dtype=torch.bool)
    inner = tuple(slice(s // 4, s - s // 4) for s in shape)
    mask[(..., *inner)] = True
    grown = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in inner)
    far = torch.ones_like(mask)
    far[(..., *grown)] = False
    return mask, far


@pytest.mark.parametrize(("name", "margin"), [("mse", 0), ("ncc", 0), ("mi", 0), ("mind", 4)])
def test_voxels_outside_the_mask_do_not_change_the_loss(name, margin):
    shape = (20, 20, 16)
    fixed, warped = smooth_image(shape, 0), smooth_image(shape, 1)
    mask, outside = _mask_and_outside_change(shape, margin)
    noise = torch.rand(1, 1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = get_similarity(name)
    reference = loss(fixed, warped, mask=mask).item()
    changed = loss(torch.where(outside, 3 * noise, fixed), torch.where(outside, noise, warped), mask=mask).item()
    assert changed == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert loss(fixed, warped).item() != pytest.approx(reference, rel=1e-6)  # the mask did restrict


def test_sampled_mutual_information_draws_only_masked_voxels():
    shape = (16, 16, 12)
    fixed, warped = smooth_image(shape, 0), smooth_image(shape, 1)
    mask, outside = _mask_and_outside_change(shape, 0)

    def sampled(f: torch.Tensor, w: torch.Tensor) -> float:
        generator = torch.Generator().manual_seed(3)
        return mutual_information(f, w, mask=mask, num_samples=300, generator=generator).item()

    assert sampled(fixed, warped) == pytest.approx(sampled(torch.where(outside, 0.0, fixed), warped), rel=1e-9)
    empty = torch.zeros_like(mask)
    assert mutual_information(fixed, warped, mask=empty).item() == 0.0
    assert mutual_information(fixed, warped, mask=empty, num_samples=300).item() == 0.0


# ----------------------------------------------------------------------------- bad input


def test_unknown_similarity_names_the_known_ones():
    with pytest.raises(ValueError, match="mi, mind, mse, ncc"):
        get_similarity("cosine")
    assert get_similarity("ncc") is local_ncc


def test_bad_shapes_name_the_argument():
    image = torch.rand(1, 1, 6, 6, 6)
    with pytest.raises(ValueError, match="warped"):
        mse(image, torch.rand(1, 1, 6, 6, 5))
    with pytest.raises(ValueError, match="mask"):
        local_ncc(image, image, mask=torch.ones(1, 1, 6, 6))
    with pytest.raises(ValueError, match="window"):
        local_ncc(image, image, window=(3, 3))
    with pytest.raises(ValueError, match="fixed"):
        mutual_information(image[0, 0], image[0, 0])
    with pytest.raises(ValueError, match="spacing"):
        diffusion(torch.rand(1, 3, 4, 4, 4), spacing=(1.0, 1.0))


# ----------------------------------------------------------------------------- regularisers


def _index_grid(shape: tuple[int, ...]) -> torch.Tensor:
    """``(n, *shape)`` float64 voxel indices."""
    return torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))


def test_translation_has_no_diffusion_or_bending():
    field = torch.ones(1, 3, 6, 5, 4, dtype=torch.float64) * torch.tensor([1.5, -2.0, 0.3]).view(1, 3, 1, 1, 1)
    assert diffusion(field, SPACING).item() == 0.0
    assert bending_energy(field, SPACING).item() == 0.0


def test_linear_field_has_diffusion_but_no_bending():
    matrix = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, 0.1], [0.2, 0.0, -0.1]], dtype=torch.float64)
    field = torch.einsum("cd,d...->c...", matrix, _index_grid((6, 5, 4)))[None]
    assert bending_energy(field).item() == pytest.approx(0.0, abs=1e-20)
    assert diffusion(field).item() == pytest.approx((matrix**2).sum().item() / 9)  # |A|^2 / (axes * components)


def test_bending_energy_known_answers():
    i, j = _index_grid((6, 5))
    assert bending_energy((i * j)[None, None]).item() == pytest.approx(2.0)  # mixed term counted twice
    assert bending_energy((i**2)[None, None]).item() == pytest.approx(4.0)  # (d2/di2 i^2)^2
    assert bending_energy((i * j)[None, None], spacing=(2.0, 0.5)).item() == pytest.approx(2.0)
    assert bending_energy((i**2)[None, None], spacing=(2.0, 0.5)).item() == pytest.approx(4.0 / 16)


def test_spacing_scales_diffusion_by_inverse_square():
    field = torch.rand(1, 3, 6, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert diffusion(field, (2.0, 2.0, 2.0)).item() == pytest.approx(diffusion(field).item() / 4)
    along_j = _index_grid((6, 5, 4))[1][None, None]  # varies only along axis 1
    assert diffusion(along_j, (0.7, 2.0, 3.0)).item() == pytest.approx(diffusion(along_j).item() / 4)


def test_central_gradients_match_numpy():
    field = torch.rand(1, 2, 5, 6, 4, dtype=torch.float64)
    gradients = spatial_gradients(field, SPACING, central=True)
    expected = np.gradient(field.numpy(), *SPACING, axis=(2, 3, 4))
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert spatial_gradients(field)[1].shape == (1, 2, 5, 5, 4)


# ----------------------------------------------------------------------------- Jacobian


def _oblique_linear(spacing: tuple[float, ...]) -> np.ndarray:
    direction = oblique_direction() if len(spacing) == 3 else np.array([[0.8, -0.6], [0.6, 0.8]])
    return direction * np.asarray(spacing)[None, :]


def test_zero_displacement_has_unit_jacobian():
    jacobian = jacobian_determinant(torch.zeros(2, 3, 5, 4, 3, dtype=torch.float64), _oblique_linear(SPACING))
    assert jacobian.shape == (2, 5, 4, 3)
    assert torch.equal(jacobian, torch.ones_like(jacobian))
    assert folding_fraction(jacobian) == 0.0 and log_jacobian_std(jacobian) == 0.0


@pytest.mark.parametrize("spacing", [SPACING, (0.8, 2.5)])
def test_uniform_world_scaling_on_an_oblique_grid(spacing):
    linear, scale, shape = _oblique_linear(spacing), 1.3, (5, 4, 6)[: len(spacing)]
    world = torch.einsum("cd,d...->c...", torch.from_numpy(linear), _index_grid(shape)) + 7.0  # x, origin 7 mm
    jacobian = jacobian_determinant(((scale - 1) * world)[None], torch.from_numpy(linear))
    np.testing.assert_allclose(jacobian.numpy(), scale ** len(spacing), rtol=1e-12)
    assert log_jacobian_std(jacobian) == pytest.approx(0.0, abs=1e-12)


def test_jacobian_matches_a_numpy_reference():
    linear = _oblique_linear(SPACING)
    field = np.random.default_rng(0).normal(scale=0.5, size=(3, 5, 6, 4))
    by_index = np.stack([np.stack(np.gradient(component), axis=-1) for component in field])  # (c, *S, d)
    expected = np.linalg.det(np.moveaxis(by_index, 0, -2) @ np.linalg.inv(linear) + np.eye(3))
    got = jacobian_determinant(torch.from_numpy(field)[None].float(), linear)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_folding_is_detected():
    i = _index_grid((24, 4, 4))[0]
    amplitude = 2.0 * 24 / (2 * np.pi)  # du/di = 2 cos(2 pi i / 24): det = 1 + 2 cos < 0 on a third
    field = torch.stack([amplitude * torch.sin(2 * np.pi * i / 24), torch.zeros_like(i), torch.zeros_like(i)])[None]
    jacobian = jacobian_determinant(field, np.eye(3))
    assert 0.2 < folding_fraction(jacobian) < 0.5
    assert log_jacobian_std(jacobian) > 1.0
    assert folding_fraction(-jacobian.numpy()) > 0.5  # numpy input works too
