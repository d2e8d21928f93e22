"""The Python API of pretraining: :func:`pretrain`, what ``segmorph pretrain`` calls.

Example:
    >>> import segmorph as sm
    >>> pre = sm.pretrain("Task04_Hippocampus", out="runs/pre", time_budget="20m")
    >>> pre.best_score  # then: segmorph train Task04_Hippocampus --out runs/h --init runs/pre
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmorph.errors import SegmorphError


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` did; everything it wrote is in ``out``.

    Attributes:
        out: Run folder (``checkpoint_best.pt``, ``run.json``, ``reconstructions.png``, ...; see
            :mod:`segmorph.pretraining.pipeline`).
        network: ``"unet"``, ``"resnet"`` or ``"simplecnn"``.
        objective: The objective in words.
        steps: Optimiser steps taken.
        elapsed_s: Training time in seconds.
        stopped_because: Why training stopped (``"step or time limit"``).
        best_score: Best validation ``1 - NMSE`` over the hidden (``denoise``: all) voxels of the fixed validation
            patches; 1 is a perfect reconstruction, 0 no better than the mean.
        best_epoch: Epoch of ``best_score`` (its weights are ``checkpoint_best.pt``).
        train_images: Images trained on.
        val_images: Images held out for validation.
    """

    out: Path
    network: str
    objective: str
    steps: int
    elapsed_s: float
    stopped_because: str
    best_score: float
    best_epoch: int
    train_images: int
    val_images: int

    @classmethod
    def from_summary(cls, out: Path, summary: Mapping[str, Any]) -> PretrainResult:
        """Build from the summary :func:`segmorph.pretraining.pipeline.run_pretraining` returns."""
        fit = summary["fit"]
        return cls(
            out=Path(out), network=str(summary["network"]), objective=str(summary["objective"]),
            steps=int(fit["steps"]), elapsed_s=float(fit["elapsed_s"]), stopped_because=str(fit["stopped_because"]),
            best_score=float(fit["best_val_r2"]), best_epoch=int(fit["best_epoch"]),
            train_images=int(summary["train_images"]), val_images=int(summary["val_images"]),
        )  # fmt: skip


def pretrain(
    images: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    time_budget: str | float | None = None,
    max_steps: int = 0,
    objective: str = "mask",
    network: str = "unet",
    spacing: float | Sequence[float] | None = None,
    network_dims: int | None = None,
    width: int = 16,
    size: int | Sequence[int] | None = None,
    block: int | None = None,
    mask_ratio: float = 0.6,
    device: str = "cpu",
    seed: int = 0,
    resume: bool = False,
    show_progress: bool = True,
) -> PretrainResult:
    """Self-supervised pretraining on unlabelled scans (``segmorph pretrain``).

    Args:
        images: Image files, folders of images, DICOM series folders or dataset folders (labels left aside).
        out: Run folder; give it to ``segmorph train --init`` (U-Net) or ``segmorph classify train --init``.
        time_budget: ``"20m"``, ``"1h"`` or seconds; None: 20 minutes, or none when ``max_steps`` alone limits.
        max_steps: Step limit (0: only the time budget).
        objective: ``"mask"`` (masked-image autoencoder) or ``"denoise"`` (see
            :mod:`segmorph.pretraining.objectives`).
        network: ``"unet"``: the U-Net ``segmorph train`` would build for these images and budget;
            ``"resnet"`` / ``"simplecnn"``: a classifier's body as ``segmorph classify train`` builds it.
        spacing: U-Net: plan for this voxel size in mm (one value or x, y, z).
        network_dims: U-Net: 2 for a 2D network on slices of 3D scans (as ``segmorph train --network-dims``).
        width: Classifier: first-stage channels (as ``classify train --width``).
        size: Classifier: input size in voxels (one value for every axis); None: chosen from the images.
        block: Side of the masked (shuffled) cubes in voxels, at most the patch's shortest side; None: 8 for 3D
            U-Net patches, 4 for 2D ones, an eighth of a classifier input's shortest side (never more than the
            patch's shortest side).
        mask_ratio: Share of the blocks hidden (``mask``).
        device: ``cpu``, ``cuda`` or ``mps``.
        seed: Seed of the split, weights, patches and corruption.
        resume: Continue the run in ``out`` with its own settings.
        show_progress: Progress bars and a summary line.

    Raises:
        SegmorphError: Bad input, in one line naming the file (nothing is written when the images are refused).

    Example:
        >>> pre = pretrain("Task04_Hippocampus", "runs/pre", time_budget="20m")
        >>> pre.best_score  # 1 - NMSE of the hidden blocks of the validation patches
    """
    from segmorph.pretraining.pipeline import PretrainRequest, run_pretraining
    from segmorph.segmentation.api import spacing_values, time_budget_seconds

    sources = (images,) if isinstance(images, (str, Path)) else tuple(images)
    request = PretrainRequest(
        images=tuple(Path(p) for p in sources), out=Path(out), time_budget_s=time_budget_seconds(time_budget, max_steps),
        max_steps=int(max_steps), objective=objective, network=network, block=block, mask_ratio=float(mask_ratio),
        target_spacing=spacing_values(spacing), network_dims=network_dims, width=int(width),
        size=_sizes(size), device=device, seed=int(seed), resume=resume, show_progress=show_progress,
    )  # fmt: skip
    return PretrainResult.from_summary(Path(out), run_pretraining(request))


def _sizes(size: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """A classifier input size (one value, or one per axis) as a tuple of positive voxel counts (None stays None)."""
    if size is None:
        return None
    values = (size,) if isinstance(size, (int, float)) else tuple(size)
    try:
        values = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(v > 0 for v in values):
        raise SegmorphError(f"size: expected positive values (one, or one per axis), got {size!r}")
    return values
