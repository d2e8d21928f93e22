"""``segmorph classify train --class-names``: names for numbered classes, in the order of the sorted values."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image

TRAIN = ["--max-steps", "2", "--quiet", "--no-check", "--model", "simplecnn", "--width", "4", "--batch-size", "4",
         "--no-amp", "--val-fraction", "0.25", "--set", "train.steps_per_epoch=1"]  # fmt: skip


def write_numbered_pictures(root, count: int = 12, size: int = 16):
    """PNG pictures with classes 0 and 1 (1: a bright square) and ``labels.csv`` (file, lesion, patient)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        label = index % 2
        picture = rng.normal(60, 15, (size, size))
        picture[4:10, 4:10] += 120 * label
        name = f"img_{index:02d}.png"
        array = np.clip(picture, 0, 255).astype(np.uint8)[None]
        write_image(Image(torch.from_numpy(array), Affine.identity(2)), root / name)
        rows.append((name, label, f"p{index // 2}_{label}"))
    with (root / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("file", "lesion", "patient"), *rows])
    return root


def test_class_names_name_the_sorted_class_values(tmp_path, capsys, one_thread):
    data = write_numbered_pictures(tmp_path / "data")
    args = ["classify", "train", str(data), "--labels", "labels.csv", "--target", "lesion", "--group", "patient"]
    assert main([*args, "--out", str(tmp_path / "run"), *TRAIN, "--class-names", "normal, lesion"]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["class_names"] == ["normal", "lesion"] and record["class_counts"] == {"normal": 6, "lesion": 6}
    rows = list(csv.DictReader((tmp_path / "run" / "val_predictions.csv").open()))
    truth = {name: "lesion" if int(name[4:6]) % 2 else "normal" for name in (row["file"] for row in rows)}
    assert [row["true"] for row in rows] == list(truth.values()) and "p_lesion" in rows[0]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), *TRAIN, "--class-names", "a,b,c"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {data / 'labels.csv'}: class names: 3 given for 2 classes (0, 1)"]
    assert not (tmp_path / "bad").exists()
