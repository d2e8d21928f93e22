"""Tampered cross-validation records (``crossval.json``, ``postprocessing.json``) are refused in one line naming the
file, before anything is predicted or written."""

from __future__ import annotations

import json

import pytest

from ensemble_helpers import copy_as_cross_validation
from helpers import sphere_case
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.folds import MAX_FOLDS, read_crossval_record
from segmorph.io import write_image
from segmorph.segmentation.crossval_layout import CROSSVAL_FILE, POSTPROCESSING_FILE
from segmorph.segmentation.postprocess_choice import check_decision

GOOD_DECISION = {"classes": {"1": {"name": "outer", "method": "min_size", "min_voxels": 5, "dice_before": 0.8,
                                   "dice_after": 0.81, "candidates": {"none": 0.8, "min_size:5": 0.81}}}}  # fmt: skip


def _record(**changes) -> dict:
    states = {str(k): {"state": "done", "wall_s": 1.0, "fit_s": 1.0} for k in range(3)}
    return {"task": "segmentation", "num_folds": 3, "seed": 0, "folds": [0, 1, 2], "time_budget_s": 60.0,
            "fold_states": states, **changes}  # fmt: skip


def _write(tmp_path, record) -> object:
    path = tmp_path / CROSSVAL_FILE
    path.write_text(json.dumps(record))
    return path


def test_a_well_formed_record_is_read_as_written(tmp_path):
    assert read_crossval_record(_write(tmp_path, _record()), "segmentation") == _record()
    without_task = {k: v for k, v in _record().items() if k != "task"}
    assert read_crossval_record(_write(tmp_path, without_task), "segmentation")["folds"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"folds": None}, "folds: expected distinct fold numbers in 0..2"),
        ({"folds": [0, 0, 1]}, "folds: expected distinct"),
        ({"folds": ["../x", 1]}, "folds: expected distinct"),
        ({"folds": [1.5]}, "folds: expected distinct"),
        ({"folds": [True]}, "folds: expected distinct"),
        ({"folds": [3]}, "folds: expected distinct"),
        ({"num_folds": 10**15}, f"num_folds: expected a whole number in 2..{MAX_FOLDS}"),
        ({"num_folds": "5"}, "num_folds"),
        ({"fold_states": []}, "fold_states: expected an object"),
        ({"fold_states": {"7": {"state": "done", "wall_s": 1, "fit_s": 1}}}, "fold_states: '7'"),
        ({"fold_states": {"0": {"state": 1}}}, "state must be a string"),
        ({"fold_states": {"0": {"state": "done", "wall_s": -1, "fit_s": 1}}}, "wall_s -1 is not seconds"),
        ({"time_budget_s": "1h"}, "time_budget_s"),
        ({"task": "classification"}, "'classification' cross-validation record"),
    ],
)
def test_a_tampered_record_is_refused_naming_the_field(tmp_path, changes, words):
    path = _write(tmp_path, _record(**changes))
    with pytest.raises(SegmorphError, match="crossval.json") as caught:
        read_crossval_record(path, "segmentation")
    assert words in str(caught.value)


def test_a_non_finite_time_in_a_record_is_refused(tmp_path):
    path = tmp_path / CROSSVAL_FILE
    path.write_text(json.dumps(_record()).replace('"wall_s": 1.0', '"wall_s": NaN', 1))
    with pytest.raises(SegmorphError, match="wall_s nan is not seconds"):
        read_crossval_record(path, "segmentation")


def test_a_well_formed_decision_passes(tmp_path):
    assert check_decision(GOOD_DECISION, [0, 1, 2], tmp_path / POSTPROCESSING_FILE) == GOOD_DECISION


@pytest.mark.parametrize(
    ("decision", "words"),
    [
        ({"classes": []}, 'expected {"classes"'),
        ({}, 'expected {"classes"'),
        ({"classes": {"1": "largest"}}, "'1': expected an object with a method"),
        ({"classes": {"x": {"method": "none"}}}, "'x' is not a foreground label of the run (1, 2)"),
        ({"classes": {"0": {"method": "none"}}}, "'0' is not a foreground label"),
        ({"classes": {"9": {"method": "largest_component"}}}, "'9' is not a foreground label"),
        ({"classes": {"1": {"method": "bogus"}}}, "method 'bogus' is not one of none, largest_component, min_size"),
        ({"classes": {"1": {"method": "min_size", "min_voxels": -5}}}, "min_voxels -5 is not a whole number"),
        ({"classes": {"1": {"method": "min_size", "min_voxels": 2.5}}}, "min_voxels 2.5"),
        ({"classes": {"1": {"method": "none", "dice_before": "x"}}}, "dice_before 'x' is not a finite number"),
        ({"classes": {"1": {"method": "none", "candidates": {"none": None}}}}, "candidates 'none' None"),
        ({"classes": {"1": {"method": "none", "name": 3}}}, "name must be a string"),
    ],
)
def test_a_tampered_decision_is_refused_naming_the_class(tmp_path, decision, words):
    with pytest.raises(SegmorphError, match="postprocessing.json") as caught:
        check_decision(decision, [0, 1, 2], tmp_path / POSTPROCESSING_FILE)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("file", "content", "words"),
    [
        (POSTPROCESSING_FILE, {"classes": {"1": {"method": "min_size", "min_voxels": 1e300}}}, "min_voxels 1e+300"),
        (POSTPROCESSING_FILE, {"classes": []}, 'expected {"classes"'),
        (CROSSVAL_FILE, None, "folds: expected distinct fold numbers"),
    ],
)
def test_predict_with_a_tampered_run_fails_in_one_line_and_writes_nothing(
    trained_run, tmp_path, capsys, file, content, words
):
    run = copy_as_cross_validation(trained_run, tmp_path / "cv", 2)
    if content is None:
        record = json.loads((run / CROSSVAL_FILE).read_text())
        content = {**record, "folds": [0, 0]}
    (run / file).write_text(json.dumps(content))
    image, _ = sphere_case(seed=3)
    scan = write_image(image, tmp_path / "scan.nii.gz")
    out = tmp_path / "masks"
    assert main(["predict", str(run), str(scan), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run / file}: ") and words in err[0], err
    assert not out.exists()
