"""``reconstructions.png``: validation patches as the autoencoder sees and rebuilds them.

One row per patch: the clean input, the corrupted input (masked blocks or noise) and the reconstruction, each of
the first channel, the middle slice along the last axis for 3D patches, all three with the grey levels of the
clean input (its 1st to 99th percentile).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from segmorph.plots import plt, save_figure
from segmorph.pretraining.objectives import reconstruction_r2
from segmorph.pretraining.task import ReconstructionTask

PICTURE = "reconstructions.png"
EXAMPLES = 4


def plot_reconstructions(
    clean: torch.Tensor, corrupted: torch.Tensor, output: torch.Tensor, target: torch.Tensor, path: str | Path,
    title: str = "",
) -> Path:  # fmt: skip
    """Draw up to :data:`EXAMPLES` patches (see the module docstring) into ``path`` (PNG, atomically).

    Args:
        clean, corrupted, output: ``(N, C, *P)`` float, 2 or 3 spatial axes.
        target: ``(N, 1, *P)`` bool: the voxels scored; each row's title gives its ``1 - NMSE`` over them.
        path: The PNG to write.
        title: The figure's title.
    """
    rows = min(EXAMPLES, clean.shape[0])
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row in range(rows):
        pictures = [_middle(x[row]) for x in (clean, corrupted, output)]
        low, high = np.percentile(pictures[0], [1, 99]) if pictures[0].size else (0.0, 1.0)
        high = high if high > low else low + 1.0
        score = reconstruction_r2(output[row : row + 1], clean[row : row + 1], target[row : row + 1])
        names = ("input", "corrupted input", f"reconstruction (1 - NMSE {score:.3f})")
        for axis, picture, name in zip(axes[row], pictures, names):
            axis.imshow(picture.T, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
            axis.set_title(name, fontsize=9)
            axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def _middle(patch: torch.Tensor) -> np.ndarray:
    """The first channel of ``(C, *P)``; its middle slice along the last axis when 3D."""
    values = patch[0].float()
    if values.ndim == 3:
        values = values[..., values.shape[-1] // 2]
    return values.cpu().numpy()


def draw_reconstructions(task: ReconstructionTask, model: nn.Module, device: torch.device, path: str | Path,
                         title: str = "") -> Path:  # fmt: skip
    """Reconstruct the first validation patches of ``task`` with ``model`` and draw them into ``path``."""
    examples = task.validation
    count = min(EXAMPLES, len(examples))
    corrupted = examples.corrupted[:count]
    output = task.reconstruct(model, corrupted, device)
    return plot_reconstructions(examples.clean[:count], corrupted, output, examples.target[:count], path, title)


class ReconstructionPreview:
    """Redraws ``reconstructions.png`` after every epoch (a :class:`segmorph.engine.loop.Tracker` of the loop)."""

    def __init__(self, task: ReconstructionTask, path: str | Path, title: str = "") -> None:
        self.task, self.path, self.title = task, Path(path), title

    def track(self, step: int, row: dict[str, float], model: nn.Module, device: torch.device) -> None:
        if len(self.task.validation):
            draw_reconstructions(self.task, model, device, self.path, f"{self.title} (step {step})".strip())

    def close(self) -> None:
        """Nothing is held open."""
