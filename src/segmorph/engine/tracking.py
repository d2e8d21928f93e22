"""Experiment tracking beside ``train_log.csv``: TensorBoard event files (the optional ``tensorboard`` extra).

With ``log="tensorboard"`` the training loop writes into ``RUN/tensorboard/``, at the end of every epoch:

* the columns of ``train_log.csv`` as scalars under the same names (``train_loss``, ``lr``, ``val_dice``,
  ``val_dice_1``, ``elapsed_s`` in seconds, ``epoch``), against the training step; an epoch without
  validation has no ``val_*`` values;
* with a :class:`SlicePreview`, one picture of a validation case, ``validation/<case>``: a slice through
  the middle of its reference's extent along the last axis, the prediction filled in the overlay colours
  and the reference outlined in cyan, drawn as :func:`segmorph.plots.overlay_slices` draws (first array
  axis across, second down).

Look at them with ``tensorboard --logdir RUN``. :class:`TensorBoardLog` is given to the loop among its
callbacks (it is a :class:`segmorph.engine.loop.Tracker`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmorph.engine.loop import TrainConfig
from segmorph.engine.sliding_window import slicewise_logits, sliding_window_logits
from segmorph.errors import SegmorphError

LOG_CHOICES = ("csv", "tensorboard")
TENSORBOARD_FOLDER = "tensorboard"  # inside the run folder
INSTALL_HINT = "pip install segmorph[tensorboard]"
REFERENCE_OUTLINE = np.array([0.0, 1.0, 1.0])  # cyan, apart from every label colour
FILL_OPACITY = 0.45
PICTURE_MIN_PX = 256  # a small slice is enlarged by a whole factor until its longer side reaches this


def check_log(log: str) -> None:
    """Refuse an unknown ``log`` kind, or ``"tensorboard"`` without the tensorboard package.

    Called before any work, so a missing package stops a run before it trains.

    Raises:
        SegmorphError: One line; for a missing package it names the install command.
    """
    if log not in LOG_CHOICES:
        raise SegmorphError(f"log: expected one of {', '.join(LOG_CHOICES)}, got {log!r}")
    if log == "tensorboard":
        summary_writer_class()


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter`` (it needs the tensorboard package, not torchvision)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SegmorphError(f"--log tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
    return SummaryWriter


def open_tracker(log: str, run_dir: str | Path, preview: SlicePreview | None = None) -> TensorBoardLog | None:
    """The tracker that ``log`` asks for: None for ``"csv"`` (``train_log.csv`` is always written).

    Args:
        log: ``"csv"`` or ``"tensorboard"``.
        run_dir: The run folder; event files go to its ``tensorboard/`` folder.
        preview: The validation case to picture at each epoch (None: scalars only).
    """
    check_log(log)
    return TensorBoardLog(Path(run_dir) / TENSORBOARD_FOLDER, preview) if log == "tensorboard" else None


class TensorBoardLog:
    """Writes each epoch's log row (and a preview picture) to TensorBoard event files in ``folder``.

    The folder and its event file are made at the first epoch; a resumed run adds an event file beside
    the first one, its steps continuing where the checkpoint left off.
    """

    def __init__(self, folder: str | Path, preview: SlicePreview | None = None) -> None:
        self.writer_class = summary_writer_class()
        self.folder = Path(folder)
        self.preview = preview
        self.writer: Any = None

    def track(self, step: int, row: dict[str, float], model: nn.Module, device: torch.device) -> None:
        """Log ``row`` (a ``train_log.csv`` row: column -> value) at ``step``, and the preview of ``model``."""
        if self.writer is None:
            self.writer = self.writer_class(log_dir=str(self.folder))
        for name, value in row.items():
            if name != "step" and not math.isnan(float(value)):
                self.writer.add_scalar(name, float(value), step)
        if self.preview is not None and any(name.startswith("val_") and not math.isnan(v) for name, v in row.items()):
            picture = self.preview(model, device)
            self.writer.add_image(f"validation/{self.preview.name}", picture, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass(frozen=True)
class SlicePreview:
    """One validation case pictured with a model's prediction (see :func:`label_picture`).

    Attributes:
        name: The case id, shown in the picture's tag.
        image: Preprocessed image ``(C, *S)``, 2D or 3D; the first channel is shown.
        label: Reference label map ``(1, *S)``.
        config: The training settings: tile size, overlap, batch size and autocast of the sliding window,
            as in validation.
        slice_axis: For a 2D network on a 3D case: the axis its slices are cut across (as in validation).
    """

    name: str
    image: torch.Tensor
    label: torch.Tensor
    config: TrainConfig
    slice_axis: int | None = None

    @torch.inference_mode()
    def __call__(self, model: nn.Module, device: torch.device) -> np.ndarray:
        """RGB picture ``(H, W, 3)`` uint8 of the middle slice with ``model``'s prediction."""
        settings = {"overlap": self.config.val_overlap, "batch_size": max(self.config.batch_size, 2), "device": device,
                    "amp": self.config.amp}  # fmt: skip
        if self.slice_axis is None:
            probabilities = sliding_window_logits(model, self.image, self.config.patch_size, **settings)
        else:
            probabilities = slicewise_logits(model, self.image, self.slice_axis, self.config.patch_size, **settings)
        prediction = probabilities.argmax(0).cpu().numpy()
        image = self.image[0].float().cpu().numpy()
        reference = self.label[0].cpu().numpy()
        if image.ndim == 3:
            k = middle_slice(reference)
            image, prediction, reference = image[..., k], prediction[..., k], reference[..., k]
        return label_picture(image, prediction, reference)


