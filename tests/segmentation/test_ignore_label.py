"""Partial annotations: an ignore label declared in dataset.json, carried as IGNORE (-1) through loading,
preprocessing, the cache, patch sampling and augmentation, and left out of the losses and metrics."""

import json

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.engine.loop import TrainConfig
from segmorph.errors import SegmorphError
from segmorph.image import Sample
from segmorph.io import read_image, write_image
from segmorph.metrics.segmentation import case_metrics, mask_metrics
from segmorph.nn import UNet
from segmorph.segmentation.datasets import (
    IGNORE,
    DatasetSpec,
    declared_ignore,
    infer_labels,
    load_dataset,
    load_sample,
    with_declared_ignore,
)
from segmorph.segmentation.evaluate import evaluate_folders
from segmorph.segmentation.losses import SegmentationLoss, cross_entropy_loss, dice_ce_loss, soft_dice_loss
from segmorph.segmentation.plan import make_plan
from segmorph.segmentation.preprocess import (
    PreprocessConfig,
    cache_key,
    fingerprint,
    load_preprocessed,
    preprocess_dataset,
    preprocess_sample,
)
from segmorph.segmentation.sparse_labels import keep_every_kth_slice
from segmorph.segmentation.task import dice_per_class, fit
from segmorph.transforms import AugmentConfig, Augmenter, PatchSampler, SpatialConfig
from segmorph.transforms.intensity import IntensityConfig

# -- helpers ---------------------------------------------------------------------------------------------------


def _ignored_dataset(root, ignore=255, form="top", num_cases=2):
    """write_msd_dataset whose label maps hold ``ignore`` in their last 4 slices, declared in ``form``:
    ``"top"`` (``"ignore": 255``), ``"nnunet"`` (a labels entry ``"ignore": value``) or ``"none"``."""
    write_msd_dataset(root, num_cases=num_cases)
    for path in sorted((root / "labelsTr").iterdir()):
        label = read_image(path, is_label=True)
        data = label.data.clone()
        data[..., -4:] = ignore
        write_image(label.with_data(data), path)
    meta = json.loads((root / "dataset.json").read_text())
    if form == "top":
        meta["ignore"] = ignore
    elif form == "nnunet":
        meta["labels"] = {"background": 0, "outer": 1, "core": 2, "ignore": ignore}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _with_ignored(label: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    return label.masked_fill(where, IGNORE)


# -- declaration -----------------------------------------------------------------------------------------------


def test_top_level_ignore_is_declared_and_not_a_class(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path, 255, "top"))
    assert spec.ignore == 255
    assert spec.labels == {0: "background", 1: "outer", 2: "core"}


def test_nnunet_ignore_entry_is_declared_and_not_a_class(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path, 3, "nnunet"))
    assert spec.ignore == 3
    assert spec.labels == {0: "background", 1: "outer", 2: "core"}
    facts = fingerprint(spec)
    plan = make_plan(spec, facts, "cpu", 60.0)
    assert plan.num_classes == 3
    assert plan.labels == {0: "background", 1: "outer", 2: "core"}


def test_spec_round_trips_the_ignore_value(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path, 255, "top"))
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    older = {k: v for k, v in spec.to_dict().items() if k != "ignore"}
    assert DatasetSpec.from_dict(older).ignore is None


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"labels": {"background": 0, "A": 1, "ignore": 1}}, "highest"),
        ({"labels": {"background": 0, "ignore": 1, "A": 2}}, "highest"),
        ({"labels": {"0": "background", "1": "A"}, "ignore": 1}, "also the value of label 'A'"),
        ({"labels": {"background": 0, "A": 1, "ignore": 2}, "ignore": 255}, "disagrees"),
        ({"labels": {"0": "background"}, "ignore": -1}, "whole number >= 1"),
        ({"labels": {"0": "background"}, "ignore": "255"}, "whole number >= 1"),
        ({"labels": {"0": "background"}, "ignore": True}, "whole number >= 1"),
        ({"labels": {"A": 1}, "ignore": 0}, "0 is the background"),
        ({"labels": {"ignore": 0}}, "highest"),
    ],
)
def test_bad_ignore_declarations_are_refused(tmp_path, meta, message):
    with pytest.raises(SegmorphError, match=message) as caught:
        declared_ignore(meta, tmp_path / "dataset.json")
    assert caught.value.path == str(tmp_path / "dataset.json")


