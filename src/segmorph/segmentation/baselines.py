"""Classical segmentation baselines: thresholds, seeded region growing, level sets, vesselness.

These are the traditional methods a learned model is compared against:

* :func:`otsu`: Otsu or multi-Otsu threshold (inside a mask when given);
* :func:`region_grow`: connected voxels within a tolerance of the region's running mean;
* :func:`confidence_connected`: ITK's confidence-connected growing, statistics from the seeds' neighbourhood;
* :func:`level_set`: seeded morphological geodesic active contour or Chan-Vese (scikit-image);
* :func:`vessels`: Hessian vesselness thresholded inside a field-of-view mask (:func:`field_of_view`).

Every function takes an :class:`~segmorph.image.Image` (intensities from one channel, or the mean of
all channels) and returns a one-channel label Image (int64, ``is_label=True``) on the same grid and
affine. Seeds are voxel indices ``(i, j[, k])``; :func:`seed_from_mask` puts one at a mask's centre.
:func:`segment` runs enhance steps (:mod:`segmorph.processing.steps`) first, then the method, then
:func:`postprocess`, whose structuring-element radii are in mm (ellipsoidal on anisotropic voxels).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from segmorph.image import Image
from segmorph.io import from_sitk, to_sitk
from segmorph.processing.steps import Step, enhance
from segmorph.segmentation.names import BASELINE_METHODS, LEVEL_SET_MODELS
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


def _spatial_mask(mask: Image | np.ndarray | None, image: Image) -> np.ndarray | None:
    """A boolean ``(I, J[, K])`` mask from a label Image on ``image``'s grid or an array of that shape."""
    if mask is None:
        return None
    if isinstance(mask, Image):
        if not mask.same_grid(image):
            raise ValueError("mask: is not on the image's grid (shape, spacing, origin or direction differ)")
        mask = mask.numpy()[0]
    mask = np.asarray(mask).astype(bool)
    if mask.shape != image.spatial_shape:
        raise ValueError(f"mask: shape {mask.shape} differs from the image's {image.spatial_shape}")
    if not mask.any():
        raise ValueError("mask: holds no voxel")
    return mask


def otsu(image: Image, classes: int = 2, channel: int | None = None, mask: Image | np.ndarray | None = None) -> Image:
    """Threshold by Otsu's method (``classes`` = 2) or multi-Otsu (``classes`` > 2).

    Args:
        image: Input image ``(C, I, J[, K])``.
        classes: Number of intensity classes K; the output holds labels ``0 .. K-1``, brightest last.
        channel: Channel to use; the mean over channels when None.
        mask: Boolean ``(I, J[, K])`` array or label Image on the same grid: thresholds are computed from
            the voxels inside it and everything outside is 0 (a field of view).

    Returns:
        Label Image ``(1, I, J[, K])``; a constant image gives all zeros.
    """
    if classes < 2:
        raise ValueError(f"classes: must be at least 2, got {classes}")
    values = intensities(image, channel)
    inside = _spatial_mask(mask, image)
    sample = values if inside is None else values[inside]
    if sample.min() == sample.max():
        return _as_label_image(np.zeros(values.shape, np.int64), image)
    if classes == 2:
        labels = (values > threshold_otsu(sample)).astype(np.int64)
    else:
        try:
            thresholds = threshold_multiotsu(sample, classes=classes)
        except ValueError as err:
            raise ValueError(f"image: cannot split into {classes} classes ({err})") from None
        labels = np.digitize(values, thresholds)
    return _as_label_image(labels if inside is None else labels * inside, image)


def field_of_view(image: Image, channel: int | None = None) -> np.ndarray:
    """The bright region of an image against a dark surround (a fundus photograph's disc, an ultrasound sector).

    Voxels above half the Otsu threshold of the intensities, largest connected component, holes filled.

    Returns:
        Boolean array ``(I, J[, K])``.
    """
    values = intensities(image, channel)
    if values.min() == values.max():
        return np.ones(values.shape, dtype=bool)
    bright = values > 0.5 * threshold_otsu(values)
    components, count = ndimage.label(bright)
    if count > 1:
        bright = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return ndimage.binary_fill_holes(bright)


