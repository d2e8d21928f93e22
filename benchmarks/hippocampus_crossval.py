"""Hippocampus: one fold-0 model against the cross-validation workflow, at one time budget, scored out of fold.

Runs, one after another, each as its own ``segmorph`` process (wall time and peak RSS measured per process):

* ``single``: ``segmorph train --fold 0`` with the whole budget; scored on its 42 validation cases;
* ``cv3d``: ``segmorph train --folds all`` (5 folds sharing the budget); every one of the 208 development cases
  scored out of fold by the fold that did not train on it; the mean over cases then over classes;
* ``cv2d``: the same with ``--network-dims 2`` (slice-wise 2D U-Net);
* ``best``: ``segmorph find-best`` over the cross-validation runs done: each configuration, and the ensemble of
  each pair (mean of their out-of-fold probabilities), on the same out-of-fold cases.

Each step is skipped when its output exists, so an interrupted run continues where it stopped. The Dice figures
are before the out-of-fold postprocessing choice, which is printed beside them with its own effect.

    python benchmarks/hippocampus_crossval.py --time-budget 20m --out /tmp/bench_cv20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from segmorph.cli.arguments import parse_duration

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("single", "cv3d", "cv2d", "best")


def run(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its wall seconds and peak RSS in GiB (this child only)."""
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"failed with exit status {process.returncode}: {' '.join(command)}")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20


def single_dice(run_dir: Path) -> tuple[float, dict[str, float], int]:
    metrics = json.loads((run_dir / "validation" / "metrics.json").read_text())
    per_class = {c["name"]: c["dice"]["mean"] for c in metrics["classes"].values()}
    return metrics["mean_over_classes"]["dice"], per_class, metrics["cases"]


def crossval_dice(run_dir: Path) -> tuple[float, dict[str, float], int, str]:
    summary = json.loads((run_dir / "cross_validation.json").read_text())
    per_class = {c["name"]: c["dice_out_of_fold"] for c in summary["classes"].values()}
    return summary["mean_dice"], per_class, summary["cases"], summary["postprocessing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "msd_hippocampus")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_hippocampus_crossval")
    parser.add_argument("--time-budget", default="20m", help="training time of each step (all folds together)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"which of {', '.join(STEPS)} (default all)")
    args = parser.parse_args()
    parse_duration(args.time_budget)  # refuse a bad budget before anything runs
    steps = args.steps.split(",")
    train = ["segmorph", "train", str(args.data), "--time-budget", args.time_budget, "--quiet"]
    commands = {
        "single": train + ["--out", str(args.out / "single"), "--fold", "0"],
        "cv3d": train + ["--out", str(args.out / "cv3d"), "--folds", "all"],
        "cv2d": train + ["--out", str(args.out / "cv2d"), "--folds", "all", "--network-dims", "2"],
    }
    done = {"single": "summary.json", "cv3d": "cross_validation.json", "cv2d": "cross_validation.json"}
    lines = []
    for step in [s for s in STEPS[:3] if s in steps]:
        folder = args.out / step
        if not (folder / done[step]).is_file():
            wall, peak = run(commands[step] + (["--resume"] if (folder / "crossval.json").is_file() else []))
            lines.append(f"{step}: wall {wall / 60:.1f} min, peak RSS {peak:.2f} GiB")
        if step == "single":
            mean, per_class, cases, post = *single_dice(folder), "-"
        else:
            mean, per_class, cases, post = crossval_dice(folder)
        classes = ", ".join(f"{name} {dice:.4f}" for name, dice in per_class.items())
        lines.append(f"{step}: mean Dice {mean:.4f} over {cases} cases ({classes}); postprocessing: {post}")
    runs = [str(args.out / s) for s in ("cv3d", "cv2d") if (args.out / s / "cross_validation.json").is_file()]
    if "best" in steps and len(runs) >= 2:
        wall, peak = run(["segmorph", "find-best", *runs, "--out", str(args.out / "best")])
        record = json.loads((args.out / "best" / "find_best.json").read_text())
        for candidate in record["candidates"]:
            lines.append(f"find-best: {candidate['name']}: mean Dice {candidate['mean_dice']:.4f}")
        choice = record["choice"]
        lines.append(f"find-best: wall {wall:.0f} s; chosen {choice['name']} ({choice['mean_dice']:.4f}): "
                     f"{choice['reason']}; postprocessing: {record['postprocessing']}")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
