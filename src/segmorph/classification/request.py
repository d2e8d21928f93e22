"""What ``segmorph classify train`` is asked to do (:class:`ClassifyRequest`), the dataset it reads, its split into
training, validation and held-out images, and the classifier it builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmorph.classification.data import (
    ClassificationDataset,
    load_class_folders,
    load_labels_csv,
    name_classes,
    resolve_labels_file,
)
from segmorph.classification.split import grouped_fold_split, grouped_holdout_split, labelled_subset
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.errors import SegmorphError


@dataclass(frozen=True)
class ClassifyRequest:
    """What ``segmorph classify train`` was asked to do.

    Attributes:
        dataset: Dataset folder.
        out: Run folder.
        labels: Labels CSV (inside ``dataset``, or a path); None: class-per-folder layout.
        target: CSV column holding the class.
        class_names: Names of the classes in the order of their sorted values in ``target`` (e.g. ``0, 1`` ->
            ``("normal", "lesion")``); None: the values themselves.
        group: CSV column holding the group (never split apart); None: each image its own group.
        file_column: CSV column holding the image path (relative to ``dataset``).
        model: ``"resnet"`` or ``"simplecnn"``.
        width: ResNet first-stage channels / SimpleCNN first-level channels (doubling per level).
        dropout: Dropout before the linear layer; None: the model's default (ResNet 0, SimpleCNN 0.2).
        size: Input size in voxels per spatial axis (one value: all axes); None: chosen from the data.
        batch_size: Images per step.
        learning_rate: Peak AdamW learning rate (cosine schedule with warm-up).
        weight_decay: AdamW weight decay.
        time_budget_s: Training time limit in seconds (0: only ``max_steps``).
        max_steps: Step limit (0: only the time budget).
        steps_per_epoch: Steps between validations and checkpoints.
        patience_epochs: Early stopping after this many epochs without a better AUC (0: off).
        val_fraction: Hold-out share (whole groups, per class) when ``fold`` is None.
        fold: Validation fold of a grouped ``num_folds``-fold split; None: the hold-out split.
        num_folds: Folds of the grouped k-fold split.
        holdout_groups: Share of each class's images (whole groups, seeded as the split) set aside before
            the split: never trained or validated on (a cross-validation run's hold-out; 0: none).
        validate: False: train on every image not set aside, with no validation images (a cross-validation
            run's final model); ``threshold`` is then the decision threshold.
        threshold: Decision threshold (two classes) to keep instead of choosing one on the validation images
            (Youden's J); None: chosen on them.
        seed: Seed of the initial weights, batches and augmentation, and of the split unless ``split_seed``.
        split_seed: Seed of the split alone (None: ``seed``), so that one split can be trained with
            several seeds: on a small validation set the seed-to-seed spread can exceed the effect studied.
        device: ``cpu``, ``cuda`` or ``mps``.
        amp: bfloat16 autocast in training where the device runs it fast (:mod:`segmorph.engine.autocast`).
        augment: Training augmentation (see :func:`segmorph.classification.task.classification_augment_config`).
        label_smoothing: Cross-entropy label smoothing.
        mixup: Beta parameter of mixup (0: off).
        ema_decay: Average of the weights used for validation and the saved model (0: off).
        mirror: Probabilities averaged over the image and its left-right mirror (validation and predict).
        shift: Also over copies shifted by this fraction of the extent both ways along each axis (final
            validation and predict; 0: off). See :func:`segmorph.classification.task.scoring_views`.
        select: Weights kept: ``"last"``, the final (averaged) ones (the tail average when ``tail_average``
            > 0), or ``"best"``, those of the epoch of highest validation AUC. With a hundred-odd validation
            images the best epoch is mostly noise: on BUSI's grouped folds its AUC beat the final
            weights' only on the images it was picked on, while the final weights scored at least as
            well as any earlier stretch of training (see benchmarks/RESULTS.md).
        tail_average: Keep the mean of the averaged weights over this last fraction of training (0: the
            final ones; see :class:`segmorph.engine.loop.TrainConfig`). Used by ``select="last"``.
        refresh_batch_norm: Re-estimate the kept weights' batch-norm statistics on the training images
            (unaugmented, with their mirrors when ``mirror``); see
            :func:`segmorph.classification.task.refresh_batch_norm`.
        ensemble: Members trained one after another, each for its share of the budget (1: one network).
        resume: Continue the run in ``out`` from its last checkpoint (same data and settings).
        show_progress: Progress bars and a summary line.
        check: Run the dataset quality check (:func:`segmorph.qc.quality.check_before_training`) before
            training (not on ``resume``): one warning line when it flags images; it never changes the data.
        log: ``"csv"`` (``train_log.csv`` only) or ``"tensorboard"``: also TensorBoard event files of its
            scalars in the run folder's ``tensorboard/`` (each ensemble member's in its own folder).
        init: Run folder or checkpoint whose tensors of matching name and shape start the network (a
            pretraining run, another classification run; :func:`segmorph.nn.transfer.initialize_from`); its
            input size is used when ``size`` is None and it states one. None: random weights. On ``resume``,
            None means the run's own.
        freeze_encoder_steps: For the first this many steps only the final linear layer trains (0: off).
        labelled_fraction: Share of the training images kept (whole groups, per class, seeded by ``seed``,
            at least one image per class; :func:`segmorph.classification.split.labelled_subset`); the rest
            of the training images are not trained on. Validation is untouched. 1: all.
    """

    dataset: Path
    out: Path
    labels: Path | None = None
    target: str = "label"
    class_names: tuple[str, ...] | None = None
    group: str | None = None
    file_column: str = "file"
    model: str = "resnet"
    width: int = 16
    dropout: float | None = None
    size: tuple[int, ...] | None = None
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    time_budget_s: float = 900.0
    max_steps: int = 0
    steps_per_epoch: int = 25
    patience_epochs: int = 0
    val_fraction: float = 0.2
    fold: int | None = None
    num_folds: int = 5
    holdout_groups: float = 0.0
    validate: bool = True
    threshold: float | None = None
    seed: int = 0
    split_seed: int | None = None
    device: str = "cpu"
    amp: bool = True
    augment: bool = True
    label_smoothing: float = 0.1
    mixup: float = 0.2
    ema_decay: float = 0.998
    mirror: bool = True
    shift: float = 0.04
    select: str = "last"
    tail_average: float = 0.5
    refresh_batch_norm: bool = True
    ensemble: int = 1
    resume: bool = False
    show_progress: bool = True
    check: bool = True
    log: str = "csv"
    init: Path | None = None
    freeze_encoder_steps: int = 0
    labelled_fraction: float = 1.0


def load_classification_dataset(request: ClassifyRequest) -> ClassificationDataset:
    """The request's dataset: its labels CSV, or its class folders."""
    if request.labels is None:
        dataset = load_class_folders(request.dataset)
        source = request.dataset
    else:
        source = resolve_labels_file(request.dataset, request.labels)
        dataset = load_labels_csv(request.dataset, source, request.target, request.group, request.file_column)
    names = request.class_names if request.class_names is not None else _resumed_class_names(request)
    return dataset if names is None else name_classes(dataset, names, source)


def _resumed_class_names(request: ClassifyRequest) -> list[str] | None:
    """The class names a run being resumed was trained with (from ``--class-names`` then), else None."""
    if not request.resume:
        return None
    last = [request.out / "checkpoint_last.pt", request.out / "member_0" / "checkpoint_last.pt"]
    found = next((path for path in last if path.is_file()), None)
    if found is None:
        return None
    _, config, _ = load_checkpoint(found)
    return list(config.get("classifier", {}).get("class_names") or []) or None


def split_dataset(dataset: ClassificationDataset, request: ClassifyRequest) -> tuple[list[int], list[int]]:
    """Train and validation image indices: grouped, stratified, seeded (hold-out or one fold), among the
    images not set aside (:func:`set_aside`); without validation, every one of those and none. The training
    indices are the labelled part of the training side (:func:`labelled_part`)."""
    pool, _ = set_aside(dataset, request)
    if not request.validate:
        return labelled_part(dataset, pool, request), []
    labels, groups = [dataset.labels[i] for i in pool], [dataset.groups[i] for i in pool]
    seed = split_seed(request)
    if request.fold is None:
        train, val = grouped_holdout_split(labels, groups, request.val_fraction, seed, dataset.class_names)
    else:
        train, val = grouped_fold_split(labels, groups, request.fold, request.num_folds, seed, dataset.class_names)
    return labelled_part(dataset, [pool[i] for i in train], request), [pool[i] for i in val]


def labelled_part(dataset: ClassificationDataset, train_index: list[int], request: ClassifyRequest) -> list[int]:
    """The training images kept for ``request.labelled_fraction`` (all of them at 1): whole groups, per class,
    seeded by ``request.seed`` (:func:`segmorph.classification.split.labelled_subset`)."""
    if request.labelled_fraction >= 1.0:
        return list(train_index)
    labels, groups = [dataset.labels[i] for i in train_index], [dataset.groups[i] for i in train_index]
    return [train_index[i] for i in labelled_subset(labels, groups, request.labelled_fraction, request.seed)]


def set_aside(dataset: ClassificationDataset, request: ClassifyRequest) -> tuple[list[int], list[int]]:
    """``(development, held out)`` image indices: ``request.holdout_groups`` of each class's images, whole
    groups, seeded by the split seed, are held out before any split (none when it is 0)."""
    if request.holdout_groups <= 0:
        return list(range(len(dataset.items))), []
    if not 0.0 < request.holdout_groups < 1.0:
        raise SegmorphError(f"holdout groups: expected a share in (0, 1), got {request.holdout_groups}")
    return grouped_holdout_split(dataset.labels, dataset.groups, request.holdout_groups, split_seed(request),
                                 dataset.class_names)  # fmt: skip


def split_seed(request: ClassifyRequest) -> int:
    """The seed of the split: ``split_seed``, else ``seed``."""
    return request.seed if request.split_seed is None else request.split_seed


def network_config(request: ClassifyRequest, ndim: int, channels: int, num_classes: int) -> dict[str, Any]:
    """Constructor arguments of the requested classifier."""
    if request.model == "resnet":
        return {"name": "resnet", "ndim": ndim, "in_channels": channels, "num_classes": num_classes,
                "width": request.width, "blocks": [2, 2, 2, 2], "stem_stride": 2,
                "dropout": 0.0 if request.dropout is None else request.dropout}  # fmt: skip
    if request.model == "simplecnn":
        features = [request.width * 2**level for level in range(4)]
        return {"name": "simplecnn", "ndim": ndim, "in_channels": channels, "num_classes": num_classes,
                "features": features, "dropout": 0.2 if request.dropout is None else request.dropout}  # fmt: skip
    raise SegmorphError(f"unknown model {request.model!r} (expected resnet or simplecnn)")
