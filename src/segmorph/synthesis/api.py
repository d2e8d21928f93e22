"""The Python API of GAN synthesis: train a label-to-image GAN, write synthetic datasets, make synthetic cases.

Example:
    >>> from segmorph.synthesis import train_gan, sample, synthetic_cases
    >>> run = train_gan("msd_hippocampus", "runs/gan", time_budget="20m")
    >>> sample(run.out, ["msd_hippocampus/labelsTr"], "synthetic/", count=50)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmorph.synthesis.deform import Deformation
from segmorph.synthesis.pipeline import SynthesisRequest, train_synthesis
from segmorph.synthesis.sampling import synthetic_cases, write_synthetic_dataset
from segmorph.synthesis.task import GanSettings

__all__ = ["SynthesisRun", "sample", "synthetic_cases", "train_gan"]


@dataclass(frozen=True)
class SynthesisRun:
    """What :func:`train_gan` did.

    Attributes:
        out: The run folder (``segmorph synthesize sample`` and ``segmorph train --synthetic`` take it).
        steps: Training steps taken.
        elapsed_s: Training time in seconds.
        stopped_because: Why training ended.
        best_val_correlation: Best mean correlation of generated and real held-out images (NaN without
            validation cases).
        summary: ``summary.json``'s contents.
    """

    out: Path
    steps: int
    elapsed_s: float
    stopped_because: str
    best_val_correlation: float
    summary: dict[str, Any]


def train_gan(
    dataset: str | Path, out: str | Path, *, time_budget: str | float | None = None, max_steps: int = 0,
    images_dir: str | Path | None = None, labels_dir: str | Path | None = None,
    spacing: float | Sequence[float] | None = None, network_dims: int | None = None, fold: int = 0, num_folds: int = 5,
    train_cases: Sequence[str] = (), labelled_cases: int = 0, seed: int = 0, resume: bool = False, device: str = "cpu",
    cache_dir: str | Path | None = None, show_progress: bool = True, settings: GanSettings | None = None,
) -> SynthesisRun:  # fmt: skip
    """Train a label-conditioned GAN on a labelled dataset (see :mod:`segmorph.synthesis.pipeline`).

    Args:
        dataset: Dataset folder (MSD layout, or paired folders with ``images_dir``/``labels_dir``).
        out: Run folder.
        time_budget: ``"20m"``-style text or seconds (default 20 minutes; none when ``max_steps`` alone is given).
        max_steps: Step limit (0: the time budget alone).
        images_dir, labels_dir: Folders of a paired-folder dataset, relative to ``dataset``.
        spacing: Voxel size in mm to plan for (one value or one per axis), as ``segmorph train --spacing``.
        network_dims: 2: a 2D generator on slices of 3D scans.
        fold, num_folds: ``segmorph train``'s split; the GAN trains on the training part (-1: every case).
        train_cases: Only these case ids of the training part (e.g. the few labelled ones).
        labelled_cases: Only this many cases of the training part, those ``segmorph train --labelled-cases``
            chooses with the same fold and seed (0: all).
        seed: Seed of the split, the weights and the draws.
        resume: Continue from the run folder's last checkpoint.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        cache_dir: Preprocessing cache (default ``out/preprocessed``).
        show_progress: Progress bars and the summary line.
        settings: The GAN's settings (default :class:`GanSettings`).

    Raises:
        SegmorphError: Bad input, one line naming the file.
    """
    from segmorph.segmentation.api import spacing_values, time_budget_seconds

    request = SynthesisRequest(
        dataset=Path(dataset), out=Path(out), time_budget_s=time_budget_seconds(time_budget, max_steps), max_steps=max_steps, device=device,
        images_dir=None if images_dir is None else Path(images_dir),
        labels_dir=None if labels_dir is None else Path(labels_dir),
        target_spacing=spacing_values(spacing), network_dims=network_dims,
        fold=fold, num_folds=num_folds, train_cases=tuple(train_cases), labelled_cases=labelled_cases, seed=seed,
        resume=resume,
        cache_dir=None if cache_dir is None else Path(cache_dir), show_progress=show_progress,
        settings=settings or GanSettings(),
    )  # fmt: skip
    summary = train_synthesis(request)
    return SynthesisRun(Path(out), summary["steps"], summary["elapsed_s"], summary["stopped_because"],
                        _score(summary["best_val_correlation"]), summary)  # fmt: skip


def sample(
    gan: str | Path, labels: Sequence[str | Path], out: str | Path, count: int = 20, seed: int = 0, *,
    magnitude_mm: float | None = None, smoothness_mm: float | None = None, device: str = "cpu",
    show_progress: bool = True,
) -> list[str]:  # fmt: skip
    """Write ``count`` synthetic pairs from deformed ``labels`` as the dataset folder ``out`` (see
    :func:`segmorph.synthesis.sampling.write_synthetic_dataset`); returns the case ids written.

    Args:
        gan: A ``segmorph synthesize train`` run folder.
        labels: Label map files, folders of them, or dataset folders.
        out: The dataset folder to create.
        count: Number of pairs.
        seed: Seed of the draws.
        magnitude_mm, smoothness_mm: Deformation (:class:`segmorph.synthesis.deform.Deformation`; None: relative
            to each label map's field of view).
        device: Where the generator runs.
        show_progress: A progress bar.
    """
    try:
        deformation = Deformation(magnitude_mm, smoothness_mm)
    except ValueError as err:
        from segmorph.errors import SegmorphError

        raise SegmorphError(str(err)) from None
    return write_synthetic_dataset(gan, labels, out, count, seed, deformation=deformation, device=device,
                                   show_progress=show_progress)  # fmt: skip


def _score(value: float | None) -> float:
    return float("nan") if value is None else float(value)
