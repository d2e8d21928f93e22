"""Registration pictures: known answers for checkerboard, difference and grid positions; PNGs written."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from helpers import OBLIQUE
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.registration.pictures import (
    checkerboard,
    deformed_grid_positions,
    difference,
    plot_deformation_grid,
    plot_jacobian,
    plot_label_contours,
    plot_registration_views,
    save_registration_pictures,
)
from segmorph.registration.transform import FieldStep, Transform, world_grid

OBLIQUE_2D = Affine.from_geometry((0.9, 1.3), (4.0, -2.5), [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
SHAPES = {2: (20, 24), 3: (20, 24, 16)}
GRIDS = {2: OBLIQUE_2D, 3: OBLIQUE}


def _blob(ndim: int, shift_mm: float = 0.0) -> Image:
    """A smooth bright blob in world space, centred on the grid (moved by ``shift_mm`` along world x)."""
    affine, shape = GRIDS[ndim], SHAPES[ndim]
    centre = affine.voxel_to_world((np.array(shape) - 1) / 2)
    grid = world_grid(affine, shape).numpy()
    offset = grid - (centre + np.eye(ndim)[0] * shift_mm).reshape(-1, *[1] * ndim)
    values = 100 * np.exp(-(offset**2).sum(0) / (2 * 6.0**2))
    return Image(torch.from_numpy(values[None].astype(np.float32)), affine)


def _folding_field(ndim: int, amplitude: float = 3.0) -> torch.Tensor:
    """``u_x = -amplitude (x - c) g(x)`` with a Gaussian ``g``: det J = 1 - amplitude < 0 at the centre."""
    affine, shape = GRIDS[ndim], SHAPES[ndim]
    centre = affine.voxel_to_world((np.array(shape) - 1) / 2).reshape(-1, *[1] * ndim)
    offset = world_grid(affine, shape).numpy() - centre
    field = np.zeros_like(offset)
    field[0] = -amplitude * offset[0] * np.exp(-(offset**2).sum(0) / (2 * 4.0**2))
    return torch.from_numpy(field).float()


def _assert_png(path: Path) -> None:
    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 50 and picture.shape[1] > 50


def test_checkerboard_of_zeros_and_ones_alternates_tiles() -> None:
    board = checkerboard(np.zeros((8, 6)), np.ones((8, 6)), squares=2)
    expected = np.array([[0, 0, 0, 1, 1, 1]] * 4 + [[1, 1, 1, 0, 0, 0]] * 4, dtype=float)
    np.testing.assert_array_equal(board, expected)
    uneven = checkerboard(np.zeros((20, 24)), np.ones((20, 24)), squares=8)
    assert np.count_nonzero(np.diff(uneven[0])) == 7 and np.count_nonzero(np.diff(uneven[:, 0])) == 7


def test_checkerboard_and_difference_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="b:"):
        checkerboard(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="a:"):
        difference(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="squares"):
        checkerboard(np.zeros((4, 4)), np.zeros((4, 4)), squares=0)


def test_difference_is_absolute_and_zero_for_identical_images() -> None:
    a = np.random.default_rng(0).normal(size=(6, 7))
    np.testing.assert_array_equal(difference(a, a), np.zeros((6, 7)))
    np.testing.assert_allclose(difference(a, a + 2.5), np.full((6, 7), 2.5))


def test_grid_positions_follow_a_world_translation_in_voxels() -> None:
    """A world shift equal to one voxel step along J moves every grid point by exactly (0, 1, 0) voxels."""
    shape = SHAPES[3]
    step_j = torch.tensor(OBLIQUE.matrix[:3, 1], dtype=torch.float32).reshape(3, 1, 1, 1)
    views = dict(deformed_grid_positions(step_j.expand(3, *shape).clone(), OBLIQUE))
    across_i, down_k = views["J = 12"]  # in-plane axes I and K: J is out of plane, so no visible shift
    np.testing.assert_allclose(across_i, np.arange(20)[:, None] * np.ones((1, 16)), atol=1e-5)
    np.testing.assert_allclose(down_k, np.ones((20, 1)) * np.arange(16)[None], atol=1e-5)
    across_i, down_j = views["K = 8"]
    np.testing.assert_allclose(down_j, np.ones((20, 1)) * np.arange(24)[None] + 1, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_plotting_functions_write_readable_pngs(tmp_path: Path, ndim: int) -> None:
    fixed, moving = _blob(ndim), _blob(ndim, shift_mm=3.0)
    field = _folding_field(ndim, amplitude=0.5)
    plot_registration_views(fixed, moving, fixed, tmp_path / "views.png", "test")
    plot_deformation_grid(field, GRIDS[ndim], tmp_path / "grid.png", background=fixed.numpy())
    stats = plot_jacobian(field, GRIDS[ndim], tmp_path / "jacobian.png")
    labels = fixed.with_data((fixed.data > 50).long(), is_label=True)
    plot_label_contours(labels, moving, fixed, tmp_path / "labels.png", after_labels=labels)
    for name in ("views", "grid", "jacobian", "labels"):
        _assert_png(tmp_path / f"{name}.png")
    assert stats["folding_percent"] == 0 and 0 < stats["log_jacobian_std"] < 1


def test_plot_jacobian_reports_folding(tmp_path: Path) -> None:
    stats = plot_jacobian(_folding_field(3), OBLIQUE, tmp_path / "jacobian.png")
    _assert_png(tmp_path / "jacobian.png")
    assert 0 < stats["folding_percent"] < 50 and stats["log_jacobian_std"] > 1
    zero = plot_jacobian(torch.zeros(3, *SHAPES[3]), OBLIQUE, tmp_path / "identity.png")
    assert zero == {"folding_percent": 0.0, "log_jacobian_std": 0.0}


def test_plots_reject_mismatched_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="displacement:"):
        plot_jacobian(torch.zeros(2, *SHAPES[3]), OBLIQUE, tmp_path / "x.png")
    other = Image(torch.zeros(1, 20, 24, 15), OBLIQUE)
    with pytest.raises(ValueError, match="warped:"):
        plot_registration_views(_blob(3), _blob(3), other, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_save_registration_pictures_affine_and_deformable(tmp_path: Path) -> None:
    fixed, moving = _blob(3), _blob(3, shift_mm=3.0)
    shift = np.eye(4)
    shift[0, 3] = 3.0
    affine_only = Transform.from_matrix(shift)
    warped = affine_only.warp(moving, fixed.affine, fixed.spatial_shape)
    labels = fixed.with_data((fixed.data > 50).long(), is_label=True)
    written = save_registration_pictures(tmp_path / "affine", fixed, moving, warped, affine_only, labels, labels)
    assert sorted(p.name for p in written) == ["labels.png", "views.png"]
    deformable = Transform([FieldStep(OBLIQUE, _folding_field(3)), shift])
    written = save_registration_pictures(tmp_path / "field", fixed, moving, warped, deformable)
    assert [p.name for p in written] == ["views.png", "grid.png", "jacobian.png"]
    for path in written:
        _assert_png(path)
