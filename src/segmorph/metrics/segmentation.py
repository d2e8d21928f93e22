"""Segmentation metrics on label maps, spacing-aware (numpy/scipy, no torch).

Arrays are spatial only, ``(I, J)`` or ``(I, J, K)``, with ``spacing[d]`` in mm
belonging to array axis ``d`` (see :mod:`segmorph.geometry`). Distances are in mm,
volumes in mm^3 (mm^2 in 2D).

Surfaces and distances:

* The surface of a mask is ``mask XOR binary_erosion(mask)`` with the face-connectivity
  structure (6 neighbours in 3D, 4 in 2D): a voxel is on the surface when one of its face
  neighbours is outside the mask or outside the image. This gives a thin, closed shell
  (the same choice as MONAI and medpy).
* For every surface voxel of one mask, the distance (mm, ``distance_transform_edt`` with
  ``sampling=spacing``) to the nearest surface voxel of the other mask; both directions are
  pooled into one set of symmetric surface distances.
* ``hd95`` is the 95th percentile of the pooled set (medpy's convention); ``assd`` is its mean
  (sum of both directions divided by the number of surface voxels of both masks).
* Work is done on the bounding box of both masks plus a one-voxel margin; as every surface
  voxel lies inside that box, the distances are exactly those of the full grid.

Empty masks (no metric is ever NaN, so a mean over cases never drops a case):

* Both masks empty: dice = iou = precision = recall = f1 = 1, hd95 = assd = 0.
* Exactly one mask empty: dice = iou = f1 = 0; hd95 = assd = the diagonal of the image
  extent, ``sqrt(sum((shape * spacing) ** 2))`` mm, the largest distance the grid can hold.
  The flags ``empty_ref`` / ``empty_pred`` mark such rows.
* A ratio whose denominator is zero is 1 when the masks agree that there is nothing to find,
  0 otherwise: precision is 0 when pred is empty but ref is not, recall is 0 when ref is empty
  but pred is not, specificity is 1 when ref covers the whole image (no negatives to get wrong).

Ignored voxels (partial annotations): with an ``annotated`` mask (:func:`mask_metrics`) or an ``ignore`` value
(:func:`case_metrics`: the reference's value of unannotated voxels), voxels outside the annotated region are left
out of everything: both masks are cut to the annotated region before counting, surfaces and distances are those
of the cut masks, and ``accuracy``/``specificity`` count annotated voxels only. A reference with no annotated
voxel scores as two empty masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES = (
    "dice",
    "iou",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "specificity",
    "hd95",
    "assd",
    "volume_pred",
    "volume_ref",
    "volume_diff",
)
"""Numeric columns of a :func:`case_metrics` row, in order."""

ROW_KEYS = ("label", "name", *METRIC_NAMES, "empty_ref", "empty_pred")
"""All keys of a :func:`case_metrics` row, in order."""


def _check_pair(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Validate shapes (and spacing); return spacing as float64 ``(n,)`` (ones when None)."""
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred: expected a 2D or 3D array, got shape {pred.shape}")
    if ref.shape != pred.shape:
        raise ValueError(f"ref: shape {ref.shape} differs from pred shape {pred.shape}")
    if spacing is None:
        return np.ones(pred.ndim)
    spacing_arr = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing_arr.size != pred.ndim:
        raise ValueError(f"spacing: expected {pred.ndim} values for a {pred.ndim}D array, got {spacing_arr.size}")
    if not np.isfinite(spacing_arr).all() or (spacing_arr <= 0).any():
        raise ValueError(f"spacing: must be positive and finite, got {spacing_arr.tolist()}")
    return spacing_arr


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the image extent's diagonal: the distance penalty for a missing mask."""
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)))


