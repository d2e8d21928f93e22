"""Few labels in classification: ``--init`` (transfer from another run), ``--freeze-encoder-steps`` and
``--labelled-fraction`` (a seeded, grouped, class-stratified share of the training images)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.classification.api import cross_validate_classifier
from segmorph.classification.api import train_classifier as train_classifier_api
from segmorph.classification.pipeline import train_classifier
from segmorph.classification.request import ClassifyRequest, load_classification_dataset, split_dataset
from segmorph.classification.split import labelled_subset
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.nn import UNet, build_network

SIZE = 32


# -- the labelled share ------------------------------------------------------------------------------------
def _grouped_labels(seed: int = 0) -> tuple[list[int], list[str]]:
    """About 300 images in 120 groups of 1-4, a quarter of the groups class 0, a few of class 2."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for group in range(120):
        label = 2 if group % 40 == 7 else int(rng.random() < 0.75)
        labels += [label] * int(rng.integers(1, 5))
        groups += [f"g{group}"] * (len(labels) - len(groups))
    return labels, groups


def test_labelled_subset_keeps_the_fraction_whole_groups_every_class_same_seed_same_choice():
    labels, groups = _grouped_labels()
    kept = labelled_subset(labels, groups, 0.1, seed=3)
    assert kept == sorted(set(kept))
    counts = np.bincount(labels)
    kept_counts = np.bincount(np.asarray(labels)[kept], minlength=3)
    for label in (0, 1):  # per class: at least the fraction, overshooting by less than one group (<= 4 images)
        assert 0.1 * counts[label] <= kept_counts[label] < 0.1 * counts[label] + 4, (label, kept_counts)
    assert kept_counts[2] >= 1  # a small class keeps at least one group
    kept_groups = {groups[i] for i in kept}
    assert kept == [i for i, g in enumerate(groups) if g in kept_groups]  # whole groups only
    assert labelled_subset(labels, groups, 0.1, seed=3) == kept
    assert labelled_subset(labels, groups, 0.1, seed=4) != kept
    assert labelled_subset(labels, groups, 1.0, seed=3) == list(range(len(labels)))


def test_labelled_subset_keeps_a_class_found_only_inside_other_groups():
    labels = [0, 0, 1, 0, 0, 0, 0, 0]  # class 1 is the minority of group "a": no group counts under it
    groups = ["a", "a", "a", "b", "c", "d", "e", "f"]
    for seed in range(5):
        kept = labelled_subset(labels, groups, 0.2, seed)
        assert {0, 1, 2} <= set(kept)  # group "a", whole, for its class-1 image


def test_labelled_subset_refuses_a_fraction_out_of_range():
    with pytest.raises(Exception, match=r"labelled fraction: expected a share in \(0, 1\]"):
        labelled_subset([0, 1], ["a", "b"], 0.0)


# -- runs on small pictures --------------------------------------------------------------------------------
def _write_dataset(root: Path, count: int = 40) -> Path:
    """Pictures of SIZE^2, class 1 with a bright disc; two images per group; ``labels.csv`` beside them."""
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    rows = []
    for index in range(count):
        label = index % 2
        picture = rng.normal(60, 15, (SIZE, SIZE))
        if label:
            ci, cj = rng.integers(8, SIZE - 8, 2)
            picture[(ii - ci) ** 2 + (jj - cj) ** 2 <= 20] += 120
        name = f"img_{index:02d}.png"
        write_image(Image(torch.from_numpy(np.clip(picture, 0, 255).astype(np.uint8)[None]), Affine.identity(2)),
                    root / name)  # fmt: skip
        rows.append((name, label, f"p{index // 4}_{label}"))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "lesion", "patient"))
        writer.writerows(rows)
    return root


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "data").mkdir()
    return _write_dataset(tmp_path / "data")


def _request(data: Path, out: Path, **changes) -> ClassifyRequest:
    base = ClassifyRequest(
        dataset=data, out=out, labels=Path("labels.csv"), target="lesion", group="patient", model="simplecnn",
        width=4, batch_size=8, max_steps=4, time_budget_s=0, steps_per_epoch=2, val_fraction=0.25, amp=False,
        show_progress=False, check=False,
    )  # fmt: skip
    return replace(base, **changes)


