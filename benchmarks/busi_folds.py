"""BUSI normal vs lesion, grouped k-fold: one classifier per fold, each within the time budget.

The hold-out split validates on 126 images of which only 22 are normal, so its ROC AUC has a standard
error of about 0.03. Here every image is validated once, by the model that did not train on it (folds
deal whole ``dup_group`` groups, class by class). Each fold keeps ``classify train``'s default weights
(the mean of the averaged weights over the second half of training, batch norm re-estimated on the
training images: nothing is picked on the fold's images but the threshold). Prints per fold:
images, normals, steps, AUC, balanced accuracy at the fold's own threshold (chosen on that fold, like
``classify train``: optimistic) and at p = 0.5 (fixed in advance); then, once every fold is scored, the
balanced accuracy of each fold at the threshold chosen (Youden's J, as ``classify train`` chooses it) on
the other folds' pooled validation predictions, so that neither the model nor its threshold saw the
images scored; then the mean and standard deviation over folds, the pooled out-of-fold AUC and balanced
accuracy, wall time and peak RSS. Finished folds (a ``summary.json`` in their folder) are read back, not
trained again; folds of another split, budget or weight selection in ``--out`` are an error.

    python benchmarks/busi_folds.py --time-budget 15m
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import time
from pathlib import Path

import numpy as np

from segmorph.classification.pipeline import train_classifier
from segmorph.classification.request import ClassifyRequest
from segmorph.cli.arguments import parse_duration
from segmorph.metrics.classification import balanced_accuracy, choose_threshold, confusion_matrix, roc_auc

ROOT = Path(__file__).resolve().parents[1]


def settings(request: dict) -> tuple:
    """What must match for a finished fold to be read back: split, budget, kept weights and scoring views."""
    return (request["num_folds"], request["time_budget_s"], request.get("select", "best"), request.get("shift", 0.0),
            request.get("tail_average", 0.0), request.get("refresh_batch_norm", False))  # fmt: skip


def out_of_fold(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(true, p_lesion, predicted)`` of a fold's validation images, from its ``val_predictions.csv``."""
    with open(run / "val_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    true = np.array([int(r["true"]) for r in rows])
    return true, np.array([float(r["p_1"]) for r in rows]), np.array([int(r["predicted"]) for r in rows])


def finished(run: Path, args: argparse.Namespace) -> bool:
    """Whether ``run`` holds a finished fold of these settings; other settings are an error."""
    if not (run / "summary.json").exists():
        return False
    found = settings(json.loads((run / "run.json").read_text())["request"])
    wanted = (args.folds, args.time_budget, ClassifyRequest.select, ClassifyRequest.shift,
              ClassifyRequest.tail_average, ClassifyRequest.refresh_batch_norm)  # fmt: skip
    if found != wanted:
        raise SystemExit(f"{run}: trained with (folds, seconds a fold, select, shift, tail, bn refresh) = {found}, "
                         f"not {wanted}; "
                         "give another --out")  # fmt: skip
    return True


def balanced_accuracy_at(true: np.ndarray, score: np.ndarray, threshold: float) -> float:
    """Balanced accuracy of calling lesion where ``score >= threshold``."""
    return balanced_accuracy(confusion_matrix(true, (score >= threshold).astype(int), 2))


def cross_fitted(pooled: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[tuple[float, float]]:
    """Per fold ``(threshold, balanced accuracy)``: the threshold chosen on the other folds' pooled predictions."""
    results = []
    for k, (true, score, _) in enumerate(pooled):
        other_true = np.concatenate([t for j, (t, _, _) in enumerate(pooled) if j != k])
        other_score = np.concatenate([s for j, (_, s, _) in enumerate(pooled) if j != k])
        threshold = choose_threshold(other_score, other_true)
        results.append((threshold, balanced_accuracy_at(true, score, threshold)))
    return results


def train_fold(args: argparse.Namespace, fold: int) -> Path:
    run = args.out / f"fold_{fold}"
    if not finished(run, args):
        request = ClassifyRequest(
            dataset=args.data, out=run, labels=Path("labels.csv"), target="lesion", group="dup_group",
            fold=fold, num_folds=args.folds, time_budget_s=args.time_budget, device=args.device, show_progress=False,
        )  # fmt: skip
        train_classifier(request)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "busi_ultrasound")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_busi_folds")
    parser.add_argument("--time-budget", type=parse_duration, default=900.0, help="training time per fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    start = time.perf_counter()
    rows, pooled = [], []
    for fold in range(args.folds):
        run = train_fold(args, fold)
        true, score, predicted = out_of_fold(run)
        summary = json.loads((run / "summary.json").read_text())
        matrix = confusion_matrix(true, predicted, 2)
        at_half = balanced_accuracy_at(true, score, 0.5)
        rows.append((fold, true.size, int((true == 0).sum()), summary["fit"]["steps"], roc_auc(score, true),
                     balanced_accuracy(matrix), at_half))  # fmt: skip
        pooled.append((true, score, predicted))
        print(f"fold {fold}: {true.size} images ({rows[-1][2]} normal), {rows[-1][3]} steps, "
              f"AUC {rows[-1][4]:.3f}, balanced accuracy {rows[-1][5]:.3f} (at p = 0.5: {at_half:.3f})",
              flush=True)  # fmt: skip
    crossed = cross_fitted(pooled)
    for fold, (threshold, bacc) in enumerate(crossed):
        print(f"fold {fold}: balanced accuracy {bacc:.3f} at the other folds' threshold {threshold:.3f}")
    aucs, baccs, halves = (np.array([r[k] for r in rows]) for k in (4, 5, 6))
    true, score, predicted = (np.concatenate(parts) for parts in zip(*pooled))
    print(f"mean over {args.folds} folds: AUC {aucs.mean():.3f} (SD {aucs.std(ddof=1):.3f}), "
          f"balanced accuracy {baccs.mean():.3f} (SD {baccs.std(ddof=1):.3f}; at p = 0.5: {halves.mean():.3f}; "
          f"at the other folds' threshold: {np.mean([b for _, b in crossed]):.3f})")  # fmt: skip
    print(
        f"pooled out-of-fold ({true.size} images, {int((true == 0).sum())} normal): AUC {roc_auc(score, true):.3f}, "
        f"balanced accuracy {balanced_accuracy(confusion_matrix(true, predicted, 2)):.3f} (each fold's threshold)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"wall {time.perf_counter() - start:.0f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
