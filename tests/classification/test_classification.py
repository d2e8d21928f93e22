"""Classification: grouped splits, metrics with known answers, models, data preparation, the train/predict job."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.classification.data import InputSpec, load_class_folders, load_labels_csv, prepare_image, to_original_grid
from segmorph.classification.pipeline import selected_weights, train_classifier
from segmorph.classification.predict import predict_classifier
from segmorph.classification.request import ClassifyRequest, load_classification_dataset, network_config, split_dataset
from segmorph.classification.split import grouped_fold_split, grouped_holdout_split, grouped_kfold
from segmorph.classification.task import (
    ClassificationTask,
    class_weights,
    mixup_weight,
    predict_probabilities,
    refresh_batch_norm,
    scoring_views,
    shift_zero_filled,
)
from segmorph.cli.classification import add_classify_arguments, run_classify, train_request, train_summary_line
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.metrics.classification import (
    balanced_accuracy,
    choose_threshold,
    classification_report,
    confusion_matrix,
    macro_auc,
    roc_auc,
    roc_curve,
)
from segmorph.nn.classifiers import ResNet, SimpleCNN, build_classifier


# -- splits ------------------------------------------------------------------------------------------------
def _grouped_labels(seed: int = 0) -> tuple[list[int], list[str]]:
    """About 120 images in 50 groups of 1-4, 80% of groups class 1; one group mixes both classes."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for group in range(50):
        label = int(rng.random() < 0.8)
        for _ in range(rng.integers(1, 5)):
            labels.append(label)
            groups.append(f"g{group}")
    labels[0] = 1 - labels[0]
    return labels, groups


def _groups_of(indices, groups):
    return {groups[i] for i in indices}


def test_holdout_split_keeps_groups_whole_and_class_ratios():
    labels, groups = _grouped_labels()
    train, val = grouped_holdout_split(labels, groups, val_fraction=0.2, seed=3)
    assert sorted(train + val) == list(range(len(labels)))
    assert not _groups_of(train, groups) & _groups_of(val, groups)
    labels_arr = np.asarray(labels)
    for k in (0, 1):
        share = np.isin(np.flatnonzero(labels_arr == k), val).mean()
        assert 0.15 <= share <= 0.45, (k, share)
    assert 0.2 <= len(val) / len(labels) <= 0.3
    assert grouped_holdout_split(labels, groups, 0.2, seed=3) == (train, val)
    assert grouped_holdout_split(labels, groups, 0.2, seed=4) != (train, val)


def test_kfold_folds_partition_the_images_by_group():
    labels, groups = _grouped_labels(1)
    folds = grouped_kfold(labels, groups, num_folds=4, seed=0)
    assert sorted(i for fold in folds for i in fold) == list(range(len(labels)))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not _groups_of(folds[a], groups) & _groups_of(folds[b], groups)
    positives = [int(np.sum(np.asarray(labels)[fold])) for fold in folds]
    assert max(positives) - min(positives) <= 4  # groups hold at most 4 images
    train, val = grouped_fold_split(labels, groups, fold=2, num_folds=4, seed=0)
    assert val == folds[2] and sorted(train + val) == list(range(len(labels)))
    assert grouped_kfold(labels, groups, 4, seed=0) == folds


def test_split_refuses_a_class_with_one_group():
    with pytest.raises(SegmorphError, match="'rare' has 1 group"):
        grouped_holdout_split([0, 0, 1, 1], ["a", "b", "c", "c"], class_names=["common", "rare"])


# -- metrics -----------------------------------------------------------------------------------------------
def test_auc_known_answers():
    labels = [0, 0, 0, 1, 1]
    assert roc_auc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 1.0
    assert roc_auc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 0.0
    assert roc_auc([0.5] * 5, labels) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.2, 0.8], [1, 0, 0, 1]) == pytest.approx(0.875)  # one tied pair counts 1/2
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))
    probabilities = np.eye(3)[[0, 1, 2, 2, 1]] * 0.8 + 0.1
    assert macro_auc(probabilities, [0, 1, 2, 2, 1]) == 1.0


