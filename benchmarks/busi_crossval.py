"""BUSI normal vs lesion: the cross-validation workflow of ``segmorph classify train --folds``, scored on a
grouped hold-out that no fold saw.

About 20% of each class's images (whole ``dup_group`` groups, seeded by ``--split-seed``) are set aside;
the rest is dealt into 5 grouped, stratified folds that share one time budget (15 minutes for all folds
together by default). Each image not held out is scored once, by the fold model that did not train on it;
the decision threshold is chosen on those pooled out-of-fold probabilities (Youden's J), and the folds'
ensemble (the mean of their probabilities) is scored on the hold-out at that threshold. With ``--final``
one more model trains on every image not held out, for one fold's share of the budget, and is scored on
the hold-out too. Prints the per-fold table, the pooled out-of-fold ROC AUC and balanced accuracy, the
hold-out ROC AUC, balanced accuracy and confusion matrix, wall time and peak RSS. ``--resume`` continues an
interrupted run (folds done are kept).

    python benchmarks/busi_crossval.py --time-budget 15m
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from segmorph.classification.api import cross_validate_classifier
from segmorph.cli.arguments import parse_duration

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "busi_ultrasound")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_busi_crossval")
    parser.add_argument("--time-budget", type=parse_duration, default=900.0, help="training time of all folds together")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--holdout-groups", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--final", action="store_true", help="also train one model on every image not held out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    start = time.perf_counter()
    result = cross_validate_classifier(
        args.data, args.out, labels="labels.csv", target="lesion", group="dup_group", folds="all",
        num_folds=args.folds, holdout_groups=args.holdout_groups, final=args.final, time_budget=args.time_budget,
        overrides={"data.split_seed": args.split_seed}, device=args.device, resume=args.resume,
    )  # fmt: skip
    wall = time.perf_counter() - start
    pooled = result.summary["out_of_fold"]
    print(f"pooled out-of-fold ({result.images} images, {len(result.folds)} folds): ROC AUC {result.auc:.3f}, "
          f"balanced accuracy {result.balanced_accuracy:.3f} at threshold {result.threshold:.3f}; fold AUC "
          f"{result.summary['fold_auc_mean']:.3f} ± {result.summary['fold_auc_std']:.3f}; "
          f"confusion {pooled['confusion_matrix']}")  # fmt: skip
    for key in ("ensemble", "final"):
        if result.holdout and key in result.holdout:
            report = result.holdout[key]
            print(f"hold-out ({result.holdout['images']} images), {key}: ROC AUC {report['auc']:.3f}, balanced "
                  f"accuracy {report['balanced_accuracy']:.3f}, confusion {report['confusion_matrix']}")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"wall {wall:.0f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
