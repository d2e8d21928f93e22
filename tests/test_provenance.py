"""run.json: versions, seeds, the command line and a data fingerprint; resuming appends, never replaces."""

from __future__ import annotations

import json
import os
import shutil
import sys

from helpers import sphere_case, write_msd_dataset
from segmorph.io import write_image
from segmorph.provenance import data_changed, data_fingerprint
from segmorph.segmentation.datasets import load_dataset
from segmorph.segmentation.pipeline import TrainRequest, train_segmentation

VERSION_KEYS = {"python", "torch", "numpy", "simpleitk", "segmorph", "platform"}


def _train(dataset, out, resume=False):
    request = TrainRequest(
        dataset=dataset, out=out, time_budget_s=0, max_steps=2, val_cases=("case_000",), seed=7, resume=resume,
        overrides=(("network.features", [4, 8]), ("train.steps_per_epoch", 2)), validate_with_predictor=False,
        show_progress=False,
    )  # fmt: skip
    train_segmentation(request)
    return json.loads((out / "run.json").read_text())


def test_run_json_records_versions_seeds_command_and_data_fingerprint(tmp_path, monkeypatch):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=3, shape=(16, 16, 8))
    monkeypatch.setattr(sys, "argv", ["segmorph", "train", str(dataset), "--seed", "7"])
    record = _train(dataset, tmp_path / "run")
    assert set(record) >= VERSION_KEYS
    assert record["command"] == ["segmorph", "train", str(dataset), "--seed", "7"]
    assert record["seed"] == 7 and record["train_seed"] == 7
    assert record["data_fingerprint"] == data_fingerprint(load_dataset(dataset))
    assert record["data_fingerprint"]["files"] == 7  # dataset.json + 3 images + 3 labels
    assert len(record["data_fingerprint"]["sha256"]) == 64
    assert record["train_cases"] == ["case_001", "case_002"] and record["val_cases"] == ["case_000"]


def test_resume_keeps_the_first_command_and_notes_changed_data(tmp_path, monkeypatch):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=3, shape=(16, 16, 8))
    monkeypatch.setattr(sys, "argv", ["segmorph", "train", "first"])
    first = _train(dataset, tmp_path / "run")
    image, _ = sphere_case((16, 16, 8), seed=99)
    write_image(image, dataset / "imagesTr" / "case_002.nii.gz")
    monkeypatch.setattr(sys, "argv", ["segmorph", "train", "again", "--resume"])
    record = _train(dataset, tmp_path / "run", resume=True)
    assert record["command"] == ["segmorph", "train", "first"]
    assert record["data_fingerprint"] == first["data_fingerprint"]
    assert [r["command"][-1] for r in record["resumes"]] == ["--resume"]
    assert data_changed(record)


def test_data_fingerprint_follows_contents_not_times_or_location(tmp_path):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=2, shape=(12, 10, 6))
    original = data_fingerprint(load_dataset(dataset))
    copy = shutil.copytree(dataset, tmp_path / "elsewhere", copy_function=shutil.copy)  # new times
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert data_fingerprint(load_dataset(copy)) == original
    label = copy / "labelsTr" / "case_001.nii.gz"
    _, changed = sphere_case((12, 10, 6), seed=1)
    changed.data[0, 0, 0, 0] = 2
    write_image(changed, label)
    assert data_fingerprint(load_dataset(copy))["sha256"] != original["sha256"]
