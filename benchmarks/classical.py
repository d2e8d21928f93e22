"""Classical against learned segmentation, on the validation cases of the learned benchmarks.

DRIVE (the 5 validation images of ``seg_drive.py``: 23, 25, 27, 34, 40), every method scored inside the
dataset's field-of-view masks: Otsu on the inverted green channel, Hessian vesselness with Otsu's threshold
and with the strongest 12 % of the field of view, with and without CLAHE first.
Hippocampus (fold 0 of 5 of ``seg_hippocampus.py``: 42 cases), whole hippocampus (both labels) from one
seed at the reference's centre: region growing, confidence-connected growing, geodesic and Chan-Vese
level sets. A volume ratio (predicted / reference) well above 1 is a leak.

With ``--drive-run`` / ``--hippocampus-run`` (run folders of ``seg_drive.py`` / ``seg_hippocampus.py``) the
learned models' validation masks are scored the same way, in the same table.

    python benchmarks/classical.py --drive-run /tmp/bench/drive --hippocampus-run /tmp/bench/hippo
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from segmorph.image import Image
from segmorph.io import read_image, strip_suffix
from segmorph.segmentation.baselines import seed_from_mask, segment
from segmorph.segmentation.datasets import load_dataset, split_cases

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "datasets"
DRIVE_VALIDATION = ("23", "25", "27", "34", "40")
DRIVE_METHODS: dict[str, tuple[str, dict]] = {
    "Otsu, inverted green channel": ("otsu", {"steps": "channel:green,invert"}),
    "vesselness (Sato) + Otsu": ("vessels", {"steps": "channel:green"}),
    "vesselness + top 12 %": ("vessels", {"steps": "channel:green", "threshold": "top:12"}),
    "CLAHE + vesselness + Otsu": ("vessels", {"steps": "channel:green,clahe"}),
    "CLAHE + vesselness + top 12 %": ("vessels", {"steps": "channel:green,clahe", "threshold": "top:12"}),
}
HIPPOCAMPUS_METHODS: dict[str, tuple[str, dict]] = {
    "region growing (running mean)": ("region_grow", {}),
    "confidence-connected": ("confidence_connected", {}),
    "level set, geodesic": ("level_set", {"model": "geodesic"}),
    "level set, Chan-Vese": ("level_set", {"model": "chan-vese", "iterations": 50}),
}


def scores(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float, float, float]:
    """Dice, precision, recall and volume ratio (predicted / reference) of two boolean masks."""
    overlap = float((predicted & reference).sum())
    size_p, size_r = float(predicted.sum()), float(reference.sum())
    dice = 2 * overlap / (size_p + size_r) if size_p + size_r else 1.0
    return dice, overlap / size_p if size_p else 0.0, overlap / size_r if size_r else 1.0, size_p / max(size_r, 1.0)


def summarise(name: str, rows: list[tuple[float, float, float, float]], seconds: float) -> str:
    values = np.asarray(rows)
    dice = values[:, 0]
    return (f"  {name:<34} {dice.mean():.4f} ± {dice.std():.4f}   {values[:, 1].mean():.3f}   {values[:, 2].mean():.3f}"
            f"   {np.median(values[:, 3]):5.2f} / {values[:, 3].max():5.2f}   {seconds / len(rows):6.2f}")  # fmt: skip


def run_method(cases: Iterable[tuple[Image, np.ndarray, np.ndarray | None, dict]], method: str,
               params: dict) -> tuple[list, float]:  # fmt: skip
    """Segment every case (image, reference, mask, per-case params) and score it inside its mask."""
    rows, started = [], time.perf_counter()
    for image, reference, inside, extra in cases:
        predicted = segment(image, method, mask=inside, **params, **extra).numpy()[0] > 0
        if inside is not None:
            predicted, reference = predicted & inside, reference & inside
        rows.append(scores(predicted, reference))
    return rows, time.perf_counter() - started


def learned_rows(run: Path, case_ids: list[str], cases: list) -> list:
    """Scores of a run's validation masks against the references (inside the masks) already read for ``cases``."""
    masks = {strip_suffix(p.name): p for p in (run / "validation").iterdir() if p.is_file()}
    rows = []
    for case_id, (_, reference, inside, _) in zip(case_ids, cases, strict=True):
        predicted = read_image(masks[case_id], is_label=True).numpy()[0] > 0
        if inside is not None:
            predicted, reference = predicted & inside, reference & inside
        rows.append(scores(predicted, reference))
    return rows


def print_table(title: str, case_ids: list[str], cases: list, methods: dict, run: Path | None) -> None:
    """One table: every classical method on ``cases``, then the learned run's validation masks when given."""
    print(f"\n{title}")
    _header()
    for name, (method, params) in methods.items():
        print(summarise(name, *run_method(cases, method, params)))
    if run is not None:
        print(summarise(f"learned ({run.name})", learned_rows(run, case_ids, cases), 0.0))


def drive(root: Path, run: Path | None) -> None:
    cases = [
        (read_image(root / "images" / f"{c}.png"), read_image(root / "vessel_1st" / f"{c}.png", is_label=True).numpy()[0] > 0,
         read_image(root / "fov" / f"{c}.png", is_label=True).numpy()[0] > 0, {})
        for c in DRIVE_VALIDATION
    ]  # fmt: skip
    title = f"DRIVE vessels: {len(cases)} validation images ({', '.join(DRIVE_VALIDATION)}), scored inside the FOV mask"
    print_table(title, list(DRIVE_VALIDATION), cases, DRIVE_METHODS, run)


def hippocampus(root: Path, run: Path | None) -> None:
    spec = load_dataset(root)
    by_id = {case.case_id: case for case in spec.cases}
    _, val_ids = split_cases(spec.case_ids, 0, 5, 0)
    cases = []
    for case_id in val_ids:
        labels = read_image(by_id[case_id].label, is_label=True)
        image = read_image(by_id[case_id].images[0])
        cases.append((image, labels.numpy()[0] > 0, None, {"seeds": [seed_from_mask(labels)]}))
    title = f"Hippocampus: {len(cases)} validation cases (fold 0 of 5), whole hippocampus, one seed at the reference's centre"
    print_table(title, val_ids, cases, HIPPOCAMPUS_METHODS, run)


def _header() -> None:
    print(f"  {'method':<34} {'Dice':<15}   {'prec.':<5}   {'recall':<5}   {'vol. ratio':<13}   s/case")
    print(f"  {'':<34} {'mean ± std':<15}   {'':<5}   {'':<5}   {'median / max':<13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drive", type=Path, default=DATA / "drive_retina" / "training")
    parser.add_argument("--hippocampus", type=Path, default=DATA / "msd_hippocampus")
    parser.add_argument("--drive-run", type=Path, help="run folder of seg_drive.py (its validation/ masks)")
    parser.add_argument("--hippocampus-run", type=Path, help="run folder of seg_hippocampus.py (fold 0)")
    args = parser.parse_args()
    drive(args.drive, args.drive_run)
    hippocampus(args.hippocampus, args.hippocampus_run)


if __name__ == "__main__":
    main()
