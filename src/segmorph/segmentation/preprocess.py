"""Preprocessing that records how to undo itself (crop, normalise, resample), as in nnU-Net.

Steps of :func:`preprocess_sample`, in nnU-Net's order, after the plan's enhance steps
(``PreprocessConfig.steps``, see :mod:`segmorph.processing.steps`), which run first on the case in its
original geometry, so training, prediction, explanation and the prior all see the same enhanced image:

1. **Crop** (``crop_to_nonzero``) to the bounding box of voxels where any channel is non-zero; label
   voxels outside the box are dropped (the undo fills them with background).
2. **Normalise** each channel (see :class:`PreprocessConfig`); with ``crop_to_nonzero`` the z-score is
   computed over the non-zero region only and voxels outside it are set to 0.
3. **Resample** to ``target_spacing``: the grid keeps its origin (world position of voxel 0) and direction;
   images use spline order ``image_order``, labels nearest neighbour (so ignored voxels,
   :data:`~segmorph.segmentation.datasets.IGNORE`, keep their value exactly).

:func:`undo_preprocessing` maps class scores on the preprocessed grid back to the original grid
(linear resampling, then pasting into the crop box) and :func:`labels_to_original` turns them into a
label map carrying exactly the original affine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, Sample
from segmorph.io import atomic_write_bytes
from segmorph.processing.steps import enhance, parse_steps
from segmorph.readchecks import check_voxel_budget
from segmorph.segmentation.datasets import CaseFiles, DatasetSpec, load_sample

NORMALIZATIONS = ("zscore", "ct", "rgb", "none")
CT_STAT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")
CACHE_VERSION = 1
_EPS = 1e-8
_SPLINE_PAD = 12  # what scipy.ndimage pads before a spline prefilter in mode 'nearest'


def fingerprint(
    spec: DatasetSpec,
    samples: Iterable[Sample] | None = None,
    max_cases: int | None = None,
    voxels_per_case: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Facts about a dataset from which a preprocessing plan is made (JSON-serialisable).

    Args:
        spec: The dataset (names of channels and labels; its cases are read when ``samples`` is None).
        samples: Samples to measure instead of reading ``spec.cases``.
        max_cases: Measure at most this many cases.
        voxels_per_case: Foreground voxels drawn per case (seeded, without replacement) for intensity
            statistics. Foreground is ``label > 0``; unlabelled cases contribute all their voxels.
        seed: Seed of the voxel draw.
        progress: Show a progress bar.

    Returns:
        ``num_cases``; ``cases`` (per case ``case_id``, ``spacing`` in mm, spatial ``shape``,
        ``nonzero_fraction`` = volume of the non-zero bounding box / volume); ``median_spacing``,
        ``median_shape``, ``median_nonzero_fraction``, ``crop_to_nonzero_suggested`` (crop shrinks the
        median case below 3/4, nnU-Net's rule); ``intensity`` per channel (``mean``, ``std``, ``min``, ``max``,
        ``median``, ``percentile_00_5``, ``percentile_99_5`` of foreground voxels); ``class_fractions``
        (label value -> fraction of all voxels); ``labels``.
    """
    if samples is None:
        samples = (load_sample(case, spec) for case in spec.cases)
    samples = itertools.islice(samples, max_cases)
    if progress:
        from segmorph.progress import track

        samples = track(samples, "fingerprint", total=min(len(spec.cases), max_cases or len(spec.cases)))
    cases, drawn, counts = [], [], Counter()
    for index, sample in enumerate(samples):
        image = sample.image.numpy()
        start, stop = nonzero_box(image)
        cases.append(
            {
                "case_id": sample.case_id,
                "spacing": sample.image.spacing.tolist(),
                "shape": list(sample.image.spatial_shape),
                "nonzero_fraction": float(np.prod(stop - start) / np.prod(image.shape[1:])),
            }
        )
        flat = image.reshape(image.shape[0], -1)
        if sample.label is not None:
            labels = sample.label.numpy().ravel()
            counts.update(dict(zip(*np.unique(labels, return_counts=True))))
            if (labels > 0).any():
                flat = flat[:, labels > 0]
        rng = np.random.default_rng([seed, index])
        drawn.append(flat[:, rng.choice(flat.shape[1], min(flat.shape[1], voxels_per_case), replace=False)])
    if not cases:
        raise SegmorphError("no cases to fingerprint", spec.root)
    return _summarise(spec, cases, np.concatenate(drawn, axis=1), counts)


