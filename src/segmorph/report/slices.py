"""Slices of volumes as small picture ``data:`` URIs: grey scans, label layers, disagreement maps.

Display follows :func:`segmorph.plots.overlay_slices`: a 3D volume ``(I, J, K)`` is cut along ``K``;
a slice ``s[i, j]`` is drawn with ``I`` across and ``J`` down. Pictures hold one pixel per voxel
(large slices are thinned to at most :data:`MAX_SIDE` pixels a side); the page scales them with the
voxel spacing's aspect ratio, pixelated, so voxels stay visible.

Label maps are drawn as separate transparent palette PNGs laid over the scan, so a scan slice is
stored once however many overlays use it, and a label layer takes a few hundred bytes.
"""

from __future__ import annotations

import base64
import io as _io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402  (Pillow: a dependency of matplotlib)

from segmorph.plots import LABEL_COLOURS  # noqa: E402
from segmorph.report.html import Panel, SliceStack  # noqa: E402

MAX_SLICES = 64
MAX_SIDE = 256  # pixels: longer slices are thinned by an integer step
DISPLAY_PX = 240  # longer side of a shown slice, CSS pixels
JPEG_FROM_PIXELS = 128 * 128  # larger grey pictures are stored as JPEG (noisy scans compress badly as PNG)
OVERLAY_ALPHA = 0.45
MISSED_COLOUR = (0, 153, 255)  # reference only (false negative)
EXTRA_COLOUR = (255, 51, 204)  # prediction only, or the wrong class (false positive)


def _uri(kind: str, payload: bytes) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(payload).decode("ascii")


def _as_bytes(picture: np.ndarray) -> np.ndarray:
    picture = np.asarray(picture)
    if picture.dtype == np.uint8:
        return np.ascontiguousarray(picture)
    return np.ascontiguousarray((np.clip(np.nan_to_num(picture), 0, 1) * 255).round().astype(np.uint8))


def png_uri(picture: np.ndarray) -> str:
    """PNG data URI of a ``(H, W)`` grey or ``(H, W, 3)`` RGB picture in 0..1 (or uint8); no metadata."""
    picture = _as_bytes(picture)
    buffer = _io.BytesIO()
    PILImage.fromarray(picture, "L" if picture.ndim == 2 else "RGB").save(buffer, format="PNG", optimize=True)
    return _uri("png", buffer.getvalue())


def picture_uri(picture: np.ndarray) -> str:
    """Like :func:`png_uri`, but JPEG (quality 90) for pictures above :data:`JPEG_FROM_PIXELS` pixels."""
    picture = _as_bytes(picture)
    if picture.shape[0] * picture.shape[1] <= JPEG_FROM_PIXELS:
        return png_uri(picture)
    buffer = _io.BytesIO()
    PILImage.fromarray(picture, "L" if picture.ndim == 2 else "RGB").save(buffer, format="JPEG", quality=90)
    return _uri("jpeg", buffer.getvalue())


def layer_uri(indices: np.ndarray, palette: Sequence[tuple[int, int, int, int]]) -> str:
    """Palette PNG of an ``(H, W)`` index map; ``palette[i]`` is the RGBA of index ``i`` (alpha 0: clear)."""
    indices = np.clip(np.asarray(indices), 0, len(palette) - 1).astype(np.uint8)
    layer = PILImage.fromarray(np.ascontiguousarray(indices), "P")
    layer.putpalette([c for colour in palette for c in colour[:3]])
    buffer = _io.BytesIO()
    layer.save(buffer, format="PNG", optimize=True, transparency=bytes(colour[3] for colour in palette))
    return _uri("png", buffer.getvalue())


def label_palette() -> list[tuple[int, int, int, int]]:
    """RGBA per label value in the overlay colours of :mod:`segmorph.plots` (0 transparent)."""
    alpha = int(round(OVERLAY_ALPHA * 255))
    colours = (LABEL_COLOURS * 255).round().astype(int)
    return [(0, 0, 0, 0)] + [(int(r), int(g), int(b), alpha) for r, g, b in colours[1:]]


DIFFERENCE_PALETTE = [(0, 0, 0, 90), (*MISSED_COLOUR, 255), (*EXTRA_COLOUR, 255)]  # agreement dimmed


def figure_uri(figure: plt.Figure) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return _uri("png", buffer.getvalue())


def file_uri(payload: bytes, suffix: str = ".png") -> str:
    """A data URI for the bytes of a picture file."""
    return _uri({".jpg": "jpeg", ".jpeg": "jpeg"}.get(suffix.lower(), "png"), payload)


