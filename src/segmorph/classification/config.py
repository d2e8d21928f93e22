"""The settings of ``segmorph classify train`` as one frozen, nested config (written as the run's ``config.json``).

Sections: ``model`` (network), ``data`` (input size and split), ``train`` (optimisation, averaging, kept
weights) and ``scoring`` (views averaged at validation and prediction). Every key can be set with
``--set section.key=value`` or a ``--config`` YAML/JSON file (see :func:`segmorph.configs.apply_overrides`);
the command's flags set the same keys. The dataset's own description (labels CSV, columns) is not a setting:
it is given with the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segmorph.configs import MAX_LEARNING_RATE, check, training_config
from segmorph.nn.names import network_names

CONFIG_NAME = "classifier config"  # what error messages call ClassifierConfig
SELECTIONS = ("last", "best")
"""Which weights a run keeps: the final (averaged) ones, or those of the epoch of best validation AUC."""


@dataclass(frozen=True)
class ModelSettings:
    """The network.

    Attributes:
        name: One of :func:`segmorph.nn.names.network_names` ``("classification")``: ``"resnet"``
            (ResNet-18 layout) or ``"simplecnn"``.
        width: ResNet first-stage channels / SimpleCNN first-level channels (doubling per level).
        dropout: Dropout before the linear layer; None: the model's default (ResNet 0, SimpleCNN 0.2).
    """

    name: str = "resnet"
    width: int = 16
    dropout: float | None = None

    def __post_init__(self) -> None:
        names = network_names("classification")
        check(self.name in names, f"name: expected one of {', '.join(names)}, got {self.name!r}")
        check(self.width >= 1, f"width: expected at least 1 channel, got {self.width}")
        check(
            self.dropout is None or 0.0 <= self.dropout < 1.0,
            f"dropout: expected a share in [0, 1), got {self.dropout}",
        )


@dataclass(frozen=True)
class DataSettings:
    """Input size and the train/validation split.

    Attributes:
        size: Input size in voxels per spatial axis (one value: all axes; at least 8); None: from the data.
        val_fraction: Hold-out share (whole groups, per class) when ``fold`` is None.
        fold: Validation fold of a grouped ``num_folds``-fold split; None: the hold-out split.
        num_folds: Folds of the grouped k-fold split.
        split_seed: Seed of the split alone (None: ``train.seed``).
        labelled_fraction: Share of the training images kept labelled, in (0, 1]: after the split, a
            seeded (``train.seed``), class-stratified choice of whole groups (at least one image of each class);
            the other training images are not trained on (validation is untouched). 1: all.
    """

    size: tuple[int, ...] | None = None
    val_fraction: float = 0.2
    fold: int | None = None
    num_folds: int = 5
    split_seed: int | None = None
    labelled_fraction: float = 1.0

    def __post_init__(self) -> None:
        check(0.0 < self.labelled_fraction <= 1.0,
              f"labelled_fraction: expected a share in (0, 1], got {self.labelled_fraction}")  # fmt: skip
        check(self.size is None or (len(self.size) >= 1 and min(self.size) >= 8),
              f"size: expected sizes of at least 8 voxels, got {None if self.size is None else list(self.size)}")  # fmt: skip
        check(0.0 < self.val_fraction < 1.0, f"val_fraction: expected a share in (0, 1), got {self.val_fraction}")
        check(self.num_folds >= 2, f"num_folds: expected at least 2, got {self.num_folds}")
        check(self.fold is None or 0 <= self.fold < self.num_folds,
              f"fold: expected 0..{self.num_folds - 1}, got {self.fold}")  # fmt: skip


@dataclass(frozen=True)
class ClassifierTrainSettings:
    """Optimisation, weight averaging and the kept weights (see :class:`segmorph.classification.pipeline.ClassifyRequest`).

    Attributes:
        batch_size: Images per step.
        learning_rate: Peak AdamW learning rate (cosine schedule with warm-up).
        weight_decay: AdamW weight decay.
        time_budget_s: Training time limit in seconds (0: only ``max_steps``).
        max_steps: Step limit (0: only the time budget).
        steps_per_epoch: Steps between validations and checkpoints.
        patience_epochs: Early stopping after this many epochs without a better AUC (0: off).
        seed: Seed of the weights, batches and augmentation (and of the split unless ``data.split_seed``).
        amp: bfloat16 autocast where the device runs it fast.
        augment: Training augmentation.
        label_smoothing: Cross-entropy label smoothing.
        mixup: Beta parameter of mixup (0: off).
        ema_decay: Weight average validated and saved (0: off).
        tail_average: Keep the mean of the averaged weights over this last fraction of training (0: the final ones).
        select: Weights kept: ``"last"`` or ``"best"`` (:data:`SELECTIONS`).
        refresh_batch_norm: Re-estimate the kept weights' batch-norm statistics on the training images.
        ensemble: Networks trained one after another, each for its share of the budget.
        freeze_encoder_steps: For the first this many steps every layer but the final linear one gets no
            update (0: off); meant for a network initialised from another run (``--init``).
    """

    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    time_budget_s: float = 900.0
    max_steps: int = 0
    steps_per_epoch: int = 25
    patience_epochs: int = 0
    seed: int = 0
    amp: bool = True
    augment: bool = True
    label_smoothing: float = 0.1
    mixup: float = 0.2
    ema_decay: float = 0.998
    tail_average: float = 0.5
    select: str = "last"
    refresh_batch_norm: bool = True
    ensemble: int = 1
    freeze_encoder_steps: int = 0

    def __post_init__(self) -> None:
        check(self.freeze_encoder_steps >= 0,
              f"freeze_encoder_steps: expected at least 0, got {self.freeze_encoder_steps}")  # fmt: skip
        check(self.batch_size >= 1, f"batch_size: expected at least 1, got {self.batch_size}")
        check(
            0 < self.learning_rate <= MAX_LEARNING_RATE,
            f"learning_rate: expected a value in (0, {MAX_LEARNING_RATE:g}], got {self.learning_rate}",
        )
        check(0 <= self.weight_decay <= 1, f"weight_decay: expected a value in [0, 1], got {self.weight_decay}")
        check(self.time_budget_s >= 0, f"time_budget_s: expected at least 0 seconds, got {self.time_budget_s}")
        check(self.max_steps >= 0, f"max_steps: expected at least 0, got {self.max_steps}")
        check(self.max_steps > 0 or self.time_budget_s > 0, "max_steps/time_budget_s: give at least one limit")
        check(self.steps_per_epoch >= 1, f"steps_per_epoch: expected at least 1, got {self.steps_per_epoch}")
        check(self.patience_epochs >= 0, f"patience_epochs: expected at least 0, got {self.patience_epochs}")
        check(
            0.0 <= self.label_smoothing < 1.0,
            f"label_smoothing: expected a share in [0, 1), got {self.label_smoothing}",
        )
        check(self.mixup >= 0, f"mixup: expected at least 0 (0: off), got {self.mixup}")
        check(0.0 <= self.ema_decay < 1.0, f"ema_decay: expected 0 <= value < 1, got {self.ema_decay}")
        check(
            0.0 <= self.tail_average <= 1.0,
            f"tail_average: expected a fraction of training in [0, 1], got {self.tail_average}",
        )
        check(self.select in SELECTIONS, f"select: expected one of {', '.join(SELECTIONS)}, got {self.select!r}")
        check(self.ensemble >= 1, f"ensemble: expected at least 1 network, got {self.ensemble}")


@dataclass(frozen=True)
class ScoringSettings:
    """Views whose probabilities are averaged at validation and prediction.

    Attributes:
        mirror: The image and its left-right mirror.
        shift: Also copies shifted by this fraction of the extent both ways along each axis (0: off).
    """

    mirror: bool = True
    shift: float = 0.04

    def __post_init__(self) -> None:
        check(0.0 <= self.shift < 0.5, f"shift: expected a fraction of the image size in [0, 0.5), got {self.shift}")


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything ``segmorph classify train`` was asked for (the run's ``config.json``)."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: ClassifierTrainSettings = field(default_factory=ClassifierTrainSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)


def classifier_config(
    overrides: dict[str, Any] | None = None, config: str | Path | None = None, *, time_budget: str | float | None = None,
    max_steps: int = 0, seed: int = 0, base: ClassifierConfig | None = None,
) -> ClassifierConfig:  # fmt: skip
    """The settings of a classification run, checked: ``base`` (default: the defaults), then the keyword
    arguments, then the ``config`` file, then ``overrides`` (see :func:`segmorph.configs.training_config`).

    Raises:
        SegmorphError: One line naming the key that is unknown, of the wrong type or out of range.

    Example:
        >>> classifier_config({"model.width": 32}, max_steps=500).train.time_budget_s
        0.0
    """
    return training_config(base or ClassifierConfig(), overrides, config, name=CONFIG_NAME, time_budget=time_budget,
                           max_steps=max_steps, seed=seed)  # fmt: skip