def seed_from_mask(labels: Image) -> tuple[int, ...]:
    """One seed voxel ``(i, j[, k])``: the foreground voxel (any label above 0) nearest its centre of mass.

    Raises:
        ValueError: The label map holds no foreground.
    """
    foreground = labels.numpy()[0] > 0
    if not foreground.any():
        raise ValueError("seed mask: holds no foreground voxel")
    points = np.argwhere(foreground)
    centre = points.mean(axis=0)
    return tuple(int(v) for v in points[np.argmin(((points - centre) ** 2).sum(axis=1))])


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
    if not (0 <= opening_mm < math.inf and 0 <= closing_mm < math.inf):
        raise ValueError(f"opening_mm, closing_mm: must be finite and non-negative, got {opening_mm}, {closing_mm}")
    original = labels.numpy()[0].astype(np.int64)
    spacing = labels.affine.spacing
    extent = float(np.max(np.asarray(original.shape) * spacing))
    if max(opening_mm, closing_mm) > extent:
        raise ValueError(f"opening_mm, closing_mm: {max(opening_mm, closing_mm):g} mm is more than the image's "
                         f"{extent:g} mm across")  # fmt: skip
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


def confidence_connected(
    image: Image,
    seeds: Sequence[Sequence[int]],
    multiplier: float = 2.5,
    iterations: int = 4,
    radius: int = 1,
    channel: int | None = None,
) -> Image:
    """Confidence-connected region growing (SimpleITK ``ConfidenceConnected``).

    The mean m and standard deviation s of the intensities in the ``radius``-voxel neighbourhoods of the
    seeds define the window ``m ± multiplier·s``; the connected voxels inside it form the region, whose
    own m and s are then recomputed ``iterations`` times. Statistics come from the object itself, so a
    region only leaks where the object's intensities continue into its surroundings.

    Args:
        image: Input image ``(C, I, J[, K])``.
        seeds: Voxel indices ``(i, j[, k])`` inside the object.
        multiplier: Width of the window in standard deviations.
        iterations: Statistics updates after the first region.
        radius: Half-width (voxels) of each seed's neighbourhood for the first statistics.
        channel: Channel to use; the mean over channels when None.

    Returns:
        Label Image ``(1, I, J[, K])`` with 1 inside the region.
    """
    values = intensities(image, channel)
    points = _check_seeds(seeds, values.shape)
    if multiplier <= 0 or iterations < 0 or radius < 1:
        raise ValueError(
            f"multiplier, iterations, radius: need > 0, >= 0, >= 1; got {multiplier}, {iterations}, {radius}"
        )
    itk = to_sitk(image.with_data(torch.from_numpy(values[None].copy())))
    region = sitk.ConfidenceConnected(itk, seedList=[tuple(p) for p in points],
                                      numberOfIterations=int(iterations), multiplier=float(multiplier),
                                      initialNeighborhoodRadius=int(radius), replaceValue=1)  # fmt: skip
    return _as_label_image(from_sitk(region, is_label=True).numpy()[0] > 0, image)


def level_set(
    image: Image,
    seeds: Sequence[Sequence[int]],
    model: str = "geodesic",
    iterations: int = 8,
    radius_mm: float = 2.0,
    sigma_mm: float = 1.0,
    smoothing: int = 1,
    balloon: float = 1.0,
    channel: int | None = None,
) -> Image:
    """Seeded morphological level set (scikit-image), started from balls around the seeds.

    ``geodesic``: a geodesic active contour on the inverse Gaussian gradient of the robustly standardised
    image; the ``balloon`` force (voxels per iteration; negative shrinks) pushes the contour out until
    edges stop it, so ``iterations`` bounds how far it can travel from the seeds where edges are weak.
    ``chan-vese``: the two-phase piecewise-constant Chan-Vese model; the phase that holds the seeds.
    Either way the result is the connected region that contains a seed (nothing detached is kept).

    Args:
        image: Input image ``(C, I, J[, K])``.
        seeds: Voxel indices ``(i, j[, k])`` inside the object.
        model: ``geodesic`` or ``chan-vese``.
        iterations: Level-set iterations.
        radius_mm: Radius of the starting ball around each seed (mm; at least one voxel).
        sigma_mm: Gaussian scale of the edge map (mm, geodesic only).
        smoothing: Curvature smoothing steps per iteration.
        balloon: Balloon force of the geodesic contour.
        channel: Channel to use; the mean over channels when None.

    Returns:
        Label Image ``(1, I, J[, K])`` with 1 inside the contour.
    """
    if model not in LEVEL_SET_MODELS:
        raise ValueError(f"model: unknown level set {model!r}; choose {' or '.join(LEVEL_SET_MODELS)}")
    if iterations < 1 or radius_mm < 0 or sigma_mm <= 0 or smoothing < 0:
        raise ValueError("iterations >= 1, radius_mm >= 0, sigma_mm > 0 and smoothing >= 0 are required; "
                         f"got {iterations}, {radius_mm}, {sigma_mm}, {smoothing}")  # fmt: skip
    values = intensities(image, channel).astype(np.float64)
    points = _check_seeds(seeds, values.shape)
    # a 3D image one voxel thick along an axis is a 2D problem: the level set runs on the axes that have extent
    wide = [axis for axis, size in enumerate(values.shape) if size > 1]
    if len(wide) < 2:
        raise ValueError(
            f"a level set needs at least two axes longer than one voxel; the image has shape {values.shape}"
        )
    inside = _level_set_inside(
        values.reshape([values.shape[a] for a in wide]),
        image.affine.spacing[wide],
        [tuple(point[a] for a in wide) for point in points],
        _LevelSetSettings(model, int(iterations), radius_mm, sigma_mm, int(smoothing), float(balloon)),
    )
    return _as_label_image(inside.reshape(values.shape), image)


