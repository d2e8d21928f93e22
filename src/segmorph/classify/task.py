"""Classification as a :class:`segmorph.train.TrainTask`: augmented batches, weighted cross-entropy, validation AUC.

Class imbalance is handled with class-weighted cross-entropy, weight ``N / (K * N_k)`` for class ``k`` (each
class contributes equally to the loss on average), not with weighted sampling: every image is drawn equally
often, so the rare class is not memorised from repeats, and the loss weights are one line in the checkpoint.
Batches are drawn uniformly with replacement from the run's generator, so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.classify.metrics import macro_auc, one_vs_rest_auc
from segmorph.transforms import AugmentConfig, Augmenter
from segmorph.transforms.intensity import IntensityConfig
from segmorph.transforms.spatial import SpatialConfig

PREDICT_BATCH = 32


def classification_augment_config(ndim: int, enabled: bool = True) -> AugmentConfig:
    """Augmentation for classifiers: mild rotation and scaling, left-right mirroring, nnU-Net's intensity set.

    Mirroring is along axis I only (the image's x axis; left-right in 3D scans): up-down flips would turn
    ultrasound depth or anatomy upside down, which no real image shows. No elastic deformation.
    """
    if not enabled:
        return AugmentConfig(enabled=False)
    spatial = SpatialConfig(p_rotation=0.3, rotation_deg=(-15.0, 15.0), p_scaling=0.3, scaling=(0.85, 1.2),
                            p_elastic=0.0, p_flip=0.5, flip_axes=(0,))  # fmt: skip
    return AugmentConfig(spatial=spatial, intensity=IntensityConfig())


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``N / (K * N_k)`` per class ``(K,)`` float32; a class without images gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu", amp: bool = False,
    batch_size: int = PREDICT_BATCH,
) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities ``(N, K)`` float32 on the CPU for inputs ``(N, C, *S)``, in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(batch)
            outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


class ClassificationTask:
    """Draws augmented batches of prepared images and scores validation images with ROC AUC.

    Args:
        train_images: ``(N, C, *S)`` float32 prepared inputs (see :mod:`segmorph.classify.data`).
        train_labels: ``(N,)`` class indices.
        val_images: ``(M, C, *S)``; may be empty (then validation returns no scores).
        val_labels: ``(M,)``.
        class_names: Class index -> name (K of them).
        batch_size: Images per step.
        augment: Augmentation settings; None gives :func:`classification_augment_config`.
    """

    score_key = "auc"

    def __init__(
        self, train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
        val_labels: torch.Tensor, class_names: Sequence[str], batch_size: int, augment: AugmentConfig | None = None,
    ) -> None:  # fmt: skip
        if train_images.shape[0] == 0 or train_images.shape[0] != train_labels.shape[0]:
            raise ValueError(f"train_labels: expected {train_images.shape[0]} labels for as many images (> 0)")
        self.train_images, self.train_labels = train_images, train_labels.long()
        self.val_images, self.val_labels = val_images, val_labels.long()
        self.class_names = list(class_names)
        self.batch_size = batch_size
        ndim = train_images.ndim - 2
        self.augmenter = Augmenter(augment or classification_augment_config(ndim), ndim)
        self.weights = class_weights(self.train_labels.tolist(), len(self.class_names))
        binary = len(self.class_names) == 2  # binary: the one part is the positive class (index 1)
        self.score_parts = [f"auc_{name}" for name in (self.class_names[1:] if binary else self.class_names)]

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        """Class-weighted cross-entropy of one augmented batch (logits in float32 for the loss)."""
        rows = torch.randint(self.train_images.shape[0], (self.batch_size,), generator=generator)
        images, _ = self.augmenter(self.train_images[rows].to(device), None, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        return F.cross_entropy(logits.float(), self.train_labels[rows].to(device), weight=self.weights.to(device))

    def validation_probabilities(self, model: nn.Module, device: torch.device, amp: bool = False) -> torch.Tensor:
        """``(M, K)`` probabilities of the validation images."""
        return predict_probabilities(model, self.val_images, device, amp)

    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        """``[auc]`` for two classes, else the one-vs-rest AUC of each class (their mean is the macro AUC).

        An undefined AUC (a class absent from validation) counts as chance, 0.5, so the best checkpoint is still
        chosen; the grouped splits keep every class on both sides, so this does not happen in practice.
        """
        if self.val_images.shape[0] == 0:
            return []
        probabilities = self.validation_probabilities(model, device).numpy()
        labels = self.val_labels.numpy()
        values = (
            [macro_auc(probabilities, labels)]
            if probabilities.shape[1] == 2
            else one_vs_rest_auc(probabilities, labels)
        )
        return [round(float(v), 5) if np.isfinite(v) else 0.5 for v in values]
