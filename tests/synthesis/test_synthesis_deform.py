"""Random elastic deformation of label maps: labels stay labels, the grid stays, voxels move by the asked amount."""

from __future__ import annotations

import pytest
import torch

from helpers import OBLIQUE, sphere_case
from segmorph.synthesis.deform import Deformation, deform_label_image, deform_labels, elastic_displacement, warp_labels


def _ramp(shape, axis: int) -> torch.Tensor:
    """A label map whose value is the voxel's index along ``axis``: a label read elsewhere tells how far it moved."""
    view = [1, *[-1 if a == axis else 1 for a in range(len(shape))]]
    return torch.arange(shape[axis]).view(view).expand(1, *shape).clone()


def test_deformation_keeps_label_values_and_the_oblique_anisotropic_grid():
    _, label = sphere_case()  # spacing (0.8, 1.1, 2.5), oblique direction
    deformed = deform_label_image(label, torch.Generator().manual_seed(3), Deformation(2.0, 6.0))
    assert deformed.is_label and deformed.data.dtype == label.data.dtype
    assert deformed.spatial_shape == label.spatial_shape
    assert deformed.affine.allclose(OBLIQUE, atol=0)
    assert set(deformed.data.unique().tolist()) <= set(label.data.unique().tolist())
    changed = (deformed.data != label.data).float().mean()
    assert 0.01 < changed < 0.5  # moved, not scrambled


@pytest.mark.parametrize(("shape", "spacing", "axis"), [((60, 50, 20), (0.8, 1.1, 2.5), 0), ((80, 70), (0.5, 0.7), 1)])
def test_voxels_move_by_about_the_asked_magnitude_in_mm(shape, spacing, axis):
    labels = _ramp(shape, axis)
    moved = deform_labels(labels, spacing, torch.Generator().manual_seed(1), Deformation(3.0, 10.0))
    shift_mm = (moved - labels).float() * spacing[axis]
    rms = float(shift_mm.pow(2).mean().sqrt())
    assert rms == pytest.approx(3.0, rel=0.15)


def test_the_field_has_the_asked_root_mean_square_even_on_a_grid_smaller_than_its_smoothing():
    field = elastic_displacement((6, 5), (1.0, 2.0), 1.5, 40.0, torch.Generator().manual_seed(0))
    assert field.shape == (2, 6, 5)
    assert float(field.pow(2).mean().sqrt()) == pytest.approx(1.5, rel=1e-4)


def test_same_seed_same_deformation_other_seed_other_deformation():
    _, label = sphere_case()
    a = deform_labels(label.data, label.spacing, torch.Generator().manual_seed(5))
    b = deform_labels(label.data, label.spacing, torch.Generator().manual_seed(5))
    c = deform_labels(label.data, label.spacing, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_magnitude_and_zero_displacement_are_the_identity():
    _, label = sphere_case()
    same = deform_labels(label.data, label.spacing, torch.Generator().manual_seed(0), Deformation(magnitude_mm=0.0))
    assert torch.equal(same, label.data)
    assert torch.equal(warp_labels(label.data, torch.zeros(3, *label.spatial_shape), label.spacing), label.data)


def test_a_known_translation_moves_labels_by_whole_voxels():
    labels = _ramp((10, 8), 0)
    shifted = warp_labels(labels, torch.stack([torch.full((10, 8), 1.6), torch.zeros(10, 8)]), (0.8, 1.0))
    assert torch.equal(shifted[0, :8], labels[0, 2:])  # 1.6 mm = 2 voxels of 0.8 mm
    assert torch.equal(shifted[0, 8:], torch.full((2, 8), 9))  # beyond the grid: the edge's label


@pytest.mark.parametrize(
    ("arguments", "named"),
    [((-1.0, None), "magnitude_mm"), ((1.0, 0.0), "smoothness_mm"), ((float("nan"), 1.0), "magnitude_mm")],
)
def test_bad_deformations_are_refused_naming_the_argument(arguments, named):
    with pytest.raises(ValueError, match=named):
        Deformation(*arguments)


def test_float_label_maps_and_mismatched_fields_are_refused():
    with pytest.raises(ValueError, match="labels"):
        warp_labels(torch.zeros(1, 4, 4), torch.zeros(2, 4, 4), (1.0, 1.0))
    with pytest.raises(ValueError, match="displacement_mm"):
        warp_labels(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5), (1.0, 1.0))