def test_both_forms_agreeing_and_none_at_all():
    assert declared_ignore({"labels": {"background": 0, "A": 1, "ignore": 2}, "ignore": 2}, "d.json") == 2
    assert declared_ignore({"labels": {"0": "background", "1": "A"}}, "d.json") is None
    assert declared_ignore({"labels": {"0": "background", "1": "A", "2": "ignore"}}, "d.json") == 2  # MSD direction


def test_load_sample_maps_the_ignore_value_to_minus_one(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path, 255, "top"))
    sample = load_sample(spec.cases[0], spec)
    raw = read_image(spec.cases[0].label, is_label=True).data
    assert torch.equal(sample.label.data, raw.masked_fill(raw == 255, IGNORE))
    assert (sample.label.data[..., -4:] == IGNORE).all() and (sample.label.data[..., :-4] >= 0).all()
    assert torch.equal(with_declared_ignore(sample.label.data, spec), raw)


def test_an_undeclared_255_still_errors(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path, 255, "none"))
    assert spec.ignore is None
    with pytest.raises(SegmorphError, match=r"label values \[255\] are not declared") as caught:
        load_sample(spec.cases[0], spec)
    assert caught.value.path == str(spec.cases[0].label)


def test_infer_labels_leaves_the_ignore_value_out(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path, 255, "top"))
    assert infer_labels(spec).labels == {0: "background", 1: "label_1", 2: "label_2"}


# -- preprocessing and the cache -------------------------------------------------------------------------------


def test_resampling_and_cropping_keep_ignore_exact():
    """Nearest neighbour commutes with renaming a value: preprocessing a map with IGNORE equals preprocessing
    the map with a spare class there, then renaming that class IGNORE."""
    image, label = sphere_case((24, 20, 12), seed=1)
    data = image.data.clone()
    data[:, :2] = 0  # a zero border that crop_to_nonzero removes
    where = torch.zeros_like(label.data, dtype=torch.bool)
    where[..., 1::3, :, :] = True
    spare = label.data.masked_fill(where, 7)
    config = PreprocessConfig((1.3, 0.7, 1.9), ("zscore",), crop_to_nonzero=True)
    ignored, _ = preprocess_sample(
        Sample("a", image.with_data(data), label.with_data(_with_ignored(label.data, where))), config
    )
    classed, _ = preprocess_sample(Sample("a", image.with_data(data), label.with_data(spare)), config)
    assert ignored.label.data.shape != label.data.shape  # it was cropped and resampled
    assert (ignored.label.data == IGNORE).any()
    assert torch.equal(ignored.label.data, classed.label.data.masked_fill(classed.label.data == 7, IGNORE))


def test_cache_stores_ignore_exactly_and_its_key_knows_the_declaration(tmp_path):
    spec = load_dataset(_ignored_dataset(tmp_path / "data", 3, "nnunet"))
    config = PreprocessConfig((1.0, 1.0, 2.0), ("zscore",))
    paths = preprocess_dataset(spec, config, tmp_path / "cache", progress=False)
    cached, _ = load_preprocessed(paths[0])
    expected, _ = preprocess_sample(load_sample(spec.cases[0], spec), config)
    assert cached.label.data.dtype == torch.int64
    assert torch.equal(cached.label.data, expected.label.data)
    assert (cached.label.data == IGNORE).any()
    with np.load(paths[0]) as stored:
        assert stored["label"].dtype == np.int8
    assert cache_key(spec.cases[0], config, 3) != cache_key(spec.cases[0], config)


# -- patch sampler and augmentation ----------------------------------------------------------------------------


