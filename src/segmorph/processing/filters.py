"""The classical filters behind the ``enhance`` steps, each a pure function ``Image -> Image``.

Every filter returns a new Image on exactly the input's grid (the same :class:`~segmorph.geometry.Affine`
object, the same spatial shape); inputs are never modified. Images are ``(C, I, J)`` or ``(C, I, J, K)``;
intensity filters work per channel and return float32, morphology on label maps returns int64 label maps.
Sizes given in mm (Gaussian sigmas) use the voxel spacing; sizes given in voxels (radii, vesselness
scales) do not. Intensity filters refuse label maps, and ``largest_component`` refuses images, with a
:class:`~segmorph.errors.SegmorphError`.

The work is done by SimpleITK and scikit-image; this module only converts arrays and chooses defaults.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch

from segmorph.errors import SegmorphError
from segmorph.image import Image

__all__ = [
    "WINDOWS", "canny", "channel", "clahe", "clip", "denoise", "fill_holes", "gradient", "histeq", "invert",
    "largest_component", "morphology", "n4", "rescale", "vesselness", "window",
]  # fmt: skip

# CT windows as (level, width) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "soft": (40.0, 400.0),
    "liver": (60.0, 160.0),
}
DENOISERS = ("gaussian", "median", "bilateral", "anisotropic", "nlmeans")
MORPHOLOGY = ("open", "close", "erode", "dilate")


# ---------------------------------------------------------------------------------------------- helpers


def _require_image(image: Image, what: str) -> None:
    if image.is_label:
        raise SegmorphError(f"{what} works on intensity images, not on label maps")


def _require_labels(image: Image, what: str) -> None:
    if not image.is_label:
        raise SegmorphError(f"{what} works on label maps, not on intensity images (read the file as labels)")


def _to_itk(array: np.ndarray, image: Image) -> sitk.Image:
    """One spatial array ``(I, J[, K])`` as a SimpleITK image on ``image``'s grid."""
    itk = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(*range(array.ndim - 1, -1, -1))))
    itk.SetSpacing([float(v) for v in image.affine.spacing])
    itk.SetOrigin([float(v) for v in image.affine.origin])
    itk.SetDirection([float(v) for v in image.affine.direction.ravel()])
    return itk


def _from_itk(itk: sitk.Image) -> np.ndarray:
    array = sitk.GetArrayFromImage(itk)
    return array.transpose(*range(array.ndim - 1, -1, -1))


def _result(image: Image, channels: list[np.ndarray], is_label: bool = False) -> Image:
    data = np.stack(channels).astype(np.int64 if is_label else np.float32)
    return image.with_data(torch.from_numpy(np.ascontiguousarray(data)), is_label=is_label)


def _per_channel(image: Image, what: str, function: Callable[[np.ndarray], np.ndarray]) -> Image:
    _require_image(image, what)
    return _result(image, [function(c.astype(np.float32)) for c in image.numpy()])


def _per_channel_itk(image: Image, what: str, function: Callable[[sitk.Image], sitk.Image]) -> Image:
    return _per_channel(image, what, lambda array: _from_itk(function(_to_itk(array, image))))


def _unit(array: np.ndarray) -> np.ndarray:
    """Min-max rescaled to [0, 1] (zeros for a constant array), float64."""
    low, high = float(array.min()), float(array.max())
    return (array.astype(np.float64) - low) / (high - low) if high > low else np.zeros(array.shape)


def _noise_sigma(array: np.ndarray) -> float:
    """Noise standard deviation estimated from the median absolute deviation of neighbour differences
    along I (robust to edges and to the signal's level); 0 for an image of one voxel along I."""
    if array.shape[0] < 2:
        return 0.0
    steps = np.diff(array.astype(np.float64), axis=0)
    return float(1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2.0))


def _is_rgb(image: Image) -> bool:
    return image.num_channels == 3 and image.ndim == 2


# --------------------------------------------------------------------------------------------- filters


