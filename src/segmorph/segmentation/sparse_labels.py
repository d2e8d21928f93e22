"""Sparse annotations made from full ones: the "every K-th slice labelled" benchmark of partial annotations.

The slices left out become :data:`~segmorph.segmentation.datasets.IGNORE`, which the losses, metrics, patch
sampler and validation skip; training then sees what an annotator who drew every K-th slice would have given.
"""

from __future__ import annotations

import torch

from segmorph.segmentation.datasets import IGNORE


def keep_every_kth_slice(label: torch.Tensor, every: int, axis: int, offset: int = 0) -> torch.Tensor:
    """Keep slices ``offset, offset + every, ...`` across ``axis`` of a label map; mark the others ignored.

    Args:
        label: ``(1, *S)`` integer label map (2 or 3 spatial axes).
        every: Keep one slice in this many (1 keeps every slice).
        axis: Spatial axis (0-based, without the channel axis) the slices are cut across.
        offset: Index of the first kept slice, ``0 <= offset < every``.

    Returns:
        A new ``(1, *S)`` tensor of ``label``'s dtype and device: ``label`` on the kept slices,
        :data:`~segmorph.segmentation.datasets.IGNORE` elsewhere.

    Raises:
        ValueError: ``label`` is not an integer ``(1, *S)`` tensor, ``every < 1``, ``axis`` is not a spatial
            axis, or ``offset`` is outside ``0..every - 1``.

    Example:
        >>> sparse = keep_every_kth_slice(label, every=5, axis=slice_axis_for(spacing))  # segmentation.plan
    """
    if not isinstance(label, torch.Tensor) or label.ndim not in (3, 4) or label.shape[0] != 1:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise ValueError(f"label: expected a (1, I, J[, K]) tensor, got {shape}")
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise ValueError(f"label: expected an integer tensor, got {label.dtype}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every: expected a whole number >= 1, got {every!r}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < label.ndim - 1:
        raise ValueError(f"axis: expected a spatial axis in 0..{label.ndim - 2}, got {axis!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < every:
        raise ValueError(f"offset: expected a whole number in 0..{every - 1}, got {offset!r}")
    index = torch.arange(label.shape[axis + 1], device=label.device)
    shape = [1] * label.ndim
    shape[axis + 1] = -1
    kept = ((index - offset) % every == 0).view(shape)
    return torch.where(kept, label, torch.full_like(label, IGNORE))
