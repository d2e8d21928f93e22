"""Connected-component clean-up: largest component per class, small components removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmorph.segmentation.postprocess import keep_largest_component, remove_small_components


def two_blob_map() -> np.ndarray:
    """Class 1: blobs of 8 and 27 voxels; class 2: blobs of 1 and 4 voxels; the 8-blob touches class 2."""
    labels = np.zeros((12, 10, 9), dtype=np.int64)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[5:8, 5:8, 5:8] = 1  # 27 voxels
    labels[2, 0, 0] = 2  # 1 voxel, face-adjacent to the small class-1 blob (other class: separate)
    labels[10:12, 0:2, 8] = 2  # 4 voxels
    return labels


def test_keep_largest_component_per_class() -> None:
    labels = two_blob_map()
    result = keep_largest_component(labels, [1, 2])
    expected = labels.copy()
    expected[0:2, 0:2, 0:2] = 0
    expected[2, 0, 0] = 0
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == labels.dtype
    assert (labels[0:2, 0:2, 0:2] == 1).all()  # input untouched


def test_keep_largest_leaves_unlisted_classes() -> None:
    labels = two_blob_map()
    result = keep_largest_component(labels, [2])
    np.testing.assert_array_equal(result[labels == 1], 1)
    assert result[2, 0, 0] == 0 and (result[10:12, 0:2, 8] == 2).all()


def test_corner_touching_voxels_are_one_component_in_3d_and_2d() -> None:
    volume = np.zeros((6, 6, 6), dtype=np.int32)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = 1  # a diagonal chain: one 26-connected component
    volume[5, 5, 0] = volume[5, 4, 0] = 1  # two face-connected voxels: smaller
    result = keep_largest_component(volume, [1])
    assert result.sum() == 3 and result[2, 2, 2] == 1 and result[5, 5, 0] == 0
    plane = np.zeros((6, 6), dtype=np.uint8)
    plane[0, 0] = plane[1, 1] = plane[2, 2] = 3  # 8-connected diagonal
    plane[5, 0:2] = 3  # 2 edge-connected pixels: smaller
    expected = plane.copy()
    expected[5, 0:2] = 0
    np.testing.assert_array_equal(keep_largest_component(plane, [3]), expected)


def test_tensor_in_tensor_out_same_dtype() -> None:
    labels = torch.from_numpy(two_blob_map()).to(torch.int16)
    result = keep_largest_component(labels, [1, 2])
    assert isinstance(result, torch.Tensor) and result.dtype == torch.int16 and result.shape == labels.shape
    assert int(result.sum()) == 27 * 1 + 4 * 2


def test_remove_small_components_threshold() -> None:
    labels = two_blob_map()
    result = remove_small_components(labels, min_voxels=5)
    assert (result[5:8, 5:8, 5:8] == 1).all() and (result[0:2, 0:2, 0:2] == 1).all()
    assert result[2, 0, 0] == 0 and (result[10:12, 0:2, 8] == 0).all()
    assert int(remove_small_components(labels, min_voxels=9).sum()) == 27
    np.testing.assert_array_equal(remove_small_components(labels, min_voxels=1), labels)


def test_background_only_map_is_returned_unchanged() -> None:
    labels = np.zeros((4, 5), dtype=np.int64)
    np.testing.assert_array_equal(keep_largest_component(labels, [1]), labels)
    np.testing.assert_array_equal(remove_small_components(labels, 3), labels)


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: keep_largest_component(np.zeros((2, 3, 4, 5), np.int64), [1]), ValueError, "labels"),
        (lambda: keep_largest_component(np.zeros((3, 4), np.float32), [1]), ValueError, "labels"),
        (lambda: keep_largest_component([[0, 1]], [1]), TypeError, "labels"),
        (lambda: keep_largest_component(np.zeros((3, 4), np.int64), [0, 1]), ValueError, "classes"),
        (lambda: keep_largest_component(np.zeros((3, 4), np.int64), [1.5]), ValueError, "classes"),
        (lambda: remove_small_components(np.zeros((3, 4), np.int64), -1), ValueError, "min_voxels"),
    ],
)
def test_bad_input_names_the_argument(call, error: type, name: str) -> None:
    with pytest.raises(error, match=f"^{name}:"):
        call()
