"""The page of ``segmorph view``: one self-contained HTML file showing scans with their masks.

Which files make the cases (pairing by case name, label names, the pages of ``predict --view`` and
``evaluate --view``) is :mod:`segmorph.report.view_files`; this module draws the cases it is given.

A 3D scan ``(C, I, J, K)`` is shown in three orthogonal planes, each cut along one voxel axis with a slice
slider; the plane is named axial, coronal or sagittal after the world axis (LPS) its slicing axis runs
closest to, and the caption says which voxel axes run across and down (a voxel axis running mostly along
the world's z axis is drawn with superior up). A 2D image ``(C, I, J)`` is one plane, ``I`` across and
``J`` down, at its native resolution. Grey values go through a window (automatic percentiles, the full
range and, for CT-like ranges, the brain, bone, lung and soft-tissue windows) with contrast and brightness
sliders; RGB pictures keep their colours. Each mask is drawn filled or as an outline in the label colours of
:mod:`segmorph.plots` (on a page with RGB pictures, :data:`RGB_LABEL_COLOURS` ordered away from the pictures'
mean hue, so that the first label stands out on a red fundus photograph), with a legend (value, name,
colour) and a show/hide box; with two masks, the first is taken as the prediction and the second as the
reference, and a differences layer marks voxels only the reference labels (false negative) apart from
voxels the prediction labels wrongly (false positive).
Hovering shows the voxel index, its position in mm (the image's affine, LPS; ``px`` for pictures, which
store no spacing) and each mask's label name there. Several scans make one page with a case list.

The page loads nothing: each case's volumes are embedded once, gzip-compressed, and drawn on ``<canvas>``
by the inline script (:mod:`segmorph.report.view_script`). Volumes above :data:`MAX_VOXELS` are thinned by
an integer step along every axis (the page says so; indices and positions stay those of the full grid).
"""

from __future__ import annotations

import base64
import colorsys
import gzip
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, check_same_grid
from segmorph.io import PICTURE_SUFFIXES, atomic_write_text, image_suffix, read_image
from segmorph.outputs import check_outputs
from segmorph.plots import LABEL_COLOURS
from segmorph.processing.filters import WINDOWS
from segmorph.report.html import Markup, Section, esc, join, json_script, note, page, table, tag
from segmorph.report.slices import EXTRA_COLOUR, MISSED_COLOUR
from segmorph.report.view_script import VIEW_CSS, VIEW_SCRIPT

__all__ = ["MAX_CASES", "MAX_VOXELS", "ViewCase", "build_view", "plane_layout", "thinning_step"]

MAX_VOXELS = 12_000_000  # per case; larger volumes are thinned by an integer step along every axis
MAX_CASES = 500  # cases on one page (the page holds every case's volumes)
DISPLAY_MM_PX = 360  # CSS pixels of the longest side of a 3D case's planes
FILL_ALPHA = 0.45
CT_WINDOWS = ("brain", "bone", "lung", "soft")
PLANE_NAMES = ("sagittal", "coronal", "axial")  # slicing along world x (L-R), y (A-P), z (I-S)
AXES = "IJK"
# label colours on a page with RGB pictures (cyan first), reordered by :func:`contrasting_palette`
RGB_LABEL_COLOURS = ((0, 255, 255), (60, 180, 75), (255, 225, 25), (0, 130, 200), (240, 50, 230), (245, 130, 48))
HUE_STEP_DEGREES = 30  # hue distances from the picture's mean colour are compared in steps this wide
MIN_HUE_SATURATION = 0.1  # a mean colour less saturated than this has no hue to contrast with: order kept
Palette = Sequence[tuple[int, int, int]]


@dataclass(frozen=True)
class ViewCase:
    """One scan and its masks, as shown on the page.

    Attributes:
        name: The case name in the case list.
        image: The scan; None draws the masks on black (on the first mask's grid).
        masks: One label map per layer of the page, on the scan's grid; None where this case has none.
        note: A remark beside the name in the case list (e.g. its Dice).
    """

    name: str
    image: Path | None
    masks: tuple[Path | None, ...] = ()
    note: str = ""


# -- one case's data ---------------------------------------------------------------------------------


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(gzip.compress(np.ascontiguousarray(array).tobytes(), 6, mtime=0)).decode("ascii")