def test_ignored_voxels_are_not_foreground():
    label = torch.zeros(1, 12, 10, dtype=torch.long)
    label[0, :6] = IGNORE
    label[0, 8, 5] = 2
    sampler = PatchSampler([torch.zeros(1, 12, 10)], [label], (4, 4), foreground_fraction=1.0)
    classes, voxels = sampler.foreground(0)
    assert classes.tolist() == [2]
    assert voxels[0].tolist() == [8 * 10 + 5]
    _, patches = sampler.sample(4, torch.Generator().manual_seed(0))
    assert (patches[:, 0, 2, 2] == 2).all()  # centred on the one foreground voxel


def test_random_patches_of_a_partly_ignored_case_are_centred_on_annotated_voxels():
    label = torch.full((1, 64, 8), IGNORE, dtype=torch.long)
    label[0, 30:33] = 0
    label[0, 31, 3] = 1
    sampler = PatchSampler([torch.zeros(1, 64, 8)], [label], (6, 8), foreground_fraction=0.0)
    _, patches = sampler.sample(16, torch.Generator().manual_seed(0))
    assert (patches >= 0).flatten(1).any(1).all()
    assert (patches == IGNORE).any()  # the ignored voxels around keep their value


def test_a_fully_annotated_case_samples_as_before():
    image, label = sphere_case((16, 16, 8), seed=0)
    sampler = PatchSampler([image.data], [label.data], (8, 8, 4), foreground_fraction=0.5)
    assert sampler.annotated(0) is None


def test_augmentation_keeps_ignore():
    _, label = sphere_case((16, 16, 8), seed=2)
    where = torch.zeros_like(label.data, dtype=torch.bool)
    where[..., ::2] = True
    labels = _with_ignored(label.data, where)[None].repeat(4, 1, 1, 1, 1)
    images = torch.randn(4, 1, 16, 16, 8)
    spatial = SpatialConfig(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0, elastic_magnitude=(1.0, 2.0), p_flip=0.5)
    augmenter = Augmenter(AugmentConfig(spatial=spatial, intensity=IntensityConfig(enabled=False)), 3)
    _, out = augmenter(images, labels, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {IGNORE, 0, 1, 2}
    assert (out == IGNORE).any()
    flip = Augmenter(AugmentConfig(spatial=SpatialConfig(p_rotation=0, p_scaling=0, p_flip=1.0, flip_axes=(2,)),
                                   intensity=IntensityConfig(enabled=False)), 3)  # fmt: skip
    _, mirrored = flip(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(mirrored, labels.flip(4))


# -- losses ----------------------------------------------------------------------------------------------------


def _batch(seed=0, shape=(2, 1, 6, 5, 4), classes=3):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=generator)
    logits = torch.randn((shape[0], classes, *shape[2:]), generator=generator, dtype=torch.float64)
    ignored = torch.rand(shape, generator=generator) < 0.4
    return logits, target, ignored


def test_cross_entropy_equals_the_batch_with_ignored_voxels_cut_away():
    logits, target, ignored = _batch()
    kept = ~ignored[:, 0]
    flat_logits = logits.movedim(1, -1)[kept]  # (N, K)
    expected = torch.nn.functional.cross_entropy(flat_logits, target[:, 0][kept])
    assert cross_entropy_loss(logits, _with_ignored(target, ignored)).item() == pytest.approx(
        expected.item(), rel=1e-12
    )


@pytest.mark.parametrize("include_background", [False, True])
def test_soft_dice_equals_the_sums_without_ignored_voxels(include_background):
    logits, target, ignored = _batch(1)
    kept = ~ignored[:, 0]
    # batch Dice pools the voxels of the batch: the annotated ones as one (1, K, N) "image"
    pooled_logits, pooled_target = logits.movedim(1, -1)[kept].T[None], target[:, 0][kept][None]
    expected = soft_dice_loss(pooled_logits, pooled_target, include_background)
    got = soft_dice_loss(logits, _with_ignored(target, ignored), include_background)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_per_case_dice_leaves_ignored_voxels_out_of_each_case():
    logits, target, ignored = _batch(2)
    expected = []
    for b in range(2):
        kept = ~ignored[b, 0]
        expected.append(soft_dice_loss(logits[b].movedim(0, -1)[kept].T[None], target[b, 0][kept][None]))
    got = soft_dice_loss(logits, _with_ignored(target, ignored), batch_dice=False)
    assert got.item() == pytest.approx(float(torch.stack(expected).mean()), rel=1e-12)


def test_an_all_ignored_batch_has_zero_loss_and_zero_gradient():
    logits, target, _ = _batch()
    logits.requires_grad_(True)
    loss = dice_ce_loss(logits, torch.full_like(target, IGNORE))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_losses_with_ignored_voxels_pass_gradcheck():
    logits, target, ignored = _batch(3, shape=(2, 1, 3, 2, 2))
    target = _with_ignored(target, ignored)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: cross_entropy_loss(x, target), (logits,))
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, target), (logits,))
    assert torch.autograd.gradcheck(lambda x: dice_ce_loss(x, target), (logits,))