@dataclass(frozen=True)
class _LevelSetSettings:
    model: str
    iterations: int
    radius_mm: float
    sigma_mm: float
    smoothing: int
    balloon: float


def _level_set_inside(
    values: np.ndarray, spacing: np.ndarray, points: list[tuple[int, ...]], settings: _LevelSetSettings
) -> np.ndarray:
    """Boolean ``(I, J[, K])`` region of the level set that contains a seed; ``values`` float64, ``spacing`` mm."""
    from skimage.segmentation import inverse_gaussian_gradient, morphological_chan_vese
    from skimage.segmentation import morphological_geodesic_active_contour as geodesic_active_contour
    from skimage.segmentation.morphsnakes import inf_sup, sup_inf

    model, smoothing = settings.model, settings.smoothing
    start = np.zeros(values.shape, dtype=bool)
    for point in points:
        start[point] = True
    start = ndimage.binary_dilation(start, structure=_ellipsoid(max(settings.radius_mm, float(spacing.max())), spacing))
    median = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - median))) or float(values.std()) or 1.0
    standardised = (values - median) / scale
    if model == "geodesic":
        sigma = float(settings.sigma_mm / spacing.mean())
        edges = inverse_gaussian_gradient(standardised, alpha=100.0, sigma=sigma)
        level = float(np.percentile(edges, 40))  # scikit-image's threshold="auto"
    # scikit-image alternates its smoothing (SI∘IS, IS∘SI) through one cycle shared by every call in the process,
    # so a result would depend on the level sets run before it: one iteration at a time, smoothed here instead
    phases = start.astype(np.int8)
    for index in range(settings.iterations):
        if model == "geodesic":
            phases = geodesic_active_contour(edges, 1, init_level_set=phases, smoothing=0, threshold=level,
                                             balloon=settings.balloon)  # fmt: skip
        else:
            phases = morphological_chan_vese(standardised, 1, init_level_set=phases, smoothing=0)
        for step in range(smoothing):
            odd = (index * smoothing + step) % 2
            phases = inf_sup(sup_inf(phases)) if odd else sup_inf(inf_sup(phases))
    inside = phases > 0
    if model == "chan-vese" and sum(inside[p] for p in points) * 2 < len(points):  # seeds in the other phase
        inside = ~inside
    components, _ = ndimage.label(inside, structure=ndimage.generate_binary_structure(values.ndim, 1))
    kept = {components[p] for p in points} - {0}
    return np.isin(components, list(kept)) if kept else np.zeros(values.shape, bool)


