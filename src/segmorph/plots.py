"""Pictures of results: training curves and label overlays (matplotlib, no display needed)."""

from __future__ import annotations

import io as _io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from segmorph.io import atomic_write_bytes  # noqa: E402

LABEL_COLOURS = (
    np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]])
    / 255.0
)


REFERENCE_COLOUR = np.array([0, 255, 255]) / 255.0  # cyan: the reference outline, apart from every label colour
FILL_ALPHA = 0.45  # opacity of the prediction fill
DPI = 100  # output pixels per inch of the overlay figures
MIN_PANEL_PX = 400  # a small slice is enlarged by a whole factor until its longer side reaches this
_TITLE_PX, _CAPTION_PX, _GAP_PX, _MARGIN_PX = 34, 22, 12, 8


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG (atomically, trimmed to its drawn content) and close it.

    Args:
        figure: The figure.
        path: Output PNG.
        dpi: Output pixels per inch of the figure's size.
    """
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_training_curves(history: Sequence, path: str | Path, score_name: str = "validation Dice") -> Path:
    """Training loss and the validation score (in 0..1) against epoch, one PNG."""
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    epochs = [r.epoch for r in history]
    loss_axis.plot(epochs, [r.train_loss for r in history], color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    dice_axis = loss_axis.twinx()
    dice_axis.plot(epochs, [r.val_score for r in history], color="tab:red", label=score_name)
    dice_axis.set_ylabel(score_name, color="tab:red")
    dice_axis.set_ylim(0, 1)
    figure.suptitle("segmorph training")
    return save_figure(figure, path)


def normalise_for_display(slice_2d: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_2d, [0.5, 99.5])
    return np.clip((slice_2d - low) / max(high - low, 1e-8), 0, 1)


def overlay_slices(
    image: np.ndarray, labels: np.ndarray, path: str | Path, reference: np.ndarray | None = None, num_slices: int = 3,
    title: str = "", label_names: Mapping[int, str] | None = None,
) -> Path:  # fmt: skip
    """PNG of the label map over the image: a few slices of a 3D scan, or a 2D image whole.

    Drawn as :func:`overlay_figure` describes; written atomically at :data:`DPI`.

    Args:
        image: ``(C, I, J[, K])``; the first channel is shown (RGB shown as colour when C == 3).
        labels: ``(I, J[, K])`` integer prediction.
        path: Output PNG.
        reference: Optional ``(I, J[, K])`` reference, drawn as an outline over the prediction.
        num_slices: Slices along K through the labelled region (3D only).
        title: Figure title (e.g. the case name).
        label_names: Label value -> name for the legend (0 is background, never listed); a value
            without a name is called ``label <value>``.
    """
    figure = overlay_figure(image, labels, reference, num_slices, title, label_names)
    return save_figure(figure, path, dpi=DPI)


def overlay_figure(
    image: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None, num_slices: int = 3,
    title: str = "", label_names: Mapping[int, str] | None = None,
) -> plt.Figure:  # fmt: skip
    """The figure :func:`overlay_slices` saves (see its arguments), not yet closed.

    Each panel shows one slice with array axis I across (left to right) and J down, one image pixel
    drawn as a square of ``scale x scale`` output pixels at :data:`DPI` (``scale`` the smallest whole
    number, at least 1, that makes the longer side at least :data:`MIN_PANEL_PX`): an image is never
    shown smaller than its own resolution. The panels are cropped to the bounding box of the field of
    view (voxels brighter than the background) and the labels, with a 2-pixel margin. The prediction
    is a coloured fill (:data:`LABEL_COLOURS`, opacity :data:`FILL_ALPHA`), the reference an outline
    in :data:`REFERENCE_COLOUR`; a legend below the panels names every label and both styles. A 3D
    panel is captioned with its index along K (``K = 12``); a 2D image has one uncaptioned panel.
    Panels, captions, title and legend sit in separate bands, so none overlaps another.
    """
    is_2d = image.ndim == 3
    if is_2d:  # 2D: add a K axis of one slice
        image, labels = image[..., None], labels[..., None]
        reference = None if reference is None else reference[..., None]
    _check_overlay_shapes(image, labels, reference)
    labelled = labels if reference is None else np.maximum(labels, reference)
    indices = [0] if is_2d else _slices_through_labels(labelled, num_slices)
    box = _display_box(image, labelled)
    image, labels, labelled = image[(slice(None), *box)], labels[box], labelled[box]
    reference = None if reference is None else reference[box]
    width, height = labels.shape[:2]
    scale = max(1, math.ceil(MIN_PANEL_PX / max(width, height)))
    handles = _legend_handles(labelled, reference, label_names)
    columns = max(1, min(len(handles), (len(indices) * width * scale) // 170))
    layout = _OverlayLayout(len(indices), width * scale, height * scale, bool(title), not is_2d,
                            legend_rows=math.ceil(len(handles) / columns))  # fmt: skip
    figure = plt.figure(figsize=(layout.width / DPI, layout.height / DPI), dpi=DPI)
    line_px = 2 if scale < 6 else 3
    for column, k in enumerate(indices):
        axis = figure.add_axes(layout.panel(column))
        ref_slice = None if reference is None else reference[..., k]
        _draw_overlay(axis, image[..., k], labels[..., k], ref_slice, line_px * 72 / DPI)
        if not is_2d:
            axis.set_title(f"K = {k}", fontsize=9)
    if title:
        figure.suptitle(title, y=1 - _MARGIN_PX / layout.height, va="top", fontsize=11)
    styles = "prediction: coloured fill" + ("; reference: cyan outline" if reference is not None else "")
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, layout.legend_top), ncol=columns,
                  fontsize=9, title=styles, title_fontsize=9, frameon=False)  # fmt: skip
    return figure


class _OverlayLayout:
    """Pixel bands of an overlay figure, top to bottom: title, captions, panels, legend."""

    def __init__(self, panels: int, panel_w: int, panel_h: int, title: bool, captions: bool, legend_rows: int) -> None:
        self.panels, self.panel_w, self.panel_h = panels, panel_w, panel_h
        self.top = _MARGIN_PX + (_TITLE_PX if title else 0) + (_CAPTION_PX if captions else 0)
        self.width = 2 * _MARGIN_PX + panels * panel_w + (panels - 1) * _GAP_PX
        self.height = self.top + panel_h + _GAP_PX + 24 * (legend_rows + 1) + _MARGIN_PX
        self.legend_top = 1 - (self.top + panel_h + _GAP_PX / 2) / self.height

    def panel(self, column: int) -> list[float]:
        """``[left, bottom, width, height]`` of a panel in figure fractions."""
        left = _MARGIN_PX + column * (self.panel_w + _GAP_PX)
        bottom = self.height - self.top - self.panel_h
        return [left / self.width, bottom / self.height, self.panel_w / self.width, self.panel_h / self.height]


def _check_overlay_shapes(image: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> None:
    if labels.shape != image.shape[1:]:
        raise ValueError(f"labels: expected the image's spatial shape {image.shape[1:]}, got {labels.shape}")
    if reference is not None and reference.shape != labels.shape:
        raise ValueError(f"reference: expected the shape of labels {labels.shape}, got {reference.shape}")


def _display_box(image: np.ndarray, labels: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice]:
    """``(I, J, K)`` slices of the field of view and the labels, over all K (K kept whole).

    The field of view: the lines (along I, and along J) in which at least 0.5 % of the voxels are
    brighter than ``min + 10 %`` of the range up to the 99.5th percentile, in the displayed intensity
    (the first channel; the mean of the three for RGB). The dark frame around a fundus photograph
    (up to ~15 of 255, a few brighter specks) is outside it; a labelled voxel is always inside. The
    percentile is taken over at most about a million voxels, evenly strided.
    """
    shown = image.mean(0) if image.shape[0] == 3 else image[0]
    low = float(shown.min())
    flat = shown.reshape(-1)
    high = float(np.percentile(flat[:: max(1, flat.size // 1_000_000)], 99.5))
    bright = shown > low + 0.1 * (high - low)
    box = []
    for axis in range(2):
        others = tuple(d for d in range(3) if d != axis)
        needed = max(1, math.ceil(0.005 * labels.size / labels.shape[axis]))
        hits = np.flatnonzero((bright.sum(axis=others) >= needed) | (labels > 0).any(axis=others))
        size = labels.shape[axis]
        box.append(slice(max(0, hits[0] - margin), min(size, hits[-1] + margin + 1)) if hits.size else slice(0, size))
    return box[0], box[1], slice(None)


def _legend_handles(
    labels: np.ndarray, reference: np.ndarray | None, names: Mapping[int, str] | None
) -> list[Artist]:  # fmt: skip
    """A colour patch per named or present foreground label, and the reference outline's line."""
    named = {int(v): str(n) for v, n in (names or {}).items() if int(v) > 0}
    values = sorted(set(named) | {int(v) for v in np.unique(labels) if v > 0})
    handles: list[Artist] = [
        Patch(facecolor=LABEL_COLOURS[min(v, len(LABEL_COLOURS) - 1)], label=named.get(v, f"label {v}"))
        for v in values
    ]  # fmt: skip
    if reference is not None:
        handles.append(Line2D([], [], color=REFERENCE_COLOUR, linewidth=2, label="reference"))
    return handles or [Patch(facecolor="none", edgecolor="none", label="no label")]