def middle_slice(reference: np.ndarray) -> int:
    """Index along the last axis halfway through the reference's foreground (the volume's middle when empty)."""
    present = np.flatnonzero((reference > 0).any(axis=tuple(range(reference.ndim - 1))))
    if present.size == 0:
        return reference.shape[-1] // 2
    return int((present[0] + present[-1]) // 2)


def label_picture(image: np.ndarray, prediction: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """A 2D slice with a predicted label map filled in and a reference outlined.

    Args:
        image: Intensities ``(A, B)``, shown grey between their 0.5th and 99.5th percentiles.
        prediction: Label map ``(A, B)``; label ``k > 0`` is filled in ``segmorph.plots.LABEL_COLOURS[k]``
            (cycling) at :data:`FILL_OPACITY`.
        reference: Label map ``(A, B)`` whose boundaries (foreground pixels with a 4-neighbour of another
            value) are drawn in :data:`REFERENCE_OUTLINE`; None: none.

    Returns:
        ``(B * f, A * f, 3)`` uint8: first axis across, second down, enlarged by the whole factor ``f`` that
        brings the longer side to at least :data:`PICTURE_MIN_PX` pixels.
    """
    from segmorph.plots import LABEL_COLOURS

    low, high = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - low) / (high - low), 0.0, 1.0) if high > low else np.zeros(image.shape)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for k in np.unique(prediction[prediction > 0]):
        inside = prediction == k
        colour = LABEL_COLOURS[1 + (int(k) - 1) % (len(LABEL_COLOURS) - 1)]
        rgb[inside] = (1.0 - FILL_OPACITY) * rgb[inside] + FILL_OPACITY * colour
    if reference is not None:
        rgb[boundary(reference)] = REFERENCE_OUTLINE
    picture = np.round(rgb * 255.0).astype(np.uint8).transpose(1, 0, 2)
    factor = max(1, math.ceil(PICTURE_MIN_PX / max(picture.shape[:2])))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def boundary(label_map: np.ndarray) -> np.ndarray:
    """Foreground pixels of a 2D label map with a 4-neighbour of another value (the image edge counts as background)."""
    padded = np.pad(label_map, 1, constant_values=0)
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(label_map.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        differs |= shifted != centre
    return differs & (label_map > 0)
