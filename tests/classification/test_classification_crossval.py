"""Classification cross-validation: grouped folds and hold-out, out-of-fold threshold, resuming, fold ensembles,
the final model, the command line and the report."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.classification.api import Classifier, cross_validate_classifier
from segmorph.classification.crossval_layout import CROSSVAL_FILE, OUT_OF_FOLD_JSON, TASK, fold_folder
from segmorph.classification.ensemble import load_run_classifier, out_of_fold_threshold
from segmorph.classification.pipeline import train_classifier
from segmorph.classification.predict import predict_classifier
from segmorph.classification.request import ClassifyRequest, load_classification_dataset, set_aside, split_dataset
from segmorph.cli.classification import add_classify_arguments, run_classify
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.metrics.classification import choose_threshold
from segmorph.nn.classifiers import Ensemble

TINY = {"model.name": "simplecnn", "model.width": 4, "train.batch_size": 8, "train.steps_per_epoch": 2,
        "train.amp": False}  # fmt: skip


def _write_dataset(root: Path, count: int = 40, size: int = 24) -> Path:
    """``count`` pictures, two per group (``patient``); class 1 holds a bright disc. Returns the labels CSV."""
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rows = []
    for index in range(count):
        label = (index // 2) % 2
        picture = rng.normal(60, 15, (size, size))
        if label:
            ci, cj = rng.integers(7, size - 7, 2)
            picture[(ii - ci) ** 2 + (jj - cj) ** 2 <= 16] += 120
        name = f"img_{index:02d}.png"
        array = np.clip(picture, 0, 255).astype(np.uint8)[None]
        write_image(Image(torch.from_numpy(array), Affine.identity(2)), root / name)
        rows.append((name, label, f"p{index // 2}"))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "lesion", "patient"))
        writer.writerows(rows)
    return root / "labels.csv"


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    _write_dataset(root)
    return root


def _cv(dataset: Path, out: Path, **kwargs):
    settings = {"labels": "labels.csv", "target": "lesion", "group": "patient", "num_folds": 3, "max_steps": 2,
                "overrides": TINY, "show_progress": False, "check": False, **kwargs}  # fmt: skip
    return cross_validate_classifier(dataset, out, **settings)


def _run_record(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def test_folds_are_disjoint_grouped_and_cover_every_image_not_held_out(dataset):
    request = ClassifyRequest(dataset, dataset.parent / "run", labels=Path("labels.csv"), target="lesion",
                              group="patient", num_folds=3, holdout_groups=0.2, split_seed=4)  # fmt: skip
    data = load_classification_dataset(request)
    development, held_out = set_aside(data, request)
    assert sorted(development + held_out) == list(range(len(data.items))) and held_out
    held_groups = {data.groups[i] for i in held_out}
    assert not held_groups & {data.groups[i] for i in development}
    assert {data.labels[i] for i in held_out} == {0, 1}  # stratified: both classes held out
    folds = []
    for fold in range(3):
        train, val = split_dataset(data, replace(request, fold=fold))
        assert not set(train) & set(val) and sorted(train + val) == development
        folds.append(val)
    assert sorted(i for val in folds for i in val) == development  # every image validated exactly once
    groups = [{data.groups[i] for i in val} for val in folds]
    assert all(not groups[a] & groups[b] for a in range(3) for b in range(a + 1, 3))  # no group in two folds
    assert set_aside(data, replace(request, holdout_groups=0.0)) == (list(range(len(data.items))), [])
    assert split_dataset(data, replace(request, validate=False)) == (development, [])


def test_cross_validation_scores_out_of_fold_resumes_only_the_rest_and_scores_the_holdout(dataset, tmp_path,
                                                                                          one_thread):  # fmt: skip
    out = tmp_path / "cv"
    first = _cv(dataset, out, folds="0,1", holdout_groups=0.2)
    assert first.folds == (0, 1) and first.final is None
    stamps = {k: (fold_folder(out, k) / "classifier.pt").stat().st_mtime_ns for k in (0, 1)}
    with pytest.raises(SegmorphError, match="--resume"):
        _cv(dataset, out, folds="all", holdout_groups=0.2)
    with pytest.raises(SegmorphError, match="split"):
        _cv(dataset, out, folds="all", holdout_groups=0.3, resume=True)
    result = _cv(dataset, out, folds="all", holdout_groups=0.2, resume=True)
    assert result.folds == (0, 1, 2)
    assert {k: (fold_folder(out, k) / "classifier.pt").stat().st_mtime_ns for k in (0, 1)} == stamps  # not retrained

    record = json.loads((out / CROSSVAL_FILE).read_text())
    held = set(record["holdout"]["images"])
    assert record["task"] == TASK and held and all(s["state"] == "done" for s in record["fold_states"].values())
    for fold in range(3):
        split = _run_record(fold_folder(out, fold))["split"]
        assert not held & (set(split["train"]) | set(split["val"])) and set(split["set_aside"]) == held
    with (out / "cross_validation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    names = sorted(r["image"] for r in rows)
    assert len(names) == len(set(names)) == 40 - len(held) and not held & set(names)  # each image once, none held out
    assert result.images == len(rows) and {r["fold"] for r in rows} == {"0", "1", "2"}
    # the threshold: Youden's J on the pooled out-of-fold probabilities, and nothing else
    pooled = choose_threshold([float(r["p_1"]) for r in rows], [int(r["true"]) for r in rows])
    summary = json.loads((out / OUT_OF_FOLD_JSON).read_text())
    assert result.threshold == summary["threshold"] == pytest.approx(pooled, abs=1e-6)
    assert all(r["predicted"] == ("1" if float(r["p_1"]) >= summary["threshold"] else "0") for r in rows)
    assert set(summary["per_fold"]) == {"0", "1", "2"} and summary["fold_auc_mean"] is not None
    holdout = summary["holdout"]
    assert holdout["images"] == len(held) and holdout["ensemble"]["folds"] == [0, 1, 2]
    assert np.sum(holdout["ensemble"]["confusion_matrix"]) == len(held) and "final" not in holdout
    assert result.holdout == holdout and (out / "holdout_predictions.csv").is_file()
    classifier = Classifier(out)
    assert classifier.threshold == pytest.approx(pooled, abs=1e-6) and classifier.description.startswith("the ensemble")

    # an interrupted fold resumes from its checkpoint; the final model trains after the folds
    record["fold_states"]["1"]["state"] = "training"
    (out / CROSSVAL_FILE).write_text(json.dumps(record))
    stamp = (fold_folder(out, 0) / "classifier.pt").stat().st_mtime_ns
    result = _cv(dataset, out, folds="all", holdout_groups=0.2, resume=True, final=True)
    assert len(_run_record(fold_folder(out, 1))["resumes"]) == 1
    assert (fold_folder(out, 0) / "classifier.pt").stat().st_mtime_ns == stamp
    assert result.final == out / "final" and set(result.holdout) == {"images", "ensemble", "final"}
    final_split = _run_record(out / "final")["split"]
    assert not final_split["val"] and sorted(final_split["train"]) == names
    assert json.loads((out / "final" / "summary.json").read_text())["threshold"] == pytest.approx(pooled, abs=1e-6)
    assert Classifier(out).description.startswith("the final model")
    assert Classifier(out, use="ensemble").description == "the ensemble of folds 0, 1, 2"
    from segmorph.report import build_report

    page = build_report(out, tmp_path / "report.html").read_text()
    assert "final model" in page and "out-of-fold images" in page


def _as_cross_validation(run: Path, out: Path, folds: int, threshold: float) -> Path:
    """A cross-validation run folder whose folds are copies of one run."""
    for fold in range(folds):
        shutil.copytree(run, fold_folder(out, fold))
    states = {str(k): {"state": "done", "wall_s": 1.0, "fit_s": 1.0} for k in range(folds)}
    record = {"task": TASK, "num_folds": folds, "split_seed": 0, "holdout_groups": 0.0, "folds": list(range(folds)),
              "time_budget_s": 0, "budget_per_fold": False, "max_steps": 2, "final": False, "fold_states": states,
              "holdout": {"share": 0.0, "images": []}, "final_state": {}}  # fmt: skip
    (out / CROSSVAL_FILE).write_text(json.dumps(record))
    (out / OUT_OF_FOLD_JSON).write_text(json.dumps({"threshold": threshold}))
    return out


@pytest.fixture
def single_run(dataset, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    request = ClassifyRequest(dataset, out, labels=Path("labels.csv"), target="lesion", group="patient",
                              model="simplecnn", width=4, batch_size=8, max_steps=2, time_budget_s=0,
                              steps_per_epoch=2, amp=False, show_progress=False, check=False)  # fmt: skip
    train_classifier(request)
    return out


def test_the_ensemble_of_identical_members_equals_one_model(single_run, dataset, tmp_path):
    run = _as_cross_validation(single_run, tmp_path / "cv", 3, threshold=0.37)
    loaded = load_run_classifier(run)
    assert loaded.kind == "ensemble" and loaded.folds == (0, 1, 2) and isinstance(loaded.model, Ensemble)
    image = read_image(dataset / "img_02.png")
    single, ensemble = Classifier(single_run), Classifier(run)
    assert np.allclose(ensemble(image), single(image), atol=1e-6)
    assert ensemble.threshold == 0.37 and single.threshold != 0.37  # the run's out-of-fold threshold, not a fold's
    rows = predict_classifier(run, [dataset / "img_02.png"], show_progress=False)
    assert rows[0]["p_1"] == pytest.approx(float(single(image)[1]), abs=1e-5)
    assert rows[0]["predicted"] == ("1" if rows[0]["p_1"] >= 0.37 else "0")
    assert Classifier(run, folds="0,2").description == "the ensemble of folds 0, 2"


def test_folds_that_are_ensembles_average_as_their_members_do(dataset, tmp_path, one_thread):
    request = ClassifyRequest(dataset, tmp_path / "members", labels=Path("labels.csv"), target="lesion",
                              group="patient", model="simplecnn", width=4, batch_size=8, max_steps=2, time_budget_s=0,
                              steps_per_epoch=1, amp=False, show_progress=False, check=False, ensemble=2)  # fmt: skip
    train_classifier(request)
    run = _as_cross_validation(request.out, tmp_path / "cv", 2, threshold=0.5)
    loaded = load_run_classifier(run)
    assert [m.config["name"] for m in loaded.model.members] == ["ensemble", "ensemble"]  # folds of 2 members each
    image = read_image(dataset / "img_05.png")
    assert np.allclose(Classifier(run)(image), Classifier(request.out)(image), atol=1e-6)


def test_a_missing_fold_predicts_with_the_others_and_says_so_in_one_line(single_run, dataset, tmp_path, capsys):
    run = _as_cross_validation(single_run, tmp_path / "cv", 3, threshold=0.5)
    (fold_folder(run, 1) / "classifier.pt").unlink()
    capsys.readouterr()
    rows = predict_classifier(run, [dataset / "img_03.png"], show_progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["warning: fold 1 missing (no classifier.pt); predicting with folds 0, 2"]
    assert len(rows) == 1
    with pytest.raises(SegmorphError, match="single model"):
        load_run_classifier(single_run, folds=[0])
    with pytest.raises(SegmorphError, match="final"):
        load_run_classifier(run, use="final")
    (run / OUT_OF_FOLD_JSON).unlink()
    with pytest.raises(SegmorphError, match="out-of-fold threshold"):
        load_run_classifier(run)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmorph")
    add_classify_arguments(parser.add_subparsers(dest="verb"))
    return parser


def test_cli_cross_validation_options(dataset, tmp_path):
    parser = _parser()
    base = ["classify", "train", str(dataset), "--labels", "labels.csv", "--target", "lesion", "--out",
            str(tmp_path / "cv")]  # fmt: skip
    args = parser.parse_args([*base, "--folds", "0,2", "--num-folds", "3", "--holdout-groups", "0.2", "--final"])
    assert (args.folds, args.num_folds, args.holdout_groups, args.final) == ("0,2", 3, 0.2, True)
    for extra, message in ((["--final"], "only with --folds"), (["--holdout-groups", "0.2"], "only with --folds"),
                           (["--folds", "all", "--fold", "1"], "drop --fold"),
                           (["--folds", "7", "--num-folds", "3"], "folds")):  # fmt: skip
        with pytest.raises(SegmorphError, match=message):
            run_classify(parser.parse_args([*base, *extra]))
    assert not (tmp_path / "cv").exists()  # refused before anything is written
    predict = parser.parse_args(["classify", "predict", "run", "x.png", "--out", "p.csv", "--folds", "0,1", "--use",
                                 "ensemble"])  # fmt: skip
    assert (predict.folds, predict.use) == ("0,1", "ensemble")


def test_report_of_a_cross_validation_run(single_run, tmp_path):
    from segmorph.report import build_report, detect_kind

    run = _as_cross_validation(single_run, tmp_path / "cv", 2, threshold=0.5)
    summary = {"task": TASK, "folds": [0, 1], "num_folds": 2, "images": 8, "class_names": ["0", "1"],
               "threshold": 0.5, "threshold_rule": "Youden's J on the pooled out-of-fold probabilities",
               "out_of_fold": {"n": 8, "auc": 0.75, "balanced_accuracy": 0.625, "confusion_matrix": [[3, 1], [2, 2]]},
               "per_fold": {"0": {"images": 4, "auc": 0.5, "balanced_accuracy": 0.5, "steps": 2, "elapsed_s": 1.0},
                            "1": {"images": 4, "auc": 1.0, "balanced_accuracy": 0.75, "steps": 2, "elapsed_s": 1.0}},
               "fold_auc_mean": 0.75, "fold_auc_std": 0.25,
               "holdout": {"images": 6, "ensemble": {"n": 6, "auc": 0.875, "balanced_accuracy": 0.8125,
                                                     "confusion_matrix": [[2, 0], [1, 3]], "folds": [0, 1]}}}  # fmt: skip
    (run / OUT_OF_FOLD_JSON).write_text(json.dumps(summary))
    assert detect_kind(run) == "classification"
    page = build_report(run, tmp_path / "report.html").read_text()
    for text in ("Classification cross-validation run", "Out-of-fold metrics", "pooled out of fold", "Hold-out",
                 "ensemble of folds 0, 1", "0.8125", "Most confidently wrong out-of-fold images"):  # fmt: skip
        assert text in page, text


@pytest.mark.parametrize("threshold", ["NaN", "1.5", "-0.1", "true", '"0.5"'])
def test_an_out_of_fold_threshold_that_is_not_a_probability_is_refused(tmp_path, threshold):
    (tmp_path / OUT_OF_FOLD_JSON).write_text(f'{{"threshold": {threshold}}}')
    with pytest.raises(SegmorphError, match="threshold: expected a probability from 0 to 1 or null"):
        out_of_fold_threshold(tmp_path)
    (tmp_path / OUT_OF_FOLD_JSON).write_text('{"threshold": 0.25}')
    assert out_of_fold_threshold(tmp_path) == 0.25