def vessels(
    image: Image,
    mask: Image | np.ndarray | None = None,
    vesselness: str = "sato",
    sigmas: Sequence[float] = (1.0, 2.0, 3.0),
    dark: bool = True,
    threshold: str | float = "otsu",
    channel: int | None = None,
) -> Image:
    """Vessels by Hessian vesselness (scikit-image ``sato`` or ``frangi``) and a threshold inside a mask.

    Outside the mask the intensities are set to the mean inside it before filtering, so the mask's rim
    gives no response; the response is then kept only at least ``max(sigmas)`` voxels inside the mask.

    Args:
        image: Input image ``(C, I, J[, K])``, e.g. the green channel of a fundus photograph.
        mask: Field of view (boolean array or label Image on the same grid); None: :func:`field_of_view`.
        vesselness: The filter, ``sato`` or ``frangi``.
        sigmas: Scales in voxels (about the vessels' half-widths).
        dark: Dark vessels on a bright background (fundus), else bright vessels (angiography).
        threshold: ``otsu`` (Otsu's threshold of the response inside the mask), ``top:P`` (the strongest
            P percent of the mask's voxels, e.g. ``top:12`` for the vessel share of a fundus field of
            view) or a number (an absolute response level).
        channel: Channel to use; the mean over channels when None.

    Returns:
        Label Image ``(1, I, J[, K])`` with 1 on vessels.
    """
    from skimage.filters import frangi, sato

    filters = {"sato": sato, "frangi": frangi}
    if vesselness not in filters:
        raise ValueError(f"vesselness: unknown filter {vesselness!r}; choose sato or frangi")
    if not sigmas or min(sigmas) <= 0:
        raise ValueError(f"sigmas: must be positive, got {list(sigmas)}")
    values = intensities(image, channel).astype(np.float64)
    inside = field_of_view(image, channel) if mask is None else _spatial_mask(mask, image)
    values = np.where(inside, values, values[inside].mean())
    response = filters[vesselness](values, sigmas=tuple(float(s) for s in sigmas), black_ridges=dark)
    core = ndimage.binary_erosion(inside, iterations=int(np.ceil(max(sigmas))), border_value=1)
    response = np.where(core, response, 0.0)
    level = _vessel_threshold(response[inside], threshold)
    return _as_label_image((response > level) & inside, image)


def _vessel_threshold(response: np.ndarray, threshold: str | float) -> float:
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return float(threshold)
    text = str(threshold).strip()
    if text == "otsu":
        return float(threshold_otsu(response)) if response.min() < response.max() else float(response.max())
    if text.startswith("top:"):
        try:
            percent = float(text[4:].rstrip("%"))
        except ValueError:
            percent = -1.0
        if 0 < percent < 100:
            return float(np.percentile(response, 100 - percent))
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"threshold: expected otsu, top:P (0 < P < 100) or a number, got {threshold!r}") from None


METHODS = {
    "otsu": otsu,
    "region_grow": region_grow,
    "confidence_connected": confidence_connected,
    "level_set": level_set,
    "vessels": vessels,
}
assert tuple(METHODS) == BASELINE_METHODS, "segmorph.segmentation.names lists the baselines"
SEEDED = ("region_grow", "confidence_connected", "level_set")
POSTPROCESS_KEYS = ("opening_mm", "closing_mm", "fill_holes", "largest_component")


def segment(
    image: Image,
    method: str,
    steps: str | Sequence[str | Step] = (),
    mask: Image | np.ndarray | str | None = None,
    **params,
) -> Image:
    """Run enhance ``steps``, one baseline ``method`` (a key of :data:`METHODS`), then :func:`postprocess`.

    Args:
        image: Input image ``(C, I, J[, K])``.
        method: ``otsu``, ``region_grow``, ``confidence_connected``, ``level_set`` or ``vessels``.
        steps: Processing steps applied first (:mod:`segmorph.processing.steps`), e.g. ``channel:green,clahe``.
        mask: Region of interest (boolean array or label Image on the image's grid, or ``"auto"`` for the
            :func:`field_of_view` of the input before the steps): the methods that take a mask compute
            their statistics inside it, and the result is 0 outside it for every method.
        **params: Arguments of the method (``classes``, ``seeds``, ``tolerance``, ``multiplier``,
            ``iterations``, ``sigmas``, ``threshold``...) and of :func:`postprocess`.

    Raises:
        ValueError: An unknown method or parameter, or a bad value (the message names it).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    function = METHODS[method]
    post = {k: params.pop(k) for k in POSTPROCESS_KEYS if k in params}
    accepted = set(inspect.signature(function).parameters) - {"image", "mask"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"params: {method} does not accept {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}"
        )
    if isinstance(mask, str):
        if mask != "auto":
            raise ValueError(f"mask: expected a label image, an array or 'auto', got {mask!r}")
        mask = field_of_view(image)
    enhanced = enhance(image, steps) if steps else image
    inside = _spatial_mask(mask, enhanced)
    if "mask" in inspect.signature(function).parameters and inside is not None:
        params["mask"] = inside
    result = function(enhanced, **params)
    result = postprocess(result, **post) if post else result
    if inside is not None:
        result = result.with_data(result.data * torch.from_numpy(inside)[None])
    return result
