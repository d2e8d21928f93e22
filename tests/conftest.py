"""Shared fixtures: tiny synthetic volumes with anisotropic spacing and an oblique direction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def oblique_direction() -> np.ndarray:
    """A rotation of 20 degrees about z then 10 about x: no axis aligned with the world."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


OBLIQUE = Affine.from_geometry((0.8, 1.1, 2.5), (-12.5, 30.25, 7.0), oblique_direction())


def sphere_case(shape=(24, 20, 12), seed: int = 0, affine: Affine = OBLIQUE) -> tuple[Image, Image]:
    """An MR-like image with a bright ellipsoid (label 1) holding a brighter core (label 2)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    centre = np.array(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    spacing = affine.spacing
    distance = np.linalg.norm((grid - centre) * spacing, axis=-1)
    labels = np.zeros(shape, dtype=np.int64)
    labels[distance < 7.0] = 1
    labels[distance < 4.0] = 2
    image = 100 + 60 * (labels > 0) + 40 * (labels == 2) + rng.normal(0, 8, shape)
    return (
        Image(torch.from_numpy(image[None].astype(np.float32)), affine),
        Image(torch.from_numpy(labels[None]), affine, is_label=True),
    )


def write_msd_dataset(root: Path, num_cases: int = 6, shape=(24, 20, 12)) -> Path:
    """A tiny MSD-layout dataset with oblique geometry."""
    entries = []
    for index in range(num_cases):
        image, label = sphere_case(shape, seed=index)
        name = f"case_{index:03d}.nii.gz"
        write_image(image, root / "imagesTr" / name)
        write_image(label, root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "spheres", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "outer", "2": "core"},
            "numTraining": num_cases, "training": entries}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return write_msd_dataset(tmp_path / "dataset")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder trained for a few steps on the tiny sphere dataset (shared by several tests)."""
    from segmorph.pipeline import TrainRequest, train_segmentation

    root = tmp_path_factory.mktemp("trained")
    dataset = write_msd_dataset(root / "dataset")
    request = TrainRequest(
        dataset=dataset, out=root / "run", time_budget_s=0, max_steps=100, val_cases=("case_000", "case_001"),
        overrides=(("train.steps_per_epoch", 20), ("network.features", [8, 16, 32])), show_progress=False,
    )  # fmt: skip
    train_segmentation(request)
    return root / "run"


@pytest.fixture
def one_thread():
    """One intra-op thread: the same training run (and result) on every machine, and faster on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
