"""Classification metrics (numpy): ROC AUC, ROC curve, confusion matrix, accuracy and friends, the threshold.

Conventions:

* ``labels`` are integer class indices ``(N,)`` in ``0..K-1``; ``scores`` are probabilities or any score that
  grows with the evidence for the positive class ``(N,)``; ``probabilities`` are ``(N, K)``.
* Binary problems: class 1 is the positive class, class 0 the negative one. A case is called positive when its
  score is ``>= threshold``.
* ROC AUC is the Mann-Whitney statistic computed from ranks: the probability that a random positive scores above
  a random negative, ties counting one half (so constant scores give 0.5). With one class missing it is
  undefined and returned as NaN. For more than two classes it is the unweighted mean of the one-vs-rest AUCs
  (macro), over the classes that are present.
* A ratio whose denominator is zero (no predicted positives, no positives) is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BINARY_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc")


def _as_scores_and_labels(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores: expected {labels.size} values (one per label), got {scores.size}")
    if not np.isfinite(scores).all():
        raise ValueError("scores: hold NaN or infinite values")
    return scores, labels.astype(np.int64)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` ``(N,)`` in increasing order; tied values share their mean rank."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)  # rank of the last member of each tie group
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.ravel()]


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Binary ROC AUC from average ranks (Mann-Whitney U / (n_pos * n_neg)).

    Args:
        scores: ``(N,)`` score of the positive class.
        labels: ``(N,)`` 1 for positive, 0 for negative.

    Returns:
        AUC in [0, 1]; NaN when either class is absent.
    """
    scores, labels = _as_scores_and_labels(scores, labels)
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def one_vs_rest_auc(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray) -> list[float]:
    """Per-class AUC of ``probabilities[:, k]`` for class ``k`` against all others, ``(K,)`` (NaN if absent)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    return [roc_auc(probabilities[:, k], labels == k) for k in range(probabilities.shape[1])]


def macro_auc(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """ROC AUC of ``(N, K)`` probabilities: the binary AUC of column 1 when K == 2, else the macro one-vs-rest mean."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities: expected (N, K >= 2), got shape {probabilities.shape}")
    if probabilities.shape[1] == 2:
        return roc_auc(probabilities[:, 1], labels)
    values = [v for v in one_vs_rest_auc(probabilities, labels) if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def roc_curve(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points, one per distinct score, from (0, 0) to (1, 1).

    Returns:
        ``(false_positive_rate, true_positive_rate, thresholds)``, each ``(M + 1,)`` for ``M`` distinct scores:
        point ``m`` calls positive every case with ``score >= thresholds[m]``; the first point uses
        ``thresholds[0] = inf`` (nothing positive). Rates are NaN for a class that is absent.
    """
    scores, labels = _as_scores_and_labels(scores, labels)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, positive = scores[order], labels[order] == 1
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(positive)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    n_pos, n_neg = positive.sum(), (~positive).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, true_pos / n_pos] if n_pos else np.full(true_pos.size + 1, np.nan)
        fpr = np.r_[0.0, false_pos / n_neg] if n_neg else np.full(false_pos.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, sorted_scores[last_of_tie]]


def choose_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The score threshold that maximises Youden's J = sensitivity + specificity - 1 (= 2 * balanced accuracy - 1).

    The returned value lies halfway between the lowest positive-called score and the next lower distinct
    score (the margin is split evenly, as validation data say nothing about the gap). Among equally good
    thresholds the highest is taken. With one class absent, 0.5.

    Args:
        scores: ``(N,)`` positive-class scores (probabilities) of the validation cases.
        labels: ``(N,)`` 1 for positive, 0 for negative.

    Returns:
        Threshold ``t``: call positive when ``score >= t``.
    """
    fpr, tpr, thresholds = roc_curve(scores, labels)
    if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
        return 0.5
    youden = tpr - fpr
    best = int(np.argmax(youden[1:])) + 1  # point 0 (nothing positive) is never the answer
    if best + 1 < thresholds.size:
        return float((thresholds[best] + thresholds[best + 1]) / 2.0)
    return float(thresholds[best])  # every case called positive: the lowest score itself


def confusion_matrix(
    labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts ``(K, K)`` int64: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"predictions: expected {labels.size} values, got {predictions.size}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name}: class indices must be in 0..{num_classes - 1}")
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def accuracy(matrix: np.ndarray) -> float:
    """Share of correct calls, from a confusion matrix ``(K, K)``."""
    return _ratio(np.trace(matrix), matrix.sum())


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall (sensitivity) of each class ``(K,)``; 0 for a class without cases."""
    return np.array([_ratio(matrix[k, k], matrix[k].sum()) for k in range(matrix.shape[0])])


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over the classes that have cases (insensitive to class imbalance)."""
    present = matrix.sum(1) > 0
    return float(per_class_recall(matrix)[present].mean()) if present.any() else 0.0


def precision_recall_f1(matrix: np.ndarray, positive: int = 1) -> tuple[float, float, float]:
    """Precision, recall and F1 of class ``positive`` (one-vs-rest) from a confusion matrix."""
    true_pos = matrix[positive, positive]
    precision = _ratio(true_pos, matrix[:, positive].sum())
    recall = _ratio(true_pos, matrix[positive].sum())
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def predict_classes(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class index per case ``(N,)``: ``probabilities[:, 1] >= threshold`` for two classes with a threshold, else argmax."""
    probabilities = np.asarray(probabilities)
    if threshold is not None and probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(1).astype(np.int64)


def classification_report(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float | None = None
) -> dict:
    """All metrics of ``(N, K)`` probabilities against ``(N,)`` labels, as JSON-ready values.

    Binary: precision, recall (sensitivity), specificity and F1 are those of class 1 at ``threshold``
    (argmax when None). More classes: their macro means over classes; ``auc`` is the macro one-vs-rest AUC.

    Returns:
        ``{"n", "auc", "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1",
        "threshold", "confusion_matrix"}``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    num_classes = probabilities.shape[1]
    matrix = confusion_matrix(labels, predict_classes(probabilities, threshold), num_classes)
    if num_classes == 2:
        precision, recall, f1 = precision_recall_f1(matrix, 1)
        specificity = precision_recall_f1(matrix, 0)[1]
    else:
        parts = np.array([precision_recall_f1(matrix, k) for k in range(num_classes)])
        precision, recall, f1 = (float(v) for v in parts.mean(0))
        specificity = float(np.mean([_ratio(np.delete(np.delete(matrix, k, 0), k, 1).sum(),
                                            np.delete(matrix, k, 0).sum()) for k in range(num_classes)]))  # fmt: skip
    return {
        "n": int(labels.size), "auc": _rounded(macro_auc(probabilities, labels)), "accuracy": _rounded(accuracy(matrix)),
        "balanced_accuracy": _rounded(balanced_accuracy(matrix)), "precision": _rounded(precision),
        "recall": _rounded(recall), "specificity": _rounded(specificity), "f1": _rounded(f1),
        "threshold": threshold, "confusion_matrix": matrix.tolist(),
    }  # fmt: skip


def _rounded(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 5)
