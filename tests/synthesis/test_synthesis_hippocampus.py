"""Real data: a short GAN run on a few MSD hippocampus cases, then synthetic pairs on the real label maps' grids."""

from __future__ import annotations

import json

import pytest

from helpers import require_dataset
from segmorph.cli.main import main
from segmorph.io import read_image
from segmorph.segmentation.datasets import load_dataset, load_sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HIPPOCAMPUS = require_dataset("msd_hippocampus", "dataset.json")  # skips this module when the data is absent


def _small_dataset(tmp_path, count=10):
    """A dataset.json listing the first cases of the real dataset (files are read in place)."""
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    meta["training"] = [
        {"image": str(HIPPOCAMPUS / e["image"]), "label": str(HIPPOCAMPUS / e["label"])}
        for e in meta["training"][:count]
    ]
    root = tmp_path / "hippo"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, [HIPPOCAMPUS / e["label"] for e in meta["training"][:count]]


def test_a_short_gan_run_makes_pairs_on_the_real_label_maps_grids(tmp_path, capfd):
    root, labels = _small_dataset(tmp_path)
    run, out = tmp_path / "gan", tmp_path / "synthetic"
    assert main(["synthesize", "train", str(root), "--out", str(run), "--max-steps", "10", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["best_val_correlation"] is not None
    assert (run / "samples.png").stat().st_size > 10_000
    assert main(["synthesize", "sample", str(run), "--labels", *map(str, labels[:2]), "--out", str(out), "--count",
                 "2", "--quiet"]) == 0  # fmt: skip
    spec = load_dataset(out)
    sources = json.loads((out / "dataset.json").read_text())["synthetic"]["sources"]
    for case in spec.cases:
        sample = load_sample(case, spec)
        source = read_image(sources[case.case_id], is_label=True)
        assert sample.image.spatial_shape == source.spatial_shape
        assert sample.image.affine.allclose(source.affine, atol=1e-5)
        assert set(sample.label.data.unique().tolist()) <= {0, 1, 2}
    assert "wrote 2 synthetic pairs" in capfd.readouterr().err
