"""Fixtures only; the helpers they use live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import write_msd_dataset


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return write_msd_dataset(tmp_path / "dataset")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder trained for a few steps on the tiny sphere dataset (shared by several tests)."""
    from segmorph.segmentation.pipeline import TrainRequest, train_segmentation

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
