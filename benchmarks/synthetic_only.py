"""Train on synthetic, test on real: a segmentation model trained only on GAN-made pairs, scored on real scans.

For hippocampus (MSD layout) and DRIVE (paired folders): the fold-0 split of 5 (seed 0) of ``segmorph train``;

1. ``segmorph synthesize train`` on the training part of the split (``--gan-budget``);
2. ``segmorph synthesize sample`` of ``--count`` pairs from elastically deformed label maps of the training part;
3. ``segmorph train`` on those synthetic pairs only, no validation (``--budget``);
4. ``segmorph predict`` of the real validation scans and ``segmorph evaluate`` against their labels.

Beside it, the same ``segmorph train`` budget on the real training part (scored on the same validation scans) as
the reference. Each step is its own ``segmorph`` process (wall time and peak RSS measured) and is skipped when its
output exists. DRIVE's Dice is over the whole picture (the synthetic fundus pictures have no black surround; the
field of view is not part of the vessel map the generator draws from).

    python benchmarks/synthetic_only.py --out /tmp/tstr --gan-budget 20m --budget 10m --count 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from child_runs import run_once

from segmorph.cli.arguments import parse_duration
from segmorph.segmentation.datasets import load_dataset, split_cases

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "hippocampus": (ROOT / ".." / "shared" / "datasets" / "msd_hippocampus", []),
    "drive": (ROOT / ".." / "shared" / "datasets" / "drive_retina" / "training", ["--images", "images", "--labels",
                                                                                 "vessel_1st"]),
}  # fmt: skip


class Benchmark:
    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.data, self.folders = DATASETS[name]
        self.out: Path = args.out / name
        self.args = args
        images, labels = self.folders[1::2] or [None, None]
        self.spec = load_dataset(self.data, images, labels)
        self.train_ids, self.val_ids = split_cases(self.spec.case_ids, 0, 5, 0)
        self.out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, command: list[str], done: Path) -> dict:
        return run_once(self.out / "records", name, command, done)

    def links(self, ids: list[str], kind: str) -> Path:
        """A folder of links to the images (``kind`` "images") or label maps ("labels") of ``ids``."""
        folder = self.out / f"val_{kind}"
        folder.mkdir(exist_ok=True)
        for case_id in ids:
            case = self.spec.case(case_id)
            source = case.images[0] if kind == "images" else case.label
            link = folder / source.name
            if not link.exists():
                link.symlink_to(source.resolve())
        return folder

    def score(self, run_dir: Path, tag: str) -> dict:
        """Predict the real validation scans with ``run_dir`` and evaluate them against their labels."""
        predictions, metrics = self.out / f"pred_{tag}", self.out / f"metrics_{tag}.csv"
        images, labels = self.links(self.val_ids, "images"), self.links(self.val_ids, "labels")
        self.step(f"predict_{tag}", ["segmorph", "predict", str(run_dir), str(images), "--out", str(predictions),
                                     "--quiet"], predictions / ".done")  # fmt: skip
        (predictions / ".done").touch()
        self.step(f"evaluate_{tag}", ["segmorph", "evaluate", str(predictions), str(labels), "--out", str(metrics),
                                      "--labels-from", str(run_dir)], metrics)  # fmt: skip
        summary = json.loads(metrics.with_suffix(".json").read_text())
        return {"dice": round(summary["mean_over_classes"]["dice"], 4),
                "classes": {c["name"]: round(c["dice"]["mean"], 4) for c in summary["classes"].values()}}  # fmt: skip

    def run(self) -> dict:
        gan, synthetic, model = self.out / "gan", self.out / "synthetic", self.out / "on_synthetic"
        facts = {"gan": self.step("gan", ["segmorph", "synthesize", "train", str(self.data), *self.folders, "--fold",
                                          "0", "--time-budget", self.args.gan_budget, "--out", str(gan), "--quiet"],
                                  gan / "summary.json")}  # fmt: skip
        labels = [str(self.spec.case(c).label) for c in self.train_ids]
        facts["sample"] = self.step("sample", ["segmorph", "synthesize", "sample", str(gan), "--labels", *labels,
                                               "--out", str(synthetic), "--count", str(self.args.count)],
                                    synthetic / "dataset.json")  # fmt: skip
        command = ["segmorph", "train", str(synthetic), "--fold", "-1", "--time-budget", self.args.budget, "--out",
                   str(model), "--quiet", "--no-check"]  # fmt: skip
        facts["train_synthetic"] = self.step("train_synthetic", command, model / "summary.json")
        real = self.out / "on_real"
        facts["train_real"] = self.step("train_real", ["segmorph", "train", str(self.data), *self.folders, "--fold",
                                                       "0", "--time-budget", self.args.budget, "--out", str(real),
                                                       "--quiet", "--no-check"], real / "summary.json")  # fmt: skip
        result = {"synthetic_only": self.score(model, "synthetic"), "real": self.score(real, "real"), **facts,
                  "train_cases": len(self.train_ids), "val_cases": len(self.val_ids)}  # fmt: skip
        (self.out / "result.json").write_text(json.dumps(result, indent=1))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_synthetic_only")
    parser.add_argument("--datasets", default="hippocampus,drive")
    parser.add_argument("--gan-budget", default="20m")
    parser.add_argument("--budget", default="10m", help="each segmentation model's training time")
    parser.add_argument("--count", type=int, default=200, help="synthetic pairs")
    args = parser.parse_args()
    for budget in (args.gan_budget, args.budget):
        parse_duration(budget)
    for name in args.datasets.split(","):
        result = Benchmark(name, args).run()
        print(f"{name}: trained on synthetic only {json.dumps(result['synthetic_only'])}; trained on real "
              f"{json.dumps(result['real'])}; see {args.out / name / 'result.json'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