def _summarise(spec: DatasetSpec, cases: list[dict], values: np.ndarray, counts: Counter) -> dict[str, Any]:
    names = spec.channel_names or tuple(f"channel_{c}" for c in range(values.shape[0]))
    modalities = spec.modalities or ("other",) * values.shape[0]
    intensity = []
    for channel, (name, modality) in enumerate(zip(names, modalities)):
        v = values[channel].astype(np.float64)
        low, median, high = np.percentile(v, [0.5, 50, 99.5])
        intensity.append(
            {
                "channel": name,
                "modality": modality,
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
                "median": float(median),
                "percentile_00_5": float(low),
                "percentile_99_5": float(high),
            }
        )
    nonzero = float(np.median([c["nonzero_fraction"] for c in cases]))
    total = max(sum(counts.values()), 1)
    return {
        "num_cases": len(cases),
        "cases": cases,
        "median_spacing": np.median([c["spacing"] for c in cases], axis=0).tolist(),
        "median_shape": np.median([c["shape"] for c in cases], axis=0).tolist(),
        "median_nonzero_fraction": nonzero,
        "crop_to_nonzero_suggested": nonzero < 0.75,
        "intensity": intensity,
        "class_fractions": {str(int(v)): float(counts[v] / total) for v in sorted(counts)},
        "labels": {str(k): v for k, v in spec.labels.items()},
    }


MIN_SPACING_MM = 1e-5
"""Smallest target spacing a plan may ask for (10 nm: beyond any scanner or microscope)."""
MAX_SPACING_MM = 1e5
"""Largest target spacing a plan may ask for (100 m)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How to preprocess every case of a dataset.

    Attributes:
        target_spacing: Voxel size in mm per spatial axis after resampling; None keeps each case's spacing.
        normalization: One scheme per input channel: ``"zscore"`` (per image; over the non-zero region when
            ``crop_to_nonzero``), ``"ct"`` (clip to the dataset foreground 0.5/99.5 percentiles, then z-score
            with the dataset foreground mean/std from ``ct_stats``), ``"rgb"`` (divide by 255, then per-channel
            z-score) or ``"none"``.
        crop_to_nonzero: Crop to the non-zero bounding box (and z-score inside the non-zero region).
        image_order: Spline order for images when resampling (1 linear, 3 cubic); labels are nearest.
        ct_stats: Per channel, a dict with ``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5``
            (an entry of ``fingerprint(...)["intensity"]`` fits) for ``"ct"`` channels, None elsewhere.
        steps: Enhance steps (``("channel:green", "clahe")``, ``("n4",)``; see :mod:`segmorph.processing.steps`)
            applied to each case in its original geometry before cropping; ``normalization`` and ``ct_stats``
            describe the channels the steps give (``channel:green`` leaves one). Empty: none (older plans).
    """

    target_spacing: tuple[float, ...] | None
    normalization: tuple[str, ...]
    crop_to_nonzero: bool = False
    image_order: int = 3
    ct_stats: tuple[dict[str, float] | None, ...] | None = None
    steps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.steps, (list, tuple)) or not all(isinstance(step, str) for step in self.steps):
            raise ValueError(
                f"steps: expected a list of step texts such as ['channel:green', 'clahe'], got {self.steps!r}"
            )
        object.__setattr__(self, "steps", tuple(step.strip() for step in self.steps))
        try:
            parse_steps(list(self.steps))
        except SegmorphError as err:
            raise ValueError(f"steps: {err.problem}") from None
        if self.target_spacing is not None:
            spacing = tuple(float(s) for s in self.target_spacing)
            if len(spacing) not in (2, 3) or not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
                raise ValueError(f"target_spacing: expected 2 or 3 positive values from {MIN_SPACING_MM:g} to "
                                 f"{MAX_SPACING_MM:g} mm, got {spacing}")  # fmt: skip
            object.__setattr__(self, "target_spacing", spacing)
        object.__setattr__(self, "normalization", tuple(self.normalization))
        unknown = [n for n in self.normalization if n not in NORMALIZATIONS]
        if unknown or not self.normalization:
            raise ValueError(f"normalization: expected one of {NORMALIZATIONS} per channel, got {self.normalization}")
        if self.image_order not in (0, 1, 3):
            raise ValueError(f"image_order: expected 0, 1 or 3, got {self.image_order}")
        if self.ct_stats is not None:
            object.__setattr__(self, "ct_stats", tuple(None if s is None else dict(s) for s in self.ct_stats))
        for channel, scheme in enumerate(self.normalization):
            stats = self.ct_stats[channel] if self.ct_stats and channel < len(self.ct_stats) else None
            if scheme == "ct" and (stats is None or any(k not in stats for k in CT_STAT_KEYS)):
                raise ValueError(f"ct_stats: channel {channel} uses 'ct' and needs {', '.join(CT_STAT_KEYS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        values = asdict(self)
        values["target_spacing"] = None if self.target_spacing is None else list(self.target_spacing)
        values["normalization"] = list(self.normalization)
        values["ct_stats"] = None if self.ct_stats is None else list(self.ct_stats)
        values["steps"] = list(self.steps)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**values)