def _ratio(numerator: float, denominator: float, if_undefined: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float(if_undefined)


def dice_score(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice overlap ``2|P∩R| / (|P| + |R|)`` of two masks (nonzero = inside); 1 when both are empty.

    Args:
        pred_mask: ``(I, J[, K])`` predicted mask.
        ref_mask: Reference mask, same shape.
    """
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    _check_pair(pred_mask, ref_mask)
    overlap = np.count_nonzero(pred_mask & ref_mask)
    total = np.count_nonzero(pred_mask) + np.count_nonzero(ref_mask)
    return _ratio(2 * overlap, total, 1.0)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s voxels, grown by ``margin`` and clipped."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other mask's surface.

    Args:
        pred_mask: ``(I, J[, K])`` mask, nonzero = inside; must not be empty.
        ref_mask: Mask of the same shape; must not be empty.
        spacing: Voxel size in mm per array axis.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: 1D float64 arrays, one value per surface voxel of the first mask.

    Raises:
        ValueError: Shapes or spacing disagree, or a mask is empty (see the module rule for empty masks).
    """
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    spacing_arr = _check_pair(pred_mask, ref_mask, spacing)
    for name, mask in (("pred_mask", pred_mask), ("ref_mask", ref_mask)):
        if not mask.any():
            raise ValueError(f"{name}: is empty, so it has no surface")
    box = _bounding_box(pred_mask | ref_mask, margin=1)
    pred_surface, ref_surface = _surface(pred_mask[box]), _surface(ref_mask[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing_arr)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing_arr)
    return to_ref[pred_surface], to_pred[ref_surface]


def _distance_summary(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """``(hd95, assd)`` in mm with the module's empty-mask rule."""
    spacing_arr = _check_pair(pred_mask, ref_mask, spacing)
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not has_pred and not has_ref:
        return 0.0, 0.0
    if has_pred != has_ref:
        penalty = image_diagonal(pred_mask.shape, spacing_arr)
        return penalty, penalty
    pooled = np.concatenate(surface_distances(pred_mask, ref_mask, spacing_arr))
    return float(np.percentile(pooled, 95)), float(pooled.mean())


def hausdorff95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances, in mm.

    Args:
        pred_mask: ``(I, J[, K])`` mask, nonzero = inside.
        ref_mask: Mask of the same shape.
        spacing: Voxel size in mm per array axis.

    Returns:
        HD95 in mm; 0 when both masks are empty, the image diagonal (mm) when exactly one is.
    """
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    return _distance_summary(pred_mask, ref_mask, spacing)[0]


def assd(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (mean over both masks' surface voxels).

    Args:
        pred_mask: ``(I, J[, K])`` mask, nonzero = inside.
        ref_mask: Mask of the same shape.
        spacing: Voxel size in mm per array axis.

    Returns:
        ASSD in mm; 0 when both masks are empty, the image diagonal (mm) when exactly one is.
    """
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    return _distance_summary(pred_mask, ref_mask, spacing)[1]


def mask_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], annotated: np.ndarray | None = None
) -> dict[str, float | bool]:
    """All metrics of :data:`METRIC_NAMES` plus the empty flags for one pair of binary masks.

    Args:
        pred_mask: ``(I, J[, K])`` mask, nonzero = inside.
        ref_mask: Mask of the same shape.
        spacing: Voxel size in mm per array axis.
        annotated: Mask of the same shape, nonzero where the reference is annotated; the other voxels are left
            out (see the module docstring). None: every voxel counts.

    Returns:
        Metric name -> value (distances in mm, volumes in mm^3 or mm^2, ``volume_diff`` = pred - ref).
    """
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    spacing_arr = _check_pair(pred_mask, ref_mask, spacing)
    total = int(pred_mask.size)
    if annotated is not None:
        annotated = np.asarray(annotated, dtype=bool)
        if annotated.shape != pred_mask.shape:
            raise ValueError(f"annotated: shape {annotated.shape} differs from pred shape {pred_mask.shape}")
        pred_mask, ref_mask, total = pred_mask & annotated, ref_mask & annotated, int(np.count_nonzero(annotated))
    tp = int(np.count_nonzero(pred_mask & ref_mask))
    n_pred, n_ref = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ref_mask))
    fp, fn = n_pred - tp, n_ref - tp
    tn = total - tp - fp - fn
    both_empty = n_pred == 0 and n_ref == 0
    precision = _ratio(tp, n_pred, 1.0 if n_ref == 0 else 0.0)
    recall = _ratio(tp, n_ref, 1.0 if n_pred == 0 else 0.0)
    hd95, mean_distance = _distance_summary(pred_mask, ref_mask, spacing_arr)
    voxel_volume = float(np.prod(spacing_arr))
    return {
        "dice": _ratio(2 * tp, n_pred + n_ref, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "precision": precision,
        "recall": recall,
        "f1": 1.0 if both_empty else _ratio(2 * precision * recall, precision + recall, 0.0),
        "accuracy": _ratio(tp + tn, total, 1.0),
        "specificity": _ratio(tn, tn + fp, 1.0),
        "hd95": hd95,
        "assd": mean_distance,
        "volume_pred": n_pred * voxel_volume,
        "volume_ref": n_ref * voxel_volume,
        "volume_diff": (n_pred - n_ref) * voxel_volume,
        "empty_ref": n_ref == 0,
        "empty_pred": n_pred == 0,
    }


def case_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: dict[int, str], ignore: int | None = None
) -> list[dict]:
    """Metrics of one case, one row per foreground class.

    Args:
        pred: ``(I, J[, K])`` integer label map predicted.
        ref: Reference label map, same shape.
        spacing: Voxel size in mm per array axis.
        labels: Foreground label value -> class name; 0 (background) is not allowed.
        ignore: The reference's value of unannotated voxels, left out of every metric (see the module
            docstring); None: every voxel counts.

    Returns:
        One dict per class, in ascending label order, with keys :data:`ROW_KEYS`.

    Raises:
        ValueError: Shapes or spacing disagree, ``labels`` is empty or holds 0.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    spacing_arr = _check_pair(pred, ref, spacing)
    if not labels:
        raise ValueError("labels: is empty; give at least one foreground label")
    if 0 in labels:
        raise ValueError("labels: 0 is the background and has no row; leave it out")
    if ignore is not None and ignore in labels:
        raise ValueError(f"ignore: {ignore} is also the value of label {labels[ignore]!r}")
    annotated = None if ignore is None else ref != ignore
    rows = []
    for value in sorted(labels):
        row = {"label": int(value), "name": str(labels[value])}
        row.update(mask_metrics(pred == value, ref == value, spacing_arr, annotated))
        rows.append(row)
    return rows
