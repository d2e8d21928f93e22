"""Classical baselines on a bright sphere phantom in noise (anisotropic, rotated grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.metrics.segmentation import dice_score
from segmorph.segmentation.baseline_files import segment_folder
from segmorph.segmentation.baselines import otsu, postprocess, region_grow, segment
from segmorph.segmentation.postprocess import keep_largest_component

SPACING = (0.8, 1.0, 2.0)
AFFINE = Affine.from_geometry(SPACING, origin=(4.0, -2.0, 7.0), direction=[[0, 0, 1], [1, 0, 0], [0, 1, 0]])
SHAPE = (24, 20, 12)


def _sphere_mask() -> np.ndarray:
    points = np.indices(SHAPE, dtype=np.float64) * np.asarray(SPACING)[:, None, None, None]
    centre = np.array([9.6, 10.0, 12.0])
    return ((points - centre[:, None, None, None]) ** 2).sum(axis=0) <= 6.0**2


def _phantom(noise: float = 0.15, seed: int = 0) -> tuple[Image, np.ndarray]:
    """Bright sphere (1.0) on a dark background (0.0) plus Gaussian noise; two identical channels."""
    mask = _sphere_mask()
    values = mask.astype(np.float32) + np.random.default_rng(seed).normal(0, noise, SHAPE).astype(np.float32)
    return Image(torch.from_numpy(np.stack([values, values])), AFFINE), mask


def _labels(mask: np.ndarray) -> Image:
    return Image(torch.from_numpy(mask.astype(np.int64)[None]), AFFINE, is_label=True)


def test_otsu_recovers_sphere_and_keeps_geometry():
    image, mask = _phantom()
    result = otsu(image)
    assert result.is_label and result.data.shape == (1, *SHAPE) and result.data.dtype == torch.int64
    assert result.affine.allclose(AFFINE)
    assert dice_score(result.numpy()[0], mask) > 0.95


def test_multi_otsu_three_classes():
    mask = _sphere_mask()
    inner = np.zeros(SHAPE, bool)
    inner[8:14, 8:12, 4:8] = True
    values = mask.astype(np.float32) + inner.astype(np.float32)  # 0 background, 1 shell, 2 core
    result = otsu(Image(torch.from_numpy(values[None]), AFFINE), classes=3).numpy()[0]
    assert set(np.unique(result)) == {0, 1, 2}
    assert np.array_equal(result == 2, inner)
    assert np.array_equal(result == 0, ~mask & ~inner)


def test_otsu_bad_classes_names_argument():
    image, _ = _phantom()
    with pytest.raises(ValueError, match="classes"):
        otsu(image, classes=1)


def test_region_grow_from_seed_in_sphere():
    image, mask = _phantom(noise=0.05)
    result = region_grow(image, seeds=[(12, 10, 6)], tolerance=0.4)
    grown = result.numpy()[0].astype(bool)
    assert result.affine.allclose(AFFINE)
    assert dice_score(grown, mask) > 0.95
    assert not grown[0, 0, 0]


def test_region_grow_default_tolerance_and_seed_outside_object():
    image, mask = _phantom(noise=0.05)
    inside = region_grow(image, seeds=[(12, 10, 6)]).numpy()[0].astype(bool)
    assert dice_score(inside, mask) > 0.9
    background = region_grow(image, seeds=[(0, 0, 0)], tolerance=0.4).numpy()[0].astype(bool)
    assert dice_score(background, ~mask) > 0.95


def test_region_grow_bad_seed_names_argument():
    image, _ = _phantom()
    with pytest.raises(ValueError, match="seeds"):
        region_grow(image, seeds=[(12, 10, 99)], tolerance=0.4)
    with pytest.raises(ValueError, match="seeds"):
        region_grow(image, seeds=[(12, 10)], tolerance=0.4)


def test_largest_component_removes_small_blob():
    mask = _sphere_mask()
    noisy = mask.copy()
    noisy[0:2, 0:2, 0:2] = True  # a far-away 8-voxel blob
    assert np.array_equal(keep_largest_component(noisy.astype(np.uint8), [1]) > 0, mask)
    cleaned = postprocess(_labels(noisy), largest_component=True)
    assert np.array_equal(cleaned.numpy()[0].astype(bool), mask)
    assert cleaned.is_label and cleaned.affine.allclose(AFFINE)


def test_fill_holes_and_opening():
    mask = _sphere_mask()
    holed = mask.copy()
    holed[12, 10, 6] = False
    filled = postprocess(_labels(holed), fill_holes=True).numpy()[0].astype(bool)
    assert np.array_equal(filled, mask)
    spur = mask.copy()
    spur[20:24, 10, 6] = True  # one-voxel-thick protrusion reaching the border
    opened = postprocess(_labels(spur), opening_mm=1.5).numpy()[0].astype(bool)
    assert not opened[21:24, 10, 6].any()
    assert dice_score(opened, mask) > 0.95


def test_closing_bridges_gap_but_not_into_other_class():
    labels = np.zeros(SHAPE, np.int64)
    labels[4:10, 4:10, 4:8] = 1
    labels[11:17, 4:10, 4:8] = 1  # one-voxel gap at i=10 along the 0.8 mm axis
    labels[10, 4:6, 4:8] = 2  # part of the gap belongs to another class
    closed = postprocess(_labels(labels), closing_mm=1.0).numpy()[0]
    assert (closed[10, 6:9, 4:8] == 1).all()  # j=9 is a corner of the cross element: stays open
    assert (closed[10, 4:6, 4:8] == 2).all()


def test_segment_rejects_unknown_params():
    image, _ = _phantom()
    with pytest.raises(ValueError, match="params"):
        segment(image, "otsu", seeds=[(1, 1, 1)])
    with pytest.raises(ValueError, match="method"):
        segment(image, "watershed")


def test_segment_folder_writes_masks_with_geometry(tmp_path: Path):
    image, mask = _phantom()
    first = write_image(image, tmp_path / "in" / "case_1.nii.gz")
    picture = Image(torch.from_numpy((mask[:, :, 6] * 200 + 20).astype(np.float32)[None]), Affine.identity(2))
    second = write_image(picture, tmp_path / "in" / "slice_2.png")
    written = segment_folder([first, second], tmp_path / "out", "otsu", largest_component=True)
    assert [p.name for p in written] == ["case_1.nii.gz", "slice_2.png"]
    volume = read_image(written[0], is_label=True)
    assert volume.affine.allclose(AFFINE, atol=1e-5)
    assert dice_score(volume.numpy()[0], mask) > 0.95
    assert np.array_equal(read_image(written[1], is_label=True).numpy()[0].astype(bool), mask[:, :, 6])


def test_segment_folder_duplicate_case_ids(tmp_path: Path):
    with pytest.raises(SegmorphError, match="case_1"):
        segment_folder([tmp_path / "a" / "case_1.nii.gz", tmp_path / "b" / "case_1.nii"], tmp_path, "otsu")


def test_region_grow_updates_its_mean():
    """A ramp from 1.0 to 1.6: the seed's window (1.0 ± 0.35) reaches only part; updating the mean reaches all."""
    values = np.zeros(SHAPE, np.float32)
    ramp = np.linspace(1.0, 1.6, 16, dtype=np.float32)
    values[4:20, 5:15, 3:9] = ramp[:, None, None]
    image = Image(torch.from_numpy(values[None]), AFFINE)
    grown = region_grow(image, seeds=[(4, 10, 6)], tolerance=0.35).numpy()[0].astype(bool)
    assert np.array_equal(grown, values > 0)
    once = region_grow(image, seeds=[(4, 10, 6)], tolerance=0.35, max_iterations=1).numpy()[0].astype(bool)
    assert once.sum() < grown.sum()


def test_opening_keeps_thin_object_on_the_image_border():
    labels = np.zeros(SHAPE, np.int64)
    labels[0:2] = 1  # a slab two voxels thick lying against the i=0 border, spanning j and k
    opened = postprocess(_labels(labels), opening_mm=1.0).numpy()[0]
    assert np.array_equal(opened, labels)


@pytest.mark.parametrize(("opening", "closing", "words"), [
    (-1.0, 0.0, "finite and non-negative"), (float("nan"), 0.0, "finite and non-negative"),
    (0.0, float("inf"), "finite and non-negative"), (1e12, 0.0, r"1e\+12 mm is more than the image.s"),
])  # fmt: skip
def test_postprocess_refuses_radii_that_are_not_finite_or_larger_than_the_image(opening, closing, words):
    labels = Image(torch.zeros(1, 6, 5, 4, dtype=torch.long), Affine.from_geometry(SPACING, (0, 0, 0), np.eye(3).ravel()),
                   is_label=True)  # fmt: skip
    with pytest.raises(ValueError, match=words):
        postprocess(labels, opening_mm=opening, closing_mm=closing)
