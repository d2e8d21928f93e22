"""Preprocessing (crop, normalise, resample), its undo, the fingerprint and the on-disk cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import segmorph.segmentation.preprocess as pp
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, Sample
from segmorph.io import write_image
from segmorph.segmentation.datasets import load_dataset
from segmorph.segmentation.preprocess import (
    PreprocessConfig,
    UndoRecord,
    fingerprint,
    labels_to_original,
    load_preprocessed,
    preprocess_dataset,
    preprocess_sample,
    undo_preprocessing,
)

ANGLE = 0.4
DIRECTION = np.array([[1, 0, 0], [0, np.cos(ANGLE), -np.sin(ANGLE)], [0, np.sin(ANGLE), np.cos(ANGLE)]])
AFFINE = Affine.from_geometry((0.8, 1.1, 2.5), (-12.0, 30.0, 5.0), DIRECTION)
SHAPE = (30, 26, 14)
BOX = (slice(4, 27), slice(3, 22), slice(2, 12))  # the non-zero region of the synthetic image


def world_grid(affine: Affine, shape: tuple[int, ...]) -> np.ndarray:
    """World position (mm) of every voxel, ``(*shape, 3)``."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return affine.voxel_to_world(index)


def sphere_sample(zero_border: bool = True, radius: float = 7.0) -> Sample:
    """Image = 100 + world x (mm) inside BOX (0 outside when ``zero_border``); label 1 = a sphere, 2 = its core."""
    world = world_grid(AFFINE, SHAPE)
    centre = AFFINE.voxel_to_world(np.array([15.0, 12.0, 7.0]))
    distance = np.linalg.norm(world - centre, axis=-1)
    image = 100.0 + world[..., 0]
    if zero_border:
        image = np.where(_box_mask(), image, 0.0)
    label = (distance < radius).astype(np.int64) + (distance < radius / 2)
    return Sample(
        "case",
        Image(torch.from_numpy(image[None].astype(np.float32)), AFFINE),
        Image(torch.from_numpy(label[None]), AFFINE, True),
        {},
    )


def _box_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[BOX] = True
    return mask


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_crop_keeps_world_positions_and_undo_is_the_identity() -> None:
    sample = sphere_sample()
    config = PreprocessConfig(target_spacing=None, normalization=("zscore",), crop_to_nonzero=True)
    pre, record = preprocess_sample(sample, config)
    assert pre.image.spatial_shape == (23, 19, 10) == pre.label.spatial_shape
    assert record.crop_start == (4, 3, 2) and record.crop_stop == (27, 22, 12) and not record.was_resampled
    for corner in ([0, 0, 0], [22, 18, 9]):
        original = AFFINE.voxel_to_world(np.add(corner, record.crop_start))
        assert np.allclose(pre.image.affine.voxel_to_world(np.array(corner)), original, atol=1e-9)
    assert torch.equal(pre.label.data, sample.label.data[(slice(None), *BOX)])
    back = labels_to_original(pre.label.data, record)
    assert torch.equal(back.data, sample.label.data)
    assert back.affine is sample.image.affine and np.array_equal(back.affine.matrix, AFFINE.matrix)


def test_target_spacing_equal_to_the_current_one_does_not_resample() -> None:
    sample = sphere_sample(zero_border=False)
    pre, record = preprocess_sample(sample, PreprocessConfig(tuple(AFFINE.spacing), ("none",)))
    assert not record.was_resampled and torch.equal(pre.image.data, sample.image.data)
    assert torch.equal(labels_to_original(pre.label.data, record).data, sample.label.data)


def test_resampling_samples_the_same_world_points() -> None:
    sample = sphere_sample(zero_border=False)
    target = (1.2, 0.7, 1.6)
    config = PreprocessConfig(target, ("none",), image_order=1)
    pre, record = preprocess_sample(sample, config)
    expected_shape = tuple(round(n * s / t) for n, s, t in zip(SHAPE, AFFINE.spacing, target))
    assert pre.image.spatial_shape == expected_shape == record.resampled_shape
    assert np.allclose(pre.image.spacing, target) and np.allclose(pre.image.affine.origin, AFFINE.origin)
    assert np.allclose(pre.image.affine.direction, DIRECTION)
    # the image is 100 + world x: every voxel inside the source grid must hold its own world x
    world = world_grid(pre.image.affine, expected_shape)
    inside = (AFFINE.world_to_voxel(world) <= np.array(SHAPE) - 1 + 1e-6).all(axis=-1)
    assert inside.mean() > 0.8
    assert np.allclose(pre.image.numpy()[0][inside], 100 + world[..., 0][inside], atol=1e-3)


