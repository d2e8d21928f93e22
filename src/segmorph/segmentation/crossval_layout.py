"""The folder layout of a cross-validation run.

A cross-validation run folder holds::

    crossval.json          "task": "segmentation", the split (number of folds, seed), the folds asked for, the time budget, and per fold
                           its state and the time it took
    fold_<k>/              an ordinary run folder per fold, validated on fold k (plan.json, checkpoints,
                           validation/ with the out-of-fold masks, metrics and probabilities)
    plan.json              the first fold's plan (the folds share it but for the time budget): label names, channels
    preprocessed/          the preprocessing cache the folds share
    cross_validation.csv   out-of-fold rows: fold, case, class, metrics (the folds' validation/metrics.csv)
    cross_validation.json  per class: out-of-fold mean, each fold's mean, their mean and standard deviation
    postprocessing.json    per class the clean-up chosen on out-of-fold predictions, with its evidence
"""

from __future__ import annotations

from pathlib import Path

from segmorph.records import read_json

CROSSVAL_FILE = "crossval.json"
OUT_OF_FOLD_CSV = "cross_validation.csv"
OUT_OF_FOLD_JSON = "cross_validation.json"
POSTPROCESSING_FILE = "postprocessing.json"


def fold_folder(run_dir: str | Path, fold: int) -> Path:
    """``run_dir/fold_<fold>``."""
    return Path(run_dir) / f"fold_{fold}"


TASK = "segmentation"  # crossval.json's "task": tells it from a classification cross-validation run


def is_cross_validation_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a segmentation ``crossval.json``."""
    path = Path(run_dir) / CROSSVAL_FILE
    return path.is_file() and read_json(path).get("task", TASK) == TASK
