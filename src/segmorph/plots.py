"""Pictures of results: training curves and label overlays (matplotlib, no display needed)."""

from __future__ import annotations

import io as _io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segmorph.io import atomic_write_bytes  # noqa: E402

LABEL_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]]
) / 255.0


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_training_curves(history: Sequence, path: str | Path, score_name: str = "validation Dice") -> Path:
    """Training loss and the validation score (in 0..1) against epoch, one PNG."""
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    epochs = [r.epoch for r in history]
    loss_axis.plot(epochs, [r.train_loss for r in history], color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    dice_axis = loss_axis.twinx()
    dice_axis.plot(epochs, [r.val_score for r in history], color="tab:red", label=score_name)
    dice_axis.set_ylabel(score_name, color="tab:red")
    dice_axis.set_ylim(0, 1)
    figure.suptitle("segmorph training")
    return save_figure(figure, path)


def normalise_for_display(slice_2d: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_2d, [0.5, 99.5])
    return np.clip((slice_2d - low) / max(high - low, 1e-8), 0, 1)


def overlay_slices(
    image: np.ndarray, labels: np.ndarray, path: str | Path, reference: np.ndarray | None = None, num_slices: int = 3,
    title: str = "",
) -> Path:  # fmt: skip
    """PNG of a few slices with the label map drawn over the image.

    Args:
        image: ``(C, I, J[, K])``; the first channel is shown (RGB shown as colour when C == 3).
        labels: ``(I, J[, K])`` integer prediction.
        path: Output PNG.
        reference: Optional ``(I, J[, K])`` reference drawn in a second row.
        num_slices: Slices along K through the labelled region (3D only).
    """
    if image.ndim == 3:  # 2D: add a K axis of one slice
        image, labels = image[..., None], labels[..., None]
        reference = None if reference is None else reference[..., None]
    indices = _slices_through_labels(labels if reference is None else np.maximum(labels, reference), num_slices)
    rows = [("prediction", labels)] + ([("reference", reference)] if reference is not None else [])
    figure, axes = plt.subplots(len(rows), len(indices), figsize=(3.2 * len(indices), 3.2 * len(rows)), squeeze=False)
    for row, (name, label_map) in enumerate(rows):
        for column, k in enumerate(indices):
            _draw_overlay(axes[row][column], image[..., k], label_map[..., k], f"{name}, slice {k}")
    figure.suptitle(title)
    return save_figure(figure, path)


def _slices_through_labels(labels: np.ndarray, count: int) -> list[int]:
    present = np.flatnonzero(labels.reshape(-1, labels.shape[-1]).any(0))
    pool = present if present.size else np.arange(labels.shape[-1])
    interior = np.linspace(pool[0], pool[-1], num=min(count, pool.size) + 2)[1:-1]  # skip the thin ends
    return sorted({int(v) for v in interior.round()})


def _draw_overlay(axis: plt.Axes, image_slice: np.ndarray, label_slice: np.ndarray, title: str) -> None:
    if image_slice.shape[0] == 3:
        background = np.stack([normalise_for_display(c) for c in image_slice], -1)
    else:
        background = np.repeat(normalise_for_display(image_slice[0])[..., None], 3, -1)
    colours = LABEL_COLOURS[np.clip(label_slice, 0, len(LABEL_COLOURS) - 1)]
    alpha = (label_slice > 0)[..., None] * 0.45
    blended = background * (1 - alpha) + colours * alpha
    axis.imshow(np.swapaxes(blended, 0, 1), origin="upper")  # rows = J, columns = I
    axis.set_title(title, fontsize=9)
    axis.axis("off")
