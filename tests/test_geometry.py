import numpy as np
import pytest

from helpers import OBLIQUE, oblique_direction
from segmorph.geometry import Affine


def test_from_geometry_round_trips_spacing_origin_direction():
    assert np.allclose(OBLIQUE.spacing, (0.8, 1.1, 2.5))
    assert np.allclose(OBLIQUE.origin, (-12.5, 30.25, 7.0))
    assert np.allclose(OBLIQUE.direction, oblique_direction())


def test_voxel_to_world_known_answer_and_inverse():
    affine = Affine.from_geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    assert np.allclose(affine.voxel_to_world([1, 1, 1]), (12.0, 23.0, 34.0))
    points = np.random.default_rng(0).uniform(-50, 50, (10, 3))
    assert np.allclose(OBLIQUE.voxel_to_world(OBLIQUE.world_to_voxel(points)), points)


def test_shifted_keeps_world_positions():
    crop = OBLIQUE.shifted((3, 4, 5))
    assert np.allclose(crop.voxel_to_world([0, 0, 0]), OBLIQUE.voxel_to_world([3, 4, 5]))
    assert np.allclose(crop.voxel_to_world([2, 1, 0]), OBLIQUE.voxel_to_world([5, 5, 5]))


def test_dict_round_trip_is_exact_to_1e_9():
    assert Affine.from_dict(OBLIQUE.to_dict()).allclose(OBLIQUE, atol=1e-9)


def test_two_dimensional_affine():
    affine = Affine.from_geometry((0.5, 2.0), (1.0, -1.0))
    assert affine.ndim == 2
    assert np.allclose(affine.voxel_to_world([2, 3]), (2.0, 5.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"spacing": (1.0, 0.0, 1.0)}, "spacing"), ({"spacing": (1.0,)}, "spacing"),
     ({"spacing": (1, 1, 1), "origin": (0, 0)}, "origin")],
)  # fmt: skip
def test_bad_geometry_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Affine.from_geometry(**kwargs)


def test_matrix_is_read_only():
    with pytest.raises(ValueError):
        OBLIQUE.matrix[0, 0] = 5.0
