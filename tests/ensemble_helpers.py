"""Ensembles made from one trained run for tests: cross-validation copies, a perturbed member, find-best folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint
from segmorph.segmentation.crossval_layout import CROSSVAL_FILE, fold_folder
from segmorph.segmentation.find_best import ENSEMBLE_FILE


def copy_as_cross_validation(run: Path, out: Path, folds: int) -> Path:
    """``out`` as a cross-validation run whose folds ``fold_0 .. fold_<folds-1>`` are copies of ``run``."""
    for fold in range(folds):
        shutil.copytree(run, fold_folder(out, fold), ignore=shutil.ignore_patterns("preprocessed"))
    states = {str(k): {"state": "done", "wall_s": 1.0, "fit_s": 1.0} for k in range(folds)}
    record = {"num_folds": folds, "seed": 0, "folds": list(range(folds)), "time_budget_s": 0,
              "budget_per_fold": False, "max_steps": 0, "fold_states": states}  # fmt: skip
    (out / CROSSVAL_FILE).write_text(json.dumps(record))
    return out


def perturb_checkpoint(run: Path, scale: float = 0.05, seed: int = 0, checkpoint: str = "best") -> None:
    """Add ``scale`` times seeded standard-normal noise to every floating weight of ``run``'s checkpoint, saved in
    the same checkpoint format (config and extra states kept)."""
    path = run / f"checkpoint_{checkpoint}.pt"
    state, config, extras = load_checkpoint(path)
    generator = torch.Generator().manual_seed(seed)
    changed = {
        key: value + scale * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in state.items()
    }  # fmt: skip
    save_checkpoint(path, changed, config, **extras)


def write_ensemble_folder(folder: Path, runs: list[Path]) -> Path:
    """A find-best ensemble folder whose ``ensemble.json`` lists ``runs``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENSEMBLE_FILE).write_text(json.dumps({"members": [str(run) for run in runs]}))
    return folder
