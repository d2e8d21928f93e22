"""Classical segmentation baselines: Otsu, region growing, morphological post-processing.

These are the traditional methods a learned model is compared against. Every function takes an
:class:`~segmorph.image.Image` (intensities from one channel, or the mean of all channels) and
returns a one-channel label Image (int64, ``is_label=True``) on the same grid and affine.
Structuring-element radii are in mm, so anisotropic voxels get an ellipsoidal element.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import mask_file_name, read_image, write_image
from segmorph.outputs import Output, check_outputs
from segmorph.segmentation.postprocess import keep_largest_component


def intensities(image: Image, channel: int | None = None) -> np.ndarray:
    """Spatial intensity array ``(I, J[, K])`` float32: one channel, or the mean of all when None."""
    data = image.numpy().astype(np.float32, copy=False)
    if channel is None:
        return data.mean(axis=0)
    if not -image.num_channels <= channel < image.num_channels:
        raise ValueError(f"channel: {channel} is out of range for {image.num_channels} channel(s)")
    return data[channel]


def _as_label_image(labels: np.ndarray, like: Image) -> Image:
    return Image(torch.from_numpy(labels.astype(np.int64)[None]), like.affine, is_label=True)


def otsu(image: Image, classes: int = 2, channel: int | None = None) -> Image:
    """Threshold by Otsu's method (``classes`` = 2) or multi-Otsu (``classes`` > 2).

    Args:
        image: Input image ``(C, I, J[, K])``.
        classes: Number of intensity classes K; the output holds labels ``0 .. K-1``, brightest last.
        channel: Channel to use; the mean over channels when None.

    Returns:
        Label Image ``(1, I, J[, K])``; a constant image gives all zeros.
    """
    if classes < 2:
        raise ValueError(f"classes: must be at least 2, got {classes}")
    values = intensities(image, channel)
    if values.min() == values.max():
        return _as_label_image(np.zeros(values.shape, np.int64), image)
    if classes == 2:
        return _as_label_image(values > threshold_otsu(values), image)
    try:
        thresholds = threshold_multiotsu(values, classes=classes)
    except ValueError as err:
        raise ValueError(f"image: cannot split into {classes} classes ({err})") from None
    return _as_label_image(np.digitize(values, thresholds), image)


def _check_seeds(seeds: Sequence[Sequence[int]], shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    checked = [tuple(int(v) for v in seed) for seed in seeds]
    if not checked:
        raise ValueError("seeds: give at least one seed voxel index")
    for seed in checked:
        if len(seed) != len(shape) or any(not 0 <= v < s for v, s in zip(seed, shape)):
            raise ValueError(f"seeds: {seed} is not a voxel index inside shape {shape}")
    return checked


def region_grow(
    image: Image,
    seeds: Sequence[Sequence[int]],
    tolerance: float | None = None,
    max_iterations: int = 10,
    channel: int | None = None,
) -> Image:
    """Grow a region from seed voxels: connected voxels within ``tolerance`` of the region's mean.

    Starts from the mean intensity of the seeds; each iteration keeps the face-connected components of
    ``|x - mean| <= tolerance`` that contain a seed, then recomputes the mean over that region, until
    the region stops changing or ``max_iterations`` is reached.

    Args:
        image: Input image ``(C, I, J[, K])``.
        seeds: Voxel indices ``(i, j[, k])`` inside the object.
        tolerance: Half-width of the accepted intensity window (image units); when None,
            2.5 x the standard deviation of the intensities in the 3-voxel neighbourhoods of the seeds.
        max_iterations: Upper bound on mean updates.
        channel: Channel to use; the mean over channels when None.

    Returns:
        Label Image ``(1, I, J[, K])`` with 1 inside the region.
    """
    values = intensities(image, channel)
    points = _check_seeds(seeds, values.shape)
    seed_values = np.array([values[p] for p in points], dtype=np.float64)
    if tolerance is None:
        patches = [values[tuple(slice(max(v - 1, 0), v + 2) for v in p)] for p in points]
        tolerance = 2.5 * float(np.concatenate([q.ravel() for q in patches]).std())
    if tolerance < 0:
        raise ValueError(f"tolerance: must be non-negative, got {tolerance}")
    structure = ndimage.generate_binary_structure(values.ndim, 1)
    mean, region = float(seed_values.mean()), np.zeros(values.shape, dtype=bool)
    for _ in range(max_iterations):
        components, _ = ndimage.label(np.abs(values - mean) <= tolerance, structure=structure)
        kept = {components[p] for p in points} - {0}
        grown = np.isin(components, list(kept))
        if not grown.any() or np.array_equal(grown, region):
            region = grown
            break
        region, mean = grown, float(values[grown].mean())
    return _as_label_image(region, image)


def _ellipsoid(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Boolean structuring element: voxels whose centre lies within ``radius_mm`` of the centre."""
    half = np.floor(radius_mm / spacing).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def _morph(mask: np.ndarray, operation: str, structure: np.ndarray) -> np.ndarray:
    """Opening or closing, with edge padding so objects touching the border are not eroded there."""
    pad = [(s // 2, s // 2) for s in structure.shape]
    padded = np.pad(mask, pad, mode="edge")
    op = ndimage.binary_opening if operation == "opening" else ndimage.binary_closing
    result = op(padded, structure=structure)
    return result[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape))]


