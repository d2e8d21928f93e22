"""Image.same_grid and its helpers: known answers for the one grid comparison, and the error line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import OBLIQUE
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import (
    GRID_TOLERANCE_MM,
    Image,
    check_same_grid,
    grid_difference,
    grid_distance_mm,
    grids_match,
)
from segmorph.io import read_image, write_image

SHAPE = (24, 20, 12)


def on_grid(affine: Affine = OBLIQUE, shape: tuple[int, ...] = SHAPE, is_label: bool = False) -> Image:
    data = torch.zeros(1, *shape, dtype=torch.int64 if is_label else torch.float32)
    return Image(data, affine, is_label)


def moved(origin_mm: np.ndarray | list[float]) -> Affine:
    return Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin + np.asarray(origin_mm), OBLIQUE.direction)


def test_identical_grids_are_the_same_grid_whatever_the_voxels():
    image = on_grid()
    labels = Image(torch.ones(1, *SHAPE, dtype=torch.int64), Affine(OBLIQUE.matrix.copy()), is_label=True)
    assert image.same_grid(image) and image.same_grid(labels) and labels.same_grid(image)
    assert Image(torch.zeros(3, *SHAPE), OBLIQUE).same_grid(image)  # channels are not part of the grid
    assert grid_distance_mm(OBLIQUE, OBLIQUE, SHAPE) == 0.0 and grid_difference(labels, image) == ""


def test_grid_distance_is_the_farthest_voxel_in_mm():
    shifted = Affine.from_geometry((1.0, 1.0, 1.0), (0.3, 0.4, 0.0))
    assert grid_distance_mm(Affine.identity(3), shifted, (4, 4, 4)) == pytest.approx(0.5)
    # spacing 1 -> 1.1 mm along i: voxel i moves by 0.1 * i mm, the last of 8 by 0.7 mm
    stretched = Affine.from_geometry((1.1, 1.0, 1.0))
    assert grid_distance_mm(Affine.identity(3), stretched, (8, 3, 3)) == pytest.approx(0.7)
    # a quarter turn about k: the corner (3, 3, 0) goes to (-3, 3, 0), 6 mm away
    turned = Affine.from_geometry((1.0, 1.0, 1.0), direction=[[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert grid_distance_mm(Affine.identity(3), turned, (4, 4, 1)) == pytest.approx(6.0)


@pytest.mark.parametrize("fraction, same", [(0.9, True), (1.1, False)])
def test_an_origin_shift_just_under_the_tolerance_is_the_same_grid_just_over_is_not(fraction, same):
    step = fraction * GRID_TOLERANCE_MM * np.array([0.6, 0.0, -0.8])  # length fraction * tolerance
    assert on_grid(moved(step)).same_grid(on_grid()) is same
    assert on_grid().same_grid(on_grid(moved(step))) is same


@pytest.mark.parametrize("fraction, same", [(0.9, True), (1.1, False)])
def test_the_tolerance_bounds_the_far_voxels_not_the_matrix_entries(fraction, same):
    """A spacing change moves voxel i by i times it: the last voxel along i decides."""
    spacing = OBLIQUE.spacing + [fraction * GRID_TOLERANCE_MM / (SHAPE[0] - 1), 0.0, 0.0]
    stretched = Affine.from_geometry(spacing, OBLIQUE.origin, OBLIQUE.direction)
    assert on_grid(stretched).same_grid(on_grid()) is same


def test_an_explicit_tolerance_widens_or_narrows_the_comparison():
    half_mm = on_grid(moved([0.0, 0.5, 0.0]))
    assert not half_mm.same_grid(on_grid())
    assert half_mm.same_grid(on_grid(), atol_mm=0.6) and not half_mm.same_grid(on_grid(), atol_mm=0.4)


def test_another_shape_direction_or_dimension_is_another_grid():
    assert not on_grid(shape=(24, 20, 13)).same_grid(on_grid())
    assert not on_grid(Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin)).same_grid(on_grid())
    flat = on_grid(Affine.from_geometry((0.8, 1.1), (-12.5, 30.25)), shape=SHAPE[:2])
    assert not flat.same_grid(on_grid()) and not on_grid().same_grid(flat)
    assert grid_difference(flat, on_grid()) == "shape (24, 20) vs (24, 20, 12) (2D vs 3D)"
    assert grids_match(OBLIQUE, SHAPE, OBLIQUE, SHAPE) and not grids_match(OBLIQUE, SHAPE, OBLIQUE, (24, 20, 11))


def test_2d_grids_compare_like_3d_ones():
    affine = Affine.from_geometry((0.5, 0.7), (3.0, -4.0), [[0.6, -0.8], [0.8, 0.6]])
    shifted = Affine.from_geometry((0.5, 0.7), (3.0, -4.0 + 2 * GRID_TOLERANCE_MM), [[0.6, -0.8], [0.8, 0.6]])
    assert on_grid(affine, (16, 9)).same_grid(on_grid(affine, (16, 9)))
    assert not on_grid(shifted, (16, 9)).same_grid(on_grid(affine, (16, 9)))


def test_nifti_float32_geometry_of_a_large_oblique_scan_is_the_same_grid(tmp_path):
    """NIfTI keeps geometry in float32: a big oblique grid far from the isocentre must survive the round trip."""
    angle = 0.3
    direction = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    affine = Affine.from_geometry((0.7812, 0.7812, 3.3), (-201.37, -187.91, -1234.57), direction)
    back = read_image(write_image(on_grid(affine, (2, 2, 2)), tmp_path / "scan.nii.gz")).affine
    assert not np.array_equal(back.matrix, affine.matrix)  # the file did round the geometry
    assert grids_match(back, (512, 512, 400), affine, (512, 512, 400))


@pytest.mark.parametrize(
    "affine, named",
    [
        (moved([0.0, 0.5, 0.0]), "origin"),
        (Affine.from_geometry((0.8, 1.1, 3.0), OBLIQUE.origin, OBLIQUE.direction), "spacing"),
        (Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin), "direction"),
    ],
)
def test_the_difference_names_what_moved(affine, named):
    problem = grid_difference(on_grid(affine), on_grid())
    assert problem.startswith(named) and "mm apart" in problem
    assert [word for word in ("spacing", "origin", "direction") if word in problem] == [named]


def test_check_same_grid_names_the_file_and_what_differs(tmp_path):
    path = tmp_path / "case_7_seg.nii.gz"
    check_same_grid(on_grid(is_label=True), on_grid(), "label grid differs from its image", path)  # no error
    with pytest.raises(SegmorphError) as err:
        check_same_grid(on_grid(moved([0.5, 0.0, 0.0])), on_grid(), "label grid differs from its image", path)
    line = str(err.value)
    assert err.value.path == str(path) and "\n" not in line
    assert line.startswith(f"{path}: label grid differs from its image: origin (-12")
    assert line.endswith("(voxels up to 0.5 mm apart)")
    shape_line = r"case_7_seg.nii.gz: label grid .*: shape \(24, 20, 13\) vs \(24, 20, 12\)"
    with pytest.raises(SegmorphError, match=shape_line):
        check_same_grid(on_grid(shape=(24, 20, 13)), on_grid(), "label grid differs from its image", path)
