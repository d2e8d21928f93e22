"""Segmentation training: the task the engine's loop runs, and :func:`fit`, its entry point.

Cases are in memory and preprocessed: image ``(C, *S)`` float32 and label ``(1, *S)`` int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from segmorph.engine.autocast import autocast
from segmorph.engine.loop import Callback, FitResult, TrainConfig, fit_task
from segmorph.engine.sliding_window import sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.metrics.segmentation import dice_score
from segmorph.segmentation.losses import SegmentationLoss
from segmorph.transforms import AugmentConfig, Augmenter, PatchSampler

Case = tuple[torch.Tensor, torch.Tensor]


class SegmentationTask:
    """Foreground-oversampled, augmented patches; Dice + cross-entropy; sliding-window validation Dice."""

    score_key = "dice"

    def __init__(self, train_cases: Sequence[Case], val_cases: Sequence[Case], config: TrainConfig, num_classes: int):
        self.config = config
        self.num_classes = num_classes
        self.val_cases = val_cases
        self.score_parts = [f"dice_{k}" for k in range(1, num_classes)]
        self.sampler = PatchSampler(
            [c[0] for c in train_cases], [c[1] for c in train_cases], config.patch_size, config.foreground_fraction
        )
        ndim = len(config.patch_size)
        self.augmenter = Augmenter(AugmentConfig() if config.augment else AugmentConfig(enabled=False), ndim)
        self.loss_fn = SegmentationLoss(config.loss_alpha)

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        images, labels = self.sampler.sample(self.config.batch_size, generator)
        images, labels = self.augmenter(images.to(device), labels.to(device), generator)
        with autocast(device, amp):
            outputs = model(images)
        return self.loss_fn(outputs, labels)

    @torch.inference_mode()
    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        if not self.val_cases:
            return []
        scores = []
        for image, label in self.val_cases:
            probabilities = sliding_window_logits(
                model, image, self.config.patch_size, overlap=self.config.val_overlap,
                batch_size=max(self.config.batch_size, 2), device=device, amp=self.config.amp,
            )  # fmt: skip
            scores.append(dice_per_class(probabilities.argmax(0), label[0], self.num_classes))
        return [round(float(v), 5) for v in torch.stack(scores).mean(0)]


def fit(
    model: nn.Module,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    config: TrainConfig,
    run_dir: str | Path,
    network_config: dict,
    num_classes: int,
    device: str | torch.device = "cpu",
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    show_progress: bool = True,
) -> FitResult:
    """Train a segmentation ``model`` on patches of ``train_cases``, scoring ``val_cases`` with Dice each epoch.

    Writes into ``run_dir``: ``checkpoint_last.pt`` and ``checkpoint_best.pt`` (atomically),
    ``train_log.csv`` and ``curves.png``. Under torchrun (``WORLD_SIZE`` > 1) the process group is
    joined here if the caller has not, gradients are averaged by DistributedDataParallel, each process
    draws its own patches, and only rank 0 validates and writes; the caller ends the group.

    Args:
        model: Network returning logits ``(B, K, *P)`` (a list with deep supervision in training mode).
        train_cases: ``(image (C, *S), label (1, *S))`` pairs.
        val_cases: Same, scored whole with a sliding window; may be empty (then the last epoch is "best").
        config: The training settings.
        run_dir: Output folder.
        network_config: Constructor arguments stored in checkpoints.
        num_classes: Classes including background.
        device: Where to train.
        resume: Continue from ``run_dir/checkpoint_last.pt``.
        callbacks: Called with each epoch's record (on rank 0).
        show_progress: Draw a progress bar.
    """
    if not train_cases:
        raise SegmorphError("no training cases")
    task = SegmentationTask(train_cases, val_cases, config, num_classes)
    return fit_task(
        model, task, config, run_dir, network_config, device, resume, callbacks, show_progress,
        extra_config={"num_classes": num_classes},
    )  # fmt: skip


def dice_per_class(prediction: torch.Tensor, reference: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of classes 1..K-1 between two label maps (the rules of :func:`segmorph.metrics.segmentation.dice_score`)."""
    predicted, expected = prediction.cpu().numpy(), reference.cpu().numpy()
    return torch.tensor([dice_score(predicted == k, expected == k) for k in range(1, num_classes)])
