"""Images of a voxel or a few train: every planned network keeps two voxels per axis where it normalises
(padded patches), so ``train``, ``pretrain`` and ``synthesize train`` finish instead of failing inside a layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image


def _tiny_dataset(root: Path, shape: tuple[int, ...], count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for index in range(count):
        picture = rng.random(shape).astype(np.float32)
        labels = (rng.random(shape) > 0.5).astype(np.uint8)
        labels.flat[0] = 1
        for folder, values in (("images", picture), ("labels", labels)):
            write_image(Image(torch.from_numpy(values)[None], Affine.identity(3)), root / folder / f"c{index}.nii.gz")
    return root


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 2), (1, 12, 12)])
def test_train_pretrain_and_synthesize_finish_on_tiny_images(tmp_path, shape, capsys, one_thread):
    data = _tiny_dataset(tmp_path / "data", shape)
    folders = ["--images", "images", "--labels", "labels"]
    steps = ["--max-steps", "2", "--quiet"]
    assert main(["train", str(data), *folders, "--out", str(tmp_path / "seg"), *steps, "--no-check"]) == 0
    assert main(["pretrain", str(data / "images"), "--out", str(tmp_path / "pre"), *steps]) == 0
    assert main(["synthesize", "train", str(data), *folders, "--out", str(tmp_path / "gan"), *steps]) == 0
    for run in ("seg", "pre", "gan"):
        assert (tmp_path / run / "checkpoint_best.pt").is_file(), run
    assert "error" not in capsys.readouterr().err
