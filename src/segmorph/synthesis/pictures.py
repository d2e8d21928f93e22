"""The picture grid of a GAN run: real images beside images generated from the same and from deformed label maps.

One row per case, five panels: the label map, the real image, the image generated from that label map, a
random elastic deformation of the label map, and the image generated from it. 3D cases show the slice across
the last array axis (K) through the middle of the label map's foreground. Images are drawn in their raw scale
(:class:`~segmorph.synthesis.model.IntensityScale`): three ``rgb`` channels as a colour picture, otherwise the
first channel in grey with the real slice's 0.5-99.5 percentile window, shared by the synthetic panels of the
row so that their brightness compares. Slices are drawn as :func:`segmorph.plots.overlay_slices` draws them:
the first array axis across, the second down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segmorph.plots import LABEL_COLOURS, plt, save_figure
from segmorph.synthesis.model import IntensityScale

COLUMNS = ("label map", "real", "synthetic", "deformed label map", "synthetic from deformed")


@dataclass(frozen=True)
class SampleRow:
    """One case of the grid; images ``(C, *S)`` in the normalised scale, label maps ``(1, *S)`` integers."""

    case_id: str
    label: torch.Tensor
    real: torch.Tensor
    synthetic: torch.Tensor
    deformed_label: torch.Tensor
    synthetic_from_deformed: torch.Tensor


def middle_slice(label: torch.Tensor) -> int:
    """Index along the last axis of a 3D ``(1, I, J, K)`` label map through the middle of its foreground."""
    present = torch.nonzero(label[0].reshape(-1, label.shape[-1]).gt(0).any(0)).flatten()
    if present.numel() == 0:
        return label.shape[-1] // 2
    return int((present[0] + present[-1]) // 2)


def write_sample_grid(
    path: str | Path, rows: Sequence[SampleRow], scale: IntensityScale, modalities: Sequence[str],
    labels: Mapping[int, str] | None = None, title: str = "real vs synthetic",
) -> Path:  # fmt: skip
    """Draw the grid of ``rows`` (see the module docstring) into the PNG ``path`` (atomically).

    Args:
        path: The PNG to write.
        rows: The cases.
        scale: Raw intensity scale per channel.
        modalities: Modality per channel (three ``rgb`` channels are drawn in colour).
        labels: Label value -> name, for the legend.
        title: The figure's title.
    """
    if not rows:
        raise ValueError("rows: expected at least one case to draw")
    colour = len(modalities) == 3 and all(m == "rgb" for m in modalities)
    figure, axes = plt.subplots(len(rows), len(COLUMNS), figsize=(2.6 * len(COLUMNS), 2.6 * len(rows) + 0.6),
                                squeeze=False)  # fmt: skip
    for row, sample in zip(axes, rows):
        _draw_row(row, sample, scale, colour)
    for axis, name in zip(axes[0], COLUMNS):
        axis.set_title(name, fontsize=9)
    _legend(figure, rows, labels or {})
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


def _draw_row(axes: Sequence[plt.Axes], sample: SampleRow, scale: IntensityScale, colour: bool) -> None:
    slice_index = middle_slice(sample.label) if sample.label.ndim == 4 else None

    def cut(volume: torch.Tensor) -> np.ndarray:  # (C, *S) -> (C, A, B)
        array = volume.detach().cpu()
        return (array[..., slice_index] if slice_index is not None else array).numpy()

    real = cut(scale.to_raw(sample.real.float()))
    window = _window(real, colour)
    panels = [_labels_rgb(cut(sample.label)[0]), _image_rgb(real, window, colour),
              _image_rgb(cut(scale.to_raw(sample.synthetic.float())), window, colour),
              _labels_rgb(cut(sample.deformed_label)[0]),
              _image_rgb(cut(scale.to_raw(sample.synthetic_from_deformed.float())), window, colour)]  # fmt: skip
    for axis, panel in zip(axes, panels):
        axis.imshow(np.swapaxes(panel, 0, 1), origin="upper", interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
    where = "" if slice_index is None else f" (K = {slice_index})"
    axes[0].set_ylabel(f"{sample.case_id}{where}", fontsize=8)


def _window(real: np.ndarray, colour: bool) -> tuple[float, float]:
    if colour:
        return 0.0, 255.0
    low, high = np.percentile(real[0], [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _image_rgb(image: np.ndarray, window: tuple[float, float], colour: bool) -> np.ndarray:
    """``(C, A, B)`` raw-scale image -> ``(A, B, 3)`` in 0..1."""
    low, high = window
    if colour:
        return np.clip((np.moveaxis(image, 0, -1) - low) / (high - low), 0, 1)
    grey = np.clip((image[0] - low) / (high - low), 0, 1)
    return np.repeat(grey[..., None], 3, axis=-1)


def _labels_rgb(labels: np.ndarray) -> np.ndarray:
    return LABEL_COLOURS[np.clip(labels, 0, len(LABEL_COLOURS) - 1)]


def _legend(figure: plt.Figure, rows: Sequence[SampleRow], names: Mapping[int, str]) -> None:
    from matplotlib.patches import Patch

    values = sorted({int(v) for r in rows for v in torch.unique(r.label).tolist() if v > 0})
    handles = [Patch(facecolor=LABEL_COLOURS[min(v, len(LABEL_COLOURS) - 1)], label=names.get(v, f"label {v}"))
               for v in values]  # fmt: skip
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
