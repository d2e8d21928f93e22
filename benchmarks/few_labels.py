"""Hippocampus with few labels: what pretraining, semi-supervised training and GAN pairs add to supervised training.

The fixed fold-0 split (166 training / 42 validation cases). For each N labelled training cases (``--labelled``)
and seed (``--seeds``; the N = 5 rows with every seed, larger N with the first), rows of the same training budget:

* ``a``: supervised only (``segmorph train --labelled-cases N``);
* ``b``: fine-tuned from one self-supervised pretraining on the 166 training images (``--init PRE``; the pretraining
  runs once, with its own budget, and every N reuses it);
* ``c``: semi-supervised, the fold's other training cases as unlabelled scans (``--unlabelled fold``; not run when
  N is every training case: there is nothing left unlabelled);
* ``d``: with GAN-synthesised pairs (``--synthetic GAN --synthetic-share 0.3``), the GAN trained on the same N
  labelled cases only (a dataset view of them), with its own budget;
* ``e``: pretraining and semi-supervised together (``--init PRE --unlabelled fold``); where ``c`` does not apply,
  pretraining and GAN pairs.

Each run is its own ``segmorph`` process (wall time and peak RSS measured). The score is the mean over the 42
validation cases then over the two classes of Dice, from the full predictor (original grid, mirroring). A step is
skipped when its output exists, so an interrupted benchmark continues where it stopped.

    python benchmarks/few_labels.py --out /tmp/few --budget 10m --pretrain-budget 20m --gan-budget 10m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from child_runs import run_once

from segmorph.cli.arguments import parse_duration
from segmorph.segmentation.datasets import load_dataset, split_cases
from segmorph.segmentation.few_labels import choose_labelled

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("a", "b", "c", "d", "e")


def score(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "validation" / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    classes = {c["name"]: round(c["dice"]["mean"], 4) for c in metrics["classes"].values()}
    return {
        "dice": round(metrics["mean_over_classes"]["dice"], 4),
        "classes": classes,
        "steps": summary["fit"]["steps"],
    }


class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.data: Path = args.data
        spec = load_dataset(args.data)
        # the split of seed 0, fixed for every seed (a seed changes the labelled cases and the training draws)
        self.train_ids, self.val_ids = split_cases(spec.case_ids, 0, 5, 0)
        self.records: list[dict] = []

    def step(self, name: str, command: list[str], done: Path) -> dict:
        """Run ``command`` unless ``done`` exists; the wall time and peak memory of the run (or those recorded)."""
        return run_once(self.out / "records", name, command, done)

    def pretrain(self) -> Path:
        folder = self.out / "pretrain"
        images = [str(self.data / "imagesTr" / f"{c}.nii.gz") for c in self.train_ids]
        record = self.step("pretrain", ["segmorph", "pretrain", *images, "--out", str(folder), "--time-budget",
                                        self.args.pretrain_budget, "--quiet"], folder / "summary.json")  # fmt: skip
        print(f"pretraining: {len(images)} images, {record}", flush=True)
        return folder

    def gan(self, labelled: list[str], tag: str) -> Path:
        folder = self.out / f"gan_{tag}"
        command = ["segmorph", "synthesize", "train", str(self.data), "--fold", "0", "--train-cases", *labelled,
                   "--out", str(folder), "--time-budget", self.args.gan_budget, "--quiet"]  # fmt: skip
        record = self.step(f"gan_{tag}", command, folder / "summary.json")
        print(f"GAN {tag}: {len(labelled)} labelled cases, {record}", flush=True)
        return folder

    def train(self, tag: str, row: str, count: int, seed: int, extra: list[str]) -> None:
        folder = self.out / tag / row
        command = ["segmorph", "train", str(self.data), "--val-cases", *self.val_ids, "--labelled-cases", str(count),
                   "--seed", str(seed), "--time-budget", self.args.budget, "--out", str(folder), "--quiet",
                   "--no-check", *extra]  # fmt: skip
        record = self.step(f"{tag}_{row}", command, folder / "summary.json")
        result = {"labelled": count, "seed": seed, "row": row, **score(folder), **record}
        self.records.append(result)
        print(json.dumps(result), flush=True)

    def run_all(self) -> None:
        rows = self.args.rows.split(",")
        pre = self.pretrain() if {"b", "e"} & set(rows) else None
        for count in [int(n) for n in self.args.labelled.split(",")]:
            seeds = [int(s) for s in self.args.seeds.split(",")]
            for seed in seeds if count == min(int(n) for n in self.args.labelled.split(",")) else seeds[:1]:
                self.rows_for(count, seed, rows, pre)
        table = self.out / "few_labels.json"
        table.write_text(json.dumps(self.records, indent=1))
        print(f"wrote {table}")

    def rows_for(self, count: int, seed: int, rows: list[str], pre: Path | None) -> None:
        tag = f"n{count}_s{seed}"
        everything = count >= len(self.train_ids)
        labelled = choose_labelled(self.train_ids, count, seed)
        gan = self.gan(labelled, tag) if {"d"} & set(rows) or ("e" in rows and everything) else None
        synthetic = ["--synthetic", str(gan), "--synthetic-share", "0.3"] if gan else []
        semi = ["--unlabelled", "fold"]
        plans = {
            "a": [], "b": ["--init", str(pre)], "c": semi, "d": synthetic,
            "e": ["--init", str(pre), *(synthetic if everything else semi)],
        }  # fmt: skip
        for row in rows:
            if row == "c" and everything:
                continue
            self.train(tag, row, count, seed, plans[row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "msd_hippocampus")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_few_labels")
    parser.add_argument("--budget", default="10m", help="training time of each row")
    parser.add_argument("--pretrain-budget", default="20m", help="the one self-supervised pretraining")
    parser.add_argument("--gan-budget", default="10m", help="each GAN (one per labelled set)")
    parser.add_argument("--labelled", default="5,20,166", help="numbers of labelled training cases")
    parser.add_argument("--seeds", default="0,1", help="seeds of the smallest N (larger N: the first)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which of {', '.join(ROWS)}")
    args = parser.parse_args()
    for budget in (args.budget, args.pretrain_budget, args.gan_budget):
        parse_duration(budget)  # refuse a bad budget before anything runs
    Benchmark(args).run_all()


if __name__ == "__main__":
    main()
