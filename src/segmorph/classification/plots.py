"""Pictures of a classifier's validation results: the ROC curve and the confusion matrix (atomic PNG writes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segmorph.metrics.classification import roc_auc, roc_curve
from segmorph.plots import plt, save_figure


def plot_roc(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str], path: str | Path,
    threshold: float | None = None,
) -> Path:  # fmt: skip
    """ROC curve(s) as a PNG: the positive class (index 1) for two classes, else one-vs-rest per class.

    Args:
        probabilities: ``(N, K)`` class probabilities.
        labels: ``(N,)`` class indices.
        class_names: K names.
        path: Output PNG.
        threshold: For two classes, the operating point marked on the curve (``p[:, 1] >= threshold``).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    columns = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    for k in columns:
        positive = (labels == k).astype(np.int64)
        fpr, tpr, _ = roc_curve(probabilities[:, k], positive)
        axis.plot(fpr, tpr, label=f"{class_names[k]} (AUC {roc_auc(probabilities[:, k], positive):.3f})")
    if threshold is not None and probabilities.shape[1] == 2:
        called = probabilities[:, 1] >= threshold
        sensitivity = called[labels == 1].mean() if (labels == 1).any() else np.nan
        false_rate = called[labels == 0].mean() if (labels == 0).any() else np.nan
        axis.plot([false_rate], [sensitivity], "o", color="black", label=f"threshold {threshold:.3f}")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
             xlim=(0, 1), ylim=(0, 1.01), title="validation ROC")  # fmt: skip
    axis.legend(loc="lower right", fontsize=8)
    return save_figure(figure, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix ``(K, K)`` (rows true, columns predicted) as a PNG with counts and row percentages."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = 1.2 + 1.1 * len(class_names)
    figure, axis = plt.subplots(figsize=(size + 0.8, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.6 else "black"
        axis.text(column, row, f"{count}\n{100 * shares[row, column]:.0f}%", ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    axis.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names, xlabel="predicted",
             ylabel="true", title=title or "validation confusion matrix")  # fmt: skip
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    return save_figure(figure, path)