def _classifier_source(folder: Path, num_classes: int, size: int, seed: int = 7) -> tuple[Path, dict]:
    """A classification checkpoint (as ``classifier.pt``) trained at ``size``, with its own weights."""
    net = {"name": "simplecnn", "ndim": 2, "in_channels": 1, "num_classes": num_classes, "features": [4, 8, 16, 32],
           "dropout": 0.2}  # fmt: skip
    torch.manual_seed(seed)
    model = build_network(net)
    folder.mkdir(parents=True)
    facts = {"class_names": [str(k) for k in range(num_classes)],
             "input": {"size": [size, size], "channels": 1, "normalisation": "zscore"}}  # fmt: skip
    save_checkpoint(folder / "classifier.pt", model.state_dict(), {"network": net, "classifier": facts})
    return folder, model.state_dict()


def test_labelled_fraction_leaves_validation_alone_and_is_recorded(dataset, tmp_path, one_thread):
    request = _request(dataset, tmp_path / "run", labelled_fraction=0.25, seed=1)
    data = load_classification_dataset(request)
    full_train, val = split_dataset(data, replace(request, labelled_fraction=1.0))
    train, same_val = split_dataset(data, request)
    assert same_val == val and set(train) < set(full_train)
    assert {data.labels[i] for i in train} == {0, 1}
    assert split_dataset(data, request) == (train, val)  # seeded
    train_classifier(request)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    split = record["split"]
    assert split["labelled_fraction"] == 0.25 and len(split["train"]) == len(train)
    assert set(split["train"]) | set(split["unlabelled"]) == {data.items[i].path.name for i in full_train}
    assert record["transfer"] is None


def test_init_from_a_classifier_with_another_head_loads_all_but_the_final_layer(dataset, tmp_path, one_thread):
    source, weights = _classifier_source(tmp_path / "source", num_classes=3, size=24)
    request = _request(dataset, tmp_path / "run", init=source, freeze_encoder_steps=4, ema_decay=0.0,
                       tail_average=0.0, refresh_batch_norm=False)  # fmt: skip
    summary = train_classifier(request)
    assert summary["input"]["size"] == [24, 24]  # the source's input size, not the data's 32
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    transfer = record["transfer"]
    assert transfer["source"] == str(source / "classifier.pt")
    assert set(transfer["skipped"]) == {"fc.weight", "fc.bias"}
    assert transfer["skipped"]["fc.weight"] == "shape [3, 32] in the source, [2, 32] here"
    assert record["train"]["freeze_encoder_steps"] == 4
    kept, _, _ = load_checkpoint(tmp_path / "run" / "classifier.pt")
    encoder = [k for k in kept if not k.startswith("fc.") and k.endswith("weight")]
    assert encoder and all(torch.equal(kept[k], weights[k]) for k in encoder)  # frozen for every step
    train_classifier(replace(request, init=None, resume=True, max_steps=6))  # resumes from its own checkpoint
    resumed = json.loads((tmp_path / "run" / "run.json").read_text())
    assert resumed["transfer"] == transfer and len(resumed["resumes"]) == 1


def test_init_from_another_classification_run_folder(dataset, tmp_path, one_thread):
    first = train_classifier_api(dataset, tmp_path / "first", labels="labels.csv", target="lesion", group="patient",
                                 max_steps=2, overrides={"model.name": "simplecnn", "model.width": 4, "data.size": [SIZE]},
                                 show_progress=False, check=False)  # fmt: skip
    second = train_classifier_api(dataset, tmp_path / "second", labels="labels.csv", target="lesion",
                                  group="patient", max_steps=2, init=first.out, freeze_encoder_steps=1,
                                  labelled_fraction=0.5, overrides={"model.name": "simplecnn", "model.width": 4},
                                  show_progress=False, check=False)  # fmt: skip
    record = json.loads((second.out / "run.json").read_text())
    assert record["transfer"]["source"] == str(first.out / "classifier.pt") and not record["transfer"]["skipped"]
    assert record["split"]["labelled_fraction"] == 0.5
    config = json.loads((second.out / "config.json").read_text())
    assert config["train"]["freeze_encoder_steps"] == 1 and config["data"]["labelled_fraction"] == 0.5