def test_deep_supervision_downsamples_ignore_as_a_label():
    logits, target, ignored = _batch(4, shape=(2, 1, 8, 6, 4))
    target = _with_ignored(target, ignored)
    coarse = torch.randn(2, 3, 4, 3, 2, dtype=torch.float64)
    loss = SegmentationLoss(0.5, (1.0, 0.5))([logits, coarse], target)
    # nearest downsampling by 2 takes every other voxel, IGNORE included
    expected = (dice_ce_loss(logits, target) + 0.5 * dice_ce_loss(coarse, target[..., ::2, ::2, ::2])) / 1.5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# -- metrics and evaluation ------------------------------------------------------------------------------------


def test_metrics_leave_ignored_voxels_out():
    ref = np.zeros((10, 8, 6), dtype=np.int64)
    ref[2:6, 2:6, 1:5] = 1
    pred = ref.copy()
    pred[7:, :, :] = 1  # wrong, but only where the reference is ignored
    pred[2, 2, 1] = 0  # one miss inside the annotated region
    ref[7:] = 255
    (row,) = case_metrics(pred, ref, (1.0, 1.0, 2.0), {1: "A"}, ignore=255)
    tp, n_ref, annotated = 63, 64, 7 * 8 * 6
    assert row["dice"] == pytest.approx(2 * tp / (tp + n_ref))
    assert row["precision"] == 1.0 and row["recall"] == pytest.approx(tp / n_ref)
    assert row["accuracy"] == pytest.approx((annotated - 1) / annotated)
    assert row["volume_pred"] == pytest.approx(tp * 2.0)
    cut = mask_metrics(pred[:7] == 1, ref[:7] == 1, (1.0, 1.0, 2.0))
    assert row["hd95"] == pytest.approx(cut["hd95"]) and row["assd"] == pytest.approx(cut["assd"])
    (plain,) = case_metrics(pred, ref, (1.0, 1.0, 2.0), {1: "A"})
    assert plain["dice"] < 0.6  # without the declaration the wrong region counts


def test_a_wholly_ignored_reference_scores_as_two_empty_masks():
    ref = np.full((4, 4), 9)
    (row,) = case_metrics(np.ones((4, 4), dtype=np.int64), ref, (1.0, 1.0), {1: "A"}, ignore=9)
    assert row["dice"] == 1.0 and row["accuracy"] == 1.0 and row["hd95"] == 0.0


def test_ignore_value_cannot_be_a_scored_label():
    with pytest.raises(ValueError, match="ignore: 1 is also the value"):
        case_metrics(np.zeros((3, 3)), np.zeros((3, 3)), (1.0, 1.0), {1: "A"}, ignore=1)


def test_evaluate_reads_the_ignore_value_beside_the_references(tmp_path):
    root = _ignored_dataset(tmp_path / "data", 255, "top")
    predictions = tmp_path / "predictions"
    for path in sorted((root / "labelsTr").iterdir()):
        reference = read_image(path, is_label=True)
        predicted = reference.data.clone()
        predicted[predicted == 255] = 1  # wrong where nobody annotated
        write_image(reference.with_data(predicted), predictions / path.name)
    summary = evaluate_folders(predictions, root / "labelsTr", tmp_path / "metrics.csv", console=False)
    assert summary["ignore"] == 255
    assert sorted(summary["classes"]) == ["1", "2"]
    assert summary["mean_over_classes"]["dice"] == pytest.approx(1.0)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["ignore"]
    (root / "dataset.json").write_text(json.dumps(meta))
    plain = evaluate_folders(predictions, root / "labelsTr", None, console=False)
    assert "255" in plain["classes"] and plain["classes"]["1"]["dice"]["mean"] < 0.9