def postprocess(
    labels: Image,
    opening_mm: float = 0.0,
    closing_mm: float = 0.0,
    fill_holes: bool = False,
    largest_component: bool = False,
) -> Image:
    """Clean a label map class by class: opening, closing, hole filling, largest component, in that order.

    A class may only grow into background, never into another class's voxels; where two classes grow
    into the same voxel, the lower label value wins.

    Args:
        labels: Label Image ``(1, I, J[, K])``.
        opening_mm: Radius (mm) of the ellipsoidal element for opening (removes thin protrusions); 0 skips.
        closing_mm: Radius (mm) for closing (bridges small gaps); 0 skips.
        fill_holes: Fill cavities not connected to the image border.
        largest_component: Keep only the largest connected component of each class.

    Returns:
        A new label Image on the same grid.
    """
    if opening_mm < 0 or closing_mm < 0:
        raise ValueError(f"opening_mm, closing_mm: must be non-negative, got {opening_mm}, {closing_mm}")
    original = labels.numpy()[0].astype(np.int64)
    spacing = labels.affine.spacing
    out = np.zeros_like(original)
    for value in np.unique(original[original != 0]):
        mask = original == value
        for operation, radius in (("opening", opening_mm), ("closing", closing_mm)):
            if radius > 0:
                mask = _morph(mask, operation, _ellipsoid(radius, spacing))
        if fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        if largest_component:
            mask = keep_largest_component(mask.astype(np.uint8), [1]) > 0
        out[mask & ((original == value) | (original == 0)) & (out == 0)] = value
    return _as_label_image(out, labels)


METHODS = {"otsu": otsu, "region_grow": region_grow}
POSTPROCESS_KEYS = ("opening_mm", "closing_mm", "fill_holes", "largest_component")


def segment(image: Image, method: str, **params) -> Image:
    """Run one baseline (``otsu`` or ``region_grow``), then :func:`postprocess` with the keys it accepts."""
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    function = METHODS[method]
    post = {k: params.pop(k) for k in POSTPROCESS_KEYS if k in params}
    accepted = set(inspect.signature(function).parameters) - {"image"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"params: {method} does not accept {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    result = function(image, **params)
    return postprocess(result, **post) if post else result


def segment_folder(inputs: list[Path], out_dir: Path, method: str, **params) -> list[Path]:
    """Segment each input file (or DICOM folder) and write its mask to ``out_dir``.

    Args:
        inputs: Image files or DICOM series folders.
        out_dir: Output folder, created when missing.
        method: ``otsu`` or ``region_grow``.
        **params: Arguments of the method (e.g. ``classes``, ``seeds``, ``tolerance``) and of
            :func:`postprocess` (``opening_mm``, ``closing_mm``, ``fill_holes``, ``largest_component``).

    Returns:
        The written mask paths, in input order.

    Raises:
        SegmorphError: Two inputs share a case id, or an input cannot be read or segmented.
    """
    names = [mask_file_name(Path(p)) for p in inputs]
    outputs = [Output.folder(out_dir), *(Output.file(Path(out_dir) / n, p) for n, p in zip(names, inputs))]
    check_outputs(outputs, inputs=inputs)  # before any image is read
    written = []
    for path, name in zip(map(Path, inputs), names):
        image = read_image(path)
        try:
            mask = segment(image, method, **dict(params))
        except ValueError as err:
            raise SegmorphError(str(err), path) from None
        written.append(write_image(mask, Path(out_dir) / name))
    return written
