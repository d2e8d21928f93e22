"""``segmorph classify train``'s settings (--set, --config, flags), config.json, one-line errors, and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.classification.api import Classifier, train_classifier
from segmorph.classification.config import ClassifierConfig, classifier_config
from segmorph.classification.predict import predict_classifier
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image

OLD_RUN = Path(__file__).parent.parent / "data" / "old_runs" / "classification"


def _pictures(root: Path, count: int = 24, size: int = 16) -> Path:
    """Class folders ``plain/`` and ``disc/`` of 16x16 PNGs: a bright disc marks the second class."""
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    for index in range(count):
        picture = rng.normal(60, 15, (size, size))
        if index % 2:
            ci, cj = rng.integers(5, size - 5, 2)
            picture[(ii - ci) ** 2 + (jj - cj) ** 2 <= 9] += 120
        array = np.clip(picture, 0, 255).astype(np.uint8)[None]
        name = f"{'disc' if index % 2 else 'plain'}/img_{index:02d}.png"
        write_image(Image(torch.from_numpy(array), Affine.identity(2)), root / name)
    return root


def test_set_config_and_flags_reach_the_training_and_the_run_folder(tmp_path, capsys, one_thread):
    data = _pictures(tmp_path / "pictures")
    (tmp_path / "f.yaml").write_text(
        "model:\n  name: simplecnn\ntrain:\n  batch_size: 6\n  amp: false\ndata:\n  size: [16]\n"
    )
    out = tmp_path / "run"
    code = main(["classify", "train", str(data), "--out", str(out), "--max-steps", "2", "--quiet",
                 "--config", str(tmp_path / "f.yaml"), "--set", "model.width=4", "--set", "train.steps_per_epoch=1",
                 "--batch-size", "4", "--set", "train.batch_size=8", "--no-mirror", "--tta-shift", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == {"name": "simplecnn", "width": 4, "dropout": None}
    assert config["train"]["batch_size"] == 8 and config["train"]["amp"] is False  # --set wins over the flag
    assert config["scoring"] == {"mirror": False, "shift": 0.0} and config["data"]["size"] == [16]
    _, stored, _ = load_checkpoint(out / "classifier.pt")
    assert stored["network"]["name"] == "simplecnn" and stored["network"]["features"] == [4, 8, 16, 32]
    assert stored["train"]["batch_size"] == 8 and stored["classifier"]["mirror"] is False
    assert json.loads((out / "summary.json").read_text())["fit"]["steps"] == 2


def test_python_api_trains_and_classifies_images(tmp_path, one_thread):
    data = _pictures(tmp_path / "pictures")
    result = train_classifier(data, tmp_path / "run", max_steps=2, seed=1, show_progress=False,
                              overrides={"model.name": "simplecnn", "model.width": 4, "data.size": [16],
                                         "train.batch_size": 8, "train.amp": False})  # fmt: skip
    assert result.steps == 2 and result.config.train.seed == 1 and result.out == tmp_path / "run"
    assert 0.0 <= result.auc <= 1.0 and 0.0 <= result.threshold <= 1.0
    classifier = Classifier(result.out)
    image = read_image(data / "disc" / "img_01.png")
    probabilities = classifier(image)
    assert probabilities.shape == (2,) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert classifier.class_names == ["disc", "plain"]
    row = predict_classifier(result.out, [data / "disc" / "img_01.png"], show_progress=False)[0]
    assert row["p_disc"] == pytest.approx(float(probabilities[0]), abs=1e-5) and row["predicted"] == classifier.predict(
        image
    )
    again = train_classifier(data, tmp_path / "run", max_steps=3, resume=True, show_progress=False)
    assert again.steps == 3 and again.config.model.width == 4  # the run's config.json, not the defaults


def test_a_run_written_before_config_files_still_classifies():
    classifier = Classifier(OLD_RUN)
    image = Image(torch.full((1, 16, 16), 60, dtype=torch.uint8), Affine.identity(2))
    assert classifier(image).shape == (len(classifier.class_names),)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "train.batch_size=0"], "classifier config: train.batch_size: expected at least 1, got 0"),
        (["--lr", "-0.1"], "classifier config: train.learning_rate: expected a value in (0, 10], got -0.1"),
        (["--lr", "1e12"], "classifier config: train.learning_rate: expected a value in (0, 10], got 1000000000000.0"),
        (["--set", "model.name=vgg"], "classifier config: model.name: expected one of resnet, simplecnn, got 'vgg'"),
        (["--set", "model.depth=3"], "unknown classifier config key 'model.depth'; valid keys: model.name, model.width, model.dropout"),
        (["--set", "model.width=wide"], "classifier config: model.width: expected an integer, got 'wide'"),
        (["--tta-shift", "0.7"], "classifier config: scoring.shift: expected a fraction of the image size in [0, 0.5)"),
        (["--select", "best", "--set", "train.select=worst"], "train.select: expected one of last, best, got 'worst'"),
        (["--fold", "5"], "classifier config: data.fold: expected 0..4, got 5"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "run"
    code = main(["classify", "train", str(tmp_path / "no_dataset"), "--out", str(out), "--max-steps", "1", *arguments])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_defaults_match_the_request_defaults():
    from segmorph.classification.request import ClassifyRequest

    settings = classifier_config()
    assert settings == ClassifierConfig() and settings.train.time_budget_s == ClassifyRequest.time_budget_s
    assert (settings.model.name, settings.model.width, settings.train.batch_size) == ("resnet", 16, 32)
    assert (
        settings.train.learning_rate == ClassifyRequest.learning_rate
        and settings.scoring.shift == ClassifyRequest.shift
    )


def test_a_resumed_run_keeps_the_class_names_it_was_trained_with(tmp_path, one_thread):
    data = _pictures(tmp_path / "pictures")
    overrides = {"model.name": "simplecnn", "model.width": 4, "data.size": [16], "train.batch_size": 8,
                 "train.amp": False}  # fmt: skip
    train_classifier(data, tmp_path / "run", max_steps=2, show_progress=False, overrides=overrides,
                     class_names=["round", "flat"])  # fmt: skip
    train_classifier(data, tmp_path / "run", max_steps=3, resume=True, show_progress=False)
    assert Classifier(tmp_path / "run").class_names == ["round", "flat"]
