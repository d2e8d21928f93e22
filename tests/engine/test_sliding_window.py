"""Sliding-window inference: known answers with pointwise and tile-constant models, mirroring, padding."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from segmorph.engine.sliding_window import (
    gaussian_importance_map,
    predict_labels,
    sliding_window_logits,
    tile_starts,
)
from segmorph.nn import UNet


def pointwise_model(ndim: int, in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    """A fixed 1x1 convolution: translation- and flip-equivariant, so tiling must not change its output."""
    conv = (nn.Conv3d if ndim == 3 else nn.Conv2d)(in_channels, num_classes, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-2, 2, conv.weight.numel()).reshape(conv.weight.shape))
        conv.bias.copy_(torch.linspace(0.5, -0.5, num_classes))
    return conv.eval()


class TileMean(nn.Module):
    """Logits constant over each tile: (mean, -mean); exposes how tiles are blended."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True).expand(-1, 1, *x.shape[2:])
        return torch.cat([mean, -mean], dim=1)


class ShiftedConv(nn.Module):
    """An asymmetric 3x3 kernel: not flip-equivariant, so mirroring changes its output."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.conv = (nn.Conv3d if ndim == 3 else nn.Conv2d)(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(self.conv.weight.numel(), dtype=torch.float32).reshape(
                self.conv.weight.shape) / 10)  # fmt: skip
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def tiny_unet(ndim: int) -> UNet:
    torch.manual_seed(0)
    return UNet(ndim, 1, 3, features=(4, 8)).eval()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("probabilities", [True, False])
def test_pointwise_model_matches_full_volume_forward(ndim: int, probabilities: bool) -> None:
    torch.manual_seed(1)
    shape = (2, 30, 21, 17)[: ndim + 1]
    image = torch.randn(shape)
    model = pointwise_model(ndim, in_channels=2)
    patch = (12, 8, 10)[:ndim]
    assert all(len(s) > 1 for s in tile_starts(shape[1:], patch, 0.5))  # several tiles on every axis
    result = sliding_window_logits(model, image, patch, overlap=0.5, batch_size=3, return_probabilities=probabilities)
    with torch.no_grad():
        expected = model(image[None])[0]
    if probabilities:
        expected = expected.softmax(0)
    assert result.dtype == torch.float32 and result.shape == (3, *shape[1:])
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_tile_constant_model_is_gaussian_blended(ndim: int) -> None:
    torch.manual_seed(2)
    shape = (1, 20, 14, 9)[: ndim + 1]
    patch = (8, 8, 8)[:ndim]
    image = torch.rand(shape)
    weights = gaussian_importance_map(patch)
    total = torch.zeros(shape[1:])
    weighted = torch.zeros(shape[1:])
    for corner in itertools.product(*tile_starts(shape[1:], patch, 0.25)):
        window = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        weighted[window] += weights * image[(slice(None),) + window].mean()
        total[window] += weights
    result = sliding_window_logits(TileMean(), image, patch, overlap=0.25, return_probabilities=False)
    torch.testing.assert_close(result[0], weighted / total, atol=1e-6, rtol=0)
    torch.testing.assert_close(result[1], -weighted / total, atol=1e-6, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_mirroring_equivariant_model_changes_nothing(ndim: int) -> None:
    torch.manual_seed(3)
    image = torch.randn((1, 19, 24, 13)[: ndim + 1])
    model = pointwise_model(ndim)
    patch = (8, 16, 8)[:ndim]
    plain = sliding_window_logits(model, image, patch)
    mirrored = sliding_window_logits(model, image, patch, mirror_axes=tuple(range(ndim)), batch_size=5)
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 1, 2)])
def test_mirroring_averages_flipped_predictions(axes: tuple[int, ...]) -> None:
    torch.manual_seed(4)
    image = torch.randn(1, 8, 8, 8)
    model = ShiftedConv(3)
    result = sliding_window_logits(model, image, (8, 8, 8), mirror_axes=axes, return_probabilities=False)
    combos = [c for n in range(len(axes) + 1) for c in itertools.combinations([a + 2 for a in axes], n)]
    with torch.no_grad():
        expected = sum(model(image[None].flip(c)).flip(c) for c in combos)[0] / len(combos)
        unmirrored = model(image[None])[0]
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)
    assert (result - unmirrored).abs().max() > 0.1  # the model is not flip-equivariant: mirroring matters


class PositionRamp(nn.Module):
    """Logits (x + i0, -x): the first channel reveals where in the tile each voxel sat (i0 = index on axis 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(x.shape[2], dtype=x.dtype).reshape(-1, *(1,) * (x.ndim - 3))
        return torch.cat([x + ramp, -x], dim=1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_image_smaller_than_patch_is_padded_centred(ndim: int) -> None:
    torch.manual_seed(5)
    shape = (1, 5, 12, 7)[: ndim + 1]
    patch = (8, 8, 8)[:ndim]
    image = torch.randn(shape)
    result = sliding_window_logits(PositionRamp(), image, patch, return_probabilities=False)
    assert result.shape == (2, *shape[1:])
    offset = (8 - 5) // 2  # axis 0 is padded by 3: 1 voxel before, 2 after
    ramp = torch.arange(offset, offset + 5, dtype=torch.float32).reshape(-1, *(1,) * (ndim - 1))
    torch.testing.assert_close(result[0], image[0] + ramp, atol=1e-6, rtol=0)
    torch.testing.assert_close(result[1], -image[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_unet_probabilities_sum_to_one_and_keep_shape(ndim: int) -> None:
    torch.manual_seed(6)
    shape = (1, 27, 18, 20)[: ndim + 1]
    image = torch.randn(shape)
    model = tiny_unet(ndim)
    probabilities = sliding_window_logits(model, image, (8, 8, 8)[:ndim], mirror_axes=(0,))
    assert probabilities.shape == (3, *shape[1:]) and probabilities.dtype == torch.float32
    assert probabilities.min() >= 0
    torch.testing.assert_close(probabilities.sum(0), torch.ones(shape[1:]), atol=1e-5, rtol=0)


def test_batch_size_does_not_change_the_result() -> None:
    torch.manual_seed(7)
    image = torch.randn(1, 20, 16, 12)
    model = tiny_unet(3)
    one = sliding_window_logits(model, image, (8, 8, 8), batch_size=1, mirror_axes=(0, 2))
    many = sliding_window_logits(model, image, (8, 8, 8), batch_size=7, mirror_axes=(0, 2))
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_predict_labels_is_argmax_and_model_mode_restored() -> None:
    torch.manual_seed(8)
    image = torch.randn(1, 12, 16, 10)
    model = tiny_unet(3).train()
    labels = predict_labels(model, image, (8, 8, 8))
    assert model.training
    probabilities = sliding_window_logits(model, image, (8, 8, 8))
    assert labels.shape == (1, 12, 16, 10) and labels.dtype == torch.int64
    assert torch.equal(labels[0], probabilities.argmax(0))
    assert not probabilities.is_inference()
    probabilities.mul_(2)  # callers may modify the result in place (raises on an inference tensor)


def test_amp_gives_float32_close_to_full_precision() -> None:
    torch.manual_seed(9)
    image = torch.randn(1, 16, 16, 16)
    model = tiny_unet(3)
    exact = sliding_window_logits(model, image, (8, 8, 8))
    approx = sliding_window_logits(model, image, (8, 8, 8), amp=True)
    assert approx.dtype == torch.float32
    assert (approx - exact).abs().max() < 0.05


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [(160, 64, 0.5, [0, 32, 64, 96]), (30, 16, 0.5, [0, 7, 14]), (64, 64, 0.5, [0]), (10, 16, 0.5, [0]),
     (17, 16, 0.5, [0, 1]), (100, 20, 0.0, [0, 20, 40, 60, 80]), (50, 16, 0.5, [0, 7, 14, 20, 27, 34])],
)  # fmt: skip
def test_tile_starts_known_answers(size: int, patch: int, overlap: float, expected: list[int]) -> None:
    assert tile_starts([size], [patch], overlap) == [expected]


@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.5, 0.75])
@pytest.mark.parametrize("size", [16, 17, 31, 50, 97])
def test_tiles_cover_every_voxel_with_bounded_steps(size: int, overlap: float) -> None:
    patch = 16
    (starts,) = tile_starts([size], [patch], overlap)
    covered = torch.zeros(max(size, patch), dtype=torch.bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == max(size - patch, 0)
    steps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0 < step <= patch * (1 - overlap) + 0.5 for step in steps)


def test_gaussian_map_shape_symmetry_floor_and_cache() -> None:
    weights = gaussian_importance_map((9, 16, 5))
    assert weights.shape == (9, 16, 5) and weights.dtype == torch.float32
    assert weights[4, 7:9, 2].allclose(weights.max()) and weights.max() <= 1
    assert weights.min() >= 1e-3
    torch.testing.assert_close(weights, weights.flip(0, 1, 2))
    assert gaussian_importance_map([9, 16, 5]) is weights
    assert gaussian_importance_map((9, 16, 5), dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image": torch.zeros(8, 8)}, "image"),
        ({"patch_size": (8, 8)}, "patch_size"),
        ({"patch_size": (8, 0, 8)}, "patch_size"),
        ({"patch_size": (8, 8.5, 8)}, "patch_size"),
        ({"patch_size": (8, 5, 8)}, "patch_size"),  # not a multiple of the UNet divisor 2
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"batch_size": 0}, "batch_size"),
        ({"mirror_axes": (3,)}, "mirror_axes"),
        ({"mirror_axes": (1, 1)}, "mirror_axes"),
        ({"device": "meta"}, "device"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    arguments = {"model": tiny_unet(3), "image": torch.zeros(1, 8, 8, 8), "patch_size": (8, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=f"^{name}:"):
        sliding_window_logits(**arguments)


def test_gaussian_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="^patch_size:"):
        gaussian_importance_map((8, -1))
    with pytest.raises(ValueError, match="^sigma_scale:"):
        gaussian_importance_map((8, 8), sigma_scale=0)


@pytest.mark.slow  # TorchInductor compiles the network: tens of seconds on a CPU
def test_compiled_network_gives_the_eager_output():
    from segmorph.engine.sliding_window import compile_for_inference

    torch.manual_seed(0)
    model = UNet(3, 1, 2, (4, 8)).eval()
    image = torch.randn(1, 12, 10, 8)
    eager = sliding_window_logits(model, image, (8, 8, 8), overlap=0.5, batch_size=2)
    compiled = sliding_window_logits(compile_for_inference(model), image, (8, 8, 8), overlap=0.5, batch_size=2)
    assert torch.allclose(eager, compiled, atol=1e-5)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    from segmorph.engine.sliding_window import compile_for_inference

    def broken_compile(model, **kwargs):
        def fail(x):
            raise RuntimeError("no compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = UNet(3, 1, 2, (4, 8)).eval()
    network = compile_for_inference(model)
    x = torch.randn(1, 1, 8, 8, 8)
    with pytest.warns(UserWarning, match="torch.compile failed"), torch.inference_mode():
        out = network(x)
    with torch.inference_mode():
        assert torch.equal(out, model(x))
