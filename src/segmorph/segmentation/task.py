"""Segmentation training: the task the engine's loop runs, and :func:`fit`, its entry point.

Cases are in memory and preprocessed: image ``(C, *S)`` float32 and label ``(1, *S)`` int64. A 2D network on 3D
cases (``slice_axis``) trains on 2D slices of them and is validated slice by slice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from segmorph.engine.autocast import autocast
from segmorph.engine.loop import Callback, FitResult, TrainConfig, TrainTask, fit_task
from segmorph.engine.sliding_window import slicewise_logits, sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.metrics.segmentation import dice_score
from segmorph.segmentation.datasets import IGNORE
from segmorph.segmentation.losses import SegmentationLoss
from segmorph.transforms import AugmentConfig, Augmenter, PatchSampler

Case = tuple[torch.Tensor, torch.Tensor]


class SegmentationTask:
    """Foreground-oversampled, augmented patches; Dice + cross-entropy; sliding-window validation Dice.

    With ``slice_axis`` (a 2D ``config.patch_size``, 3D cases) the patches are 2D slices across that axis and
    validation runs the sliding window slice by slice (:func:`segmorph.engine.sliding_window.slicewise_logits`).
    With ``synthetic`` cases (e.g. GAN-made pairs, :func:`segmorph.synthesis.synthetic_cases`) each patch of a
    batch comes from them with probability ``synthetic_share``, drawn like the real ones.
    """

    score_key = "dice"

    def __init__(
        self, train_cases: Sequence[Case], val_cases: Sequence[Case], config: TrainConfig, num_classes: int,
        label_names: Mapping[int, str] | None = None, slice_axis: int | None = None,
        synthetic: Sequence[Case] = (), synthetic_share: float = 0.0,
    ) -> None:  # fmt: skip
        self.config = config
        self.num_classes = num_classes
        self.val_cases = val_cases
        self.slice_axis = slice_axis
        self.score_parts = [f"dice_{name}" for name in score_part_names(num_classes, label_names)]
        self.sampler = PatchSampler(
            [c[0] for c in train_cases], [c[1] for c in train_cases], config.patch_size, config.foreground_fraction,
            slice_axis=slice_axis,
        )  # fmt: skip
        if synthetic and not 0.0 < synthetic_share < 1.0:
            raise SegmorphError(f"synthetic_share: expected a fraction between 0 and 1, got {synthetic_share}")
        self.synthetic_share = synthetic_share if synthetic else 0.0
        self.synthetic_sampler = None
        if synthetic:
            self.synthetic_sampler = PatchSampler(
                [c[0] for c in synthetic], [c[1] for c in synthetic], config.patch_size, config.foreground_fraction,
                slice_axis=slice_axis,
            )  # fmt: skip
        ndim = len(config.patch_size)
        self.augmenter = Augmenter(AugmentConfig() if config.augment else AugmentConfig(enabled=False), ndim)
        self.loss_fn = SegmentationLoss(config.loss_alpha)

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        images, labels = self.draw(generator)
        images, labels = self.augmenter(images.to(device), labels.to(device), generator)
        with autocast(device, amp):
            outputs = model(images)
        return self.loss_fn(outputs, labels)

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of patches ``(B, C, *P)`` and labels ``(B, 1, *P)``, each patch synthetic with probability
        ``synthetic_share`` (no draw for that without synthetic cases, so such runs stay as they were)."""
        batch = self.config.batch_size
        if self.synthetic_sampler is None:
            return self.sampler.sample(batch, generator)
        synthetic = int((torch.rand(batch, generator=generator) < self.synthetic_share).sum())
        parts = [sampler.sample(count, generator) for sampler, count in
                 ((self.sampler, batch - synthetic), (self.synthetic_sampler, synthetic)) if count]  # fmt: skip
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.inference_mode()
    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        if not self.val_cases:
            return []
        scores = []
        for image, label in self.val_cases:
            probabilities = validation_logits(model, image, self.config, device, self.slice_axis)
            scores.append(dice_per_class(probabilities.argmax(0), label[0], self.num_classes))
        return [round(float(v), 5) for v in torch.stack(scores).mean(0)]


def validation_logits(
    model: nn.Module, image: torch.Tensor, config: TrainConfig, device: torch.device, slice_axis: int | None = None
) -> torch.Tensor:
    """Class probabilities ``(K, *S)`` of a preprocessed case ``(C, *S)`` as validation during training computes
    them: a sliding window with the training tile size, no mirroring; slice by slice across ``slice_axis``."""
    settings = {"overlap": config.val_overlap, "batch_size": max(config.batch_size, 2), "device": device,
                "amp": config.amp}  # fmt: skip
    if slice_axis is None:
        return sliding_window_logits(model, image, config.patch_size, **settings)
    return slicewise_logits(model, image, slice_axis, config.patch_size, **settings)


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
    label_names: Mapping[int, str] | None = None,
    slice_axis: int | None = None,
    compose: Callable[[SegmentationTask], TrainTask] | None = None,
    synthetic: Sequence[Case] = (),
    synthetic_share: float = 0.0,
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
        label_names: Label value -> name, naming the per-class columns of ``train_log.csv``
            (``val_dice_Anterior``); classes without a name keep their value (``val_dice_2``).
        slice_axis: Train a 2D ``model`` (2D ``config.patch_size``) on slices of 3D cases across this spatial axis
            (0, 1 or 2); None: the model has the cases' dimensions.
        compose: Builds the task the loop runs around the segmentation task, e.g. semi-supervised training
            (:class:`segmorph.segmentation.semisupervised.SemiSupervisedTask`); None: the segmentation task itself.
        synthetic: Extra ``(image, label)`` pairs (e.g. GAN-made) that patches are also drawn from.
        synthetic_share: Probability of each patch coming from ``synthetic``.
    """
    if not train_cases:
        raise SegmorphError("no training cases")
    task: TrainTask = SegmentationTask(train_cases, val_cases, config, num_classes, label_names, slice_axis,
                                       synthetic, synthetic_share)  # fmt: skip
    if compose is not None:
        task = compose(task)
    return fit_task(
        model, task, config, run_dir, network_config, device, resume, callbacks, show_progress,
        extra_config={"num_classes": num_classes},
    )  # fmt: skip


def score_part_names(num_classes: int, label_names: Mapping[int, str] | None = None) -> list[str]:
    """Names of classes 1..K-1 for per-class columns: the label name, or the value where a name is missing,
    repeated, or holds characters that do not belong in a column name (comma, quote, whitespace other than space)."""
    names = dict(label_names or {})
    chosen = []
    for k in range(1, num_classes):
        name = str(names.get(k, "")).strip()
        usable = name and not name.isdigit() and not any(c in name for c in ",\"'\t\r\n") and name not in chosen
        chosen.append(name if usable else str(k))
    return chosen


def dice_per_class(prediction: torch.Tensor, reference: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of classes 1..K-1 between two label maps (the rules of :func:`segmorph.metrics.segmentation.dice_score`),
    counting only voxels where ``reference`` is not :data:`~segmorph.segmentation.datasets.IGNORE`."""
    predicted, expected = prediction.cpu().numpy(), reference.cpu().numpy()
    annotated = expected != IGNORE
    return torch.tensor([dice_score((predicted == k) & annotated, expected == k) for k in range(1, num_classes)])