def test_roc_curve_points_and_threshold_choice():
    scores, labels = [0.1, 0.2, 0.3, 0.6, 0.7], [0, 0, 0, 1, 1]
    fpr, tpr, thresholds = roc_curve(scores, labels)
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 0.5, 1, 1, 1, 1])
    assert thresholds[0] == np.inf
    assert choose_threshold(scores, labels) == pytest.approx(0.45)
    # J = 0.5 both for t in (0.6, 0.9] and (0.2, 0.4]: the higher range wins, its midpoint with 0.6
    assert choose_threshold([0.2, 0.9, 0.4, 0.6], [0, 1, 1, 0]) == pytest.approx(0.75)


def test_balanced_accuracy_and_report_on_imbalanced_counts():
    matrix = np.array([[90, 10], [5, 5]])
    assert balanced_accuracy(matrix) == pytest.approx((0.9 + 0.5) / 2)
    labels = np.array([0] * 100 + [1] * 10)
    predictions = np.array([0] * 90 + [1] * 10 + [0] * 5 + [1] * 5)
    assert confusion_matrix(labels, predictions, 2).tolist() == matrix.tolist()
    probabilities = np.stack([1 - predictions * 0.8, predictions * 0.8], 1)
    report = classification_report(probabilities, labels, threshold=0.5)
    assert report["balanced_accuracy"] == pytest.approx(0.7)
    assert report["accuracy"] == pytest.approx(95 / 110, abs=1e-5)
    assert report["precision"] == pytest.approx(5 / 15, abs=1e-5)
    assert report["recall"] == pytest.approx(0.5)
    assert report["specificity"] == pytest.approx(0.9)
    assert report["confusion_matrix"] == matrix.tolist()


def test_class_weights_balance_the_classes():
    weights = class_weights([0] * 8 + [1] * 2, 2)
    assert weights.tolist() == pytest.approx([10 / 16, 10 / 4])
    assert (weights * torch.tensor([8.0, 2.0])).tolist() == pytest.approx([5.0, 5.0])


# -- models ------------------------------------------------------------------------------------------------
def test_simple_cnn_takes_any_input_size_and_rebuilds_from_config():
    torch.manual_seed(0)
    model = SimpleCNN(2, 1, 3, (4, 8, 16)).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert model(torch.randn(1, 1, 48, 40)).shape == (1, 3)
    copy = build_classifier(json.loads(json.dumps(model.config)))
    copy.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 24, 24)
    assert torch.equal(copy.eval()(x), model(x))


def test_resnet_2d_and_3d_shapes():
    torch.manual_seed(0)
    assert ResNet(2, 1, 2, width=4).eval()(torch.randn(2, 1, 40, 36)).shape == (2, 2)
    assert ResNet(3, 2, 2, width=4, blocks=(1, 1, 1, 1)).eval()(torch.randn(1, 2, 16, 16, 12)).shape == (1, 2)
    with pytest.raises(ValueError, match="classifier name"):
        build_classifier({"name": "vgg"})


# -- data --------------------------------------------------------------------------------------------------
def test_prepare_image_keeps_aspect_ratio_and_normalises():
    data = torch.zeros(3, 40, 20)  # RGB, I twice as long as J
    data[:, 10:30, 5:15] = 200.0
    prepared, placement = prepare_image(Image(data, Affine.identity(2)), InputSpec((16, 16), channels=1))
    assert prepared.shape == (1, 16, 16)
    assert placement.shape == (16, 8) and placement.start == (0, 4)
    content = prepared[0, :, 4:12]
    assert content.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert content.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    assert torch.all(prepared[0, :, :4] == content.min())  # padding takes the darkest value
    assert to_original_grid(prepared[0], placement).shape == (40, 20)
    with pytest.raises(SegmorphError, match="expected a 3D image"):
        prepare_image(Image(data, Affine.identity(2)), InputSpec((8, 8, 8)), path="x.png")


def _write_pictures(root: Path, count: int = 24, size: int = 32) -> list[tuple[str, int, str]]:
    """Class 1 pictures hold a bright disc; rows (file, label, group), two images per group."""
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rows = []
    for index in range(count):
        label = index % 2
        picture = rng.normal(60, 15, (size, size))
        if label:
            ci, cj = rng.integers(8, size - 8, 2)
            picture[(ii - ci) ** 2 + (jj - cj) ** 2 <= 20] += 120
        name = f"{'lesion' if label else 'normal'}/img_{index:02d}.png"
        array = np.clip(picture, 0, 255).astype(np.uint8)[None]
        write_image(Image(torch.from_numpy(array), Affine.identity(2)), root / name)
        rows.append((name, label, f"p{index // 4}_{label}"))
    return rows


