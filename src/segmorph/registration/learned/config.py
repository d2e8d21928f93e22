"""Settings of learned registration (stored in the checkpoint), of its training (``config.json`` of a run) and
the pre-alignments it offers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from segmorph.configs import MAX_LEARNING_RATE, check, check_allocation, refuse_unknown_keys
from segmorph.registration.classical import (
    ClassicalConfig,
)
from segmorph.registration.names import MAX_OPTIMISATION_STEPS, MAX_PASSES, PREALIGNMENTS
from segmorph.registration.similarity import get_similarity

# A quick affine for pre-alignment: the two coarse pyramid levels only.
PREALIGN_CONFIG = ClassicalConfig(
    shrink=(4, 2), rigid_iterations=(30, 0), affine_iterations=(30, 10), deformable_iterations=(0, 0)
)


def check_passes(passes: int) -> None:
    """Refuse a number of network passes outside 1..:data:`MAX_PASSES` (``ValueError``)."""
    if not 1 <= passes <= MAX_PASSES:
        raise ValueError(f"passes: expected 1 to {MAX_PASSES} network passes, got {passes}")


def check_refine(steps: int) -> None:
    """Refuse a number of instance-optimisation steps outside 0..:data:`MAX_OPTIMISATION_STEPS` (``ValueError``)."""
    if not 0 <= steps <= MAX_OPTIMISATION_STEPS:
        raise ValueError(f"refine: expected 0 to {MAX_OPTIMISATION_STEPS:,} instance-optimisation steps, got {steps}")


@dataclass(frozen=True)
class LearnedConfig:
    """Network and loss settings of learned registration (stored in the checkpoint).

    Attributes:
        features: U-Net channels per level.
        train_shape: Grid the training pairs are padded or cropped to (centred), voxels.
        similarity: Image term (``"ncc"``, ``"mse"``, ``"mi"``, ``"mind"``).
        ncc_window: Local NCC window, voxels.
        smoothness: Weight of the diffusion regulariser on the velocity (coarse voxels).
        dice_weight: Weight of ``1 - Dice`` between warped moving and fixed labels (0: unsupervised).
            2 rather than 1: chosen on the monitor pairs of the hippocampus data and confirmed on the
            held-out benchmark pairs, with no folding (see benchmarks/RESULTS.md).
        integration_steps: Scaling-and-squaring steps.
        prealign: What runs before the network at inference: ``"prior"`` (a translation matching the
            centres of the segmentation prior's foreground probabilities), ``"affine"`` (a quick
            classical affine), ``"com"`` (intensity centres of mass), ``"none"`` (the pair as it comes,
            as training pairs are used) or ``"auto"`` (the default: ``"prior"`` for a model with a
            prior, else ``"none"``). Training pairs are not pre-aligned, so the network copes with the
            offsets it saw (centred hippocampus crops: structure centres up to ~3 mm apart) and fails
            beyond; matching the prior's centres first brings the rest within that range (on the
            hippocampus benchmark pairs it rescues the pairs whose structures lie further apart; see
            benchmarks/RESULTS.md).
        flip: Random flips of both images as augmentation.
        prior_classes: Classes (with background) of the segmentation prior whose foreground
            probabilities the network also sees (0: images only). See :mod:`segmorph.registration.learned.prior`.
        input_shrink: 2: the network works on 2x2x2-averaged inputs (8x cheaper; it predicts a
            half-resolution velocity either way); 1: full-resolution inputs.
        passes: Network passes at inference and on monitor pairs. Each pass after the first sees the
            moving image (and its prior) warped by the passes so far; the transforms are composed
            (see :func:`predict_displacement`). On the hippocampus benchmark pairs a second pass raised
            Dice for little time and a third added almost nothing (see benchmarks/RESULTS.md).
        pass_scale: Weight of the velocity of each pass after the first: the network was trained on
            unaligned pairs and over-corrects nearly aligned ones. Chosen on pairs of the hippocampus
            monitor cases (see benchmarks/RESULTS.md). Training on such nearly aligned pairs too (half
            the batches pre-warped) did not do better.
        label_guidance: Share of training pairs (0..1) whose moving channels of the prior are the
            moving scan's one-hot labels instead of the prior's probabilities. A model trained so
            takes the moving labels at inference where they are given (``register(...,
            moving_labels=...)``, ``segmorph register --moving-labels``, atlases): they are what gets
            warped, so the network aligns exactly them to the fixed scan's prior. Used only by runs
            with a prior and labels of its classes (training sets it to 0 otherwise). On the
            hippocampus benchmark pairs it costs nothing from the images alone and helps when the
            moving labels are given (see benchmarks/RESULTS.md).
    """

    features: tuple[int, ...] = (16, 32, 32, 64)
    train_shape: tuple[int, ...] = (48, 64, 48)
    similarity: str = "ncc"
    ncc_window: int = 9
    smoothness: float = 1.0
    dice_weight: float = 2.0
    integration_steps: int = 7
    prealign: str = "auto"
    flip: bool = True
    prior_classes: int = 0
    input_shrink: int = 2
    passes: int = 2
    pass_scale: float = 0.5
    label_guidance: float = 0.5

    def __post_init__(self) -> None:
        get_similarity(self.similarity)
        if not 0.0 <= self.label_guidance <= 1.0:
            raise ValueError(f"label_guidance: expected a share in 0..1, got {self.label_guidance}")
        if self.input_shrink not in (1, 2):
            raise ValueError(f"input_shrink: expected 1 or 2, got {self.input_shrink}")
        check_passes(self.passes)
        if self.prealign not in PREALIGNMENTS:
            raise ValueError(f"prealign: expected one of {PREALIGNMENTS}, got {self.prealign!r}")
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        object.__setattr__(self, "train_shape", tuple(int(s) for s in self.train_shape))
        check(len(self.features) >= 2 and min(self.features) >= 1,
              f"features: expected at least 2 positive channel counts, got {list(self.features)}")  # fmt: skip
        check(len(self.train_shape) in (2, 3) and min(self.train_shape) >= 8,
              f"train_shape: expected 2 or 3 sizes of at least 8 voxels, got {list(self.train_shape)}")  # fmt: skip
        check_allocation(math.prod(self.train_shape), f"train_shape: {list(self.train_shape)}")
        check(self.ncc_window >= 1, f"ncc_window: expected at least 1 voxel, got {self.ncc_window}")
        for name in ("smoothness", "dice_weight", "pass_scale"):
            check(getattr(self, name) >= 0, f"{name}: expected at least 0, got {getattr(self, name)}")
        check(self.integration_steps >= 0, f"integration_steps: expected at least 0, got {self.integration_steps}")
        check(self.prior_classes >= 0, f"prior_classes: expected at least 0, got {self.prior_classes}")

    @classmethod
    def from_dict(cls, values: dict) -> LearnedConfig:
        refuse_unknown_keys(cls, values, "registration config")
        return cls(**{"label_guidance": 0.0, **values})  # checkpoints from before label guidance: unguided


def registration_checkpoint_config(config: LearnedConfig, labels: dict[int, str]) -> dict:
    """The JSON config stored beside the weights (``kind``, loss settings, label names)."""
    return {"kind": "registration", "registration": asdict(config), "labels": {str(k): v for k, v in labels.items()}}


@dataclass(frozen=True)
class RegistrationTrainSettings:
    """How ``segmorph train-registration`` trains (the ``train`` section of :class:`RegistrationTrainConfig`).

    Attributes:
        batch_size: Pairs per step.
        learning_rate: Peak AdamW learning rate (cosine schedule).
        time_budget_s: Training time limit in seconds (0: only ``max_steps``).
        max_steps: Step limit (0: only the time budget).
        steps_per_epoch: Steps between monitor scores and checkpoints.
        fold: Fold of ``num_folds`` whose cases are held out (monitor and held-out cases).
        num_folds: Folds of the seeded case split.
        seed: Seed of the split, the initial weights and the pairs drawn.
    """

    batch_size: int = 2
    learning_rate: float = 1e-3
    time_budget_s: float = 1200.0
    max_steps: int = 0
    steps_per_epoch: int = 100
    fold: int = 0
    num_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"batch_size: expected at least 1, got {self.batch_size}")
        check(
            0 < self.learning_rate <= MAX_LEARNING_RATE,
            f"learning_rate: expected a value in (0, {MAX_LEARNING_RATE:g}], got {self.learning_rate}",
        )
        check(self.time_budget_s >= 0, f"time_budget_s: expected at least 0 seconds, got {self.time_budget_s}")
        check(self.max_steps >= 0, f"max_steps: expected at least 0, got {self.max_steps}")
        check(self.max_steps > 0 or self.time_budget_s > 0, "max_steps/time_budget_s: give at least one limit")
        check(self.steps_per_epoch >= 1, f"steps_per_epoch: expected at least 1, got {self.steps_per_epoch}")
        check(self.num_folds >= 2, f"num_folds: expected at least 2, got {self.num_folds}")
        check(0 <= self.fold < self.num_folds, f"fold: expected 0..{self.num_folds - 1}, got {self.fold}")


@dataclass(frozen=True)
class RegistrationTrainConfig:
    """Everything ``segmorph train-registration`` was asked for, written to the run folder as ``config.json``.

    Every key can be set with ``--set section.key=value`` or a ``--config`` YAML/JSON file (see
    :func:`segmorph.configs.apply_overrides`); ``registration.prior_classes`` follows the segmentation model.

    Attributes:
        registration: Network and loss settings (stored in the checkpoint too).
        train: How to train.
    """

    registration: LearnedConfig = field(default_factory=LearnedConfig)
    train: RegistrationTrainSettings = field(default_factory=RegistrationTrainSettings)

    def __post_init__(self) -> None:
        check(self.registration.prior_classes == 0,
              "registration: prior_classes is set by the segmentation model (--segmentation-model), not by hand")  # fmt: skip