def test_undo_after_resampling_is_near_identity() -> None:
    sample = sphere_sample(zero_border=True, radius=8.0)
    config = PreprocessConfig((1.2, 0.7, 1.6), ("zscore",), crop_to_nonzero=True)
    pre, record = preprocess_sample(sample, config)
    assert record.was_resampled and record.cropped_shape == (23, 19, 10)
    back = labels_to_original(pre.label.data, record)
    assert back.spatial_shape == SHAPE and np.array_equal(back.affine.matrix, AFFINE.matrix)
    assert dice(back.data > 0, sample.label.data > 0) > 0.95  # the sphere
    assert dice(back.data == 2, sample.label.data == 2) > 0.9  # its core (117 voxels) loses more at the edges
    one_hot = torch.nn.functional.one_hot(pre.label.data[0], 3).movedim(-1, 0).double()
    assert torch.equal(labels_to_original(one_hot, record).data, back.data)


def test_undo_fills_outside_the_crop_with_background() -> None:
    pre, record = preprocess_sample(sphere_sample(), PreprocessConfig(None, ("zscore",), crop_to_nonzero=True))
    probabilities = torch.zeros((3, *pre.image.spatial_shape))
    probabilities[2] = 1.0
    out = undo_preprocessing(probabilities, record)
    assert out.shape == (3, *SHAPE)
    assert torch.all(out[2][BOX] == 1) and torch.all(out[0][BOX] == 0)
    outside = torch.from_numpy(~_box_mask())
    assert torch.all(out[0][outside] == 1) and torch.all(out[1:][:, outside] == 0)
    with pytest.raises(ValueError, match="probabilities"):
        undo_preprocessing(torch.zeros((3, 5, 5, 5)), record)


def test_unlabelled_sample_is_preprocessed() -> None:
    sample = sphere_sample()
    sample.label = None
    pre, record = preprocess_sample(sample, PreprocessConfig((1.0, 1.0, 2.0), ("zscore",), crop_to_nonzero=True))
    assert pre.label is None and pre.image.spatial_shape == record.resampled_shape


def test_zscore_uses_the_nonzero_region_when_cropping() -> None:
    sample = sphere_sample()
    sample.image.data[0, 10, 10, 5] = 0.0  # a zero voxel inside the crop box stays outside the mask
    pre, _ = preprocess_sample(sample, PreprocessConfig(None, ("zscore",), crop_to_nonzero=True))
    values = pre.image.numpy()[0]
    mask = sample.image.numpy()[0][BOX] != 0
    assert values[6, 7, 3] == 0.0 and abs(values[mask].mean()) < 1e-5 and abs(values[mask].std() - 1) < 1e-4
    whole, _ = preprocess_sample(sphere_sample(), PreprocessConfig(None, ("zscore",)))
    assert abs(whole.image.data.mean()) < 1e-5 and abs(whole.image.data.std(unbiased=False) - 1) < 1e-4


def test_ct_rgb_and_none_normalisation_known_answers() -> None:
    affine = Affine.from_geometry((0.5, 0.7), (1.0, 2.0), [[0.0, 1.0], [1.0, 0.0]])
    ct = Sample("ct", Image(torch.tensor([[[0.0, 10.0], [30.0, 12.0]]]), affine))
    stats = {"mean": 10.0, "std": 2.0, "percentile_00_5": 5.0, "percentile_99_5": 20.0}
    pre, _ = preprocess_sample(ct, PreprocessConfig(None, ("ct",), ct_stats=(stats,)))
    assert torch.allclose(pre.image.data, torch.tensor([[[-2.5, 0.0], [5.0, 1.0]]]))
    rgb_values = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 6, 5)).astype(np.float32))
    rgb, _ = preprocess_sample(Sample("rgb", Image(rgb_values, affine)), PreprocessConfig(None, ("rgb",) * 3))
    assert torch.allclose(rgb.image.data.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(rgb.image.data.std(dim=(1, 2), unbiased=False), torch.ones(3), atol=1e-4)
    raw, _ = preprocess_sample(ct, PreprocessConfig(None, ("none",)))
    assert torch.equal(raw.image.data, ct.image.data)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="ct_stats"):
        PreprocessConfig(None, ("ct",))
    with pytest.raises(ValueError, match="normalization"):
        PreprocessConfig(None, ("minmax",))
    with pytest.raises(ValueError, match="target_spacing"):
        PreprocessConfig((1.0, -1.0, 1.0), ("zscore",))
    with pytest.raises(SegmorphError, match="2 normalization entries"):
        preprocess_sample(sphere_sample(), PreprocessConfig(None, ("zscore", "zscore")))
    with pytest.raises(SegmorphError, match="target_spacing"):
        preprocess_sample(sphere_sample(), PreprocessConfig((1.0, 1.0), ("zscore",)))