def _slices_through_labels(labels: np.ndarray, count: int) -> list[int]:
    present = np.flatnonzero(labels.reshape(-1, labels.shape[-1]).any(0))
    pool = present if present.size else np.arange(labels.shape[-1])
    interior = np.linspace(pool[0], pool[-1], num=min(count, pool.size) + 2)[1:-1]  # skip the thin ends
    return sorted({int(v) for v in interior.round()})


def _draw_overlay(
    axis: plt.Axes, image_slice: np.ndarray, label_slice: np.ndarray, reference: np.ndarray | None, line_pt: float
) -> None:  # fmt: skip
    if image_slice.shape[0] == 3:
        background = np.stack([normalise_for_display(c) for c in image_slice], -1)
    else:
        background = np.repeat(normalise_for_display(image_slice[0])[..., None], 3, -1)
    colours = LABEL_COLOURS[np.clip(label_slice, 0, len(LABEL_COLOURS) - 1)]
    alpha = (label_slice > 0)[..., None] * FILL_ALPHA
    blended = background * (1 - alpha) + colours * alpha
    axis.imshow(np.swapaxes(blended, 0, 1), origin="upper", interpolation="nearest")  # rows = J, columns = I
    if reference is not None and min(reference.shape) > 1:  # a contour needs a 2 x 2 grid at least
        for value in np.unique(reference):
            mask = reference == value
            if value > 0 and not mask.all():  # a contour needs both sides of the level
                axis.contour(mask.T.astype(float), levels=[0.5], colors=[REFERENCE_COLOUR], linewidths=line_pt)
    axis.set_xlim(-0.5, label_slice.shape[0] - 0.5)
    axis.set_ylim(label_slice.shape[1] - 0.5, -0.5)
    axis.axis("off")
