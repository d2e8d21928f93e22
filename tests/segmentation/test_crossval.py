"""Cross-validation as a workflow: folds, out-of-fold scores, resuming, fold ensembles, postprocessing choice."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ensemble_helpers import copy_as_cross_validation
from helpers import sphere_case, write_msd_dataset
from segmorph.errors import SegmorphError
from segmorph.folds import parse_folds
from segmorph.segmentation.api import Segmenter, cross_validate
from segmorph.segmentation.crossval_layout import fold_folder
from segmorph.segmentation.datasets import split_cases
from segmorph.segmentation.ensemble import EnsemblePredictor, load_predictor
from segmorph.segmentation.postprocess_choice import apply_postprocessing, choose_postprocessing
from segmorph.segmentation.predict import Predictor

TINY = {"train.steps_per_epoch": 3, "network.features": [4, 8], "train.batch_size": 2}


def test_folds_of_the_split_are_disjoint_and_cover_every_case():
    ids = [f"case_{i:03d}" for i in range(23)]
    held_out = [split_cases(ids, fold, 5, seed=3)[1] for fold in range(5)]
    assert sorted(c for fold in held_out for c in fold) == ids
    for fold, val in enumerate(held_out):
        train, _ = split_cases(ids, fold, 5, seed=3)
        assert not set(train) & set(val) and sorted(train + val) == ids


def test_parse_folds_reads_all_and_lists_and_refuses_the_rest():
    assert parse_folds("all", 5) == (0, 1, 2, 3, 4)
    assert parse_folds("4,0,2,2", 5) == (0, 2, 4)
    for bad in ("5", "1,x", "", "-1"):
        with pytest.raises(SegmorphError, match="folds"):
            parse_folds(bad, 5)


def test_the_ensemble_of_identical_models_equals_one_model(trained_run, tmp_path):
    run = copy_as_cross_validation(trained_run, tmp_path / "cv", 3)
    image, _ = sphere_case(seed=11)
    single = Predictor(trained_run).probabilities(image)
    ensemble = EnsemblePredictor(run, postprocess="none")
    assert ensemble.folds == [0, 1, 2]
    assert torch.allclose(ensemble.probabilities(image), single, atol=1e-6)
    assert torch.equal(ensemble.segment(image)[0].data, Predictor(trained_run).segment(image)[0].data)


def test_a_run_with_a_fold_missing_predicts_with_the_others_and_says_so(trained_run, tmp_path, capsys):
    run = copy_as_cross_validation(trained_run, tmp_path / "cv", 3)
    (fold_folder(run, 1) / "checkpoint_best.pt").unlink()
    predictor = load_predictor(run)
    assert isinstance(predictor, EnsemblePredictor) and predictor.folds == [0, 2]
    lines = [line for line in capsys.readouterr().err.splitlines() if "fold" in line]
    assert lines == ["warning: fold 1 missing (no checkpoint_best.pt); predicting with folds 0, 2"]
    with pytest.raises(SegmorphError, match="single model"):
        load_predictor(trained_run, folds=[0])


def _blob(shape, centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return np.linalg.norm(grid - np.array(centre), axis=-1) < radius


def test_postprocessing_that_lowers_dice_is_never_chosen():
    shape = (30, 30, 20)
    pairs = []
    for shift in range(4):
        reference = _blob(shape, (8 + shift, 10, 10), 4).astype(np.int64)  # the true structure: small
        prediction = reference.copy()
        prediction[_blob(shape, (22, 20, 10), 6)] = 1  # a larger false component: "largest" keeps the wrong one
        pairs.append((prediction, reference))
    decision = choose_postprocessing(pairs, {1: "lesion"})
    choice = decision["classes"]["1"]
    assert choice["candidates"]["largest_component"] < choice["candidates"]["none"]
    assert choice["method"] == "none" and choice["dice_after"] == choice["dice_before"]
    assert np.array_equal(apply_postprocessing(pairs[0][0], decision), pairs[0][0])


def test_postprocessing_that_raises_dice_is_chosen_and_applied():
    shape = (30, 30, 20)
    pairs = []
    for shift in range(4):
        reference = _blob(shape, (12 + shift, 14, 10), 6).astype(np.int64)
        prediction = reference.copy()
        prediction[_blob(shape, (26, 26, 4), 1.5)] = 1  # a small spurious speck
        pairs.append((prediction, reference))
    decision = choose_postprocessing(pairs, {1: "organ"})
    choice = decision["classes"]["1"]
    assert choice["method"] in ("largest_component", "min_size") and choice["dice_after"] > choice["dice_before"]
    cleaned = apply_postprocessing(pairs[0][0], decision)
    assert np.array_equal(cleaned, pairs[0][1])


def test_cross_validation_trains_folds_scores_out_of_fold_and_resumes_only_missing_folds(tmp_path, one_thread):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=5, shape=(16, 16, 8))
    out = tmp_path / "cv"
    common = {"num_folds": 5, "max_steps": 2, "overrides": TINY, "show_progress": False, "check": False}
    first = cross_validate(dataset, out, folds="0,1,2", **common)
    assert first.folds == (0, 1, 2) and first.cases == 3
    stamps = {k: (fold_folder(out, k) / "checkpoint_last.pt").stat().st_mtime_ns for k in range(3)}
    with pytest.raises(SegmorphError, match="--resume"):
        cross_validate(dataset, out, folds="all", **common)
    result = cross_validate(dataset, out, folds="all", resume=True, **common)
    assert result.folds == (0, 1, 2, 3, 4) and result.cases == 5
    assert {k: (fold_folder(out, k) / "checkpoint_last.pt").stat().st_mtime_ns for k in range(3)} == stamps
    with (out / "cross_validation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["case"] for r in rows}) == [f"case_{i:03d}" for i in range(5)]
    assert {r["name"] for r in rows} == {"outer", "core"} and {r["fold"] for r in rows} == {"0", "1", "2", "3", "4"}
    summary = json.loads((out / "cross_validation.json").read_text())
    outer = summary["classes"]["1"]
    assert outer["dice_out_of_fold"] == pytest.approx(
        np.mean([float(r["dice"]) for r in rows if r["label"] == "1"]), abs=1e-4
    )
    for fold in range(5):
        assert len(list((fold_folder(out, fold) / "validation" / "probabilities").glob("*.npz"))) == 1
    assert set(json.loads((out / "postprocessing.json").read_text())["classes"]) == {"1", "2"}
    image, _ = sphere_case(shape=(16, 16, 8), seed=2)
    mask = Segmenter(out)(image)
    assert mask.spatial_shape == image.spatial_shape and mask.affine.allclose(image.affine, atol=0)


def test_folds_share_the_budget_left_after_the_folds_done_and_their_measured_overhead():
    from segmorph.folds import fold_budget

    record = {"time_budget_s": 1000.0, "budget_per_fold": False, "folds": [0, 1, 2, 3], "fold_states": {}}
    assert fold_budget(record, 0) == pytest.approx(250 - 25)  # a tenth of a share kept for planning and validation
    record["fold_states"] = {"0": {"state": "done", "wall_s": 300.0, "fit_s": 240.0},
                             "1": {"state": "done", "wall_s": 200.0, "fit_s": 180.0}}  # fmt: skip
    assert fold_budget(record, 2) == pytest.approx((1000 - 500) / 2 - 20)
    assert fold_budget({**record, "budget_per_fold": True}, 2) == 1000.0
    assert fold_budget({**record, "time_budget_s": 0.0}, 2) == 0.0


def test_folds_trained_on_resume_keep_the_runs_configuration(tmp_path, one_thread, capsys):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=4, shape=(16, 16, 8))
    out = tmp_path / "cv"
    cross_validate(dataset, out, folds="0", num_folds=2, max_steps=1, overrides=TINY, network_dims=2,
                   show_progress=False, check=False)  # fmt: skip
    cross_validate(dataset, out, folds="all", num_folds=2, max_steps=1, overrides={"train.batch_size": 3},
                   resume=True, show_progress=False, check=False)  # fmt: skip
    assert "keeps the run's configuration" in capsys.readouterr().err
    plans = [json.loads((fold_folder(out, k) / "plan.json").read_text()) for k in (0, 1)]
    assert plans[0]["slice_axis"] == plans[1]["slice_axis"] is not None
    assert plans[0]["network"] == plans[1]["network"] and plans[1]["train"]["batch_size"] == TINY["train.batch_size"]