def test_config_and_undo_record_round_trip_through_json() -> None:
    stats = {"mean": 1.0, "std": 2.0, "percentile_00_5": -1.0, "percentile_99_5": 5.0}
    config = PreprocessConfig([1.0, 0.5, 2.0], ["ct", "zscore"], True, 1, (stats, None))
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    _, record = preprocess_sample(sphere_sample(), PreprocessConfig((1.2, 0.7, 1.6), ("zscore",), True))
    again = UndoRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert np.array_equal(again.original_affine.matrix, record.original_affine.matrix)
    assert (again.crop_start, again.resampled_shape, again.cropped_shape) == (
        record.crop_start,
        record.resampled_shape,
        record.cropped_shape,
    )


def write_dataset(root: Path, num_cases: int = 2) -> Path:
    """Tiny MSD dataset: image 7 inside the label, 1 elsewhere; label 1 in a 2x2x2 cube."""
    affine = Affine.from_geometry((0.9, 1.3, 2.0), (3.0, 1.0, -2.0), DIRECTION)
    for n in range(num_cases):
        label = torch.zeros((1, 6, 5, 4), dtype=torch.int64)
        label[0, n : n + 2, 1:3, 1:3] = 1
        image = torch.where(label > 0, 7.0, 1.0)
        write_image(Image(image, affine), root / "imagesTr" / f"c{n}.nii.gz")
        write_image(Image(label, affine, True), root / "labelsTr" / f"c{n}.nii.gz")
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_fingerprint_known_answers(tmp_path: Path) -> None:
    spec = load_dataset(write_dataset(tmp_path))
    facts = fingerprint(spec)
    assert json.loads(json.dumps(facts)) == facts
    assert facts["num_cases"] == 2 and facts["median_shape"] == [6, 5, 4]
    assert np.allclose(facts["median_spacing"], [0.9, 1.3, 2.0])
    stats = facts["intensity"][0]
    assert stats["modality"] == "CT" and stats["mean"] == pytest.approx(7.0) and stats["std"] == pytest.approx(0.0)
    assert stats["percentile_99_5"] == pytest.approx(7.0)
    assert facts["class_fractions"] == pytest.approx({"0": 112 / 120, "1": 8 / 120})
    assert fingerprint(spec, max_cases=1)["num_cases"] == 1


def test_cache_hits_misses_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_dataset(write_dataset(tmp_path / "data"))
    calls = []
    original = pp.preprocess_sample
    monkeypatch.setattr(pp, "preprocess_sample", lambda s, c: calls.append(s.case_id) or original(s, c))
    config = PreprocessConfig((1.0, 1.0, 1.5), ("zscore",), crop_to_nonzero=True)
    paths = preprocess_dataset(spec, config, tmp_path / "cache", progress=False)
    assert [p.name for p in paths] == ["c0.npz", "c1.npz"] and calls == ["c0", "c1"]
    assert preprocess_dataset(spec, config, tmp_path / "cache", progress=False) == paths and len(calls) == 2
    stat = spec.cases[1].images[0].stat()
    os.utime(spec.cases[1].images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    preprocess_dataset(spec, config, tmp_path / "cache", progress=False)
    assert calls[2:] == ["c1"]
    other = PreprocessConfig(None, ("zscore",))
    preprocess_dataset(spec, other, tmp_path / "cache", case_ids=["c0"], progress=False)
    assert calls[3:] == ["c0"]
    sample, record = load_preprocessed(paths[1])
    direct, direct_record = original(pp.load_sample(spec.cases[1], spec), config)
    assert torch.equal(sample.image.data, direct.image.data) and torch.equal(sample.label.data, direct.label.data)
    assert np.array_equal(sample.image.affine.matrix, direct.image.affine.matrix)
    assert record.to_dict() == direct_record.to_dict() and sample.case_id == "c1"
    paths[1].write_bytes(b"garbage")
    with pytest.raises(SegmorphError) as err:
        load_preprocessed(paths[1])
    assert err.value.path.endswith("c1.npz")
    preprocess_dataset(spec, config, tmp_path / "cache", progress=False)
    assert calls[4:] == ["c0", "c1"] and load_preprocessed(paths[1])[0].case_id == "c1"


@pytest.mark.parametrize("order", [0, 1, 3])
def test_whole_voxel_steps_take_the_samples_the_spline_would_give(order):
    from scipy import ndimage

    from segmorph.segmentation.preprocess import resample_array

    array = np.random.default_rng(0).random((2, 9, 8, 7)).astype(np.float32)
    scale, shape = (2.0, 1.0, 3.0), (4, 8, 2)  # round(9 / 2) = 4 (banker's rounding), round(7 / 3) = 2
    fast = resample_array(array, scale, shape, order)
    slow = np.stack([ndimage.affine_transform(c.astype(np.float64), scale, output_shape=shape, order=order,
                                              mode="nearest") for c in array])  # fmt: skip
    assert fast.shape == (2, 4, 8, 2) and fast.dtype == np.float32 and fast.flags.c_contiguous
    np.testing.assert_allclose(fast, slow, atol=1e-5)
