"""BUSI normal vs lesion with 10% of the labels: a classifier trained from scratch against one fine-tuned from a
self-supervised pretraining on all the development images (as unlabelled pictures).

One grouped hold-out split (``--split-seed``, 20% of each class's images, whole ``dup_group`` groups) is fixed;
for each seed (``--seeds``) ``classify train --labelled-fraction F`` keeps a seeded, grouped, class-stratified
share F of the training images (the seed also changes the training draws) and trains for ``--budget``:

* ``scratch``: random initial weights;
* ``pretrained``: ``--init PRE``, where PRE is one ``segmorph pretrain --network resnet`` run on every development
  image (``--pretrain-budget``; labels unused, the validation images among them), reused by every seed.

Each run is its own ``segmorph`` process (wall time and peak RSS measured). Prints the validation ROC AUC and
balanced accuracy of each run and the mean per row; a step whose output exists is skipped.

    python benchmarks/busi_few_labels.py --out /tmp/busi_few --budget 5m --pretrain-budget 15m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from child_runs import run_once

from segmorph.cli.arguments import parse_duration

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "busi_ultrasound")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_busi_few_labels")
    parser.add_argument("--budget", default="5m", help="training time of each classifier")
    parser.add_argument("--pretrain-budget", default="15m", help="the one self-supervised pretraining")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the training images labelled")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()
    for budget in (args.budget, args.pretrain_budget):
        parse_duration(budget)
    out: Path = args.out
    pre = out / "pretrain"
    folders = [str(args.data / name) for name in ("normal", "benign", "malignant")]
    command = ["segmorph", "pretrain", *folders, "--network", "resnet", "--out", str(pre), "--time-budget",
               args.pretrain_budget, "--quiet"]  # fmt: skip
    facts = run_once(out / "records", "pretrain", command, pre / "summary.json")
    print(f"pretraining on {len(folders)} folders: {facts}", flush=True)
    rows: dict[str, list[dict]] = {"scratch": [], "pretrained": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for row, extra in (("scratch", []), ("pretrained", ["--init", str(pre)])):
            folder = out / f"{row}_s{seed}"
            command = ["segmorph", "classify", "train", str(args.data), "--labels", "labels.csv", "--target", "lesion",
                       "--group", "dup_group", "--out", str(folder), "--time-budget", args.budget, "--seed", str(seed),
                       "--split-seed", str(args.split_seed), "--labelled-fraction", str(args.fraction), "--quiet",
                       "--no-check", *extra]  # fmt: skip
            facts = run_once(out / "records", f"{row}_s{seed}", command, folder / "summary.json")
            summary = json.loads((folder / "summary.json").read_text())
            validation = summary["validation"]
            result = {"row": row, "seed": seed, "auc": validation["auc"], "balanced_accuracy":
                      validation["balanced_accuracy"], "train_images": summary["train_images"],
                      "val_images": summary["val_images"], **facts}  # fmt: skip
            rows[row].append(result)
            print(json.dumps(result), flush=True)
    for row, results in rows.items():
        auc = sum(r["auc"] for r in results) / len(results)
        accuracy = sum(r["balanced_accuracy"] for r in results) / len(results)
        print(f"{row}: mean ROC AUC {auc:.3f}, mean balanced accuracy {accuracy:.3f} over {len(results)} seeds")
    (out / "busi_few_labels.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