def _image_data(values: np.ndarray) -> dict[str, Any]:
    """``(C, I, J, K)`` float values as codes: ``value = offset + scale * code``, integers kept exactly."""
    low, high = float(values.min()), float(values.max())
    whole = bool(np.array_equal(values, np.round(values)))
    if whole and high - low <= 255:
        dtype, scale = np.uint8, 1.0
    elif whole and high - low <= 65535:
        dtype, scale = np.dtype("<u2"), 1.0
    else:
        dtype, scale = np.dtype("<u2"), (high - low) / 65535 or 1.0
    codes = np.round((values - low) / scale).clip(0, np.iinfo(dtype).max).astype(dtype)
    return {"data": _encode(codes), "bytes": np.dtype(dtype).itemsize, "offset": low, "scale": scale}


def _windows(values: np.ndarray) -> list[dict[str, Any]]:
    """Window presets in the image's units: percentiles, full range, CT windows for CT-like ranges."""
    flat = values.reshape(-1)
    sample = flat[:: max(1, flat.size // 2_000_000)]
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    minimum, maximum = float(flat.min()), float(flat.max())
    windows = [{"name": "auto (0.5–99.5 percentiles)", "low": low, "high": max(high, low + 1e-6)},
               {"name": "full range", "low": minimum, "high": max(maximum, minimum + 1e-6)}]  # fmt: skip
    if values.shape[0] == 1 and minimum <= -500 and maximum >= 500:  # Hounsfield units
        for name in CT_WINDOWS:
            level, width = WINDOWS[name]
            windows.append({"name": f"CT {name} (L {level:g}, W {width:g})", "low": level - width / 2,
                            "high": level + width / 2})  # fmt: skip
    return windows


def _mask_data(labels: np.ndarray, path: Path) -> dict[str, Any]:
    top = int(labels.max())
    if top > 65535:
        raise SegmorphError(f"mask holds label value {top}; the viewer shows values up to 65535", path)
    dtype = np.uint8 if top <= 255 else np.dtype("<u2")
    return {"data": _encode(labels.astype(dtype)), "bytes": np.dtype(dtype).itemsize}


def thinning_step(shape: Sequence[int], limit: int = MAX_VOXELS) -> int:
    """Smallest integer step along every axis that leaves at most ``limit`` voxels."""
    step = 1
    while math.prod(-(-int(n) // step) for n in shape) > limit:
        step += 1
    return step


def world_axes(affine: Affine) -> list[int]:
    """World axis (0 x, 1 y, 2 z) each voxel axis runs closest to, every world axis used once."""
    direction = np.abs(affine.direction)
    n = affine.ndim
    best = max(itertools.permutations(range(n)), key=lambda p: sum(direction[p[a], a] for a in range(n)))
    return list(best)


def plane_layout(affine: Affine, shape: Sequence[int], step: int) -> list[dict[str, Any]]:
    """The planes of a ``(I, J, K)`` grid (``K = 1`` for 2D): the sliced axis, the axes across and down,
    whether rows are flipped (superior up), the caption and the display size in CSS pixels."""
    spacing = np.ones(3)
    spacing[: affine.ndim] = affine.spacing * step
    if affine.ndim == 2:
        scale = 1.0 / float(min(spacing[:2])) * step  # native: one CSS pixel per voxel of the finer axis
        size = [round(shape[0] * spacing[0] * scale), round(shape[1] * spacing[1] * scale)]
        return [{"axis": 2, "across": 0, "down": 1, "flip": False, "axis_name": "", "size": size,
                 "caption": "2D image · I across, J down"}]  # fmt: skip
    world = world_axes(affine)
    scale = DISPLAY_MM_PX / float(max(np.asarray(shape) * spacing))
    planes = []
    for axis in sorted(range(3), key=lambda a: -world[a]):  # axial, coronal, sagittal
        across, down = (a for a in range(3) if a != axis)
        flip = bool(world[down] == 2 and affine.direction[2, down] > 0)
        caption = (f"{PLANE_NAMES[world[axis]]} · slices along {AXES[axis]} · {AXES[across]} across, "
                   f"{AXES[down]} {'up' if flip else 'down'}")  # fmt: skip
        size = [max(1, round(shape[a] * spacing[a] * scale)) for a in (across, down)]
        planes.append({"axis": axis, "across": across, "down": down, "flip": flip, "axis_name": AXES[axis],
                       "size": size, "caption": caption})  # fmt: skip
    return planes


def _start(masks: list[np.ndarray], shape: Sequence[int]) -> list[int]:
    """The slice along each axis holding the most labelled voxels of any mask (the middle when none)."""
    labelled = np.zeros(tuple(shape), bool)
    for mask in masks:
        labelled |= mask > 0
    start = []
    for axis in range(3):
        counts = labelled.sum(axis=tuple(a for a in range(3) if a != axis))
        start.append(int(np.argmax(counts)) if counts.max() > 0 else int(shape[axis]) // 2)
    return start


def _read_case(case: ViewCase) -> tuple[Image | None, list[Image | None], Path]:
    """The scan and masks of a case, every mask checked against the scan's grid (or the first mask's)."""
    image = read_image(case.image) if case.image is not None else None
    masks = [read_image(path, is_label=True) if path is not None else None for path in case.masks]
    given = [(path, mask) for path, mask in zip(case.masks, masks) if mask is not None]
    if image is None and not given:
        raise SegmorphError(f"case {case.name!r} has neither a scan nor a mask to show")
    like, like_path = (image, case.image) if image is not None else (given[0][1], given[0][0])
    for path, mask in given:
        check_same_grid(mask, like, f"mask grid differs from {like_path.name}", path)
    return image, masks, Path(like_path)


def _case_data(case: ViewCase) -> tuple[dict[str, Any], set[int], np.ndarray | None]:
    """One case's JSON block, the label values its masks hold, and its RGB scan's mean colour (R, G, B; None
    for grey scans and cases without a scan)."""
    image, masks, path = _read_case(case)
    grid = image if image is not None else next(m for m in masks if m is not None)
    ndim, full = grid.ndim, list(grid.spatial_shape) + [1] * (3 - grid.ndim)
    step = thinning_step(full, MAX_VOXELS)
    cut = (slice(None, None, step),) * ndim

    def volume(values: np.ndarray) -> np.ndarray:  # (C, I, J[, K]) -> thinned (C, I, J, K)
        values = values[(slice(None), *cut)]
        return values if ndim == 3 else values[..., None]

    labels = [None if mask is None else volume(mask.numpy())[0] for mask in masks]
    present = {int(v) for mask in labels if mask is not None for v in np.unique(mask) if v > 0}
    shape = [-(-n // step) for n in full[:ndim]] + [1] * (3 - ndim)
    unit = "px" if image_suffix(path) in PICTURE_SUFFIXES else "mm"
    mean_rgb = None
    data: dict[str, Any] = {
        "name": case.name, "ndim": ndim, "shape": shape, "original_shape": full, "step": step,
        "affine": grid.affine.matrix.tolist(), "unit": unit,
        "planes": plane_layout(grid.affine, shape, step), "image": None, "channels": 1, "windows": [],
        "start": _start([m for m in labels if m is not None], shape),
        "masks": [None if mask is None else _mask_data(mask, p) for mask, p in zip(labels, case.masks)],
        "facts": _facts(case, grid, step, unit),
    }  # fmt: skip
    if image is not None:
        values = volume(image.numpy())
        values = values[:3] if values.shape[0] in (3, 4) else values[:1]
        data.update(image=_image_data(values), channels=int(values.shape[0]), windows=_windows(values))
        if values.shape[0] == 3:
            mean_rgb = np.nanmean(values.reshape(3, -1), axis=1)
    else:
        data["windows"] = [{"name": "no scan", "low": 0.0, "high": 1.0}]
    return data, present, mean_rgb


def _facts(case: ViewCase, grid: Image, step: int, unit: str) -> str:
    spacing = ", ".join(f"{s:.4g}" for s in grid.spacing)
    source = case.image.name if case.image is not None else "no scan: masks on black"
    size = f"spacing ({spacing}) mm" if unit == "mm" else "no spacing stored (positions in pixels)"
    facts = f"{source} · {' x '.join(str(n) for n in grid.spatial_shape)} voxels · {size}"
    if grid.num_channels > 1:
        facts += f" · {grid.num_channels} channels" + ("" if grid.num_channels in (3, 4) else ", the first shown")
    if step > 1:
        facts += f" · thinned to one voxel in {step} along each axis (over {MAX_VOXELS:,} voxels)"
    return facts


# -- the page ----------------------------------------------------------------------------------------


def label_colour(value: int, palette: Palette | None = None) -> tuple[int, int, int]:
    """The overlay colour (R, G, B in 0..255) of a label value: ``palette[value - 1]``, repeating after the last;
    by default the colours of :mod:`segmorph.plots`."""
    colours = (LABEL_COLOURS[1:] * 255).round().astype(int) if palette is None else np.asarray(palette)
    r, g, b = colours[(value - 1) % len(colours)]
    return int(r), int(g), int(b)


def contrasting_palette(mean_rgb: Sequence[float]) -> list[tuple[int, int, int]]:
    """:data:`RGB_LABEL_COLOURS` ordered by hue farthest from a picture's mean colour first (R, G, B, any scale).

    Hue distances count in steps of :data:`HUE_STEP_DEGREES` (colours in one step keep their listed order).
    A mean colour with saturation below :data:`MIN_HUE_SATURATION` (greyish) keeps the order, cyan first.

    Example:
        >>> contrasting_palette((180, 60, 30))[0]  # a reddish fundus photograph
        (0, 255, 255)
    """
    r, g, b = (max(float(v), 0.0) for v in mean_rgb)
    top = max(r, g, b)
    if not np.isfinite(top) or top <= 0:
        return list(RGB_LABEL_COLOURS)
    hue, saturation, _ = colorsys.rgb_to_hsv(r / top, g / top, b / top)
    if saturation < MIN_HUE_SATURATION:
        return list(RGB_LABEL_COLOURS)

    def distance(colour: tuple[int, int, int]) -> int:  # in steps of HUE_STEP_DEGREES
        other = colorsys.rgb_to_hsv(*(c / 255 for c in colour))[0]
        apart = abs(other - hue) % 1.0
        return int(min(apart, 1.0 - apart) * 360 // HUE_STEP_DEGREES)

    return sorted(RGB_LABEL_COLOURS, key=distance, reverse=True)


def _swatch(rgb: Sequence[int]) -> Markup:
    return tag("span", "", class_="swatch", style=f"background:rgb({rgb[0]},{rgb[1]},{rgb[2]})")


def _legend(labels: Mapping[int, str], present: set[int], palette: Palette | None) -> Markup:
    values = sorted({v for v in labels if v > 0} | present)
    rows = [(_swatch(label_colour(v, palette)), v, labels.get(v, f"label_{v}"),
             "yes" if v in present else "no") for v in values]  # fmt: skip
    if not rows:
        return note("no labelled voxel in any mask")
    return table(("colour", "value", "name", "in a mask"), rows, class_="view-legend")


def _layers(layers: Sequence[str]) -> Markup:
    rows = []
    for m, layer in enumerate(layers):
        shown = Markup(f'<input type="checkbox" class="layer-shown" data-layer="{m}" checked '
                       f'aria-label="show {esc(layer)}">')  # fmt: skip
        outline = Markup(f'<input type="checkbox" class="layer-outline" data-layer="{m}"{" checked" if m else ""} '
                         f'aria-label="outline {esc(layer)}">')  # fmt: skip
        missing = tag("span", "", class_="layer-missing note", data_layer=m)
        rows.append((shown, join([tag("b", layer), " ", missing]), outline))
    if len(layers) == 2:
        box = Markup('<input type="checkbox" class="view-differences" aria-label="show differences">')
        words = join([_swatch(MISSED_COLOUR), f" {layers[1]} only (false negative)  ", _swatch(EXTRA_COLOUR),
                      f" {layers[0]} only or another label (false positive)"])  # fmt: skip
        rows.append((box, join([tag("b", "differences"), " ", words]), ""))
    if not rows:
        return note("no masks given")
    return table(("show", "mask", "outline"), rows, class_="view-layers")


def _controls() -> Markup:
    return Markup(
        '<div class="view-controls"><label>window <select class="view-window" aria-label="window"></select></label>'
        '<label>contrast <input type="range" class="view-contrast" min="-100" max="100" value="0" step="1" '
        'aria-label="contrast"></label><label>brightness <input type="range" class="view-brightness" min="-100" '
        'max="100" value="0" step="1" aria-label="brightness"></label></div>'
    )


def _planes() -> Markup:
    figures = []
    for p in range(3):
        figures.append(Markup(
            f'<figure class="view-plane" data-plane="{p}"><canvas width="1" height="1"></canvas>'
            '<figcaption class="plane-name"></figcaption><label>slice <span class="plane-axis"></span> = '
            '<span class="slice-number"></span> <input type="range" min="0" max="0" value="0" step="1" '
            f'aria-label="slice of plane {p + 1}"></label></figure>'
        ))  # fmt: skip
    return tag("div", join(figures), class_="view-planes")


def _case_list(cases: Sequence[ViewCase]) -> Markup:
    items = [tag("li", join([Markup(f'<button type="button" data-case="{n}">{esc(case.name)}</button>'),
                             tag("span", f" {case.note}", class_="note") if case.note else ""]))
             for n, case in enumerate(cases)]  # fmt: skip
    return tag("div", join([tag("b", f"{len(cases)} cases"), tag("ol", join(items))]), class_="view-cases")


def build_view(
    cases: Sequence[ViewCase], out: str | Path, layers: Sequence[str] = (), labels: Mapping[int, str] | None = None,
    title: str = "", inputs: Sequence[str | Path | None] = (),
) -> Path:  # fmt: skip
    """Write the page for ``cases`` (each with one mask per layer), in the order given.

    Args:
        cases: The cases; at most :data:`MAX_CASES`.
        out: The HTML file to write (atomically).
        layers: The name of each mask layer (e.g. ``["prediction", "reference"]``).
        labels: Label value -> name; unnamed values show as ``label_<value>``.
        title: The page title (default: the case name, or the number of cases).
        inputs: Further paths read (folders, run folders) that the page must not overwrite.

    Raises:
        SegmorphError: No cases or too many, a mask count that does not match ``layers``, an unreadable file,
            a mask off its scan's grid, or an output that would overwrite an input.
    """
    out = Path(out)
    if not cases:
        raise SegmorphError("nothing to show: no scans or masks")
    if len(cases) > MAX_CASES:
        raise SegmorphError(f"{len(cases)} cases: one page shows at most {MAX_CASES}; view fewer at a time")
    if any(len(case.masks) != len(layers) for case in cases):
        raise SegmorphError(f"every case needs one mask entry per layer ({len(layers)})")
    read = [*inputs, *(case.image for case in cases), *(path for case in cases for path in case.masks)]
    check_outputs([out], inputs=read)
    labels = {int(k): str(v) for k, v in (labels or {}).items()}
    blocks, present, means = [], set(), []
    for n, case in enumerate(cases):
        data, values, mean_rgb = _case_data(case)
        present |= values
        means += [] if mean_rgb is None else [mean_rgb]
        blocks.append(json_script(f"view-case-{n}", data))
    palette = contrasting_palette(np.mean(means, axis=0)) if means else None  # one palette for the page
    count = len(LABEL_COLOURS) - 1 if palette is None else len(palette)
    meta = {
        "layers": list(layers), "labels": {str(k): v for k, v in labels.items()},
        "colours": {str(v): label_colour(v, palette) for v in sorted(set(labels) | present) if v > 0},
        "palette": [label_colour(v, palette) for v in range(1, count + 1)], "fill_alpha": FILL_ALPHA,
        "missed": MISSED_COLOUR, "extra": EXTRA_COLOUR,
    }  # fmt: skip
    tables = tag("div", join([_layers(layers), _legend(labels, present, palette)]), class_="view-tables")
    viewer = join([_controls(), _planes(), tag("p", "", class_="view-hover"), tag("p", "", class_="view-facts note"),
                   tables])  # fmt: skip
    parts = [_case_list(cases)] if len(cases) > 1 else []
    body = join([Markup(f"<style>{VIEW_CSS}</style>"),
                 tag("div", join([*parts, tag("div", viewer, class_="view-main")]), class_="view-layout", id="view-root"),
                 json_script("view-data", meta), *blocks, Markup(f"<script>{VIEW_SCRIPT}</script>")])  # fmt: skip
    heading = title or (cases[0].name if len(cases) == 1 else f"{len(cases)} cases")
    subtitle = f"{len(cases)} case(s), masks: {', '.join(layers) or 'none'}"
    return atomic_write_text(
        out, page(f"segmorph view: {heading}", subtitle, [Section("view", "Viewer", body)], "segmorph view")
    )
