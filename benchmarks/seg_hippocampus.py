"""Hippocampus segmentation benchmark: train within a time budget, score a held-out fold.

Prints per-class Dice and HD95 (original grids, mirroring TTA), wall time and peak RSS, next to a
classical baseline (multi-Otsu, scored by the same evaluate) run on the same validation cases.

    python benchmarks/seg_hippocampus.py --time-budget 20m            # the acceptance run
    python benchmarks/seg_hippocampus.py --time-budget 2m --out runs/bench_quick
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from segmorph.cli.arguments import parse_duration
from segmorph.metrics.segmentation import case_metrics
from segmorph.segmentation.datasets import load_dataset, load_sample
from segmorph.segmentation.pipeline import TrainRequest, train_segmentation

ROOT = Path(__file__).resolve().parents[1]


def otsu_baseline(data: Path, case_ids: list[str]) -> dict[int, float]:
    """Mean Dice per class of 3-class multi-Otsu (classes ordered by intensity) on the given cases."""
    from segmorph.segmentation.baselines import otsu

    spec = load_dataset(data)
    scores: dict[int, list[float]] = {1: [], 2: []}
    for case_id in case_ids:
        sample = load_sample(spec.case(case_id), spec)
        prediction = otsu(sample.image, classes=3).numpy()[0]
        rows = case_metrics(prediction, sample.label.numpy()[0], sample.image.spacing, {1: "a", 2: "p"})
        for row in rows:
            scores[row["label"]].append(row["dice"])
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "msd_hippocampus")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_hippocampus")
    parser.add_argument("--time-budget", type=parse_duration, default=1200.0)
    parser.add_argument("--fold", type=int, default=0, help="validation fold of 5 (42 of the 208 cases)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from segmorph.segmentation.plan import parse_overrides

    started = time.perf_counter()
    request = TrainRequest(
        dataset=args.data, out=args.out, time_budget_s=args.time_budget, device=args.device, fold=args.fold,
        overrides=tuple(parse_overrides(args.overrides).items()),
    )  # fmt: skip
    summary = train_segmentation(request)
    wall = time.perf_counter() - started
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    classes = summary["validation"]["metrics"]["classes"]
    val_ids = json.loads((args.out / "run.json").read_text())["val_cases"]
    baseline = otsu_baseline(args.data, val_ids)

    print("\nhippocampus segmentation benchmark")
    print(
        f"  validation cases       {summary['val_cases']} (fold {args.fold}), training cases {summary['train_cases']}"
    )
    print(f"  training               {summary['fit']['steps']} steps in {summary['fit']['elapsed_s'] / 60:.1f} min "
          f"(budget {args.time_budget / 60:.1f} min)")  # fmt: skip
    for label, name in (("1", "anterior"), ("2", "posterior")):
        c = classes[label]
        print(f"  {name:<10} Dice {c['dice']['mean']:.4f} ± {c['dice']['std']:.4f}   HD95 {c['hd95']['mean']:.2f} mm"
              f"   multi-Otsu baseline Dice {baseline[int(label)]:.4f}")  # fmt: skip
    mean_dice = (classes["1"]["dice"]["mean"] + classes["2"]["dice"]["mean"]) / 2
    print(f"  mean Dice              {mean_dice:.4f}   (baseline {np.mean(list(baseline.values())):.4f})")
    print(f"  prediction             {summary['validation']['seconds_per_case']:.2f} s per case (with mirroring TTA)")
    print(f"  wall time              {wall / 60:.1f} min (plan + preprocess + train + validate)")
    print(f"  peak RSS               {peak_rss_gib:.2f} GiB")


if __name__ == "__main__":
    main()