class DisplayScale:
    """Display scaling of a ``(C, *S)`` image, computed once and applied slice by slice.

    The shown channels are the three of an RGB image, else the first one. Each is scaled to 0..1 by
    its 0.5 and 99.5 percentiles over the whole volume (estimated from at most :data:`PERCENTILE_SAMPLE`
    evenly strided voxels), so every slice shares one scale and no scaled copy of a large volume is made.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.channels = image if image.shape[0] == 3 else image[:1]
        self.limits = [_percentile_limits(channel) for channel in self.channels]

    def slice(self, k: int, step: int = 1) -> np.ndarray:
        """Slice ``k`` of a ``(C, I, J, K)`` image as a picture: ``(J', I')`` grey or ``(J', I', 3)`` RGB in 0..1."""
        planes = [_apply(channel[::step, ::step, k], limits) for channel, limits in zip(self.channels, self.limits)]
        picture = np.stack(planes, -1) if len(planes) == 3 else planes[0]
        return np.swapaxes(picture, 0, 1)


PERCENTILE_SAMPLE = 2_000_000


def _percentile_limits(values: np.ndarray) -> tuple[float, float]:
    flat = np.asarray(values).reshape(-1)
    sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLE)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-8))


def _apply(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    low, high = limits
    return np.clip((np.nan_to_num(values.astype(np.float32)) - low) / (high - low), 0, 1)


def difference_indices(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """0 where the label maps agree, 1 where only the reference has a label, 2 where the prediction is extra/wrong."""
    result = np.zeros(reference.shape, np.uint8)
    result[(reference > 0) & (prediction == 0)] = 1
    result[(prediction > 0) & (prediction != reference)] = 2
    return result


def shown_slices(depth: int, limit: int = MAX_SLICES) -> list[int]:
    """Every slice of a thin volume, else ``limit`` evenly spaced ones (first and last included)."""
    if depth <= limit:
        return list(range(depth))
    return sorted({int(v) for v in np.linspace(0, depth - 1, limit).round()})


def busiest_position(indices: Sequence[int], labels: np.ndarray) -> int:
    """Position in ``indices`` of the slice holding the most labelled voxels (the middle one when none)."""
    counts = np.count_nonzero(labels.reshape(-1, labels.shape[-1]), axis=0)[list(indices)]
    return int(np.argmax(counts)) if counts.max() > 0 else len(indices) // 2


def display_size(shape: Sequence[int], spacing: Sequence[float], longest: int = DISPLAY_PX) -> tuple[int, int]:
    """CSS width and height of a slice with ``shape[0]`` across and ``shape[1]`` down, spacing kept."""
    width_mm, height_mm = shape[0] * float(spacing[0]), shape[1] * float(spacing[1])
    scale = longest / max(width_mm, height_mm)
    return max(int(round(width_mm * scale)), 1), max(int(round(height_mm * scale)), 1)


def _with_k_axis(*arrays: np.ndarray | None, ndim: int, leading: Sequence[int] = ()) -> list[np.ndarray | None]:
    """2D arrays get a K axis of length one after their spatial axes, so 2D and 3D share one path.

    ``leading[n]`` is the number of non-spatial axes in front of array ``n`` (0 when not given).
    """
    if ndim == 3:
        return list(arrays)
    lead = list(leading) + [0] * (len(arrays) - len(leading))
    return [None if a is None else np.expand_dims(a, lead[n] + 2) for n, a in enumerate(arrays)]


def _thin(shape: Sequence[int]) -> int:
    return max(1, int(np.ceil(max(shape[0], shape[1]) / MAX_SIDE)))


def segmentation_stack(
    image: np.ndarray | None, reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
    max_slices: int = MAX_SLICES,
) -> SliceStack:  # fmt: skip
    """Scan, reference overlay, prediction overlay and their disagreement for every shown slice.

    Args:
        image: ``(C, I, J[, K])`` scan on the label maps' grid, or None (black background).
        reference: ``(I, J[, K])`` reference label map.
        prediction: ``(I, J[, K])`` predicted label map, same grid.
        spacing: Voxel size in mm per spatial axis.
        max_slices: Most slices rendered along ``K``.
    """
    ndim = reference.ndim
    image = np.zeros((1, *reference.shape), np.float32) if image is None else image
    image, reference, prediction = _with_k_axis(image, reference, prediction, ndim=ndim, leading=(1, 0, 0))
    scale, step = DisplayScale(image), _thin(reference.shape)
    indices = shown_slices(reference.shape[2], max_slices)
    series: dict[str, list[str]] = {"image": [], "reference": [], "prediction": [], "differences": []}
    palette = label_palette()
    for k in indices:
        ref, pred = (np.swapaxes(a[::step, ::step, k], 0, 1) for a in (reference, prediction))
        series["image"].append(picture_uri(scale.slice(k, step)))
        series["reference"].append(layer_uri(ref, palette))
        series["prediction"].append(layer_uri(pred, palette))
        series["differences"].append(layer_uri(difference_indices(ref, pred), DIFFERENCE_PALETTE))
    panels = [Panel("image", "image"), Panel("reference", "image", "reference"),
              Panel("prediction", "image", "prediction"),
              Panel("differences", "image", "differences")]  # fmt: skip
    width, height = display_size(reference.shape[:2], spacing[:2])
    start = busiest_position(indices, np.maximum(reference, prediction))
    return SliceStack(indices, series, panels, start, width, height, axis="K" if ndim == 3 else "")


def pair_stack(
    fixed: np.ndarray, warped: np.ndarray, spacing: Sequence[float], warped_labels: np.ndarray | None = None,
    max_slices: int = MAX_SLICES, squares: int = 8,
) -> SliceStack:  # fmt: skip
    """Fixed image, warped moving image, their checkerboard and absolute difference per slice.

    Args:
        fixed: ``(C, I, J[, K])`` fixed image.
        warped: Moving image warped onto the fixed grid, same shape.
        spacing: Voxel size in mm per spatial axis.
        warped_labels: Optional ``(I, J[, K])`` warped moving labels, drawn over the warped image.
        max_slices: Most slices rendered along ``K``.
        squares: Checkerboard tiles per axis.
    """
    from segmorph.registration.pictures import checkerboard, difference

    ndim = fixed.ndim - 1
    fixed, warped, labels = _with_k_axis(fixed[:1], warped[:1], warped_labels, ndim=ndim, leading=(1, 1, 0))
    fixed_scale, warped_scale = DisplayScale(fixed), DisplayScale(warped)
    shape = fixed.shape[1:]
    step = _thin(shape)
    indices = shown_slices(shape[2], max_slices)
    series: dict[str, list[str]] = {"fixed": [], "warped": [], "checkerboard": [], "difference": [], "labels": []}
    magma, palette = plt.get_cmap("magma"), label_palette()
    for k in indices:
        fa, wb = fixed_scale.slice(k, step), warped_scale.slice(k, step)
        series["fixed"].append(picture_uri(fa))
        series["warped"].append(picture_uri(wb))
        series["checkerboard"].append(picture_uri(checkerboard(fa, wb, squares)))
        series["difference"].append(picture_uri(magma(difference(fa, wb))[..., :3]))
        if labels is not None:
            series["labels"].append(layer_uri(labels[::step, ::step, k].T, palette))
    if labels is None:
        del series["labels"]
    moved = (
        Panel("warped moving + warped labels", "warped", "labels")
        if labels is not None
        else Panel("warped moving", "warped")
    )
    panels = [Panel("fixed", "fixed"), moved, Panel("checkerboard fixed / warped", "checkerboard"),
              Panel("|fixed − warped|", "difference")]  # fmt: skip
    width, height = display_size(shape[:2], spacing[:2])
    start = busiest_position(indices, labels) if labels is not None else len(indices) // 2
    return SliceStack(indices, series, panels, start, width, height, axis="K" if ndim == 3 else "")


def thumbnail(image: np.ndarray, longest: int = 160) -> tuple[str, int, int]:
    """A picture of a ``(C, I, J[, K])`` image (3D: its middle ``K`` slice) and its shown width and height."""
    image = np.asarray(image)
    image = image if image.ndim == 4 else image[..., None]
    step = max(1, int(np.ceil(max(image.shape[1:3]) / (2 * longest))))  # keep the page small
    picture = DisplayScale(image).slice(image.shape[3] // 2, step)
    scale = longest / max(picture.shape[:2])
    return picture_uri(picture), int(round(picture.shape[1] * scale)), int(round(picture.shape[0] * scale))


def legend_items(names: dict[int, str]) -> list[tuple[str, str]]:
    """``(CSS colour, class name)`` of each foreground label, in the overlay colours."""
    items = []
    for value, name in sorted(names.items()):
        if value <= 0:
            continue
        r, g, b = (LABEL_COLOURS[min(value, len(LABEL_COLOURS) - 1)] * 255).round().astype(int)
        items.append((f"rgb({r},{g},{b})", name))
    return items