def test_evaluate_takes_the_ignore_value_from_labels_from(tmp_path):
    root = _ignored_dataset(tmp_path / "data", 3, "nnunet")
    references = tmp_path / "refs"
    predictions = tmp_path / "preds"
    for path in sorted((root / "labelsTr").iterdir()):
        reference = read_image(path, is_label=True)
        write_image(reference, references / path.name)
        write_image(reference.with_data(reference.data.masked_fill(reference.data == 3, 2)), predictions / path.name)
    summary = evaluate_folders(predictions, references, None, console=False, labels_from=root)
    assert summary["ignore"] == 3
    assert sorted(summary["classes"]) == ["1", "2"]
    assert summary["mean_over_classes"]["dice"] == pytest.approx(1.0)


def test_validation_dice_leaves_ignored_voxels_out():
    reference = torch.zeros(10, 10, dtype=torch.long)
    reference[2:5, 2:5] = 1
    prediction = reference.clone()
    prediction[7:, :] = 1
    reference[6:] = IGNORE
    assert dice_per_class(prediction, reference, 2).tolist() == [1.0]


# -- sparse labels ---------------------------------------------------------------------------------------------


def test_keep_every_kth_slice_known_answer():
    label = torch.arange(2 * 7 * 3).view(1, 2, 7, 3)
    sparse = keep_every_kth_slice(label, every=3, axis=1, offset=1)
    kept = [1, 4]
    assert torch.equal(sparse[:, :, kept], label[:, :, kept])
    assert (sparse[:, :, [0, 2, 3, 5, 6]] == IGNORE).all()
    assert torch.equal(keep_every_kth_slice(label, 1, 0), label)
    assert sparse.dtype == label.dtype and torch.equal(label, torch.arange(42).view(1, 2, 7, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 0, "axis": 0}, "every: expected a whole number >= 1"),
        ({"every": 2.0, "axis": 0}, "every: expected a whole number >= 1"),
        ({"every": 2, "axis": 3}, r"axis: expected a spatial axis in 0\.\.2"),
        ({"every": 2, "axis": 0, "offset": 2}, r"offset: expected a whole number in 0\.\.1"),
    ],
)
def test_keep_every_kth_slice_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keep_every_kth_slice(torch.zeros(1, 4, 4, 4, dtype=torch.long), **kwargs)


def test_keep_every_kth_slice_refuses_a_float_map():
    with pytest.raises(ValueError, match="label: expected an integer tensor"):
        keep_every_kth_slice(torch.zeros(1, 4, 4), every=2, axis=0)


@pytest.mark.slow
def test_training_with_every_other_slice_ignored_still_learns(tmp_path):
    cases = []
    for seed in range(6):
        image, label = sphere_case((16, 16, 8), seed=seed)
        cases.append(((image.data - image.data.mean()) / image.data.std(), label.data))
    train = [(image, keep_every_kth_slice(label, every=2, axis=2)) for image, label in cases[:4]]
    config = TrainConfig(patch_size=(16, 16, 8), batch_size=2, max_steps=90, steps_per_epoch=30, seed=3, amp=False,
                         learning_rate=1e-2, augment=False)  # fmt: skip
    torch.manual_seed(0)
    model = UNet(3, 1, 3, (8, 16), deep_supervision=True)
    result = fit(model, train, cases[4:], config, tmp_path, {}, 3, show_progress=False)
    outer, core = result.history[-1].val_scores  # scored on the full labels of the validation cases
    # chance: predicting everything as the class scores ~0.46 (outer) and ~0.11 (core); untrained ~0
    assert outer > 0.65 and core > 0.3