@dataclass
class UndoRecord:
    """What :func:`preprocess_sample` did to one case, enough to map results back.

    Attributes:
        original_affine: Geometry of the original grid.
        original_shape: Original spatial shape ``(I, J[, K])``.
        crop_start: First index of the crop box per axis (inclusive).
        crop_stop: End of the crop box per axis (exclusive).
        resampled_shape: Spatial shape after resampling (the preprocessed shape).
        resampled_spacing: Voxel size in mm after resampling.
    """

    original_affine: Affine
    original_shape: tuple[int, ...]
    crop_start: tuple[int, ...]
    crop_stop: tuple[int, ...]
    resampled_shape: tuple[int, ...]
    resampled_spacing: tuple[float, ...]

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        """Spatial shape after cropping, before resampling."""
        return tuple(b - a for a, b in zip(self.crop_start, self.crop_stop))

    @property
    def was_resampled(self) -> bool:
        return self.resampled_shape != self.cropped_shape or not np.allclose(
            self.resampled_spacing, self.original_affine.spacing, rtol=1e-9, atol=0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; ``original_affine.matrix`` keeps the affine bit-exact through JSON."""
        return {
            "original_affine": {**self.original_affine.to_dict(), "matrix": self.original_affine.matrix.tolist()},
            "original_shape": list(self.original_shape),
            "crop_start": list(self.crop_start),
            "crop_stop": list(self.crop_stop),
            "cropped_shape": list(self.cropped_shape),
            "resampled_shape": list(self.resampled_shape),
            "resampled_spacing": list(self.resampled_spacing),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UndoRecord:
        """Inverse of :meth:`to_dict`."""
        affine = values["original_affine"]
        return cls(
            Affine(np.array(affine["matrix"])) if "matrix" in affine else Affine.from_dict(affine),
            tuple(values["original_shape"]),
            tuple(values["crop_start"]),
            tuple(values["crop_stop"]),
            tuple(values["resampled_shape"]),
            tuple(float(s) for s in values["resampled_spacing"]),
        )


def channels_after_steps(steps: Sequence[str], channels: int) -> tuple[int, ...]:
    """Which input channels the enhance ``steps`` leave, in order (``channel:green`` on 3 channels -> ``(1,)``).

    Args:
        steps: Step texts (see :mod:`segmorph.processing.steps`); only ``channel`` changes the channel count.
        channels: Number of channels of the case before the steps.

    Returns:
        0-based indices into the case's channels, one per channel after the steps.

    Raises:
        SegmorphError: A bad step, or a ``channel`` step asking for a channel the image does not have.
    """
    kept = tuple(range(channels))
    for step in parse_steps(list(steps)):
        if step.name == "channel":
            argument = step.text.partition(":")[2].strip().lower()
            index = {"red": 0, "green": 1, "blue": 2}.get(argument)
            index = int(argument) if index is None else index
            if index >= len(kept):
                raise SegmorphError(
                    f"step {step.text!r}: channel {index} asked of an image with {len(kept)} channel(s)"
                )
            kept = (kept[index],)
    return kept


def nonzero_box(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box ``(start, stop)`` of voxels where any channel of ``(C, *S)`` is non-zero (whole grid if none)."""
    mask = (image != 0).any(axis=0)
    if not mask.any():
        return np.zeros(mask.ndim, dtype=int), np.array(mask.shape)
    nonzero = np.nonzero(mask)
    return np.array([a.min() for a in nonzero]), np.array([a.max() + 1 for a in nonzero])


def preprocess_sample(sample: Sample, config: PreprocessConfig) -> tuple[Sample, UndoRecord]:
    """Enhance (``config.steps``), crop, normalise and resample one case (label optional).

    The steps run first, on the image in its original geometry (the label is not touched); the
    :class:`UndoRecord` refers to that original grid, which the steps keep.

    Returns:
        The preprocessed Sample (image ``(C, *S_pre)`` float32 with its new geometry, label ``(1, *S_pre)``
        int64 or None) and the :class:`UndoRecord` that maps results back to the original grid.
    """
    where = (sample.meta.get("image_paths") or [None])[0]
    source = sample.image
    if config.steps:
        try:
            source = enhance(source, list(config.steps))
        except SegmorphError as err:
            raise SegmorphError(f"case {sample.case_id}: preprocess.steps: {err.problem}", err.path or where) from None
    image, affine = np.asarray(source.numpy(), dtype=np.float32), sample.image.affine  # no copy: never written
    if len(config.normalization) != image.shape[0]:
        raise SegmorphError(
            f"config has {len(config.normalization)} normalization entries, case "
            f"{sample.case_id} has {image.shape[0]} channels",
            where,
        )
    if config.target_spacing is not None and len(config.target_spacing) != affine.ndim:
        raise SegmorphError(
            f"target_spacing has {len(config.target_spacing)} values, case {sample.case_id} is {affine.ndim}D", where
        )
    start, stop = nonzero_box(image) if config.crop_to_nonzero else (np.zeros(affine.ndim, int), image.shape[1:])
    box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop)))
    image = image[box]
    label = None if sample.label is None else sample.label.numpy()[box]
    if any(start):
        affine = affine.shifted(start)
    image = normalize(image, config, (image != 0).any(axis=0) if config.crop_to_nonzero else None)
    target = config.target_spacing
    if target is not None and not np.allclose(target, affine.spacing, rtol=1e-3, atol=0):
        scale = np.asarray(target) / affine.spacing
        shape = resampled_shape(image.shape[1:], scale)
        check_voxel_budget(float(np.prod(shape, dtype=np.float64)) * image.shape[0],
                           f"case {sample.case_id} resampled to {list(target)} mm, shape {list(shape)},", where)  # fmt: skip
        image = resample_array(image, scale, shape, config.image_order)
        label = None if label is None else resample_array(label, scale, shape, 0)
        affine = affine.with_spacing(target)
    record = UndoRecord(
        sample.image.affine,
        sample.image.spatial_shape,
        tuple(int(a) for a in start),
        tuple(int(b) for b in stop),
        tuple(image.shape[1:]),
        tuple(affine.spacing.tolist()),
    )
    out_label = None if label is None else Image(torch.from_numpy(np.ascontiguousarray(label)), affine, True)
    out = Sample(
        sample.case_id, Image(torch.from_numpy(np.ascontiguousarray(image)), affine), out_label, dict(sample.meta)
    )
    return out, record


