"""Classification as a :class:`segmorph.engine.loop.TrainTask`: augmented batches, weighted cross-entropy, validation AUC.

Class imbalance is handled with class-weighted cross-entropy, weight ``N / (K * N_k)`` for class ``k`` (each
class contributes equally to the loss on average), not with weighted sampling: every image is drawn equally
often, so the rare class is not memorised from repeats, and the loss weights are one line in the checkpoint.
Batches are drawn uniformly with replacement from the run's generator, so a resumed run draws what an
uninterrupted one would.

Small datasets (a few hundred images) are memorised within minutes, so the defaults regularise: strong
spatial and intensity augmentation, label smoothing, mixup (Zhang et al. 2018: pairs of images blended
with a Beta(a, a) weight, their losses blended alike) and, in the loop, an average of the weights
(``TrainConfig.ema_decay``) and of that average over the end of training (``TrainConfig.tail_average``),
whose batch-norm statistics are then re-estimated on the unaugmented images (:func:`refresh_batch_norm`).
Probabilities average the image and its left-right mirror (``mirror``),
the same mirroring the augmentation draws, and copies shifted by a fraction of the extent along each
axis (``shift``). Networks trained without translation scored an image a few pixels apart quite
differently, and there the shifted views ranked better on BUSI's grouped folds; trained with the
translation drawn here they are neutral there (see benchmarks/RESULTS.md), so they only steady the
score of images framed unlike the training ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.engine.autocast import autocast
from segmorph.errors import SegmorphError
from segmorph.metrics.classification import macro_auc, one_vs_rest_auc
from segmorph.transforms import AugmentConfig, Augmenter
from segmorph.transforms.intensity import IntensityConfig
from segmorph.transforms.spatial import SpatialConfig

PREDICT_BATCH = 32


def classification_augment_config(ndim: int, enabled: bool = True) -> AugmentConfig:
    """Augmentation for classifiers: rotation, scaling, translation (up to 10 % of the extent), coarse elastic
    deformation, left-right mirroring and nnU-Net's intensity set, each drawn more often than for segmentation
    (small datasets overfit; whole images, unlike segmentation patches, are not otherwise moved).

    Mirroring is along axis I only (the image's x axis; left-right in 3D scans): up-down flips would turn
    ultrasound depth or anatomy upside down, which no real image shows.
    """
    if not enabled:
        return AugmentConfig(enabled=False)
    spatial = SpatialConfig(p_rotation=0.6, rotation_deg=(-25.0, 25.0), p_scaling=0.6, scaling=(0.75, 1.35),
                            p_translation=0.5, translation=0.1, p_elastic=0.3, elastic_magnitude=(0.0, 3.0),
                            elastic_spacing=16, p_flip=0.5, flip_axes=(0,))  # fmt: skip
    intensity = IntensityConfig(p_noise=0.3, p_blur=0.3, p_brightness=0.5, p_contrast=0.5, p_gamma=0.5,
                                p_low_resolution=0.3)  # fmt: skip
    return AugmentConfig(spatial=spatial, intensity=intensity)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``N / (K * N_k)`` per class ``(K,)`` float32; a class without images gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu", amp: bool = False,
    batch_size: int = PREDICT_BATCH, mirror: bool = False, shift: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities ``(N, K)`` float32 on the CPU for inputs ``(N, C, *S)``, in eval mode.

    The mean over the views of :func:`scoring_views`: ``mirror`` adds the images mirrored along spatial
    axis I (tensor dim 2); ``shift`` adds copies shifted by that fraction of the extent both ways along
    each spatial axis.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            views = scoring_views(batch, mirror, shift)
            with autocast(device, amp):
                probabilities = [torch.softmax(model(view).float(), dim=1) for view in views]
            outputs.append(torch.stack(probabilities).mean(0).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def scoring_views(images: torch.Tensor, mirror: bool = False, shift: float = 0.0) -> list[torch.Tensor]:
    """``images`` ``(N, C, *S)``, their mirror along axis I when ``mirror``, and for ``shift > 0`` copies moved
    ``round(shift * size)`` voxels (at least 1) towards each end of every spatial axis, zeros filling in.
    """
    views = [images, images.flip(2)] if mirror else [images]
    if shift > 0:
        for dim in range(2, images.ndim):
            step = max(1, round(shift * images.shape[dim]))
            views += [shift_zero_filled(images, dim, step), shift_zero_filled(images, dim, -step)]
    return views


def shift_zero_filled(images: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``images`` moved ``step`` voxels along tensor dim ``dim`` (towards higher indices when positive), zeros filling in."""
    size = images.shape[dim]
    out = torch.zeros_like(images)
    if abs(step) >= size:
        return out
    keep = images.narrow(dim, 0, size - step) if step > 0 else images.narrow(dim, -step, size + step)
    out.narrow(dim, max(step, 0), size - abs(step)).copy_(keep)
    return out


@torch.no_grad()
def refresh_batch_norm(
    model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu", batch_size: int = PREDICT_BATCH,
    mirror: bool = False,
) -> bool:  # fmt: skip
    """Re-estimate every batch-norm layer's running mean and variance from ``images`` ``(N, C, *S)`` (and their
    mirrors along axis I when ``mirror``), as they are scored: unaugmented, unmixed. Weights are untouched.

    In training the statistics follow augmented and mixed-up batches (a blend of two images is flatter than
    either), and with a weight average they are averages too, so they drift from what clean images give.
    Uses :func:`torch.optim.swa_utils.update_bn` (an equal-weight mean over the batches). Returns whether the
    model has batch norm (False: nothing done).
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    views = scoring_views(images, mirror=mirror)
    batches = [view[start : start + batch_size] for view in views for start in range(0, view.shape[0], batch_size)]
    torch.optim.swa_utils.update_bn(batches, model, torch.device(device))
    return True


def mixup_weight(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw, seeded from ``generator`` (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


class ClassificationTask:
    """Draws augmented batches of prepared images and scores validation images with ROC AUC.

    Args:
        train_images: ``(N, C, *S)`` float32 prepared inputs (see :mod:`segmorph.classification.data`).
        train_labels: ``(N,)`` class indices.
        val_images: ``(M, C, *S)``; may be empty (then validation returns no scores).
        val_labels: ``(M,)``.
        class_names: Class index -> name (K of them).
        batch_size: Images per step.
        augment: Augmentation settings; None gives :func:`classification_augment_config`.
        label_smoothing: Cross-entropy label smoothing (0: none).
        mixup: Beta parameter of mixup (0: off).
        mirror: Validation probabilities also from the mirrored images (see :func:`predict_probabilities`).
        shift: Final validation probabilities also from shifted copies (see :func:`scoring_views`); the
            per-epoch scores leave them out (each view costs as much as the first, a noticeable share of an epoch).
    """

    score_key = "auc"

    def __init__(
        self, train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
        val_labels: torch.Tensor, class_names: Sequence[str], batch_size: int, augment: AugmentConfig | None = None,
        label_smoothing: float = 0.0, mixup: float = 0.0, mirror: bool = False, shift: float = 0.0,
    ) -> None:  # fmt: skip
        if train_images.shape[0] == 0 or train_images.shape[0] != train_labels.shape[0]:
            raise ValueError(f"train_labels: expected {train_images.shape[0]} labels for as many images (> 0)")
        self.train_images, self.train_labels = train_images, train_labels.long()
        self.val_images, self.val_labels = val_images, val_labels.long()
        self.class_names = list(class_names)
        self.batch_size = batch_size
        self.label_smoothing, self.mixup, self.mirror, self.shift = label_smoothing, mixup, mirror, shift
        ndim = train_images.ndim - 2
        self.augmenter = Augmenter(augment or classification_augment_config(ndim), ndim)
        self.weights = class_weights(self.train_labels.tolist(), len(self.class_names))
        binary = len(self.class_names) == 2  # binary: the one part is the positive class (index 1)
        self.score_parts = [f"auc_{name}" for name in (self.class_names[1:] if binary else self.class_names)]

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        """Class-weighted cross-entropy of one augmented (and mixed) batch; logits in float32 for the loss."""
        rows = torch.randint(self.train_images.shape[0], (self.batch_size,), generator=generator)
        images, _ = self.augmenter(self.train_images[rows].to(device), None, generator)
        targets = [self.train_labels[rows].to(device)]
        share = [1.0]
        if self.mixup > 0:
            weight = mixup_weight(self.mixup, generator)
            partner = torch.randperm(images.shape[0], generator=generator).to(device)
            images = weight * images + (1.0 - weight) * images[partner]
            targets, share = [targets[0], targets[0][partner]], [weight, 1.0 - weight]
        with autocast(device, amp):
            logits = model(images).float()
        weights = self.weights.to(device)
        return sum(s * F.cross_entropy(logits, t, weight=weights, label_smoothing=self.label_smoothing)
                   for s, t in zip(share, targets))  # fmt: skip

    def validation_probabilities(self, model: nn.Module, device: torch.device, amp: bool = False) -> torch.Tensor:
        """``(M, K)`` probabilities of the validation images over every scoring view, as ``predict`` scores them."""
        return predict_probabilities(model, self.val_images, device, amp, mirror=self.mirror, shift=self.shift)

    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        """``[auc]`` for two classes, else the one-vs-rest AUC of each class (their mean is the macro AUC), from the
        image and its mirror only (no shifted views: this runs every epoch).

        An undefined AUC (a class absent from validation) counts as chance, 0.5, so the best checkpoint is still
        chosen; the grouped splits keep every class on both sides, so this does not happen in practice.
        """
        if self.val_images.shape[0] == 0:
            return []
        probabilities = predict_probabilities(model, self.val_images, device, mirror=self.mirror).numpy()
        if not np.isfinite(probabilities).all():
            raise SegmorphError("training diverged: the network's outputs are NaN or infinite; lower the learning "
                                "rate or the weight decay")  # fmt: skip
        labels = self.val_labels.numpy()
        values = (
            [macro_auc(probabilities, labels)]
            if probabilities.shape[1] == 2
            else one_vs_rest_auc(probabilities, labels)
        )
        return [round(float(v), 5) if np.isfinite(v) else 0.5 for v in values]
