"""Anatomical prior for learned registration: label probabilities from a segmorph segmentation run.

A registration network that also sees where the structures are learns to align them far faster
than one that must discover them from intensities. The prior runs the segmentation run's network
once over a whole volume (no sliding window, no mirroring: registration grids are small), after
the run's enhance steps (``preprocess.steps``, on the whole volume as its preprocessing applies them) and
its own intensity normalisation restricted to non-zero voxels, so zero padding around a
cropped scan does not shift the statistics. The volume is resampled to the run's target spacing as
its preprocessing does, and the probabilities back as its predictor does: a run planned at a coarse
spacing (``segmorph train --spacing 2``) makes a prior several times cheaper, and the registration
network sees 2x2x2-averaged inputs anyway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from segmorph.engine.autocast import autocast
from segmorph.engine.checkpoints import check_network_fits, load_checkpoint, model_from_checkpoint
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import atomic_write_bytes, atomic_write_text
from segmorph.nn import build_network
from segmorph.processing.steps import enhance
from segmorph.registration.classical import weighted_centre
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.preprocess import linear_resample, normalize, resample_array, resampled_shape

PRIOR_FOLDER = "segmentation_prior"


class SegmentationPrior:
    """Class probabilities ``(B, K, *S)`` of raw-intensity volumes ``(B, 1, *S)`` on their own grid."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu") -> None:
        self.run_dir = Path(run_dir)
        plan_path = self.run_dir / "plan.json"
        if not plan_path.exists():
            raise SegmorphError("no plan.json (expected a segmorph segmentation run folder)", self.run_dir)
        self.plan = Plan.load(plan_path)
        if len(self.plan.channel_names) != 1:
            raise SegmorphError("the segmentation prior must take one image channel", plan_path)
        if self.plan.slice_axis is not None:
            raise SegmorphError("the segmentation prior needs a network of the scans' dimensions, not a 2D network on "
                                "slices (--network-dims 2)", plan_path)  # fmt: skip
        self.device = torch.device(device)
        checkpoint = self.run_dir / "checkpoint_best.pt"
        state, config, _ = load_checkpoint(checkpoint, self.device)
        check_network_fits(config, {"ndim": self.plan.ndim, "in_channels": 1, "num_classes": self.plan.num_classes},
                           checkpoint)  # fmt: skip
        with model_from_checkpoint(checkpoint):
            self.network = build_network(config["network"], deep_supervision=False)
            self.network.load_state_dict(state)
        self.network.to(self.device).eval()
        self.divisor = 2 ** (len(config["network"]["features"]) - 1)

    @property
    def num_classes(self) -> int:
        return self.plan.num_classes

    def normalise(self, volume: torch.Tensor) -> torch.Tensor:
        """The run's normalisation of one ``(1, *S)`` volume, statistics over its non-zero voxels."""
        array = volume.detach().cpu().numpy()
        mask = array[0] != 0
        return torch.from_numpy(normalize(array, self.plan.preprocess, mask if mask.any() else None))

    def enhanced(self, volume: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        """The run's enhance steps (``plan.preprocess.steps``) applied to one ``(1, *S)`` volume of voxel size
        ``spacing`` (mm per array axis); the volume itself when the plan has none."""
        if not self.plan.preprocess.steps:
            return volume
        image = Image(volume.detach().cpu().float(), Affine.from_geometry([float(s) for s in spacing]))
        return enhance(image, list(self.plan.preprocess.steps)).data

    @torch.inference_mode()
    def probabilities(self, volumes: torch.Tensor, spacing: Sequence[float], margin: int = 1) -> torch.Tensor:
        """Softmax probabilities ``(B, K, *S)`` for volumes ``(B, 1, *S)`` of voxel size ``spacing`` (mm).

        Only the box holding every volume's non-zero voxels (plus ``margin``) goes through the
        network, resampled to the run's target spacing; outside it the probabilities say background.
        """
        batch = torch.stack([self.normalise(self.enhanced(v, spacing)) for v in volumes])
        box = content_box(volumes, margin)
        out = torch.zeros(batch.shape[0], self.num_classes, *batch.shape[2:])
        out[:, 0] = 1.0
        content = batch[(slice(None), slice(None), *box)]
        out[(slice(None), slice(None), *box)] = self._resampled_probabilities(content, spacing)
        return out

    def _resampled_probabilities(self, batch: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        """Probabilities on ``batch``'s grid, the network run at the plan's target spacing.

        The images are resampled as the run's preprocessing does (origin-preserving, spline order of
        the plan) and the probabilities back linearly, as its predictor does.
        """
        shape = tuple(batch.shape[2:])
        if len(spacing) != len(shape):
            raise ValueError(f"spacing: expected {len(shape)} values, got {list(spacing)}")
        target = self.plan.preprocess.target_spacing
        if target is not None and len(target) != len(shape):
            raise SegmorphError(f"the prior's plan is for {len(target)}D images, got {len(shape)}D", self.run_dir)
        if target is None or np.allclose(target, spacing, rtol=1e-3, atol=0):
            return self._network_probabilities(batch)
        scale = np.asarray(target, dtype=float) / np.asarray(spacing, dtype=float)
        grid = resampled_shape(shape, scale)  # the grid the run's preprocessing would make
        order = self.plan.preprocess.image_order
        resampled = torch.stack([torch.from_numpy(resample_array(v.numpy(), scale, grid, order)) for v in batch])
        probabilities = self._network_probabilities(resampled)
        return torch.stack([linear_resample(p, 1.0 / scale, shape) for p in probabilities])

    def _network_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        shape = batch.shape[2:]
        pads: list[int] = []
        for size in reversed(shape):
            pads += [0, (-size) % self.divisor]
        padded = torch.nn.functional.pad(batch, pads)
        with autocast(self.device):
            logits = self.network(padded)
        probabilities = torch.softmax(logits.float(), dim=1)
        return probabilities[(slice(None), slice(None), *[slice(0, s) for s in shape])].cpu()

    def image_probabilities(self, image: Image) -> torch.Tensor:
        """Class probabilities ``(K, *S)`` of the first channel of ``image``, on its grid."""
        return self.probabilities(image.data[None, :1].float(), image.spacing)[0]

    def copy_to(self, folder: Path) -> Path:
        """Copy the run's plan and best checkpoint into ``folder/segmentation_prior`` (self-contained runs)."""
        target = folder / PRIOR_FOLDER
        target.mkdir(parents=True, exist_ok=True)
        for name in ("plan.json", "checkpoint_best.pt"):
            atomic_write_bytes(target / name, (self.run_dir / name).read_bytes())
        atomic_write_text(target / "source.json", json.dumps({"copied_from": str(self.run_dir.resolve())}) + "\n")
        return target


def content_box(volumes: torch.Tensor, margin: int) -> tuple[slice, ...]:
    """Index box of the non-zero voxels of all volumes ``(B, C, *S)``, widened by ``margin``."""
    nonzero = (volumes != 0).flatten(0, 1).any(0)
    if not nonzero.any():
        return tuple(slice(0, s) for s in nonzero.shape)
    box = []
    for axis, size in enumerate(nonzero.shape):
        other = tuple(a for a in range(nonzero.ndim) if a != axis)
        where = torch.nonzero(nonzero.any(dim=other)).flatten()
        box.append(slice(max(int(where[0]) - margin, 0), min(int(where[-1]) + 1 + margin, size)))
    return tuple(box)


def foreground_centre(probabilities: torch.Tensor, affine: Affine) -> np.ndarray | None:
    """Centre in world mm of the foreground (every class but background) of probabilities ``(K, *S)``
    on the grid ``affine``; None where they hold less than one voxel's worth of foreground."""
    foreground = probabilities[1:].sum(0)
    if float(foreground.sum()) < 1.0:
        return None
    return weighted_centre(foreground, affine)
