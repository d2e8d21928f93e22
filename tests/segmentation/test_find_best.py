"""find-best: runs and pairs of runs ranked on out-of-fold predictions, and predicting with the ensemble folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.segmentation.api import Segmenter, cross_validate
from segmorph.segmentation.crossval_layout import CROSSVAL_FILE, fold_folder
from segmorph.segmentation.ensemble import RunEnsemblePredictor, load_predictor
from segmorph.segmentation.find_best import ENSEMBLE_FILE, FIND_BEST_FILE, find_best
from segmorph.segmentation.pipeline import write_probabilities
from segmorph.segmentation.postprocess_choice import apply_postprocessing
from segmorph.segmentation.predict import most_likely_class

TINY = {"train.steps_per_epoch": 3, "network.features": [4, 8], "train.batch_size": 2}
SHAPE = (6, 6, 4)
CASES = [f"case_{i}" for i in range(4)]


def _reference() -> np.ndarray:
    """A 4 x 4 x 2 block of class 1 (32 voxels) in a (6, 6, 4) grid: halves x in 1..2 and x in 3..4."""
    reference = np.zeros(SHAPE, dtype=np.uint8)
    reference[1:5, 1:5, 1:3] = 1
    return reference


def _probabilities(*foreground: tuple[tuple[slice, ...], float], rest: float = 0.1) -> np.ndarray:
    """Two-class probabilities (2, *SHAPE): the foreground probability ``rest`` but in the (region, value) pairs."""
    fg = np.full(SHAPE, rest, dtype=np.float32)
    for region, value in foreground:
        fg[region] = value
    return np.stack([1 - fg, fg])


FIRST_HALF = (slice(1, 3), slice(1, 5), slice(1, 3))
SECOND_HALF = (slice(3, 5), slice(1, 5), slice(1, 3))
BLOCK = (slice(1, 5), slice(1, 5), slice(1, 3))
AROUND = (slice(0, 6), slice(0, 6), slice(0, 4))


def _fake_run(folder: Path, probabilities: np.ndarray, cases=CASES, folds: int = 2) -> Path:
    """A cross-validation run as find-best reads it: every case's out-of-fold probabilities and reference,
    the cases dealt to ``folds`` folds in turn (of a split of at least 2 folds)."""
    record = {"num_folds": max(folds, 2), "seed": 0, "folds": list(range(folds)),
              "fold_states": {str(k): {"state": "done"} for k in range(folds)}}  # fmt: skip
    folder.mkdir(parents=True)
    (folder / CROSSVAL_FILE).write_text(json.dumps(record))
    for fold in range(folds):
        validation = fold_folder(folder, fold) / "validation"
        (validation / "reference").mkdir(parents=True)
        (fold_folder(folder, fold) / "plan.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion"}}))
    for index, case in enumerate(cases):
        validation = fold_folder(folder, index % folds) / "validation"
        write_probabilities(torch.from_numpy(probabilities), validation / "probabilities" / f"{case}.npz")
        write_image(Image(torch.from_numpy(_reference()[None]), Affine.identity(3), is_label=True),
                    validation / "reference" / f"{case}.nii.gz")  # fmt: skip
    return folder


def test_a_pair_whose_mean_fixes_each_runs_errors_is_chosen(tmp_path, capsys):
    # each run finds one half of the block (0.9) and misses the other (0.4); their mean, 0.65, finds both
    a = _fake_run(tmp_path / "a", _probabilities((FIRST_HALF, 0.9), (SECOND_HALF, 0.4)))
    b = _fake_run(tmp_path / "b", _probabilities((FIRST_HALF, 0.4), (SECOND_HALF, 0.9)))
    record = find_best([a, b], tmp_path / "best", show=False)
    dice = {c["name"]: c["dice"]["1"] for c in record["candidates"]}
    assert dice == {"a + b": 1.0, "a": pytest.approx(2 / 3, abs=1e-5), "b": pytest.approx(2 / 3, abs=1e-5)}
    assert record["candidates"][0]["name"] == "a + b" and record["cases"] == 4
    assert record["choice"]["members"] == [str(a.resolve()), str(b.resolve())]
    assert "above the best single run" in record["choice"]["reason"]
    assert json.loads((tmp_path / "best" / ENSEMBLE_FILE).read_text()) == {"members": record["choice"]["members"]}
    assert json.loads((tmp_path / "best" / FIND_BEST_FILE).read_text()) == record
    decision = json.loads((tmp_path / "best" / "postprocessing.json").read_text())
    assert decision["cases"] == 4 and decision["classes"]["1"]["dice_before"] == 1.0
    assert main(["find-best", str(a), str(b), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("chose a + b (out-of-fold mean Dice 1.0000)")


def test_a_pair_that_does_not_beat_the_best_single_run_is_never_chosen(tmp_path):
    good = _fake_run(tmp_path / "good", _probabilities((BLOCK, 0.9)))
    twin = _fake_run(tmp_path / "twin", _probabilities((BLOCK, 0.9)))
    # confident everywhere around the block: its mean with either run spills over the block's edges
    wide = _fake_run(tmp_path / "wide", _probabilities((AROUND, 0.95)))
    record = find_best([wide, twin, good], tmp_path / "best", show=False)
    by_name = {c["name"]: c["mean_dice"] for c in record["candidates"]}
    assert by_name["good"] == 1.0 and by_name["twin + good"] == 1.0  # a tie: the pair does not beat the single run
    assert by_name["wide + good"] == by_name["wide"] == pytest.approx(2 * 32 / (6 * 6 * 4 + 32), abs=1e-5)
    assert record["choice"]["name"] == "good" and record["choice"]["members"] == [str(good.resolve())]
    assert "does not beat it" in record["choice"]["reason"]
    assert json.loads((tmp_path / "best" / ENSEMBLE_FILE).read_text())["members"] == [str(good.resolve())]


def test_runs_that_do_not_score_every_case_out_of_fold_are_refused_in_one_line(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", _probabilities((BLOCK, 0.9)))
    b = _fake_run(tmp_path / "b", _probabilities((BLOCK, 0.9)), cases=CASES[:1], folds=1)
    with pytest.raises(SegmorphError, match=r"3 of 4 cases not scored out of fold \(case_1, case_2, case_3\)") as err:
        find_best([a, b], tmp_path / "best", show=False)
    assert err.value.path == str(b)
    assert not (tmp_path / "best").exists()
    assert main(["find-best", str(a), str(b), "--out", str(tmp_path / "best")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {b}: 3 of 4 cases not scored out of fold (case_1, case_2, case_3); every run must hold every "
        "case out of fold (train all its folds)"
    ]  # fmt: skip


def test_find_best_refuses_what_it_cannot_compare(tmp_path):
    a = _fake_run(tmp_path / "a", _probabilities((BLOCK, 0.9)))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SegmorphError, match="at least two"):
        find_best([a], tmp_path / "best")
    with pytest.raises(SegmorphError, match="given twice"):
        find_best([a, tmp_path / "." / "a"], tmp_path / "best")
    with pytest.raises(SegmorphError, match="not a cross-validation run") as err:
        find_best([a, plain], tmp_path / "best")
    assert err.value.path == str(plain)
    with pytest.raises(SegmorphError, match="holds a run"):
        find_best([a, plain], a)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny cross-validation runs of one dataset with different seeds (so different splits and weights)."""
    root = tmp_path_factory.mktemp("find_best")
    dataset = write_msd_dataset(root / "data", num_cases=5, shape=(16, 16, 8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = tuple(cross_validate(dataset, root / f"cv_{seed}", num_folds=5, max_steps=2, overrides=TINY,
                                    show_progress=False, check=False, seed=seed).out for seed in (0, 1))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return runs


def test_find_best_on_cross_validation_runs_scores_each_run_as_its_out_of_fold_summary(two_runs, tmp_path):
    record = find_best(two_runs, tmp_path / "best", show=False)
    assert record["cases"] == 5 and len(record["candidates"]) == 3
    for run in two_runs:
        summary = json.loads((run / "cross_validation.json").read_text())
        single = next(c for c in record["candidates"] if c["members"] == [str(run.resolve())])
        for value, stats in summary["classes"].items():
            assert single["dice"][value] == pytest.approx(stats["dice_out_of_fold"], abs=1e-3)
    assert isinstance(load_predictor(tmp_path / "best"), RunEnsemblePredictor)


def test_predicting_with_an_ensemble_folder_averages_its_members_probabilities(two_runs, tmp_path):
    folder = tmp_path / "ensemble"
    folder.mkdir()
    # one member by absolute path, one relative to the folder
    members = [str(two_runs[0].resolve()), os.path.relpath(two_runs[1], folder)]
    (folder / ENSEMBLE_FILE).write_text(json.dumps({"members": members}))
    decision = {"classes": {"1": {"name": "outer", "method": "largest_component", "min_voxels": 0},
                            "2": {"name": "core", "method": "none", "min_voxels": 0}}, "cases": 5}  # fmt: skip
    (folder / "postprocessing.json").write_text(json.dumps(decision))
    image, _ = sphere_case(shape=(16, 16, 8), seed=2)
    first = Segmenter(two_runs[0], postprocess="none").probabilities(image).data
    second = Segmenter(two_runs[1], postprocess="none").probabilities(image).data
    assert not torch.allclose(first, second)
    ensemble = Segmenter(folder)
    assert torch.allclose(ensemble.probabilities(image).data, (first + second) / 2, atol=1e-6)
    expected = apply_postprocessing(most_likely_class((first + second) / 2), decision)
    assert np.array_equal(ensemble(image).numpy()[0], expected)
    scan = tmp_path / "scan.nii.gz"
    write_image(image, scan)
    assert main(["predict", str(folder), str(scan), "--out", str(tmp_path / "masks"), "--quiet"]) == 0
    assert np.array_equal(read_image(tmp_path / "masks" / "scan.nii.gz", is_label=True).numpy()[0], expected)
    with pytest.raises(SegmorphError, match="folds"):
        Segmenter(folder, folds=[0])
