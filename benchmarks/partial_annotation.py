"""Hippocampus with partial annotations: every K-th slice labelled against every slice, at one time budget.

Fold 0 of 5 (166 training / 42 validation cases). Two ``segmorph train`` runs of the same budget, each its own
process (wall time and peak RSS measured):

* ``full``: every slice of the training cases labelled (the default run);
* ``every_K``: ``--annotate-every K``: each training case keeps the labels of every K-th slice across its
  through-plane axis, the others are ignored by the loss and the patch sampler (validation keeps every label).

Prints the mean validation Dice (full predictor: original grid, mirroring) of both and their difference; a run
whose output exists is skipped.

    python benchmarks/partial_annotation.py --out /tmp/partial --time-budget 20m --every 5
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


def train(data: Path, folder: Path, budget: str, extra: list[str]) -> dict:
    """``segmorph train`` into ``folder`` (skipped when it finished before); its Dice, steps, wall and peak."""
    record = folder.with_suffix(".json")
    if not (folder / "summary.json").is_file() or not record.is_file():
        command = ["segmorph", "train", str(data), "--fold", "0", "--time-budget", budget, "--out", str(folder),
                   "--quiet", "--no-check", *extra]  # fmt: skip
        print("$ " + " ".join(command), flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(command)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"failed: {' '.join(command)}")
        facts = {
            "wall_min": round((time.perf_counter() - start) / 60, 2),
            "peak_gib": round(usage.ru_maxrss / 2**20, 2),
        }
        record.write_text(json.dumps(facts))
    metrics = json.loads((folder / "validation" / "metrics.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    classes = {c["name"]: round(c["dice"]["mean"], 4) for c in metrics["classes"].values()}
    return {"dice": round(metrics["mean_over_classes"]["dice"], 4), "classes": classes,
            "steps": summary["fit"]["steps"], **json.loads(record.read_text())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "msd_hippocampus")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_partial_annotation")
    parser.add_argument("--time-budget", default="20m")
    parser.add_argument("--every", type=int, default=5, help="keep every K-th slice labelled")
    args = parser.parse_args()
    parse_duration(args.time_budget)
    args.out.mkdir(parents=True, exist_ok=True)
    full = train(args.data, args.out / "full", args.time_budget, [])
    print(f"full: {json.dumps(full)}", flush=True)
    sparse = train(args.data, args.out / f"every_{args.every}", args.time_budget, ["--annotate-every", str(args.every)])
    print(f"every {args.every}th slice: {json.dumps(sparse)}", flush=True)
    print(f"difference (every {args.every}th - full): {sparse['dice'] - full['dice']:+.4f} mean Dice")


if __name__ == "__main__":
    main()
