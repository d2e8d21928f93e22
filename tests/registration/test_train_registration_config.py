"""``segmorph train-registration``'s settings: --set / --config reach training, config.json, one-line errors."""

from __future__ import annotations

import json

import pytest

from helpers import write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.errors import SegmorphError
from segmorph.registration.learned.config import RegistrationTrainConfig
from segmorph.registration.learned.model import LearnedRegistration
from segmorph.registration.learned.training import registration_train_config, train_registration_run

TINY = ["--set", "registration.features=[4,8,8]", "--set", "registration.train_shape=[24,24,16]"]


def test_set_and_config_reach_the_training_and_the_run_folder(tmp_path, capsys):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=6)
    (tmp_path / "f.yaml").write_text("registration:\n  dice_weight: 1\n  similarity: mse\ntrain:\n  batch_size: 3\n")
    out = tmp_path / "reg"
    code = main(["train-registration", str(dataset), "--out", str(out), "--max-steps", "2", "--quiet", *TINY,
                 "--config", str(tmp_path / "f.yaml"), "--set", "train.batch_size=1", "--learning-rate", "0.01"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["registration"]["features"] == [4, 8, 8] and config["registration"]["dice_weight"] == 1.0
    assert config["registration"]["similarity"] == "mse"
    assert config["train"] == {"batch_size": 1, "learning_rate": 0.01, "time_budget_s": 0.0, "max_steps": 2,
                               "steps_per_epoch": 100, "fold": 0, "num_folds": 5, "seed": 0}  # fmt: skip
    _, stored, _ = load_checkpoint(out / "checkpoint_best.pt")
    assert stored["train"]["batch_size"] == 1 and stored["train"]["learning_rate"] == 0.01
    assert stored["registration"]["similarity"] == "mse" and stored["network"]["features"] == [4, 8, 8]
    model = LearnedRegistration.load(out)  # what `segmorph register --model` loads
    assert model.config.features == (4, 8, 8) and model.config.dice_weight == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["monitor_score"] == "Dice"


def test_resume_starts_from_the_runs_config(tmp_path):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=6)
    out = tmp_path / "reg"
    overrides = {"registration.features": [4, 8, 8], "registration.train_shape": [24, 24, 16], "train.batch_size": 1}
    first = train_registration_run(dataset, out, max_steps=1, overrides=overrides, show_progress=False)
    assert first.steps == 1 and first.monitor_score == "Dice" and first.config.train.batch_size == 1
    again = train_registration_run(dataset, out, max_steps=2, resume=True, show_progress=False)
    assert again.steps == 2 and again.config.registration.features == (4, 8, 8) and again.config.train.batch_size == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "train.batch_size=0"], "registration training config: train.batch_size: expected at least 1, got 0"),
        (["--learning-rate", "-1"], "registration training config: train.learning_rate: expected a value in (0, 10]"),
        (["--learning-rate", "11"], "registration training config: train.learning_rate: expected a value in (0, 10]"),
        (["--set", "registration.label_guidance=1.5"], "registration.label_guidance: expected a share in 0..1, got 1.5"),
        (["--set", "registration.similarity=foo"], "registration.similarity: unknown name 'foo'; known: mi, mind, mse, ncc"),
        (["--set", "registration.dice=1"], "unknown registration training config key 'registration.dice'; valid keys: "),
        (["--set", "train.batch_size=two"], "train.batch_size: expected an integer, got 'two'"),
        (["--set", "registration.prior_classes=3"], "prior_classes is set by the segmentation model"),
        (["--label-guidance", "0.5"], "registration.label_guidance: needs a segmentation model"),
        (["--config", "missing.yaml"], "missing.yaml: config file not found"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "reg"
    code = main(["train-registration", str(tmp_path / "no_dataset"), "--out", str(out), "--max-steps", "1", *arguments])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_the_defaults_are_the_documented_ones():
    settings = registration_train_config()
    assert settings == RegistrationTrainConfig() and settings.train.time_budget_s == 1200.0
    assert registration_train_config(max_steps=5).train.time_budget_s == 0.0
    assert registration_train_config(time_budget="2m").train.time_budget_s == 120.0
    with pytest.raises(SegmorphError, match="invalid duration"):
        registration_train_config(time_budget="soon")
