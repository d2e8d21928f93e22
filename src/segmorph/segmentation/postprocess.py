"""Label-map clean-up by connected components (cc3d): keep the largest, drop the small.

Connectivity is full: 26 neighbours in 3D, 8 in 2D. A component is a connected region of one class;
removed voxels become background (0). Inputs are never modified; numpy in gives numpy out, a tensor in
gives a tensor (same dtype and device) out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import cc3d
import numpy as np
import torch

LabelMap = TypeVar("LabelMap", np.ndarray, torch.Tensor)


def keep_largest_component(labels: LabelMap, classes: Sequence[int]) -> LabelMap:
    """Keep only the largest connected component of each listed class.

    Args:
        labels: Integer label map ``(*S)``, 2D or 3D.
        classes: Class values to clean (e.g. ``[1, 2]``); other classes are left as they are.
            Ties between equally large components keep the one found first (lowest raster index).

    Returns:
        A new label map of the same type, shape and dtype.

    Raises:
        TypeError: ``labels`` is neither a numpy array nor a tensor.
        ValueError: ``labels`` is not a 2D/3D integer map, or ``classes`` holds 0 or non-integers.
    """
    array = _as_label_array(labels)
    wanted = _check_classes(classes)
    components, component_class, sizes = _components(array)
    keep = np.ones(len(sizes), dtype=bool)
    for value in wanted:
        ids = np.flatnonzero(component_class == value)
        if len(ids) > 1:
            keep[ids] = False
            keep[ids[np.argmax(sizes[ids])]] = True
    return _restore(labels, _apply(array, components, keep))


def remove_small_components(labels: LabelMap, min_voxels: int) -> LabelMap:
    """Set to background every connected component (of any non-zero class) smaller than ``min_voxels``.

    Args:
        labels: Integer label map ``(*S)``, 2D or 3D.
        min_voxels: Components with fewer voxels than this are removed; 0 or 1 removes nothing.

    Returns:
        A new label map of the same type, shape and dtype.

    Raises:
        TypeError: ``labels`` is neither a numpy array nor a tensor.
        ValueError: ``labels`` is not a 2D/3D integer map, or ``min_voxels`` is negative.
    """
    array = _as_label_array(labels)
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)) or min_voxels < 0:
        raise ValueError(f"min_voxels: expected a non-negative integer, got {min_voxels!r}")
    components, _, sizes = _components(array)
    return _restore(labels, _apply(array, components, sizes >= min_voxels))


def _as_label_array(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels: expected a numpy array or a tensor, got {type(labels).__name__}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D map (*S) without channel axis, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer class values, got dtype {labels.dtype}")
    return labels


def _check_classes(classes: Sequence[int]) -> list[int]:
    values = list(classes)
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c == 0 for c in values):
        raise ValueError(f"classes: expected non-zero integer class values, got {values}")
    return values


def _components(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Component ids ``(*S)`` (0 = background), and per id its class and its size in voxels."""
    connectivity = 26 if array.ndim == 3 else 8
    components, count = cc3d.connected_components(np.ascontiguousarray(array), connectivity=connectivity,
                                                  return_N=True)  # fmt: skip
    flat = components.ravel()
    component_class = np.zeros(count + 1, dtype=array.dtype)
    component_class[flat] = array.ravel()
    sizes = np.bincount(flat, minlength=count + 1)
    sizes[0] = np.iinfo(sizes.dtype).max  # background is never removed
    return components, component_class, sizes


def _apply(array: np.ndarray, components: np.ndarray, keep: np.ndarray) -> np.ndarray:
    keep[0] = True
    return np.where(keep[components], array, np.zeros((), dtype=array.dtype))


def _restore(original: LabelMap, result: np.ndarray) -> LabelMap:
    if isinstance(original, torch.Tensor):
        return torch.from_numpy(result).to(device=original.device, dtype=original.dtype)
    return result.astype(original.dtype, copy=False)
