"""Structure-based alignment: register by segmentations instead of (or before) intensities.

Two label maps of the same structures (manual, or masks written by ``segmorph predict``) give
corresponding points, their label centroids, and an overlap to maximise. :func:`centroid_matrix`
fits a translation, rigid or affine map to the centroids (least squares); :func:`align_structures`
refines it by optimising the overlap of the one-hot label maps with the classical optimiser.
Either result can start an intensity-based registration (``register_classical(..., start=M)``).
"""

from __future__ import annotations

import numpy as np
import torch

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.registration.classical import ClassicalConfig, register_classical
from segmorph.registration.transform import Transform

STRUCTURE_METHODS = ("translation", "rigid", "affine", "deformable")


def label_centroids(labels: Image) -> dict[int, np.ndarray]:
    """World centroid (mm) of every foreground label present, ``{label: (n,)}``."""
    data = labels.numpy()[0]
    centroids = {}
    for value in np.unique(data):
        if value == 0:
            continue
        centroids[int(value)] = labels.affine.voxel_to_world(np.argwhere(data == value).mean(0))
    return centroids


def _common_points(fixed: Image, moving: Image) -> tuple[np.ndarray, np.ndarray]:
    fixed_points, moving_points = label_centroids(fixed), label_centroids(moving)
    common = sorted(set(fixed_points) & set(moving_points))
    if not common:
        raise SegmorphError("the two label maps share no foreground label")
    return np.stack([fixed_points[k] for k in common]), np.stack([moving_points[k] for k in common])


def centroid_matrix(fixed_labels: Image, moving_labels: Image, kind: str = "rigid") -> np.ndarray:
    """World matrix (fixed → moving) mapping fixed label centroids onto the moving ones.

    ``kind`` asks for ``"translation"``, ``"rigid"`` (Kabsch) or ``"affine"`` (least squares); fewer
    labels than a model needs fall back to the richest model they determine (rigid needs ``n``
    non-degenerate centroids, affine ``n + 1``; otherwise the mean centroids are matched).
    """
    fixed, moving = _common_points(fixed_labels, moving_labels)
    n = fixed.shape[1]
    matrix = np.eye(n + 1)
    matrix[:n, n] = moving.mean(0) - fixed.mean(0)
    centred_f, centred_m = fixed - fixed.mean(0), moving - moving.mean(0)
    if kind == "affine" and len(fixed) > n and np.linalg.matrix_rank(centred_f) == n:
        solution, *_ = np.linalg.lstsq(np.c_[fixed, np.ones(len(fixed))], moving, rcond=None)
        matrix[:n, :] = solution.T
    elif kind in ("rigid", "affine") and len(fixed) >= n and np.linalg.matrix_rank(centred_f) >= n - 1:
        rotation = _kabsch(centred_f, centred_m)
        matrix[:n, :n] = rotation
        matrix[:n, n] = moving.mean(0) - rotation @ fixed.mean(0)
    return matrix


def _kabsch(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Rotation ``R`` minimising ``|R f - m|`` over centred point sets ``(N, n)`` (no reflection)."""
    u, _, vt = np.linalg.svd(moving.T @ fixed)
    sign = np.sign(np.linalg.det(u @ vt))
    correction = np.eye(fixed.shape[1])
    correction[-1, -1] = sign
    return u @ correction @ vt


def one_hot_image(labels: Image, values: list[int]) -> Image:
    """Float channels ``(len(values), *S)``, one per foreground label, on the label map's grid."""
    data = labels.data[0].long()
    channels = torch.stack([(data == v).float() for v in values])
    return Image(channels, labels.affine)


def align_structures(fixed_labels: Image, moving_labels: Image, method: str = "affine",
                     config: ClassicalConfig | None = None) -> Transform:  # fmt: skip
    """Align two label maps: centroid initialisation, then overlap (MSE of one-hot maps on a pyramid).

    Args:
        fixed_labels: Label map on the fixed grid.
        moving_labels: Label map of the same structures on the moving grid.
        method: ``"translation"`` (centroids only), ``"rigid"``, ``"affine"`` or ``"deformable"``.
        config: Optimiser settings (similarity is forced to MSE, the initialiser to the centroids).
    """
    if method not in STRUCTURE_METHODS:
        raise ValueError(f"method: expected one of {STRUCTURE_METHODS}, got {method!r}")
    if fixed_labels.ndim != moving_labels.ndim:
        raise SegmorphError(f"label maps are {fixed_labels.ndim}D and {moving_labels.ndim}D")
    start = centroid_matrix(fixed_labels, moving_labels, "translation" if method == "translation" else "rigid")
    if method == "translation":
        return Transform.from_matrix(start)
    values = sorted(set(label_centroids(fixed_labels)) & set(label_centroids(moving_labels)))
    config = config or ClassicalConfig()
    config = ClassicalConfig(**{**config.__dict__, "similarity": "mse", "init": "none"})
    fixed, moving = one_hot_image(fixed_labels, values), one_hot_image(moving_labels, values)
    return register_classical(fixed, moving, method, config, start=start)
