"""Enhance steps in the plan (``preprocess.steps``): applied in one place, the same in training and prediction."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.loop import TrainConfig
from segmorph.errors import SegmorphError
from segmorph.image import Image, Sample
from segmorph.io import read_image, write_image
from segmorph.segmentation import predict as predict_module
from segmorph.segmentation.datasets import CaseFiles
from segmorph.segmentation.plan import Plan, apply_overrides
from segmorph.segmentation.predict import Predictor
from segmorph.segmentation.preprocess import PreprocessConfig, cache_key, load_preprocessed, preprocess_sample

OLD_RUN = Path(__file__).resolve().parents[1] / "data" / "old_runs" / "segmentation"
STEPS = ["denoise:gaussian", "clahe"]


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory) -> Path:
    """A run trained for 4 steps with enhance steps in its plan (tiny network)."""
    root = tmp_path_factory.mktemp("steps")
    dataset = write_msd_dataset(root / "dataset", num_cases=3, shape=(20, 16, 10))
    code = main(["train", str(dataset), "--out", str(root / "run"), "--max-steps", "4", "--val-cases", "case_000",
                 "--set", "network.features=[4,8]", "--set", "train.patch_size=[16,16,8]",
                 "--set", f"preprocess.steps={json.dumps(STEPS)}", "--quiet"])  # fmt: skip
    assert code == 0
    return root / "run"


def test_a_plan_with_steps_trains_predicts_and_records_them(steps_run, tmp_path):
    plan = Plan.load(steps_run / "plan.json")
    assert plan.preprocess.steps == tuple(STEPS)
    assert json.loads((steps_run / "plan.json").read_text())["preprocess"]["steps"] == STEPS
    assert json.loads((steps_run / "run.json").read_text())["preprocess_steps"] == STEPS
    image, _ = sphere_case((20, 16, 10), seed=7)
    write_image(image, tmp_path / "scan.nii.gz")
    assert (
        main(["predict", str(steps_run), str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    )
    mask = read_image(tmp_path / "m" / "scan.nii.gz", is_label=True)
    assert mask.spatial_shape == image.spatial_shape and mask.affine.allclose(image.affine, atol=1e-6)


def test_training_and_the_predictor_preprocess_a_scan_identically(steps_run, monkeypatch):
    trained, _ = load_preprocessed(steps_run / "preprocessed" / "case_001.npz")
    seen = []
    original = predict_module.sliding_window_logits

    def spy(network, image, *args, **kwargs):
        seen.append(image.clone())
        return original(network, image, *args, **kwargs)

    monkeypatch.setattr(predict_module, "sliding_window_logits", spy)
    scan = read_image(steps_run.parent / "dataset" / "imagesTr" / "case_001.nii.gz")
    Predictor(steps_run).probabilities(scan)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0].numpy(), trained.image.numpy())
    plain = preprocess_sample(
        Sample("scan", scan),
        PreprocessConfig(**{**Plan.load(steps_run / "plan.json").preprocess.to_dict(), "steps": ()}),
    )[0]
    assert not np.allclose(plain.image.numpy(), trained.image.numpy())  # the steps did change the input


def test_the_cache_key_depends_on_the_steps(tmp_path):
    image, label = sphere_case()
    write_image(image, tmp_path / "image.nii.gz")
    case = CaseFiles("case", (tmp_path / "image.nii.gz",), None)
    plain = PreprocessConfig(target_spacing=None, normalization=("zscore",))
    keys = {
        cache_key(case, plain),
        cache_key(case, PreprocessConfig(None, ("zscore",), steps=("n4",))),
        cache_key(case, PreprocessConfig(None, ("zscore",), steps=("clahe",))),
    }
    assert len(keys) == 3
    old = {k: v for k, v in plain.to_dict().items() if k != "steps"}  # a plan.json written before steps existed
    assert cache_key(case, PreprocessConfig.from_dict(old)) == cache_key(case, plain)


def test_a_bad_step_in_set_is_one_line_and_writes_nothing(tmp_path, capsys):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=2, shape=(12, 12, 8))
    out = tmp_path / "run"
    code = main(["train", str(dataset), "--out", str(out), "--max-steps", "1", "--set",
                 'preprocess.steps=["channel:green", "sharpen"]', "--quiet"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "preprocess.steps" in err and "'sharpen'" in err
    assert not out.exists()


def test_channel_steps_set_the_network_channels():
    config = PreprocessConfig(
        None,
        ("zscore", "ct", "zscore"),
        ct_stats=(None, {"mean": 0, "std": 1, "percentile_00_5": -1, "percentile_99_5": 1}, None),
    )
    plan = Plan(3, {0: "background", 1: "x"}, ("r", "g", "b"), ("other", "CT", "other"), config,
                {"name": "unet", "ndim": 3, "in_channels": 3, "num_classes": 2, "features": [4, 8]},
                TrainConfig(patch_size=(8, 8, 8), max_steps=1), (8, 8, 8))  # fmt: skip
    green = apply_overrides(plan, {"preprocess.steps": ["channel:green"]})
    assert green.network_channels == 1 and green.network["in_channels"] == 1
    assert green.preprocess.normalization == ("ct",) and green.preprocess.ct_stats[0]["std"] == 1
    data = torch.randn(3, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    out, _ = preprocess_sample(Sample("s", Image(data, sphere_case()[0].affine)), green.preprocess)
    expected = np.clip(data[1].numpy(), -1, 1)
    np.testing.assert_allclose(out.image.numpy()[0], expected)
    with pytest.raises(SegmorphError, match=r"preprocess\.steps: step 'channel:5'"):
        apply_overrides(plan, {"preprocess.steps": ["channel:5"]})


def test_an_old_plan_without_steps_loads_and_predicts(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    assert "steps" not in json.loads((run / "plan.json").read_text())["preprocess"]
    assert Plan.load(run / "plan.json").preprocess.steps == ()
    image, _ = sphere_case(seed=3)
    assert Predictor(run).probabilities(image).shape[1:] == image.data.shape[1:]


def test_the_registration_prior_applies_the_run_steps(steps_run):
    from segmorph.processing.steps import enhance
    from segmorph.registration.learned.prior import SegmentationPrior

    scan = read_image(steps_run.parent / "dataset" / "imagesTr" / "case_001.nii.gz")
    prior = SegmentationPrior(steps_run)
    np.testing.assert_allclose(prior.enhanced(scan.data, scan.spacing).numpy(), enhance(scan, STEPS).numpy(), atol=1e-6)
    probabilities = prior.image_probabilities(scan)
    assert probabilities.shape == (3, *scan.spatial_shape)
