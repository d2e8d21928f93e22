"""Integration on real data: a short train/predict/evaluate on a handful of MSD hippocampus cases."""

import json

import numpy as np
import pytest

from chromium import check_report_in_chromium
from helpers import require_dataset
from segmorph.cli.main import main
from segmorph.io import read_image
from segmorph.segmentation.baselines import otsu

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HIPPOCAMPUS = require_dataset("msd_hippocampus", "dataset.json")  # skips this module when the data is absent


def _small_dataset(tmp_path, count=14):
    """A dataset.json listing the first cases of the real dataset (files are read in place)."""
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    root = tmp_path / "hippo"
    root.mkdir()
    meta["training"] = [
        {"image": str(HIPPOCAMPUS / e["image"]), "label": str(HIPPOCAMPUS / e["label"])}
        for e in meta["training"][:count]
    ]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, [e["image"] for e in meta["training"]]


def test_short_training_beats_the_otsu_baseline_and_keeps_geometry(tmp_path):
    root, images = _small_dataset(tmp_path)
    run = tmp_path / "run"
    val = [f"hippocampus_{p.split('_')[-1].split('.')[0]}" for p in images[-3:]]
    code = main(["train", str(root), "--out", str(run), "--max-steps", "150", "--quiet", "--val-cases", *val,
                 "--set", "train.steps_per_epoch=50"])  # fmt: skip
    assert code == 0
    metrics = json.loads((run / "validation" / "metrics.json").read_text())
    learned = metrics["mean_over_classes"]["dice"]
    baseline = []
    for case in val:
        image = read_image(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz")
        label = read_image(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz", is_label=True).numpy()[0]
        predicted = otsu(image, classes=3).numpy()[0]
        baseline += [2 * ((predicted == k) & (label == k)).sum() / ((predicted == k).sum() + (label == k).sum())
                     for k in (1, 2)]  # fmt: skip
    print(f"learned Dice {learned:.3f}, Otsu baseline {float(np.mean(baseline)):.3f}")
    assert learned > float(np.mean(baseline)) + 0.1
    assert learned > 0.5
    for case in val:
        mask = read_image(run / "validation" / f"{case}.nii.gz", is_label=True)
        scan = read_image(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz")
        assert mask.spatial_shape == scan.spatial_shape
        assert mask.affine.allclose(scan.affine, atol=1e-6)

    # The run's HTML report opens in Chromium: images decode, a slice slider moves, no console errors.
    report = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(report)]) == 0
    seen = check_report_in_chromium(report, tmp_path / "report.png")
    assert seen["sliders"] == len(val)