def n4(image: Image, shrink: int = 4, mask: str | Image = "otsu", iterations: int = 50) -> Image:
    """N4 bias-field correction (SimpleITK ``N4BiasFieldCorrectionImageFilter``), per channel.

    The field is fitted on the image shrunk by ``shrink`` along every axis (at most to one voxel) inside
    the mask, then divided out of the full-resolution image.

    Args:
        image: Intensity image ``(C, I, J[, K])`` with positive values inside the mask.
        shrink: Integer shrink factor for the fit (>= 1; larger is faster and smoother).
        mask: ``"otsu"`` (voxels above an Otsu threshold, the usual choice), ``"all"`` (every voxel) or a
            label map on the same grid (non-zero voxels).
        iterations: Fitting iterations at each of the 4 resolution levels.

    Returns:
        The corrected image, float32, same grid.
    """
    _require_image(image, "n4")
    if shrink < 1:
        raise SegmorphError(f"shrink factor must be at least 1, got {shrink}")
    if isinstance(mask, Image):
        if not image.same_grid(mask):
            raise SegmorphError("n4 mask is not on the image's grid")
        fixed_mask = (mask.numpy()[0] != 0).astype(np.uint8)
    elif mask not in ("otsu", "all"):
        raise SegmorphError(f"n4 mask must be 'otsu', 'all' or a label map, got {mask!r}")

    # an axis one voxel thick takes no part in the fit: the field is fitted on the axes that have extent
    wide = [axis for axis, size in enumerate(image.spatial_shape) if size > 1]
    if len(wide) < 2:
        raise SegmorphError(
            f"n4 needs at least two axes longer than one voxel; the image has shape {image.spatial_shape}"
        )
    spacing = [float(image.affine.spacing[axis]) for axis in wide]

    def as_itk(array: np.ndarray) -> sitk.Image:
        squeezed = array.reshape([array.shape[axis] for axis in wide])
        itk = sitk.GetImageFromArray(np.ascontiguousarray(squeezed.T))
        itk.SetSpacing(spacing)
        return itk

    def correct(array: np.ndarray) -> np.ndarray:
        itk = as_itk(array)
        if isinstance(mask, Image):
            mask_itk = as_itk(fixed_mask)
        elif mask == "otsu":
            mask_itk = sitk.OtsuThreshold(itk, 0, 1, 200)
        else:
            mask_itk = sitk.Image(itk.GetSize(), sitk.sitkUInt8) + 1
            mask_itk.CopyInformation(itk)
        factors = [max(1, min(int(shrink), size // 2)) for size in itk.GetSize()]
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations([int(iterations)] * 4)
        corrector.Execute(sitk.Shrink(itk, factors), sitk.Shrink(mask_itk, factors))
        log_field = corrector.GetLogBiasFieldAsImage(itk)
        corrected = sitk.Cast(itk, sitk.sitkFloat32) / sitk.Cast(sitk.Exp(log_field), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(corrected).T.reshape(array.shape)

    return _per_channel(image, "n4", correct)


def denoise(image: Image, method: str) -> Image:
    """Denoise each channel.

    Methods: ``gaussian`` (recursive Gaussian, sigma one voxel of the finest spacing, in mm), ``median``
    (radius 1 voxel), ``bilateral`` (domain sigma two voxels of the finest spacing in mm, range sigma twice the
    estimated noise sigma), ``anisotropic`` (curvature anisotropic diffusion, 5
    iterations, conductance 1, the stable time step for the spacing), ``nlmeans`` (scikit-image non-local
    means, patch 3 voxels, search distance 5 voxels, filter strength 0.8 times the estimated noise sigma).
    The noise sigma is estimated from the median absolute deviation of neighbour differences along I.

    Args:
        image: Intensity image ``(C, I, J[, K])``.
        method: One of ``gaussian``, ``median``, ``bilateral``, ``anisotropic``, ``nlmeans``.

    Returns:
        The denoised image, float32, same grid.
    """
    if method not in DENOISERS:
        raise SegmorphError(f"unknown denoiser {method!r} (known: {', '.join(DENOISERS)})")
    finest = float(min(image.spacing))
    ndim = image.ndim
    what = f"denoise:{method}"
    if method == "gaussian":
        return _per_channel_itk(image, what, lambda itk: sitk.SmoothingRecursiveGaussian(itk, finest))
    if method == "median":
        return _per_channel_itk(image, what, lambda itk: sitk.Median(itk, [1] * ndim))
    if method == "bilateral":

        def bilateral(array: np.ndarray) -> np.ndarray:
            range_sigma = max(2 * _noise_sigma(array), 1e-6)
            return _from_itk(sitk.Bilateral(_to_itk(array, image), 2 * finest, range_sigma))

        return _per_channel(image, what, bilateral)
    if method == "anisotropic":
        step = finest / 2.0 ** (ndim + 1)
        return _per_channel_itk(image, what, lambda itk: sitk.CurvatureAnisotropicDiffusion(
            sitk.Cast(itk, sitk.sitkFloat32), timeStep=step, conductanceParameter=1.0,
            conductanceScalingUpdateInterval=1, numberOfIterations=5))  # fmt: skip

    def nlmeans(array: np.ndarray) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        sigma = _noise_sigma(array)
        if sigma <= 0:
            return array.copy()
        result = denoise_nl_means(array, h=0.8 * sigma, sigma=sigma, patch_size=3, patch_distance=5,
                                  fast_mode=True, channel_axis=None)  # fmt: skip
        return result.reshape(array.shape)  # scikit-image drops axes of one voxel

    return _per_channel(image, what, nlmeans)


def histeq(image: Image) -> Image:
    """Global histogram equalisation (scikit-image ``equalize_hist``, 256 bins) to [0, 1].

    Per channel; a 2D RGB image (3 channels) is equalised on its value (HSV) channel, keeping hue and
    saturation.
    """
    from skimage.color import hsv2rgb, rgb2hsv
    from skimage.exposure import equalize_hist

    _require_image(image, "histeq")
    if _is_rgb(image):
        hsv = rgb2hsv(np.moveaxis(_unit(image.numpy()), 0, -1))
        hsv[..., 2] = equalize_hist(hsv[..., 2], nbins=256)
        return _result(image, list(np.moveaxis(hsv2rgb(hsv), -1, 0)))
    return _per_channel(image, "histeq", lambda array: equalize_hist(array, nbins=256))


def clahe(image: Image, clip_limit: float = 0.01) -> Image:
    """Contrast-limited adaptive histogram equalisation (scikit-image ``equalize_adapthist``) to [0, 1].

    Tiles are 1/8 of each axis (scikit-image's default). Per channel, after a min-max rescale; a 2D RGB
    image is equalised on its luminance (scikit-image works on the HSV value channel).

    Args:
        image: Intensity image ``(C, I, J[, K])``.
        clip_limit: Histogram clip limit in (0, 1]; higher gives more contrast.
    """
    from skimage.exposure import equalize_adapthist

    _require_image(image, "clahe")
    if not 0 < clip_limit <= 1:
        raise SegmorphError(f"clip limit must be in (0, 1], got {clip_limit}")
    if _is_rgb(image):
        rgb = equalize_adapthist(np.moveaxis(_unit(image.numpy()), 0, -1), clip_limit=clip_limit)
        return _result(image, list(np.moveaxis(rgb, -1, 0)))
    return _per_channel(image, "clahe", lambda array: equalize_adapthist(_unit(array), clip_limit=clip_limit))


def window(image: Image, level: float, width: float) -> Image:
    """A CT window: ``level`` and ``width`` in HU map ``[level - width/2, level + width/2]`` linearly onto
    [0, 1]; values outside are clipped to 0 and 1."""
    _require_image(image, "window")
    if not width > 0:
        raise SegmorphError(f"window width must be positive, got {width}")
    low = level - width / 2.0
    return _per_channel(image, "window", lambda array: np.clip((array.astype(np.float64) - low) / width, 0.0, 1.0))


def clip(image: Image, low: float, high: float, percentiles: bool = True) -> Image:
    """Clip each channel to ``[low, high]``: percentiles of the channel (0..100) or, with
    ``percentiles=False``, intensity values."""
    _require_image(image, "clip")
    if not low < high:
        raise SegmorphError(f"clip: the lower bound {low} must be below the upper bound {high}")
    if percentiles and not 0 <= low < high <= 100:
        raise SegmorphError(f"clip: percentiles must lie in 0..100, got {low} and {high}")

    def clipped(array: np.ndarray) -> np.ndarray:
        bounds = np.percentile(array, [low, high]) if percentiles else (low, high)
        return np.clip(array, bounds[0], bounds[1])

    return _per_channel(image, "clip", clipped)


def rescale(image: Image) -> Image:
    """Min-max rescale of each channel to [0, 1] (a constant channel becomes 0)."""
    return _per_channel(image, "rescale", _unit)


def gradient(image: Image, sigma_mm: float | None = None) -> Image:
    """Gradient magnitude after Gaussian smoothing (SimpleITK ``GradientMagnitudeRecursiveGaussian``), in
    intensity units per mm; ``sigma_mm`` defaults to one voxel of the finest spacing."""
    sigma = float(min(image.spacing)) if sigma_mm is None else sigma_mm
    return _per_channel_itk(image, "gradient", lambda itk: sitk.GradientMagnitudeRecursiveGaussian(itk, sigma))


def canny(image: Image, sigma_mm: float | None = None, low: float = 0.1, high: float = 0.2) -> Image:
    """Canny edges (SimpleITK ``CannyEdgeDetection``): 1 on edge voxels, 0 elsewhere, float32.

    Args:
        image: Intensity image ``(C, I, J[, K])``.
        sigma_mm: Gaussian smoothing in mm (default one voxel of the finest spacing).
        low: Hysteresis lower threshold as a fraction of the largest smoothed gradient magnitude.
        high: Hysteresis upper threshold, same units (``low < high <= 1``).
    """
    if not 0 <= low < high <= 1:
        raise SegmorphError(f"canny thresholds must satisfy 0 <= low < high <= 1, got {low} and {high}")
    sigma = float(min(image.spacing)) if sigma_mm is None else sigma_mm

    def edges(itk: sitk.Image) -> sitk.Image:
        itk = sitk.Cast(itk, sitk.sitkFloat32)
        top = float(sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(itk, sigma)).max())
        if top <= 0:
            return itk * 0
        ndim = itk.GetDimension()
        return sitk.CannyEdgeDetection(itk, low * top, high * top, [sigma**2] * ndim, [0.01] * ndim)

    return _per_channel_itk(image, "canny", edges)


def vesselness(image: Image, method: str = "frangi", sigmas: tuple[float, ...] = (1.0, 2.0, 3.0),
               dark: bool = False) -> Image:  # fmt: skip
    """Hessian vesselness (scikit-image ``frangi`` or ``sato``), 2D or 3D, per channel.

    Args:
        image: Intensity image ``(C, I, J[, K])``.
        method: ``frangi`` or ``sato``.
        sigmas: Scales in voxels; a tube responds most at a scale near its half-width in voxels.
        dark: Dark tubes on a bright background (vessels in a fundus green channel) instead of bright ones.
    """
    from skimage.filters import frangi, sato

    if not sigmas or min(sigmas) <= 0:
        raise SegmorphError(f"{method} scales must be positive, got {list(sigmas)}")
    function = {"frangi": frangi, "sato": sato}[method]
    return _per_channel(image, method, lambda array: function(array, sigmas=sigmas, black_ridges=dark))


def channel(image: Image, index: int) -> Image:
    """One channel ``index`` (0-based; red 0, green 1, blue 2) as a one-channel image, dtype kept."""
    if not 0 <= index < image.num_channels:
        raise SegmorphError(f"channel {index} asked of an image with {image.num_channels} channel(s)")
    return image.with_data(image.data[index : index + 1].clone())


def invert(image: Image) -> Image:
    """Intensities mirrored within each channel's range (``min + max - x``); a binary label map swaps 0 and 1."""
    if image.is_label:
        values = np.unique(image.numpy())
        if not set(values.tolist()) <= {0, 1}:
            raise SegmorphError(f"invert works on binary label maps only, this one holds {values[:8].tolist()}")
        return image.with_data(1 - image.data.clone())
    return _per_channel(image, "invert", lambda array: float(array.min()) + float(array.max()) - array)


def morphology(image: Image, operation: str, radius: int) -> Image:
    """Opening, closing, erosion or dilation with a ball of ``radius`` voxels (SimpleITK).

    A label map is processed one label at a time as a binary mask (later labels win where dilated labels
    meet) and stays an int64 label map; an intensity image gets grey-level morphology (float32).

    Args:
        image: Label map or intensity image ``(C, I, J[, K])``.
        operation: ``open``, ``close``, ``erode`` or ``dilate``.
        radius: Ball radius in voxels along every axis (>= 1).
    """
    if operation not in MORPHOLOGY:
        raise SegmorphError(f"unknown morphology {operation!r} (known: {', '.join(MORPHOLOGY)})")
    if radius < 1:
        raise SegmorphError(f"{operation} radius must be at least 1 voxel, got {radius}")
    kernel = [int(radius)] * image.ndim
    if not image.is_label:
        grey = {"open": sitk.GrayscaleMorphologicalOpening, "close": sitk.GrayscaleMorphologicalClosing,
                "erode": sitk.GrayscaleErode, "dilate": sitk.GrayscaleDilate}[operation]  # fmt: skip
        return _per_channel_itk(image, operation, lambda itk: grey(itk, kernelRadius=kernel, kernelType=sitk.sitkBall))
    binary = {"open": sitk.BinaryMorphologicalOpening, "close": sitk.BinaryMorphologicalClosing,
              "erode": sitk.BinaryErode, "dilate": sitk.BinaryDilate}[operation]  # fmt: skip

    def per_label(labels: np.ndarray) -> np.ndarray:
        out = np.zeros_like(labels) if operation in ("erode", "open") else labels.copy()
        for value in np.unique(labels[labels != 0]):
            mask = _to_itk((labels == value).astype(np.uint8), image)
            done = _from_itk(binary(mask, kernelRadius=kernel, kernelType=sitk.sitkBall)) != 0
            if operation == "close":
                done &= labels == 0
            elif operation == "dilate":
                out[(labels == value) | (done & (labels == 0))] = value
                continue
            out[done] = value
        return out

    return _result(image, [per_label(c) for c in image.numpy()], is_label=True)


def fill_holes(image: Image) -> Image:
    """Fill holes: in a label map each label's enclosed background (scipy ``binary_fill_holes``; other
    labels are never overwritten); in an intensity image, grey-level hole filling (SimpleITK
    ``GrayscaleFillhole``)."""
    from scipy.ndimage import binary_fill_holes

    if not image.is_label:
        return _per_channel_itk(image, "fill-holes", sitk.GrayscaleFillhole)

    def per_label(labels: np.ndarray) -> np.ndarray:
        out = labels.copy()
        for value in np.unique(labels[labels != 0]):
            out[binary_fill_holes(labels == value) & (out == 0)] = value
        return out

    return _result(image, [per_label(c) for c in image.numpy()], is_label=True)


def largest_component(image: Image) -> Image:
    """Keep each label's largest connected component (full connectivity); label maps only."""
    from segmorph.segmentation.postprocess import keep_largest_component

    _require_labels(image, "largest-component")
    channels = []
    for labels in image.numpy():
        values = [int(v) for v in np.unique(labels) if v != 0]
        channels.append(keep_largest_component(labels, values) if values else labels.copy())
    return _result(image, channels, is_label=True)
