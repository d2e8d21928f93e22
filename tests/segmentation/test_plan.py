import json

import pytest

from segmorph.errors import SegmorphError
from segmorph.segmentation.datasets import load_dataset
from segmorph.segmentation.plan import (
    PATCH_VOXELS,
    Plan,
    apply_overrides,
    base_width,
    load_overrides_file,
    make_plan,
    parse_overrides,
    plan_patch,
)
from segmorph.segmentation.preprocess import fingerprint


def test_patch_is_median_shape_rounded_to_the_divisor():
    patch, levels = plan_patch((35, 50, 36), (1.0, 1.0, 1.0), 48 * 64 * 48)
    assert levels == 4
    assert patch == [40, 56, 40]


def test_patch_shrinks_the_longest_axis_in_mm_to_fit_the_budget():
    patch, _ = plan_patch((200, 200, 50), (1.0, 1.0, 4.0), 64**3)
    assert patch[0] * patch[1] * patch[2] <= 64**3 * 1.2
    extents_mm = [patch[0] * 1.0, patch[1] * 1.0, patch[2] * 4.0]
    assert max(extents_mm) / min(extents_mm) < 1.3  # shrunk towards a cube in mm, not in voxels


def test_patch_of_a_one_voxel_image_keeps_two_voxels_per_axis_at_the_coarsest_level():
    assert plan_patch((1, 1, 1), (1.0, 1.0, 1.0), 64**3) == ([4, 4, 4], 2)
    assert plan_patch((1, 1), (1.0, 1.0), 256**2) == ([4, 4], 2)
    assert plan_patch((2, 3, 2), (1.0, 1.0, 1.0), 64**3) == ([2, 4, 2], 2)  # two coarsest voxels already


def test_width_follows_device_and_budget():
    assert base_width("cpu", 20 * 60) == 16
    assert base_width("cpu", 2 * 3600) == 24
    assert base_width("gpu", 20 * 60) == 32


def test_plan_of_a_dataset_round_trips_through_json(msd_dataset, tmp_path):
    spec = load_dataset(msd_dataset)
    plan = make_plan(spec, fingerprint(spec), "cpu", 600)
    assert plan.ndim == 3 and plan.num_classes == 3
    assert plan.preprocess.normalization == ("zscore",)
    assert plan.preprocess.target_spacing == pytest.approx((0.8, 1.1, 2.5), rel=1e-5)
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()


def test_overrides_from_strings_and_files(msd_dataset, tmp_path):
    spec = load_dataset(msd_dataset)
    plan = make_plan(spec, fingerprint(spec), "cpu", 600)
    changed = apply_overrides(plan, parse_overrides(["train.batch_size=4", "train.optimizer=sgd"]))
    assert changed.train.batch_size == 4 and changed.train.optimizer == "sgd"
    (tmp_path / "o.yaml").write_text("train:\n  learning_rate: 0.01\n")
    assert apply_overrides(plan, load_overrides_file(tmp_path / "o.yaml")).train.learning_rate == 0.01
    with pytest.raises(SegmorphError, match="unknown plan key"):
        apply_overrides(plan, {"train.bogus": 1})
    with pytest.raises(SegmorphError, match="multiple of"):
        apply_overrides(plan, {"train.patch_size": [23, 20, 12]})


def test_bad_plan_file_names_the_file(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"ndim": 3}))
    with pytest.raises(SegmorphError, match="plan.json: invalid plan"):
        Plan.load(tmp_path / "plan.json")


def test_a_coarser_target_spacing_is_planned_with_its_own_patch_and_depth(msd_dataset):
    spec = load_dataset(msd_dataset)
    facts = fingerprint(spec)
    native = make_plan(spec, facts, "cpu", 600)
    coarse = make_plan(spec, facts, "cpu", 600, target_spacing=[2 * s for s in native.preprocess.target_spacing])
    assert coarse.median_shape == tuple(max(round(n / 2), 1) for n in native.median_shape)
    patch, levels = plan_patch(coarse.median_shape, coarse.preprocess.target_spacing, PATCH_VOXELS[("cpu", 3)])
    assert coarse.train.patch_size == tuple(patch) and len(coarse.network["features"]) == levels
    assert coarse.train.patch_size != native.train.patch_size
    assert make_plan(spec, facts, "cpu", 600, target_spacing=[1.5]).preprocess.target_spacing == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError, match="1 or 3 positive values"):
        make_plan(spec, facts, "cpu", 600, target_spacing=[1.0, 0.0])


def test_plan_command_takes_a_spacing(msd_dataset, tmp_path, capsys):
    from segmorph.cli.main import main

    assert main(["plan", str(msd_dataset), "--spacing", "1.5,2,3", "--out", str(tmp_path / "plan.json")]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["preprocess"]["target_spacing"] == [1.5, 2.0, 3.0]
    with pytest.raises(SystemExit):
        main(["plan", str(msd_dataset), "--spacing", "1,-2", "--out", str(tmp_path / "bad.json")])
    assert "invalid spacing '1,-2'" in capsys.readouterr().err


def test_a_bad_network_section_is_one_line_before_anything_is_written(msd_dataset, tmp_path, capsys):
    from segmorph.cli.main import main

    out = tmp_path / "bad"
    cases = [
        (["network.name=fcn", "network.residual=true"], "plan: network.residual: fcn takes no argument 'residual'"),
        (["network.name=resnet"], "plan: network.name: expected one of unet, fcn, got 'resnet'"),
        (["network.features=abc"], "plan: network.features: expected a list of positive integers, got 'abc'"),
        (["network.ndim=4"], "plan: network.ndim: expected 2 or 3, got 4"),
        (["train.batch_size=0"], "plan: train.batch_size: expected at least 1, got 0"),
        (["train.learning_rate=-1"], "plan: train.learning_rate: expected a value in (0, 10], got -1.0"),
        (["train.learning_rate=1e12"], "plan: train.learning_rate: expected a value in (0, 10], got 1000000000000.0"),
    ]  # fmt: skip
    for overrides, message in cases:
        sets = [arg for item in overrides for arg in ("--set", item)]
        assert main(["train", str(msd_dataset), "--out", str(out), "--max-steps", "2", "--quiet", *sets]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert not out.exists()


def test_train_with_an_fcn_keeps_the_arguments_an_fcn_takes(msd_dataset, tmp_path, capsys):
    from segmorph.cli.main import main
    from segmorph.segmentation.predict import Predictor

    out = tmp_path / "fcn"
    code = main(["train", str(msd_dataset), "--out", str(out), "--set", "network.name=fcn", "--set",
                 "network.features=[4,8]", "--set", "train.steps_per_epoch=2", "--max-steps", "2", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    network = json.loads((out / "plan.json").read_text())["network"]
    assert network == {"name": "fcn", "ndim": 3, "in_channels": 1, "num_classes": 3, "features": [4, 8]}
    assert "validation" in json.loads((out / "summary.json").read_text())  # the predictor rebuilt it
    assert type(Predictor(out).model).__name__ == "FCN"
