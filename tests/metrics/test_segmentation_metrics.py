"""Known-answer, empty-mask and bad-input tests for segmorph.metrics.segmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segmorph.metrics.segmentation import (
    ROW_KEYS,
    assd,
    case_metrics,
    dice_score,
    hausdorff95,
    image_diagonal,
    mask_metrics,
    surface_distances,
)

SPACING = np.array([0.8, 1.0, 2.0])  # anisotropic on purpose: a swapped axis changes the answers


def _sphere(shape: tuple[int, ...], centre_mm, radius_mm: float, spacing=SPACING) -> np.ndarray:
    points = np.indices(shape, dtype=np.float64) * np.asarray(spacing)[:, None, None, None]
    return ((points - np.asarray(centre_mm)[:, None, None, None]) ** 2).sum(axis=0) <= radius_mm**2


def _cubes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4x4 cubes overlapping in a 2x4x4 slab: |A|=|B|=64, |A∩B|=32."""
    pred, ref = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    pred[2:6, 2:6, 2:6] = True
    ref[4:8, 2:6, 2:6] = True
    return pred, ref


def test_cubes_overlap_exact_dice_iou_precision_recall():
    pred, ref = _cubes()
    row = mask_metrics(pred, ref, SPACING)
    assert row["dice"] == pytest.approx(2 * 32 / 128)
    assert row["iou"] == pytest.approx(32 / 96)
    assert row["precision"] == pytest.approx(0.5)
    assert row["recall"] == pytest.approx(0.5)
    assert row["f1"] == pytest.approx(row["dice"])
    assert row["accuracy"] == pytest.approx((1000 - 64) / 1000)
    assert row["specificity"] == pytest.approx((1000 - 64 - 32) / (1000 - 64))
    voxel = 0.8 * 1.0 * 2.0
    assert row["volume_pred"] == pytest.approx(64 * voxel)
    assert row["volume_ref"] == pytest.approx(64 * voxel)
    assert row["volume_diff"] == pytest.approx(0.0)
    assert dice_score(pred, ref) == pytest.approx(0.5)


def test_precision_recall_differ_when_pred_is_larger():
    ref = np.zeros((8, 8), bool)
    ref[2:4, 2:4] = True  # 4 voxels
    pred = np.zeros((8, 8), bool)
    pred[2:4, 2:6] = True  # 8 voxels, 4 of them correct
    row = mask_metrics(pred, ref, (1.0, 3.0))
    assert row["precision"] == pytest.approx(0.5)
    assert row["recall"] == pytest.approx(1.0)
    assert row["volume_diff"] == pytest.approx(4 * 3.0)


def test_single_voxels_distance_uses_spacing_per_axis():
    pred, ref = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    pred[0, 0] = True
    ref[3, 4] = True
    spacing = (2.0, 0.5)
    expected = math.hypot(3 * 2.0, 4 * 0.5)
    assert hausdorff95(pred, ref, spacing) == pytest.approx(expected)
    assert assd(pred, ref, spacing) == pytest.approx(expected)


def test_identical_masks_have_zero_distance():
    mask = _sphere((32, 32, 16), (12.0, 16.0, 16.0), 6.0)
    assert hausdorff95(mask, mask, SPACING) == 0.0
    assert assd(mask, mask, SPACING) == 0.0
    assert dice_score(mask, mask) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_spheres_hd95_known(axis):
    """A sphere shifted by t mm: surface distances ~ t|cos θ|, so HD95 ~ 0.95 t, the maximum is t."""
    shift = 4.0
    centre = np.array([12.0, 16.0, 32.0])
    moved = centre.copy()
    moved[axis] += shift
    pred = _sphere((32, 32, 32), centre, 8.0)
    ref = _sphere((32, 32, 32), moved, 8.0)
    assert hausdorff95(pred, ref, SPACING) == pytest.approx(0.95 * shift, abs=SPACING[axis])
    assert assd(pred, ref, SPACING) == pytest.approx(0.5 * shift, abs=SPACING[axis])
    to_ref, to_pred = surface_distances(pred, ref, SPACING)
    assert max(to_ref.max(), to_pred.max()) == pytest.approx(shift, abs=1e-9)


