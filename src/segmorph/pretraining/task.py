"""The training task of self-supervised pretraining: reconstruct corrupted patches (see
:mod:`segmorph.pretraining.objectives`), scored on a fixed, seeded set of corrupted validation patches.

Where the clean patches come from is the caller's: :func:`patch_drawer` cuts them from preprocessed volumes
(a segmentation U-Net's patches, 2D slices of 3D volumes too), :func:`image_drawer` takes whole prepared
images (a classifier's inputs); both may apply the spatial part of the augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segmorph.engine.autocast import autocast
from segmorph.pretraining.objectives import ObjectiveConfig, R2Sums, corrupt, reconstruction_loss
from segmorph.transforms import AugmentConfig, Augmenter, PatchSampler

Drawer = Callable[[int, torch.Generator, torch.device], tuple[torch.Tensor, torch.Tensor | None]]
"""``(count, generator, device) -> (clean patches (count, C, *P) float32, valid (count, 1, *P) bool or None)`` on
``device``; ``valid`` marks the voxels that hold image, not the padding of a patch passing the volume's border."""


@dataclass(frozen=True)
class ValidationSet:
    """Fixed corrupted patches: ``clean`` and ``corrupted`` ``(N, C, *P)``, ``target`` ``(N, 1, *P)`` bool (CPU),
    the scored voxels (hidden, or all for ``denoise``, and inside the image)."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    target: torch.Tensor

    @classmethod
    def make(
        cls, clean: torch.Tensor, objective: ObjectiveConfig, seed: int, valid: torch.Tensor | None = None
    ) -> ValidationSet:  # fmt: skip
        """Corrupt ``clean`` once with a generator seeded by ``seed`` (the same seed, the same set); voxels outside
        ``valid`` (patch padding) are not scored."""
        corrupted, target = corrupt(clean, objective, torch.Generator().manual_seed(seed))
        return cls(clean, corrupted, target if valid is None else target & valid)

    def __len__(self) -> int:
        return int(self.clean.shape[0])


class ReconstructionTask:
    """Corrupt a batch of clean patches, reconstruct it, mean squared error (:mod:`segmorph.pretraining.objectives`).

    Validation scores the fixed ``validation`` set with ``1 - NMSE`` over its target voxels (``val_r2`` in
    ``train_log.csv``; higher is better).

    Args:
        draw: Gives the clean training patches (see :data:`Drawer`).
        validation: The fixed validation set.
        objective: The corruption and loss.
        batch_size: Patches per step (and per validation forward pass).
        amp: bfloat16 autocast in validation where the device runs it fast (training follows the loop's setting).
    """

    score_key = "r2"

    def __init__(
        self, draw: Drawer, validation: ValidationSet, objective: ObjectiveConfig, batch_size: int, amp: bool = True
    ) -> None:  # fmt: skip
        self.draw = draw
        self.amp = amp
        self.validation = validation
        self.objective = objective
        self.batch_size = batch_size
        self.score_parts = [f"r2_{objective.target_name}"]

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        clean, valid = self.draw(self.batch_size, generator, device)
        corrupted, target = corrupt(clean, self.objective, generator)
        with autocast(device, amp):
            output = model(corrupted)
        return reconstruction_loss(output, clean, target, self.objective.visible_weight, valid)

    @torch.inference_mode()
    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        if not len(self.validation):
            return []
        sums = R2Sums()
        for start in range(0, len(self.validation), self.batch_size):
            part = slice(start, start + self.batch_size)
            output = self.reconstruct(model, self.validation.corrupted[part], device)
            sums.add(output, self.validation.clean[part], self.validation.target[part])
        return [round(sums.score(), 5)]

    @torch.inference_mode()
    def reconstruct(self, model: nn.Module, corrupted: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The model's reconstruction of ``corrupted`` ``(N, C, *P)``, float32 on the CPU (model in eval mode)."""
        model.eval()
        with autocast(device, self.amp):
            return model(corrupted.to(device)).float().cpu()


def spatial_augmentation(config: AugmentConfig, ndim: int) -> Augmenter:
    """An augmenter of ``config``'s spatial transforms only: intensity changes would alter what is reconstructed."""
    return Augmenter(AugmentConfig(enabled=config.enabled, spatial=config.spatial,
                                   intensity=type(config.intensity)(enabled=False)), ndim)  # fmt: skip


def patch_drawer(
    images: Sequence[torch.Tensor], patch_size: Sequence[int], slice_axis: int | None = None,
    augmenter: Augmenter | None = None,
) -> tuple[Drawer, PatchSampler]:  # fmt: skip
    """Random patches of preprocessed volumes ``(C, *S)`` (2D slices across ``slice_axis`` of 3D volumes), spatially
    augmented by ``augmenter`` when given, with the mask of the voxels inside the volume.

    Returns:
        The drawer and its :class:`PatchSampler` (uniform positions), whose label patches are that mask (1 inside
        the volume, 0 in the padding).
    """
    sampler = PatchSampler(list(images), inside_labels(images), patch_size, foreground_fraction=0.0,
                           slice_axis=slice_axis)  # fmt: skip

    def draw(count: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        patches, inside = (x.to(device) for x in sampler.sample(count, generator))
        if augmenter is not None:
            patches, inside = augmenter(patches, inside, generator)
        return patches, inside.bool()

    return draw, sampler


def image_drawer(images: torch.Tensor, augmenter: Augmenter | None = None) -> Drawer:
    """Whole prepared images ``(N, C, *S)`` drawn uniformly with replacement, spatially augmented when asked (every
    voxel counts: a prepared image fills its input)."""

    def draw(count: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, None]:
        index = torch.randint(0, images.shape[0], (count,), generator=generator, device=generator.device).cpu()
        batch = images[index].to(device)
        return (batch if augmenter is None else augmenter(batch, None, generator)[0]), None

    return draw


def inside_labels(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A label map of ones ``(1, *S)`` per volume (a broadcast one: no memory): :class:`PatchSampler` pads its
    patches with 0, so a patch's labels mark the voxels inside the volume."""
    return [torch.ones((1,) * image.ndim, dtype=torch.uint8).expand(1, *image.shape[1:]) for image in images]
