"""``--log tensorboard``: the scalars of train_log.csv and a validation picture in TensorBoard event files."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.loop import TrainConfig
from segmorph.engine.tracking import REFERENCE_OUTLINE, SlicePreview, boundary, label_picture, middle_slice
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.nn import UNet
from segmorph.plots import LABEL_COLOURS
from segmorph.segmentation.task import fit

TRAIN = ["--max-steps", "2", "--quiet", "--no-validate", "--no-check", "--set", "network.features=[4,8]",
         "--set", "train.batch_size=1", "--set", "train.steps_per_epoch=1"]  # fmt: skip


def _csv_rows(run):
    return list(csv.DictReader((run / "train_log.csv").open()))


class Recorder:
    """A :class:`segmorph.engine.loop.Tracker` that keeps what it is given."""

    def __init__(self):
        self.rows, self.closed = [], False

    def track(self, step, row, model, device):
        self.rows.append((step, dict(row), model.training))

    def close(self):
        self.closed = True


def _cases(count):
    cases = []
    for seed in range(count):
        image, label = sphere_case((16, 16, 8), seed=seed)
        cases.append(((image.data - image.data.mean()) / image.data.std(), label.data))
    return cases


def test_loop_gives_trackers_the_rows_of_train_log(tmp_path):
    config = TrainConfig(patch_size=(16, 16, 8), batch_size=1, max_steps=4, steps_per_epoch=2, amp=False)
    torch.manual_seed(0)
    model = UNet(3, 1, 3, (4, 8))
    recorder, plain = Recorder(), []
    fit(model, _cases(2), _cases(1), config, tmp_path, {}, 3, callbacks=[recorder, plain.append], show_progress=False)
    rows = _csv_rows(tmp_path)
    assert [step for step, _, _ in recorder.rows] == [2, 4] and len(plain) == 2 and recorder.closed
    for (_, row, training), written in zip(recorder.rows, rows):
        assert list(row) == list(written)  # the same columns, in the same order
        assert row["train_loss"] == pytest.approx(float(written["train_loss"]), abs=1e-5)
        assert row["val_dice_1"] == pytest.approx(float(written["val_dice_1"]))
        assert not training  # the validated model, in eval mode


def test_train_log_tensorboard_writes_the_csv_scalars_and_a_picture(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dataset = write_msd_dataset(tmp_path / "data", num_cases=5)
    run = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(run), *TRAIN, "--log", "tensorboard"]) == 0
    rows = _csv_rows(run)
    assert len(rows) == 2
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [int(r["step"]) for r in rows] == [1, 2]
    assert [e.value for e in losses] == pytest.approx([float(r["train_loss"]) for r in rows], abs=1e-5)
    assert [e.value for e in events.Scalars("val_dice")] == pytest.approx([float(r["val_dice"]) for r in rows])
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([float(r["lr"]) for r in rows], rel=1e-5)
    assert "step" not in events.Tags()["scalars"]
    record = json.loads((run / "run.json").read_text())
    (tag,) = events.Tags()["images"]
    assert tag == f"validation/{record['val_cases'][0]}"
    pictures = events.Images(tag)
    assert [p.step for p in pictures] == [1, 2] and min(pictures[0].width, pictures[0].height) >= 16
    assert record["log"] == "tensorboard" and record["tensorboard_dir"] == "tensorboard"


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def _check_scalars_and_record(run):
    rows = _csv_rows(run)
    events = _scalars(run)
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [int(r["step"]) for r in rows] == [1, 2]
    assert [e.value for e in losses] == pytest.approx([float(r["train_loss"]) for r in rows], abs=1e-5)
    record = json.loads((run / "run.json").read_text())
    assert record["log"] == "tensorboard" and record["tensorboard_dir"] == "tensorboard"


def test_train_registration_log_tensorboard_writes_the_csv_scalars(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    dataset = write_msd_dataset(tmp_path / "data", num_cases=6)
    run = tmp_path / "reg"
    tiny = ["--set", "registration.features=[4,8,8]", "--set", "registration.train_shape=[24,24,16]",
            "--set", "train.batch_size=1", "--set", "train.steps_per_epoch=1"]  # fmt: skip
    assert main(["train-registration", str(dataset), "--out", str(run), "--max-steps", "2", "--quiet", *tiny,
                 "--log", "tensorboard"]) == 0  # fmt: skip
    _check_scalars_and_record(run)


def _write_pictures(root, count=12, size=16):
    """PNG pictures of classes 0 and 1 (1: a bright square) listed in ``root/labels.csv`` (file, lesion)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = [("file", "lesion")]
    for index in range(count):
        picture = rng.normal(60, 15, (size, size))
        picture[4:10, 4:10] += 120 * (index % 2)
        array = np.clip(picture, 0, 255).astype(np.uint8)[None]
        write_image(Image(torch.from_numpy(array), Affine.identity(2)), root / f"img_{index:02d}.png")
        rows.append((f"img_{index:02d}.png", index % 2))
    with (root / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def test_classify_train_log_tensorboard_writes_the_csv_scalars(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    data = _write_pictures(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["classify", "train", str(data), "--labels", "labels.csv", "--target", "lesion", "--out", str(run),
                 "--max-steps", "2", "--quiet", "--no-check", "--model", "simplecnn", "--width", "4",
                 "--batch-size", "4", "--no-amp", "--set", "train.steps_per_epoch=1", "--log", "tensorboard"]) == 0  # fmt: skip
    _check_scalars_and_record(run)
    aucs = [e.value for e in _scalars(run).Scalars("val_auc")]
    assert aucs == pytest.approx([float(r["val_auc"]) for r in _csv_rows(run)], abs=1e-5)


def test_log_tensorboard_without_the_package_stops_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    dataset = write_msd_dataset(tmp_path / "data", num_cases=5)
    run = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(run), *TRAIN, "--log", "tensorboard"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: --log tensorboard needs the tensorboard package: pip install segmorph[tensorboard]"]
    assert not (run / "train_log.csv").exists() and not (run / "plan.json").exists()


def test_unknown_log_kind_is_refused():
    from segmorph.engine.tracking import open_tracker

    with pytest.raises(SegmorphError, match="log: expected one of csv, tensorboard, got 'wandb'"):
        open_tracker("wandb", "run")
    assert open_tracker("csv", "run") is None


def test_label_picture_fills_the_prediction_and_outlines_the_reference():
    image = np.tile(np.arange(8.0), (6, 1))  # (A=6, B=8): brighter along the second axis
    prediction = np.zeros((6, 8), dtype=int)
    prediction[1, 2] = 1
    reference = np.zeros((6, 8), dtype=int)
    reference[2:5, 3:6] = 2
    picture = label_picture(image, prediction, reference)
    assert picture.dtype == np.uint8 and picture.shape == (8 * 32, 6 * 32, 3)  # first axis across, enlarged x32
    at = lambda a, b: picture[b * 32, a * 32].astype(float) / 255  # noqa: E731
    grey = 2 / 7  # the 0.5th..99.5th percentile window of the values 0..7
    assert at(1, 2) == pytest.approx(0.55 * grey + 0.45 * LABEL_COLOURS[1], abs=1 / 255)
    assert at(2, 3) == pytest.approx(REFERENCE_OUTLINE)  # corner of the reference
    assert at(3, 4) == pytest.approx([at(3, 4)[0]] * 3)  # inside the reference: grey, not outlined
    assert boundary(reference).sum() == 8  # a 3 x 3 square has 8 boundary pixels


def test_middle_slice_is_halfway_through_the_reference():
    reference = np.zeros((4, 4, 20), dtype=int)
    reference[1, 1, 4:11] = 1
    assert middle_slice(reference) == 7
    assert middle_slice(np.zeros((4, 4, 20), dtype=int)) == 10


def test_slice_preview_draws_the_middle_slice_of_a_3d_case():
    image, label = sphere_case((16, 16, 8), seed=0)
    config = TrainConfig(patch_size=(16, 16, 8), max_steps=1, amp=False)
    torch.manual_seed(0)
    preview = SlicePreview("case_000", image.data, label.data, config)
    picture = preview(UNet(3, 1, 3, (4, 8)).eval(), torch.device("cpu"))
    assert picture.shape == (16 * 16, 16 * 16, 3) and picture.dtype == np.uint8
