"""The folder layout of a classification cross-validation run (``segmorph classify train --folds``).

A classification cross-validation run folder holds::

    config.json              the settings every fold trained with
    crossval.json            "task": "classification", the split (number of folds, split seed, hold-out share),
                             the hold-out images, the folds asked for, the time budget, the --init source
                             (every fold starts from it), and per fold (and for
                             the final model) its state, budget and the time it took
    fold_<k>/                an ordinary classification run trained on the other folds, validated on fold k
    final/                   with --final: one model trained on every image not held out, no validation
    cross_validation.csv     out-of-fold rows: fold, image, group, true, predicted (at the out-of-fold
                             threshold), p_<class> per class
    cross_validation.json    pooled out-of-fold metrics, the threshold chosen on them, per-fold AUC with mean
                             and std, and the hold-out figures of the ensemble (and of the final model)
    holdout_predictions.csv  per hold-out image: true class and the ensemble's (and final model's) probabilities
    roc.png, confusion.png   pooled out-of-fold ROC curve and confusion matrix at the threshold

Nothing here imports torch: the report reads these names too.
"""

from __future__ import annotations

from pathlib import Path

from segmorph.records import read_json

CROSSVAL_FILE = "crossval.json"
OUT_OF_FOLD_CSV = "cross_validation.csv"
OUT_OF_FOLD_JSON = "cross_validation.json"
HOLDOUT_CSV = "holdout_predictions.csv"
FINAL_FOLDER = "final"
TASK = "classification"  # crossval.json's "task": tells it from a segmentation cross-validation run


def fold_folder(run_dir: str | Path, fold: int) -> Path:
    """``run_dir/fold_<fold>``."""
    return Path(run_dir) / f"fold_{fold}"


def is_classification_cross_validation(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds the ``crossval.json`` of a classification cross-validation run.

    Raises:
        SegmorphError: The ``crossval.json`` there is unreadable or not a JSON object.
    """
    path = Path(run_dir) / CROSSVAL_FILE
    return path.is_file() and read_json(path).get("task") == TASK
