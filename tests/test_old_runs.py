"""Run folders written before the reorganisation by capability (commit 5592f90) still load and run.

``tests/data/old_runs/`` holds a segmentation, a registration (with its copied segmentation prior) and a
classification run trained for a few steps by that commit's code; README.txt there says how. The current CLI
must use each one: exit 0 and write outputs on the right grid.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case
from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image

OLD_RUNS = Path(__file__).resolve().parent / "data" / "old_runs"


def test_the_old_runs_are_in_place():
    names = {str(p.relative_to(OLD_RUNS)) for p in OLD_RUNS.rglob("*") if p.is_file()}
    assert {"segmentation/plan.json", "segmentation/checkpoint_best.pt", "registration/checkpoint_best.pt",
            "registration/segmentation_prior/checkpoint_best.pt", "classification/classifier.pt"} <= names  # fmt: skip


def test_old_segmentation_run_predicts_on_the_scan_grid(tmp_path):
    image, _ = sphere_case(seed=7)
    write_image(image, tmp_path / "scan.nii.gz")
    code = main(["predict", str(OLD_RUNS / "segmentation"), str(tmp_path / "scan.nii.gz"),
                 "--out", str(tmp_path / "masks"), "--quiet"])  # fmt: skip
    assert code == 0
    mask = read_image(tmp_path / "masks" / "scan.nii.gz", is_label=True)
    assert mask.spatial_shape == image.spatial_shape
    assert mask.affine.allclose(image.affine, atol=1e-6)
    assert set(np.unique(mask.numpy()).tolist()) <= {0, 1, 2}


def test_old_registration_run_registers_onto_the_fixed_grid(tmp_path):
    fixed, _ = sphere_case(seed=1)
    moving, moving_labels = sphere_case(seed=2)
    moving = Image(moving.data, Affine.from_geometry((0.9, 1.0, 2.2), (-10.0, 28.0, 5.0), OBLIQUE.direction))
    moving_labels = Image(moving_labels.data, moving.affine, is_label=True)
    for name, image in (("fixed", fixed), ("moving", moving), ("moving_labels", moving_labels)):
        write_image(image, tmp_path / f"{name}.nii.gz")
    out = tmp_path / "reg"
    code = main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--method", "learned",
                 "--model", str(OLD_RUNS / "registration"), "--moving-labels", str(tmp_path / "moving_labels.nii.gz"),
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz"):
        warped = read_image(out / name)
        assert warped.spatial_shape == fixed.spatial_shape, name
        assert warped.affine.allclose(fixed.affine, atol=1e-6), name
    assert read_image(out / "displacement.nii.gz").num_channels == 3
    record = json.loads((out / "registration.json").read_text())
    # The old run was trained with its segmentation prior and label guidance: the moving labels guide it.
    assert record["method"] == "learned" and record["label_guided"] is True


def test_old_classification_run_classifies_pictures(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for index in range(2):
        array = rng.integers(0, 255, (1, 16, 16)).astype(np.uint8)
        paths.append(tmp_path / f"picture_{index}.png")
        write_image(Image(torch.from_numpy(array), Affine.identity(2)), paths[-1])
    out = tmp_path / "predictions.csv"
    code = main(["classify", "predict", str(OLD_RUNS / "classification"), *map(str, paths), "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == ["picture_0.png", "picture_1.png"]
    for row in rows:
        assert row["predicted"] in {"disc", "plain"}
        assert float(row["p_disc"]) + float(row["p_plain"]) == pytest.approx(1.0, abs=1e-4)