def test_mask_touching_image_border_keeps_a_surface():
    pred = np.ones((6, 6), bool)
    ref = np.zeros((6, 6), bool)
    ref[:, :3] = True
    # pred's surface is the image border ring; ref's right edge is column 2, 3 columns from column 5
    to_ref, _ = surface_distances(pred, ref, (1.0, 1.0))
    assert to_ref.size == 20
    assert to_ref.max() == pytest.approx(3.0)


def test_both_empty_rule():
    empty = np.zeros((6, 7, 8), bool)
    row = mask_metrics(empty, empty, SPACING)
    for key in ("dice", "iou", "precision", "recall", "f1", "accuracy", "specificity"):
        assert row[key] == 1.0, key
    assert row["hd95"] == 0.0 and row["assd"] == 0.0
    assert row["empty_ref"] and row["empty_pred"]


@pytest.mark.parametrize("empty_side", ["pred", "ref"])
def test_one_empty_rule_penalises_with_image_diagonal(empty_side):
    shape, spacing = (10, 20), (1.0, 2.0)
    mask = np.zeros(shape, bool)
    mask[2:5, 3:6] = True
    empty = np.zeros(shape, bool)
    pred, ref = (empty, mask) if empty_side == "pred" else (mask, empty)
    row = mask_metrics(pred, ref, spacing)
    diagonal = math.sqrt(10**2 + 40**2)
    assert image_diagonal(shape, spacing) == pytest.approx(diagonal)
    assert row["hd95"] == pytest.approx(diagonal)
    assert row["assd"] == pytest.approx(diagonal)
    assert row["dice"] == 0.0 and row["iou"] == 0.0 and row["f1"] == 0.0
    assert row["precision"] == 0.0 and row["recall"] == 0.0
    assert row["empty_pred"] is (empty_side == "pred")
    assert row["empty_ref"] is (empty_side == "ref")
    assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())


def test_case_metrics_rows_per_class():
    pred = np.zeros((12, 12, 6), np.int64)
    ref = np.zeros_like(pred)
    pred[1:5, 1:5, 1:5] = 1
    ref[1:5, 1:5, 1:5] = 1
    pred[6:10, 6:10, 1:3] = 2  # class 2 predicted where the reference has none
    rows = case_metrics(pred, ref, SPACING, {2: "tumour", 1: "organ", 3: "absent"})
    assert [r["label"] for r in rows] == [1, 2, 3]
    assert [r["name"] for r in rows] == ["organ", "tumour", "absent"]
    assert all(tuple(r) == ROW_KEYS for r in rows)
    assert rows[0]["dice"] == 1.0 and rows[0]["hd95"] == 0.0
    assert rows[1]["dice"] == 0.0 and rows[1]["empty_ref"] and not rows[1]["empty_pred"]
    assert rows[2]["dice"] == 1.0 and rows[2]["empty_ref"] and rows[2]["empty_pred"]


def test_shape_mismatch_names_ref():
    with pytest.raises(ValueError, match="ref: shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), SPACING, {1: "a"})
    with pytest.raises(ValueError, match="ref: shape"):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))


def test_wrong_spacing_length_names_spacing():
    with pytest.raises(ValueError, match="spacing: expected 3 values"):
        hausdorff95(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing: must be positive"):
        assd(np.ones((4, 4)), np.ones((4, 4)), (1.0, 0.0))


def test_bad_labels_name_labels():
    volume = np.zeros((4, 4, 4), np.int64)
    with pytest.raises(ValueError, match="labels:"):
        case_metrics(volume, volume, SPACING, {})
    with pytest.raises(ValueError, match="labels: 0"):
        case_metrics(volume, volume, SPACING, {0: "background", 1: "a"})


def test_surface_distances_refuses_empty_mask():
    with pytest.raises(ValueError, match="pred_mask: is empty"):
        surface_distances(np.zeros((4, 4)), np.ones((4, 4)), (1.0, 1.0))