def test_init_takes_the_sources_classifier_unless_the_settings_name_one(dataset, tmp_path, one_thread):
    source, _ = _classifier_source(tmp_path / "source", num_classes=2, size=SIZE)  # simplecnn, width 4
    run = train_classifier_api(dataset, tmp_path / "run", labels="labels.csv", target="lesion", group="patient",
                               max_steps=2, init=source, show_progress=False, check=False)  # fmt: skip
    model = json.loads((run.out / "config.json").read_text())["model"]
    assert (model["name"], model["width"]) == ("simplecnn", 4)  # not the default resnet of width 16
    assert not json.loads((run.out / "run.json").read_text())["transfer"]["skipped"]
    wider = train_classifier_api(dataset, tmp_path / "wider", labels="labels.csv", target="lesion",
                                 group="patient", max_steps=2, init=source, overrides={"model.width": 8},
                                 show_progress=False, check=False)  # fmt: skip
    assert json.loads((wider.out / "config.json").read_text())["model"]["width"] == 8  # the setting wins
    assert "shape [4, 1, 3, 3] in the source" in str(json.loads((wider.out / "run.json").read_text())["transfer"])


def test_cross_validation_folds_start_from_init(dataset, tmp_path, one_thread):
    source, _ = _classifier_source(tmp_path / "source", num_classes=2, size=SIZE)
    result = cross_validate_classifier(dataset, tmp_path / "cv", folds="0", num_folds=2, labels="labels.csv",
                                       target="lesion", group="patient", max_steps=2, init=source,
                                       overrides={"model.name": "simplecnn", "model.width": 4},
                                       show_progress=False, check=False)  # fmt: skip
    assert json.loads((result.out / "crossval.json").read_text())["init"] == str(source)
    fold = json.loads((result.out / "fold_0" / "run.json").read_text())
    assert fold["transfer"]["source"] == str(source / "classifier.pt") and not fold["transfer"]["skipped"]


# -- the command line: one line, exit 1, nothing written ---------------------------------------------------
def _cli(dataset: Path, out: Path, init: Path) -> list[str]:
    return ["classify", "train", str(dataset), "--labels", "labels.csv", "--target", "lesion", "--group", "patient",
            "--out", str(out), "--max-steps", "2", "--model", "simplecnn", "--width", "4", "--init", str(init),
            "--quiet", "--no-check"]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_cli_init_from_a_missing_folder_is_one_line_and_writes_nothing(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(dataset, out, tmp_path / "nowhere")) == 1
    assert _one_error_line(capsys).startswith(f"error: {tmp_path / 'nowhere'}: not found")
    assert not out.exists()


def test_cli_init_from_a_run_of_another_network_is_one_line_and_writes_nothing(dataset, tmp_path, capsys):
    pre = tmp_path / "pre3d"
    pre.mkdir()
    unet = UNet(3, 1, 1, (4, 8))
    save_checkpoint(pre / "checkpoint_best.pt", unet.state_dict(), {"network": {"name": "unet", **unet.config}})
    out = tmp_path / "run"
    assert main(_cli(dataset, out, pre)) == 1
    line = _one_error_line(capsys)
    assert line == f"error: {pre / 'checkpoint_best.pt'}: a 3D network; this run trains a 2D one"
    assert not out.exists()
    unet2d = UNet(2, 1, 1, (4, 8))  # the right dimensionality, but no layer of a classifier
    save_checkpoint(pre / "checkpoint_best.pt", unet2d.state_dict(), {"network": {"name": "unet", **unet2d.config}})
    assert main(_cli(dataset, out, pre)) == 1
    assert "no weight matches this network by name and shape" in _one_error_line(capsys)
    assert not out.exists()
    assert main([*_cli(dataset, tmp_path / "cv", pre), "--folds", "all", "--num-folds", "2"]) == 1
    assert "no weight matches" in _one_error_line(capsys)
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize(("flag", "value", "problem"), [("--width", "100000", "resnet network of"),
                                                        ("--size", "100000", "input size and batch")])  # fmt: skip
def test_a_network_or_input_beyond_the_memory_budget_is_one_line_and_writes_nothing(dataset, tmp_path, capsys,
                                                                                   flag, value, problem):  # fmt: skip
    out = tmp_path / "run"
    args = ["classify", "train", str(dataset), "--labels", "labels.csv", "--target", "lesion", "--group", "patient",
            "--out", str(out), "--max-steps", "1", flag, value, "--quiet", "--no-check"]  # fmt: skip
    assert main(args) == 1
    assert problem in _one_error_line(capsys) and not out.exists()
