"""Prediction precision scored out of fold: float32 against bfloat16 autocast, same models, same cases.

Every validation case of every fold of a cross-validation run is predicted twice by the fold that did not train on
it (mirroring on, overlap 0.5, as ``segmorph predict``): in float32 and under bfloat16 autocast. Prints per class
the out-of-fold mean Dice of each precision and their difference, how many voxels' labels differ, the largest
probability difference, and the seconds per case of each (alternating, so load hits both alike). On CPUs without
fast bfloat16 (no AMX / AVX512-BF16) autocast is off and both rows are float32.

    python benchmarks/precision_oof.py /tmp/bench_cv/h20/cv3d
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from segmorph.engine.autocast import half_precision_is_fast
from segmorph.io import read_image
from segmorph.metrics.segmentation import dice_score
from segmorph.segmentation.crossval_layout import CROSSVAL_FILE, fold_folder
from segmorph.segmentation.predict import PredictOptions, Predictor, most_likely_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a segmentation cross-validation run folder")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets"
                        / "msd_hippocampus", help="the dataset the run was trained on")  # fmt: skip
    args = parser.parse_args()
    record = json.loads((args.run / CROSSVAL_FILE).read_text())
    folds = sorted(int(k) for k, s in record["fold_states"].items() if s.get("state") == "done")
    dice = {"float32": [], "bfloat16": []}
    seconds = {"float32": [], "bfloat16": []}
    changed, voxels, largest = 0, 0, 0.0
    for fold in folds:
        folder = fold_folder(args.run, fold)
        predictors = {"float32": Predictor(folder, options=PredictOptions(amp=False)),
                      "bfloat16": Predictor(folder, options=PredictOptions(amp=True))}  # fmt: skip
        labels = [k for k in predictors["float32"].plan.labels if k > 0]
        for reference_path in sorted((folder / "validation" / "reference").glob("*.nii.gz")):
            case = reference_path.name.removesuffix(".nii.gz")
            image = read_image(args.data / "imagesTr" / f"{case}.nii.gz")
            reference = read_image(reference_path, is_label=True).numpy()[0]
            outputs = {}
            for name, predictor in predictors.items():
                start = time.perf_counter()
                probabilities = predictor.probabilities(image)
                seconds[name].append(time.perf_counter() - start)
                outputs[name] = probabilities
                predicted = most_likely_class(probabilities)
                dice[name].append([dice_score(predicted == k, reference == k) for k in labels])
            a, b = (most_likely_class(outputs[n]) for n in ("float32", "bfloat16"))
            changed += int((a != b).sum())
            voxels += a.size
            largest = max(largest, float((outputs["float32"] - outputs["bfloat16"].float()).abs().max()))
        names = [predictors["float32"].plan.labels[k] for k in labels]
    print(f"bfloat16 fast on this CPU: {half_precision_is_fast('cpu')}; folds {folds}; "
          f"{len(dice['float32'])} out-of-fold cases")  # fmt: skip
    means = {name: np.mean(np.array(values), axis=0) for name, values in dice.items()}
    for i, label in enumerate(names):
        print(f"{label}: float32 {means['float32'][i]:.5f}, bfloat16 {means['bfloat16'][i]:.5f}, "
              f"difference {means['bfloat16'][i] - means['float32'][i]:+.5f}")  # fmt: skip
    print(f"mean over classes: float32 {means['float32'].mean():.5f}, bfloat16 {means['bfloat16'].mean():.5f}, "
          f"difference {means['bfloat16'].mean() - means['float32'].mean():+.5f}")  # fmt: skip
    print(f"labels differing: {changed} of {voxels} voxels ({changed / voxels:.2e}); largest probability "
          f"difference {largest:.4f}")  # fmt: skip
    for name, values in seconds.items():
        print(f"{name}: {statistics.median(values):.3f} s a case (median), {statistics.mean(values):.3f} mean")


if __name__ == "__main__":
    main()