def _write_csv(path: Path, rows, header=("file", "lesion", "patient")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_split_seed_fixes_the_split_whatever_the_training_seed(tmp_path):
    rows = _write_pictures(tmp_path, count=24)
    labels_csv = _write_csv(tmp_path / "labels.csv", rows)
    request = ClassifyRequest(tmp_path, tmp_path / "run", labels=labels_csv, target="lesion", group="patient")
    dataset = load_classification_dataset(request)
    expected = grouped_holdout_split(dataset.labels, dataset.groups, 0.2, 5, dataset.class_names)
    assert split_dataset(dataset, replace(request, seed=0, split_seed=5)) == expected
    assert split_dataset(dataset, replace(request, seed=9, split_seed=5)) == expected
    assert split_dataset(dataset, replace(request, seed=5)) == expected  # no split seed: the seed splits
    assert split_dataset(dataset, replace(request, seed=9)) != expected
    folds = replace(request, fold=1, num_folds=3, seed=2, split_seed=7)
    assert split_dataset(dataset, folds) == grouped_fold_split(
        dataset.labels, dataset.groups, 1, 3, 7, dataset.class_names
    )


def test_labels_csv_errors_name_the_file_and_column(tmp_path):
    rows = _write_pictures(tmp_path, count=4)
    good = _write_csv(tmp_path / "labels.csv", rows)
    dataset = load_labels_csv(tmp_path, good, target="lesion", group="patient")
    assert dataset.class_names == ("0", "1") and dataset.labels == [0, 1, 0, 1]
    with pytest.raises(SegmorphError, match="no target column 'diagnosis'") as err:
        load_labels_csv(tmp_path, good, target="diagnosis")
    assert err.value.path == str(good)
    missing = _write_csv(tmp_path / "missing.csv", rows + [("normal/gone.png", 0, "p9")])
    with pytest.raises(SegmorphError, match="row 6 does not exist") as err:
        load_labels_csv(tmp_path, missing, target="lesion")
    assert err.value.path.endswith("gone.png")
    with pytest.raises(SegmorphError, match="unknown class '1'"):
        load_labels_csv(tmp_path, good, target="lesion", class_names=["0"])


def test_class_folders(tmp_path):
    _write_pictures(tmp_path, count=4)
    dataset = load_class_folders(tmp_path)
    assert dataset.class_names == ("lesion", "normal")
    assert dataset.class_counts() == {"lesion": 2, "normal": 2}


def test_task_batch_loss_and_validation_auc():
    torch.manual_seed(0)
    images, labels = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    task = ClassificationTask(images, labels, images, labels, ["0", "1"], batch_size=4)
    loss = task.batch_loss(SimpleCNN(2, 1, 2, (4, 8)), torch.Generator().manual_seed(0), torch.device("cpu"), False)
    assert loss.ndim == 0 and torch.isfinite(loss)
    scores = task.validate(SimpleCNN(2, 1, 2, (4, 8)), torch.device("cpu"))
    assert task.score_key == "auc" and len(scores) == 1 and 0.0 <= scores[0] <= 1.0


def test_mixup_blends_images_and_losses_reproducibly():
    images, labels = torch.randn(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    model = SimpleCNN(2, 1, 2, (4, 8))
    task = ClassificationTask(images, labels, images, labels, ["0", "1"], batch_size=4, mixup=0.4, label_smoothing=0.1)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)  # the model's dropout draws from the global generator
        losses.append(task.batch_loss(model, torch.Generator().manual_seed(5), torch.device("cpu"), False))
    assert torch.equal(losses[0], losses[1]) and torch.isfinite(losses[0])
    weights = [mixup_weight(0.4, torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(0.0 <= w <= 1.0 for w in weights) and abs(float(np.mean(weights)) - 0.5) < 0.07  # Beta(a, a): mean 1/2
    assert mixup_weight(0.4, torch.Generator().manual_seed(3)) == mixup_weight(0.4, torch.Generator().manual_seed(3))


def test_mirrored_probabilities_average_the_image_and_its_mirror():
    torch.manual_seed(1)
    model = SimpleCNN(2, 1, 2, (4, 8)).eval()
    images = torch.randn(3, 1, 16, 12)
    plain = predict_probabilities(model, images)
    mirrored = predict_probabilities(model, images.flip(2))
    both = predict_probabilities(model, images, mirror=True)
    assert torch.allclose(both, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # the test model is not mirror-symmetric


def test_shifted_views_known_answer_and_their_average():
    image = torch.arange(12.0).view(1, 1, 3, 4)
    assert torch.equal(shift_zero_filled(image, 3, 1)[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert torch.equal(
        shift_zero_filled(image, 2, -1)[0, 0], torch.tensor([[4.0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 0]])
    )
    assert torch.equal(shift_zero_filled(image, 2, 5), torch.zeros_like(image))
    views = scoring_views(image, mirror=True, shift=0.25)  # 3 x 4 voxels: 1 voxel either way along both axes
    assert len(views) == 6 and torch.equal(views[1], image.flip(2))
    assert torch.equal(views[4], shift_zero_filled(image, 3, 1)) and torch.equal(
        views[5], shift_zero_filled(image, 3, -1)
    )
    assert len(scoring_views(image)) == 1 and len(scoring_views(image, shift=0.01)) == 5  # at least one voxel
    torch.manual_seed(1)
    model = SimpleCNN(2, 1, 2, (4, 8)).eval()
    images = torch.randn(3, 1, 16, 12)
    expected = torch.stack([predict_probabilities(model, v) for v in scoring_views(images, True, 0.1)]).mean(0)
    assert torch.allclose(predict_probabilities(model, images, mirror=True, shift=0.1), expected, atol=1e-6)


# -- the job -----------------------------------------------------------------------------------------------
def test_train_and_predict_write_the_run_folder(tmp_path, one_thread):
    data = tmp_path / "data"
    data.mkdir()
    pictures = _write_pictures(data)
    _write_csv(data / "labels.csv", pictures)
    request = ClassifyRequest(
        dataset=data, out=tmp_path / "run", labels=Path("labels.csv"), target="lesion", group="patient",
        model="simplecnn", width=4, batch_size=8, max_steps=8, time_budget_s=0, steps_per_epoch=4, val_fraction=0.25,
        amp=False, show_progress=False,
    )  # fmt: skip
    summary = train_classifier(request)
    run = tmp_path / "run"
    expected = {"run.json", "summary.json", "classifier.pt", "checkpoint_best.pt", "train_log.csv", "curves.png",
                "roc.png", "confusion.png", "val_predictions.csv"}  # fmt: skip
    assert expected <= {p.name for p in run.iterdir()}
    assert summary["fit"]["steps"] == 8 and summary["class_names"] == ["0", "1"]
    assert summary["fit"]["precision"] == "float32"  # amp=False
    assert 0.0 <= summary["threshold"] <= 1.0 and 0.0 <= summary["validation"]["auc"] <= 1.0
    provenance = json.loads((run / "run.json").read_text())
    group_of = {name: group for name, _, group in pictures}
    train_groups = {group_of[name] for name in provenance["split"]["train"]}
    assert len(provenance["split"]["val"]) >= 6 and provenance["seed"] == 0
    val_rows = list(csv.DictReader((run / "val_predictions.csv").open()))
    assert len(val_rows) == summary["val_images"] == len(provenance["split"]["val"])
    assert not {r["group"] for r in val_rows} & train_groups
    assert provenance["data_fingerprint"]["files"] == len(pictures) + 1  # every image and the labels CSV
    train_classifier(replace(request, max_steps=12, resume=True))
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["split"] == provenance["split"] and len(resumed["resumes"]) == 1

    images = sorted((data / "lesion").glob("*.png"))[:2]
    rows = predict_classifier(run, images, tmp_path / "pred.csv", cam_dir=tmp_path / "cams", show_progress=False)
    assert [Path(r["file"]).name for r in rows] == [p.name for p in images]
    assert all(r["p_0"] + r["p_1"] == pytest.approx(1.0, abs=1e-5) for r in rows)
    assert all(r["predicted"] == ("1" if r["p_1"] >= summary["threshold"] else "0") for r in rows)
    assert len(list(csv.DictReader((tmp_path / "pred.csv").open()))) == 2
    assert all(Path(r["cam"]).is_file() for r in rows)


def test_kept_weights_follow_select_tail_and_batch_norm_refresh(tmp_path, one_thread):
    data = tmp_path / "data"
    data.mkdir()
    _write_csv(data / "labels.csv", _write_pictures(data))
    request = ClassifyRequest(
        dataset=data, out=tmp_path / "last", labels=Path("labels.csv"), target="lesion", group="patient",
        model="simplecnn", width=4, batch_size=8, max_steps=8, time_budget_s=0, steps_per_epoch=4, val_fraction=0.25,
        amp=False, show_progress=False,
    )  # fmt: skip
    assert (request.select, request.tail_average, request.refresh_batch_norm) == ("last", 0.5, True)
    runs = {"tail": request, "ema": replace(request, out=tmp_path / "ema", tail_average=0.0, refresh_batch_norm=False),
            "best": replace(request, out=tmp_path / "best", select="best", refresh_batch_norm=False)}  # fmt: skip
    for name, run in runs.items():
        summary = train_classifier(run)
        kept, config, _ = load_checkpoint(run.out / "classifier.pt")
        raw, _, extras = load_checkpoint(run.out / "checkpoint_last.pt")
        assert config["classifier"]["select"] == run.select and config["classifier"]["shift"] == request.shift
        assert summary["fit"]["steps"] == 8 and summary["kept_weights"].startswith(run.select)
        if name == "tail":  # the mean of epochs 1 and 2's averages: learned weights equal, batch-norm statistics new
            stats = [k for k in kept if "running" in k or "num_batches" in k]
            assert stats and all(torch.equal(kept[k], extras["tail"][k]) for k in kept if k not in stats)
            assert not all(torch.equal(kept[k], extras["tail"][k]) for k in stats)
            assert not all(torch.equal(kept[k], extras["ema"][k]) for k in kept if k not in stats)
            assert "batch norm re-estimated" in summary["kept_weights"]
        elif name == "ema":
            assert "tail" not in extras and all(torch.equal(kept[k], extras["ema"][k]) for k in kept)
            assert not all(torch.equal(kept[k], raw[k]) for k in kept)
        else:
            best, _, _ = load_checkpoint(run.out / "checkpoint_best.pt")
            assert all(torch.equal(kept[k], best[k]) for k in kept)
    bad_requests = ((replace(request, select="worst"), "select"), (replace(request, shift=0.6), "shift"),
                    (replace(request, tail_average=2.0), "tail average"))  # fmt: skip
    for bad, word in bad_requests:
        with pytest.raises(SegmorphError, match=word):
            train_classifier(replace(bad, out=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    with pytest.raises(SegmorphError, match="select"):
        selected_weights(request.out, "middle")


def test_refresh_batch_norm_known_answer():
    generator = torch.Generator().manual_seed(0)
    images = 3.0 + 2.0 * torch.randn(8, 1, 6, 5, generator=generator)
    norm = torch.nn.BatchNorm2d(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), norm)
    torch.nn.init.constant_(model[0].weight, 0.5)
    norm.running_mean.fill_(-7.0)
    norm.momentum = 0.3
    model.eval()
    assert refresh_batch_norm(model, images, batch_size=8, mirror=True)
    halves = 0.5 * images
    assert norm.running_mean.item() == pytest.approx(halves.mean().item(), abs=1e-5)  # a mirror has the same moments
    assert norm.running_var.item() == pytest.approx(halves.var().item(), rel=1e-4)  # unbiased, as in training
    assert model[0].weight.item() == 0.5 and norm.momentum == 0.3 and not model.training  # mode kept
    assert not refresh_batch_norm(torch.nn.Linear(2, 2), images)


def test_cli_parses_train_and_reports_bad_input(tmp_path):
    import argparse

    parser = argparse.ArgumentParser(prog="segmorph")
    add_classify_arguments(parser.add_subparsers(dest="verb"))
    (tmp_path / "data").mkdir()
    args = parser.parse_args(["classify", "train", str(tmp_path / "data"), "--labels", "nope.csv", "--target",
                              "lesion", "--out", str(tmp_path / "run"), "--time-budget", "2m", "--size", "96"])  # fmt: skip
    assert args.classify_verb == "train" and args.time_budget == 120.0 and args.size == (96,)
    with pytest.raises(SegmorphError, match="labels file not found"):
        run_classify(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["classify", "train", str(tmp_path), "--out", "x", "--model", "vgg"])
    request = train_request(args)
    assert network_config(request, 2, 1, 2)["dropout"] == 0.0  # ResNet's default
    assert network_config(replace(request, model="simplecnn"), 2, 1, 2)["dropout"] == 0.2
    args = parser.parse_args(["classify", "train", str(tmp_path), "--out", "x", "--dropout", "0.3"])
    assert network_config(train_request(args), 2, 1, 2)["dropout"] == 0.3
    defaults = train_request(args)
    assert (defaults.select, defaults.shift) == (ClassifyRequest.select, ClassifyRequest.shift) == ("last", 0.04)
    assert (defaults.tail_average, defaults.refresh_batch_norm) == (0.5, True)
    args = parser.parse_args(
        ["classify", "train", str(tmp_path), "--out", "x", "--tail-average", "0", "--no-bn-refresh"]
    )
    assert (train_request(args).tail_average, train_request(args).refresh_batch_norm) == (0.0, False)
    args = parser.parse_args(["classify", "train", str(tmp_path), "--out", "x", "--select", "best", "--tta-shift", "0"])
    assert (train_request(args).select, train_request(args).shift) == ("best", 0.0)
    assert train_request(args).split_seed is None
    args = parser.parse_args(["classify", "train", str(tmp_path), "--out", "x", "--seed", "3", "--split-seed", "0"])
    assert (train_request(args).seed, train_request(args).split_seed) == (3, 0)


def test_ensemble_averages_its_members_probabilities(tmp_path, one_thread):
    data = tmp_path / "data"
    data.mkdir()
    pictures = _write_pictures(data)
    _write_csv(data / "labels.csv", pictures)
    request = ClassifyRequest(
        dataset=data, out=tmp_path / "run", labels=Path("labels.csv"), target="lesion", group="patient",
        model="simplecnn", width=4, batch_size=8, max_steps=8, time_budget_s=0, steps_per_epoch=2, val_fraction=0.25,
        amp=False, show_progress=False, ensemble=2, refresh_batch_norm=False,  # members rebuilt from their checkpoints
    )  # fmt: skip
    summary = train_classifier(request)
    run = tmp_path / "run"
    assert [m["steps"] for m in summary["fit"]["members"]] == [4, 4] and summary["fit"]["steps"] == 8
    assert summary["network"]["name"] == "ensemble" and len(summary["network"]["members"]) == 2
    line = train_summary_line(summary, run)
    assert line.startswith("trained 8 steps") and "2 members: step or time limit" in line
    members = []
    for k in range(2):
        _, config, _ = load_checkpoint(run / f"member_{k}" / "checkpoint_last.pt")
        member = build_classifier(config["network"])
        member.load_state_dict(selected_weights(run / f"member_{k}", "last"))
        members.append(member.eval())
    assert not torch.equal(members[0].fc.weight, members[1].fc.weight)  # different seeds
    image = sorted((data / "lesion").glob("*.png"))[0]
    row = predict_classifier(run, [image], show_progress=False)[0]
    prepared, _ = prepare_image(read_image(image), InputSpec.from_dict(summary["input"]))
    views = {"mirror": True, "shift": ClassifyRequest.shift}
    expected = np.mean([predict_probabilities(m, prepared[None], **views)[0].numpy() for m in members], axis=0)
    assert row["p_1"] == pytest.approx(float(expected[1]), abs=1e-5)
    with pytest.raises(SegmorphError, match="ensemble"):
        train_classifier(ClassifyRequest(dataset=data, out=tmp_path / "bad", ensemble=0, max_steps=1))


def test_validation_of_a_diverged_network_is_one_error_line():
    images, labels = torch.randn(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    task = ClassificationTask(images, labels, images, labels, ["0", "1"], batch_size=4)
    model = SimpleCNN(2, 1, 2, (4, 8))
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))  # as weights end after a step that blows up
    with pytest.raises(SegmorphError, match="training diverged: the network's outputs are NaN or infinite"):
        task.validate(model, torch.device("cpu"))
