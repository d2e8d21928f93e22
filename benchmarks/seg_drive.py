"""DRIVE retinal vessel benchmark (2D RGB): train within a time budget on 15 images, score 5 held out.

Prints vessel Dice (whole image and inside the field-of-view mask), HD95, wall time and peak RSS, next to
a classical baseline (Otsu on the same images, scored the same way).

    python benchmarks/seg_drive.py --time-budget 20m
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from segmorph.cli.arguments import parse_duration
from segmorph.io import read_image
from segmorph.segmentation.pipeline import TrainRequest, train_segmentation
from segmorph.segmentation.plan import parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2 * (prediction & reference).sum() / total)


def fov_dice(data: Path, predictions: Path, case_ids: list[str]) -> tuple[float, float]:
    """Mean vessel Dice inside the field of view, for the model and for an Otsu baseline on the green channel."""
    from segmorph.segmentation.baselines import otsu

    model, baseline = [], []
    for case in case_ids:
        fov = read_image(data / "fov" / f"{case}.png", is_label=True).numpy()[0] > 0
        reference = read_image(data / "vessel_1st" / f"{case}.png", is_label=True).numpy()[0] > 0
        predicted = read_image(predictions / f"{case}.nii.gz", is_label=True).numpy()[0] > 0
        image = read_image(data / "images" / f"{case}.png")
        green = -image.data[1:2]  # vessels are dark in the green channel: negate so they are bright
        inside = torch.from_numpy(fov)[None]
        green = torch.where(inside, green, green[inside].min())  # threshold the field of view only
        thresholded = otsu(image.with_data(green), channel=0).numpy()[0] > 0
        model.append(dice(predicted & fov, reference & fov))
        baseline.append(dice(thresholded & fov, reference & fov))
    return float(np.mean(model)), float(np.mean(baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "drive_retina" / "training")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_drive")
    parser.add_argument("--time-budget", type=parse_duration, default=1200.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    started = time.perf_counter()
    request = TrainRequest(
        dataset=args.data, out=args.out, time_budget_s=args.time_budget, device=args.device, fold=0, num_folds=4,
        images_dir=Path("images"), labels_dir=Path("vessel_1st"), overrides=tuple(parse_overrides(args.overrides).items()),
    )  # fmt: skip
    summary = train_segmentation(request)
    wall = time.perf_counter() - started
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    vessel = summary["validation"]["metrics"]["classes"]["1"]
    val_ids = json.loads((args.out / "run.json").read_text())["val_cases"]
    inside_fov, baseline = fov_dice(args.data, args.out / "validation", val_ids)

    print("\nDRIVE vessel segmentation benchmark")
    print(f"  validation images      {len(val_ids)} ({', '.join(val_ids)}), training images {summary['train_cases']}")
    print(f"  training               {summary['fit']['steps']} steps in {summary['fit']['elapsed_s'] / 60:.1f} min")
    print(f"  vessel Dice            {vessel['dice']['mean']:.4f} ± {vessel['dice']['std']:.4f} (whole image)")
    print(f"  vessel Dice in FOV     {inside_fov:.4f}   (Otsu baseline on green channel {baseline:.4f})")
    print(f"  HD95                   {vessel['hd95']['mean']:.2f} px")
    print(f"  wall time              {wall / 60:.1f} min;  peak RSS {peak_rss_gib:.2f} GiB")


if __name__ == "__main__":
    main()