def normalize(image: np.ndarray, config: PreprocessConfig, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise ``(C, *S)`` channel by channel as ``config.normalization`` says; ``mask`` ``(*S)`` bool
    restricts z-score statistics to the non-zero region (and zeroes voxels outside it). Returns float32.

    Statistics are accumulated in float64 slab by slab and applied in place in float32, so a volume costs
    one float32 output and no float64 copy (relative differences to float64 arithmetic are ~1e-7).
    """
    out = np.empty(image.shape, dtype=np.float32)
    for channel, scheme in enumerate(config.normalization):
        values, target = image[channel], out[channel]
        if scheme == "ct":
            stats = config.ct_stats[channel]
            np.clip(values, stats["percentile_00_5"], stats["percentile_99_5"], out=target, casting="unsafe")
            target -= np.float32(stats["mean"])
            target /= np.float32(max(stats["std"], _EPS))
        elif scheme in ("zscore", "rgb"):
            target[...] = values
            if scheme == "rgb":
                target /= np.float32(255.0)
            _zscore_(target, mask if scheme == "zscore" else None)
        else:
            target[...] = values
    return out


def _zscore_(values: np.ndarray, mask: np.ndarray | None) -> None:
    """Z-score float32 ``values`` in place, with statistics of the ``mask`` region (zeroed outside it)."""
    if mask is None or not mask.any():
        mean, std = _mean_std(values)
        values -= np.float32(mean)
        values /= np.float32(max(std, _EPS))
        return
    inside = values[mask]
    mean, std = _mean_std(inside)
    inside -= np.float32(mean)
    inside /= np.float32(max(std, _EPS))
    values[...] = 0.0
    values[mask] = inside


def _mean_std(values: np.ndarray, slab_voxels: int = 1 << 22) -> tuple[float, float]:
    """Mean and (population) standard deviation in float64, one slab of the first axis at a time."""
    slabs = np.array_split(values, max(1, values.size // slab_voxels), axis=0) if values.ndim else [values]
    mean = sum(float(slab.sum(dtype=np.float64)) for slab in slabs) / max(values.size, 1)
    squares = sum(float(np.square(slab.astype(np.float64) - mean).sum()) for slab in slabs)
    return mean, float(np.sqrt(squares / max(values.size, 1)))


def resampled_shape(shape: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """Voxels per axis after resampling ``shape`` to a spacing ``scale`` times the current one."""
    return tuple(max(1, round(float(n / f))) for n, f in zip(shape, scale))


def resample_array(array: np.ndarray, scale: Sequence[float], shape: Sequence[int], order: int) -> np.ndarray:
    """Resample ``(C, *S_in)`` so output voxel ``o`` takes the value at input index ``o * scale``.

    This is the origin-preserving map between grids of spacing ``s_in`` and ``s_in * scale``; edges are
    clamped. ``order`` is the spline order (0 nearest, for labels; 1 linear; 3 cubic).

    For ``order > 1`` the spline coefficients are computed here in float32, in place on the edge-padded
    channel, as SciPy does in float64 (same 12-voxel padding): one channel-sized copy instead of three.
    """
    scale = np.asarray(scale, dtype=np.float64)
    steps = np.round(scale).astype(int)
    if np.all(steps >= 1) and np.allclose(scale, steps, rtol=0, atol=1e-9):
        # Whole-voxel steps land on samples, where every spline order interpolates exactly: take them.
        taken = array[(slice(None), *(slice(0, n * k, k) for n, k in zip(shape, steps)))]
        if tuple(taken.shape[1:]) == tuple(shape):
            return np.ascontiguousarray(taken)
    out = np.empty((array.shape[0], *shape), dtype=array.dtype)
    for channel in range(array.shape[0]):
        if order > 1 and np.issubdtype(array.dtype, np.floating):
            coefficients = np.pad(array[channel].astype(np.float32, copy=False), _SPLINE_PAD, mode="edge")
            ndimage.spline_filter(coefficients, order, output=coefficients, mode="nearest")
            ndimage.affine_transform(
                coefficients,
                scale,
                offset=float(_SPLINE_PAD),
                output_shape=tuple(shape),
                output=out[channel],
                order=order,
                mode="nearest",
                prefilter=False,
            )
            del coefficients
        else:
            ndimage.affine_transform(
                array[channel], scale, output_shape=tuple(shape), output=out[channel], order=order, mode="nearest"
            )
    return out


def undo_preprocessing(probabilities: torch.Tensor, record: UndoRecord) -> torch.Tensor:
    """Map class scores from the preprocessed grid back to the original grid.

    Scores are resampled linearly onto the crop box (on their own device and dtype) and pasted into the
    original grid; outside the crop box every voxel gets probability 1 for class 0 (background) and 0 for
    the other classes, so pass probabilities (e.g. softmax), not logits. When preprocessing neither cropped
    nor resampled, ``probabilities`` itself is returned (no copy). Resampling runs slab by slab into the
    output, so its intermediates stay small whatever the volume.

    Args:
        probabilities: ``(K, *S_pre)`` float class scores; ``S_pre == record.resampled_shape``.
        record: The case's :class:`UndoRecord`.

    Returns:
        ``(K, *S_orig)`` scores on the original grid; their argmax over K is the label map.
    """
    if tuple(probabilities.shape[1:]) != tuple(record.resampled_shape) or not probabilities.is_floating_point():
        raise ValueError(
            f"probabilities: expected float (K, {', '.join(map(str, record.resampled_shape))}), "
            f"got {probabilities.dtype} {tuple(probabilities.shape)}"
        )
    if not record.was_resampled and tuple(record.cropped_shape) == tuple(record.original_shape):
        return probabilities
    out = probabilities.new_zeros((probabilities.shape[0], *record.original_shape))
    out[0] = 1.0
    box = out[(slice(None), *(slice(a, b) for a, b in zip(record.crop_start, record.crop_stop)))]
    if record.was_resampled:
        _linear_resample_into(box, probabilities, record.original_affine.spacing / np.asarray(record.resampled_spacing))
    else:
        box.copy_(probabilities)
    return out


def linear_resample(x: torch.Tensor, scale: Sequence[float], shape: Sequence[int]) -> torch.Tensor:
    """``x`` ``(K, *S_in)`` resampled linearly to ``(K, *shape)``, output index ``o`` reading input ``o * scale``
    (the origin-preserving map of :func:`resample_array`, edges clamped)."""
    out = x.new_empty((x.shape[0], *shape))
    _linear_resample_into(out, x, scale)
    return out


def _linear_resample_into(out: torch.Tensor, x: torch.Tensor, scale: Sequence[float], slab_voxels: int = 1 << 22):
    """Resample ``x`` ``(K, *S_in)`` linearly into ``out`` ``(K, *S_out)``, one slab of output axis 0 at a time."""
    step = max(1, slab_voxels // max(1, math.prod(x.shape[2:]) * x.shape[0]))
    for start in range(0, out.shape[1], step):
        stop = min(start + step, out.shape[1])
        slab = _lerp_axis(x, 0, scale[0], start, stop)
        for axis in range(1, x.ndim - 1):
            slab = _lerp_axis(slab, axis, scale[axis], 0, out.shape[axis + 1])
        out[:, start:stop] = slab


def _lerp_axis(x: torch.Tensor, axis: int, factor: float, start: int, stop: int) -> torch.Tensor:
    """Output indices ``start..stop-1`` along spatial ``axis`` of ``(K, *S)``, index ``o`` reading ``o * factor``."""
    n_in = x.shape[axis + 1]
    position = (torch.arange(start, stop, device=x.device, dtype=torch.float64) * float(factor)).clamp(0, n_in - 1)
    low = position.floor().long().clamp(max=max(n_in - 2, 0))
    high = (low + 1).clamp(max=n_in - 1)
    view = [1] * x.ndim
    view[axis + 1] = stop - start
    weight = (position - low).to(x.dtype).view(view)
    return torch.lerp(x.index_select(axis + 1, low), x.index_select(axis + 1, high), weight)


def labels_to_original(scores: torch.Tensor, record: UndoRecord) -> Image:
    """A label map on the original grid, carrying exactly ``record.original_affine``.

    Args:
        scores: ``(K, *S_pre)`` float class probabilities, or an integer label map ``(1, *S_pre)``
            (one-hot encoded first, so resampling interpolates each class).
        record: The case's :class:`UndoRecord`.

    Returns:
        Label :class:`Image` ``(1, *S_orig)`` int64.
    """
    if not scores.is_floating_point():
        if scores.ndim < 2 or scores.shape[0] != 1:
            raise ValueError(f"scores: an integer label map must be (1, *S), got {tuple(scores.shape)}")
        classes = int(scores.max()) + 1
        scores = torch.nn.functional.one_hot(scores[0].long(), max(classes, 2)).movedim(-1, 0).float()
    labels = undo_preprocessing(scores, record).argmax(dim=0, keepdim=True)
    return Image(labels, record.original_affine, is_label=True)


def cache_key(case: CaseFiles, config: PreprocessConfig, ignore: int | None = None) -> str:
    """Hash of the config, the dataset's declared ignore value and the case's source files (path, mtime, size):
    a change re-runs the case."""
    values = config.to_dict()
    if not values["steps"]:
        del values["steps"]  # caches made before steps existed stay valid
    hashed: dict[str, Any] = {"version": CACHE_VERSION, "config": values}
    if ignore is not None:  # stored labels hold IGNORE where the files hold ``ignore``; other caches stay valid
        hashed["ignore"] = ignore
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode())
    for path in (*case.images, case.label):
        if path is not None:
            stat = Path(path).stat()
            digest.update(f"|{Path(path).resolve()}|{stat.st_mtime_ns}|{stat.st_size}".encode())
    return digest.hexdigest()[:32]


def preprocess_dataset(
    spec: DatasetSpec,
    config: PreprocessConfig,
    cache_dir: str | Path,
    case_ids: Sequence[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Preprocess cases into ``cache_dir/<case_id>.npz``, skipping those whose cache key still matches.

    Returns:
        The ``.npz`` paths in case order; read them with :func:`load_preprocessed`.
    """
    cache_dir = Path(cache_dir)
    cases = list(spec.cases) if case_ids is None else [spec.case(c) for c in case_ids]
    iterator: Iterable[CaseFiles] = cases
    if progress:
        from segmorph.progress import track

        iterator = track(cases, "preprocess", total=len(cases))
    paths = []
    for case in iterator:
        path, key = cache_dir / f"{case.case_id}.npz", cache_key(case, config, spec.ignore)
        if _stored_key(path) != key:
            sample, record = preprocess_sample(load_sample(case, spec), config)
            atomic_write_bytes(path, _npz_bytes(sample, record, key))
        paths.append(path)
    return paths


def _stored_key(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return str(data["cache_key"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # unreadable or old: preprocess again


def _npz_bytes(sample: Sample, record: UndoRecord, key: str) -> bytes:
    arrays = {
        "image": sample.image.numpy().astype(np.float32),
        "affine": sample.image.affine.matrix,
        "undo": np.array(json.dumps(record.to_dict())),
        "meta": np.array(json.dumps(sample.meta, default=str)),
        "case_id": np.array(sample.case_id),
        "cache_key": np.array(key),
    }
    if sample.label is not None:
        arrays["label"] = _compact_labels(sample.label.numpy())
    buffer = BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _compact_labels(labels: np.ndarray) -> np.ndarray:
    """The smallest integer type that holds ``labels`` exactly (signed when ignored voxels hold -1)."""
    low, top = int(labels.min()), int(labels.max())
    if low >= 0:
        return labels.astype(np.uint8 if top < 256 else np.int16 if top < 32768 else np.int32)
    return labels.astype(np.int8 if low >= -128 and top < 128 else np.int16 if low >= -32768 and top < 32768
                         else np.int32)  # fmt: skip


def load_preprocessed(path: str | Path) -> tuple[Sample, UndoRecord]:
    """Read a case written by :func:`preprocess_dataset` (label int64 with ignored voxels at
    :data:`~segmorph.segmentation.datasets.IGNORE`, or None when unlabelled)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            affine = Affine(data["affine"])
            image = Image(torch.from_numpy(data["image"]), affine)
            label = Image(torch.from_numpy(data["label"].astype(np.int64)), affine, True) if "label" in data else None
            sample = Sample(str(data["case_id"]), image, label, json.loads(str(data["meta"])))
            record = UndoRecord.from_dict(json.loads(str(data["undo"])))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise SegmorphError(f"cannot read preprocessed case ({err})", path) from None
    return sample, record
