"""The public Python API: ``import segmorph`` is cheap, its functions give what the command line gives,
and bad input raises SegmorphError."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import segmorph as sm
from helpers import OBLIQUE, sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.segmentation.api import TrainResult

PUBLIC = {
    "train", "plan", "Segmenter", "evaluate", "register", "Transform", "read_image", "write_image", "Image",
    "Affine", "Sample", "SegmorphError", "train_classifier", "Classifier", "train_registration", "check_dataset",
    "enhance", "baseline", "view", "mesh", "cross_validate", "find_best", "cross_validate_classifier", "pretrain",
}  # fmt: skip
HEAVY = ("torch", "numpy", "SimpleITK", "scipy", "segmorph.image", "segmorph.io", "segmorph.segmentation",
         "segmorph.registration", "segmorph.classification", "segmorph.nn")  # fmt: skip


def test_import_segmorph_loads_no_heavy_module():
    code = "import json, sys, segmorph; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)] == []


def test_public_names_are_exactly_the_api():
    assert set(sm.__all__) == PUBLIC
    assert len(sm.__all__) == len(PUBLIC)
    assert set(dir(sm)) >= PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_resolves(name):
    assert getattr(sm, name) is not None


def test_public_names_are_the_library_objects():
    assert sm.Image is Image and sm.Affine is Affine and sm.read_image is read_image
    from segmorph.registration.learned.training import train_registration_run

    assert sm.train_registration is train_registration_run


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        sm.no_such_thing  # noqa: B018


def test_segmenter_gives_what_cli_predict_writes(trained_run, tmp_path):
    image, _ = sphere_case(seed=11)
    write_image(image, tmp_path / "scan.nii.gz")
    assert (
        main(["predict", str(trained_run), str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    )
    written = read_image(tmp_path / "m" / "scan.nii.gz", is_label=True)

    segmenter = sm.Segmenter(trained_run)
    mask = segmenter(sm.read_image(tmp_path / "scan.nii.gz"))
    assert mask.is_label and mask.spatial_shape == image.spatial_shape
    np.testing.assert_array_equal(mask.numpy(), written.numpy())
    np.testing.assert_allclose(mask.affine.matrix, written.affine.matrix, atol=1e-6)
    np.testing.assert_allclose(mask.affine.matrix, OBLIQUE.matrix, atol=1e-6)
    assert set(np.unique(mask.numpy())) <= set(segmenter.labels)


def test_segmenter_probabilities_are_on_the_scan_grid(trained_run):
    image, _ = sphere_case(seed=12)
    segmenter = sm.Segmenter(trained_run, mirror=False)
    probabilities = segmenter.probabilities(image)
    assert probabilities.num_channels == len(segmenter.labels)
    assert probabilities.spatial_shape == image.spatial_shape and probabilities.affine.allclose(image.affine)
    torch.testing.assert_close(probabilities.data.sum(0), torch.ones(image.spatial_shape), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(segmenter(image).numpy()[0], probabilities.data.argmax(0).numpy())


def test_train_returns_its_summary(tmp_path):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=3, shape=(16, 16, 8))
    run = sm.train(dataset, tmp_path / "run", max_steps=4, val_cases=["case_000"], show_progress=False,
                   overrides={"train.steps_per_epoch": 2, "network.features": [4, 8]})  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert isinstance(run, TrainResult)
    assert (run.steps, run.best_epoch, run.train_cases, run.val_cases) == (4, summary["fit"]["best_epoch"], 2, 1)
    assert run.stopped_because == summary["fit"]["stopped_because"]
    assert run.out == tmp_path / "run" and (run.out / "checkpoint_best.pt").exists()
    assert run.validation is not None and run.validation.cases == 1
    assert set(run.validation.per_class) == {"outer", "core"}
    assert run.validation.dice == pytest.approx(summary["validation"]["metrics"]["mean_over_classes"]["dice"])
    with pytest.raises(AttributeError):
        run.steps = 5  # frozen


def _pair():
    fixed, fixed_labels = sphere_case(seed=0)
    moving, moving_labels = sphere_case(seed=3)
    return fixed, fixed_labels, moving, moving_labels


def test_register_and_warp_keep_the_fixed_grid():
    fixed, fixed_labels, moving, moving_labels = _pair()
    transform = sm.register(fixed, moving, method="affine")
    assert isinstance(transform, sm.Transform) and transform.is_affine()
    warped = transform.warp(moving_labels, like=fixed, labels=True)
    assert warped.is_label and warped.spatial_shape == fixed.spatial_shape
    np.testing.assert_allclose(warped.affine.matrix, fixed.affine.matrix, atol=1e-6)
    assert set(np.unique(warped.numpy())) <= {0, 1, 2}
    before = sm.evaluate(Image(moving_labels.data, fixed.affine, True), fixed_labels).dice
    assert sm.evaluate(warped, fixed_labels).dice > before


def test_warp_as_labels_or_image_by_request():
    fixed, _, moving, moving_labels = _pair()
    transform = sm.Transform.identity()
    as_image = transform.warp(moving_labels, like=fixed, labels=False)
    assert not as_image.is_label and as_image.data.is_floating_point()
    as_labels = transform.warp(Image(moving_labels.data.float(), moving.affine), like=fixed, labels=True)
    assert as_labels.is_label
    np.testing.assert_array_equal(as_labels.numpy(), moving_labels.numpy())  # same grid, identity: unchanged
    same = transform.warp(moving, fixed.affine, fixed.spatial_shape)  # the grid given as reference and shape
    torch.testing.assert_close(same.data, transform.warp(moving, like=fixed).data)
    with pytest.raises(ValueError, match="like"):
        transform.warp(moving)
    with pytest.raises(ValueError, match="like"):
        transform.warp(moving, fixed.affine, fixed.spatial_shape, like=fixed)


def test_register_by_structures_needs_no_images_optimised():
    fixed, fixed_labels, moving, moving_labels = _pair()
    transform = sm.register(fixed, moving, method="structures", structures=(fixed_labels, moving_labels))
    warped = transform.warp(moving_labels, like=fixed)
    assert sm.evaluate(warped, fixed_labels).dice > 0.8


def _image_2d() -> Image:
    return Image(torch.rand(1, 16, 16), Affine.identity(2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f, m: sm.register(f, "moving.nii.gz"), "moving: expected a segmorph Image"),
        (lambda f, m: sm.register(f, _image_2d()), "moving: is 2D but the fixed image is 3D"),
        (lambda f, m: sm.register(f, m, method="spline"), "unknown method 'spline'"),
        (lambda f, m: sm.register(f, m, method="learned"), "method 'learned' needs model="),
        (lambda f, m: sm.register(f, m, method="structures"), "method 'structures' needs structures="),
        (lambda f, m: sm.register(f, m, similarity="cosine"), "similarity:"),
        (lambda f, m: sm.register(f, m, moving_labels=Image(m.data[:, :8].long(), m.affine, True)), "moving_labels: grid"),
        (lambda f, m: sm.register(f, Image(m.data, Affine.from_geometry((1, 1, 1), (900, 0, 0)))),
         "moving: field of view does not overlap"),
        (lambda f, m: sm.evaluate(Image(f.data.long(), f.affine, True), "masks/"), "two Images or two folders"),
        (lambda f, m: sm.evaluate(Image(f.data[:, :8].long(), f.affine, True), Image(f.data.long(), f.affine, True)),
         "predictions: grid"),
    ],
)  # fmt: skip
def test_bad_input_raises_segmorph_error(call, message):
    fixed, _, moving, _ = _pair()
    with pytest.raises(sm.SegmorphError, match=message):
        call(fixed, moving)


def test_bad_training_input_raises_segmorph_error(tmp_path, msd_dataset):
    with pytest.raises(sm.SegmorphError, match="time_budget: invalid duration 'soon'"):
        sm.train(msd_dataset, tmp_path / "run", time_budget="soon")
    with pytest.raises(sm.SegmorphError, match="spacing"):
        sm.train(msd_dataset, tmp_path / "run", spacing=-1)
    with pytest.raises(sm.SegmorphError, match="max_steps"):
        sm.train(msd_dataset, tmp_path / "run", max_steps=-3)
    with pytest.raises(sm.SegmorphError, match="nowhere"):
        sm.train(tmp_path / "nowhere", tmp_path / "run", max_steps=1, show_progress=False)
    with pytest.raises(sm.SegmorphError, match="unknown"):
        sm.plan(msd_dataset, overrides={"train.no_such_key": 1}, show_progress=False)


def test_bad_segmenter_input_raises_segmorph_error(trained_run, tmp_path):
    with pytest.raises(sm.SegmorphError, match="plan not found"):
        sm.Segmenter(tmp_path)
    with pytest.raises(sm.SegmorphError, match="checkpoint"):
        sm.Segmenter(trained_run, checkpoint="newest")
    segmenter = sm.Segmenter(trained_run)
    with pytest.raises(sm.SegmorphError, match="expected a segmorph Image"):
        segmenter(np.zeros((24, 20, 12)))
    with pytest.raises(sm.SegmorphError, match="expected a 3D image"):
        segmenter(_image_2d())


def test_plan_is_what_train_would_use(msd_dataset):
    plan = sm.plan(msd_dataset, max_steps=10, overrides={"train.batch_size": 1}, show_progress=False)
    assert plan.train.batch_size == 1 and plan.train.max_steps == 10 and plan.ndim == 3
    assert plan.labels == {0: "background", 1: "outer", 2: "core"}
