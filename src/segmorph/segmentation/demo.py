"""``segmorph demo``: the README's main job on real data (MSD hippocampus).

Trains briefly, segments the held-out validation fold on the scans' own grids, scores the masks
(the table is printed) and writes overlay pictures: the worst validation cases against their references
(``validation/overlays``) and the first few predictions (``overlays``), with the dataset's label names.
"""

from __future__ import annotations

import json
from pathlib import Path

from segmorph.errors import SegmorphError
from segmorph.progress import console

DATA_HINT = (
    "the MSD Task04 hippocampus data were not found; download Task04_Hippocampus.tar from "
    "http://medicaldecathlon.com/ (CC BY-SA 4.0), unpack it and pass its folder with --data"
)


def run_demo(data: Path, out: Path, time_budget_s: float = 300.0, device: str = "cpu", overlays: int = 4) -> dict:
    """Run the demo and return the training summary (see :func:`segmorph.segmentation.pipeline.train_segmentation`)."""
    from segmorph.segmentation.datasets import load_dataset
    from segmorph.segmentation.pipeline import TrainRequest, train_segmentation
    from segmorph.segmentation.predict import PredictOptions, predict_files

    console.print(
        f"segmorph demo: hippocampus data at {data}, training for {time_budget_s / 60:.1f} min", highlight=False
    )
    request = TrainRequest(dataset=data, out=out, time_budget_s=time_budget_s, device=device, fold=0)
    summary = train_segmentation(request)
    run = json.loads((out / "run.json").read_text())
    spec = load_dataset(data)  # the dataset's own file names (MSD or nnU-Net v2 layout)
    scans = [spec.case(case).images[0] for case in run["val_cases"][:overlays]]
    predict_files(out, scans, out / "overlays", device, PredictOptions(), overlays=True, show_progress=False)
    metrics = summary["validation"]["metrics"]
    console.print(
        f"demo done: mean Dice {metrics['mean_over_classes']['dice']:.3f} over {summary['val_cases']} validation cases; "
        f"masks and metrics in {out / 'validation'}, the worst cases against their references in "
        f"{out / 'validation' / 'overlays'}, overlays of the predictions in {out / 'overlays'}",
        highlight=False,
    )
    return summary


def find_demo_data(given: Path | None) -> Path:
    """The hippocampus dataset folder: ``given``, or ../shared/datasets/msd_hippocampus near here."""
    candidates = [given] if given else [
        Path.cwd() / ".." / "shared" / "datasets" / "msd_hippocampus",
        Path(__file__).resolve().parents[4] / "shared" / "datasets" / "msd_hippocampus",
        Path.cwd() / "shared" / "datasets" / "msd_hippocampus",
    ]  # fmt: skip
    for candidate in candidates:
        if candidate and (candidate / "dataset.json").is_file():
            return candidate.resolve()
    raise SegmorphError(DATA_HINT, given)
