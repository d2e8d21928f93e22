"""``segmorph train-registration``: learn a registration network from a labelled dataset.

The cases are split like segmentation folds (seeded): the training part supplies random pairs;
the held-out part is divided into a few *monitor* cases, whose fixed pairs pick the best
checkpoint, and the remaining *held-out* cases, which training never sees (benchmarks use them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.configs import (
    CONFIG_FILE,
    apply_naming_file,
    apply_overrides,
    config_to_dict,
    load_overrides_file,
    training_config,
)
from segmorph.engine.loop import TrainConfig, fit_task
from segmorph.engine.tracking import TENSORBOARD_FOLDER, check_log, open_tracker
from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import atomic_write_text
from segmorph.metrics.segmentation import dice_score
from segmorph.nn import count_parameters
from segmorph.outputs import check_run_folder
from segmorph.progress import console
from segmorph.provenance import data_changed, data_fingerprint, write_run_record
from segmorph.registration import spatial
from segmorph.registration.learned.config import (
    LearnedConfig,
    RegistrationTrainConfig,
    registration_checkpoint_config,
)
from segmorph.registration.learned.network import (
    build_registration_network,
    coarse_velocity,
    displacement_from_velocity,
    network_input,
    predict_displacement,
)
from segmorph.registration.pairs import draw_pairs, load_registration_cases, normalise_intensity
from segmorph.registration.regularize import diffusion
from segmorph.registration.similarity import get_similarity
from segmorph.segmentation.datasets import DatasetSpec, class_count, infer_labels, load_dataset, split_cases


@dataclass
class PairData:
    """Training cases on one grid: normalised images ``(N, 1, *S)``, one-hot labels ``(N, K, *S)`` and
    the prior's foreground probabilities ``(N, K' - 1, *S)``."""

    images: torch.Tensor
    onehot: torch.Tensor | None
    prior: torch.Tensor | None = None

    @classmethod
    def from_cases(cls, images: Sequence[Image], labels: Sequence[torch.Tensor] | None, num_classes: int,
                   prior=None):  # fmt: skip
        """Stack the first channel of ``images`` (one grid), their labels and the prior's probabilities."""
        stacked = torch.stack([normalise_intensity(i.data[:1].float()) for i in images])
        onehot = None
        if labels is not None:
            onehot = torch.stack([F.one_hot(lab[0].long(), num_classes).movedim(-1, 0).float() for lab in labels])
        probabilities = None
        if prior is not None:
            probabilities = torch.cat([prior.probabilities(i.data[None, :1].float(), i.spacing)[:, 1:] for i in images])
        return cls(stacked, onehot, probabilities)

    def inputs(self, fixed: torch.Tensor, moving: torch.Tensor, guided: torch.Tensor | None = None) -> torch.Tensor:
        """Network input of pairs given as index tensors; where ``guided`` (bool ``(B,)``) is true, the
        moving scan's foreground one-hot labels stand in for its prior probabilities."""
        if self.prior is None:
            return network_input(self.images[fixed], self.images[moving])
        moving_prior = self.prior[moving]
        if guided is not None and bool(guided.any()):
            moving_prior = torch.where(
                guided.view(-1, *[1] * (moving_prior.ndim - 1)), self.onehot[moving, 1:], moving_prior
            )
        return network_input(self.images[fixed], self.images[moving], self.prior[fixed], moving_prior)

    def can_guide(self) -> bool:
        """Whether labels can stand in for the prior: both present, with the same classes."""
        return self.prior is not None and self.onehot is not None and self.onehot.shape[1] - 1 == self.prior.shape[1]


class RegistrationTask:
    """Random pairs, similarity + smoothness (+ Dice) loss; validation Dice of warped labels."""

    score_key = "dice"

    def __init__(self, train: PairData, val: PairData, val_pairs: Sequence[tuple[int, int]], config: LearnedConfig,
                 batch_size: int):  # fmt: skip
        self.train, self.val, self.val_pairs = train, val, list(val_pairs)
        self.config = config
        self.batch_size = batch_size
        num_classes = train.onehot.shape[1] if train.onehot is not None else 0
        self.score_parts = [f"dice_{k}" for k in range(1, num_classes)] if num_classes else ["ncc"]
        similarity = get_similarity(config.similarity)
        self.similarity = (
            (lambda f, w: similarity(f, w, window=config.ncc_window)) if config.similarity == "ncc" else similarity
        )
        if config.label_guidance > 0 and not (train.can_guide() and val.can_guide()):
            raise ValueError("label_guidance: needs labels and a segmentation prior with the same classes")

    def _draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        count = self.train.images.shape[0]
        fixed = torch.randint(count, (self.batch_size,), generator=generator)
        moving = (fixed + torch.randint(1, count, (self.batch_size,), generator=generator)) % count
        return fixed, moving

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        fixed_index, moving_index = self._draw(generator)
        guided = None
        if self.config.label_guidance > 0:
            guided = torch.rand(self.batch_size, generator=generator) < self.config.label_guidance
        images = self.train.inputs(fixed_index, moving_index, guided)
        labels = None
        if self.train.onehot is not None and self.config.dice_weight > 0:
            labels = torch.cat([self.train.onehot[moving_index], self.train.onehot[fixed_index]], dim=1)
        images, labels = self._flip(images, labels, generator)
        images = images.to(device)
        velocity = coarse_velocity(model, images, self.config.input_shrink, amp)
        displacement = displacement_from_velocity(velocity, images.shape[2:], self.config.integration_steps)
        moved = spatial.warp(images[:, :1], displacement)
        loss = self.similarity(images[:, 1:2], moved) + self.config.smoothness * diffusion(velocity)
        if labels is not None:
            labels = labels.to(device)
            half = labels.shape[1] // 2
            warped = spatial.warp(labels[:, :half], displacement)
            loss = loss + self.config.dice_weight * (1 - soft_dice(warped, labels[:, half:]))
        return loss

    def _flip(self, images, labels, generator):
        if not self.config.flip:
            return images, labels
        axes = [a + 2 for a in range(images.ndim - 2) if torch.rand((), generator=generator) < 0.5]
        if not axes:
            return images, labels
        return images.flip(axes), None if labels is None else labels.flip(axes)

    @torch.inference_mode()
    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        if not self.val_pairs:
            return []
        scores = []
        for fixed_index, moving_index in self.val_pairs:
            moving = self.val.images[moving_index : moving_index + 1]
            guided = torch.tensor([self.config.label_guidance > 0])  # scored as it is used where labels are given
            inputs = self.val.inputs(torch.tensor([fixed_index]), torch.tensor([moving_index]), guided)
            displacement = predict_displacement(model, inputs.to(device), self.config)
            fixed = inputs[:, 1:2]
            if self.val.onehot is None:
                moved = spatial.warp(moving.to(device), displacement)
                scores.append([-float(self.similarity(fixed.to(device), moved))])
                continue
            warped = spatial.warp(self.val.onehot[moving_index : moving_index + 1].to(device), displacement)
            predicted = warped.argmax(1)[0].cpu().numpy()
            reference = self.val.onehot[fixed_index].argmax(0).numpy()
            scores.append([dice_score(predicted == k, reference == k) for k in range(1, warped.shape[1])])
        return [round(float(v), 5) for v in np.mean(scores, axis=0)]


def soft_dice(warped: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice over foreground channels (1..K-1) of one-hot ``(B, K, *S)`` maps."""
    axes = tuple(range(2, warped.ndim))
    intersection = (warped[:, 1:] * reference[:, 1:]).sum(axes)
    total = warped[:, 1:].sum(axes) + reference[:, 1:].sum(axes)
    return ((2 * intersection + 1e-5) / (total + 1e-5)).mean()


MONITOR_CASES = 12
MONITOR_PAIRS = 10


@dataclass
class RegistrationTrainRequest:
    """What ``segmorph train-registration`` was asked to do."""

    dataset: Path
    out: Path
    time_budget_s: float = 1200.0
    max_steps: int = 0
    config: LearnedConfig = field(default_factory=LearnedConfig)
    batch_size: int = 2
    learning_rate: float = 1e-3
    fold: int = 0
    num_folds: int = 5
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    show_progress: bool = True
    segmentation_run: Path | None = None
    steps_per_epoch: int = 100
    config_record: dict[str, Any] | None = None  # written to the run folder as config.json before training
    log: str = "csv"  # "tensorboard": also TensorBoard event files of train_log.csv's scalars in out/tensorboard


MONITOR_DICE = "Dice"  # the monitor score of labelled datasets; unlabelled ones are scored by -similarity loss


def split_registration_cases(case_ids: list[str], fold: int, num_folds: int, seed: int,
                             dataset: Path | None = None) -> dict[str, list[str]]:  # fmt: skip
    """``train``, ``monitor`` and ``held_out`` case lists (disjoint); ``dataset`` names the folder in errors."""
    train, rest = split_cases(case_ids, fold, num_folds, seed, dataset)
    if len(rest) < 2 or len(train) < 2:
        raise SegmorphError(f"need at least 4 cases to train registration, found {len(case_ids)}", dataset)
    monitor = rest[: min(MONITOR_CASES, max(2, len(rest) // 3))]
    return {"train": train, "monitor": monitor, "held_out": [c for c in rest if c not in monitor]}


CONFIG_NAME = "registration training config"  # what error messages call RegistrationTrainConfig


@dataclass(frozen=True)
class RegistrationTrainResult:
    """What :func:`train_registration_run` did.

    Attributes:
        out: The run folder (``segmorph register --model`` takes it).
        steps: Training steps taken.
        elapsed_s: Training time in seconds.
        stopped_because: Why training ended (step or time limit, early stopping).
        monitor_score: Name of the score that picked the kept checkpoint (``"Dice"``, or ``"-ncc loss"``
            on unlabelled data).
        best_monitor_score: Its best value (higher is better).
        config: The settings the run was asked for (also ``out/config.json``).
        summary: ``summary.json``'s contents.
    """

    out: Path
    steps: int
    elapsed_s: float
    stopped_because: str
    monitor_score: str
    best_monitor_score: float
    config: RegistrationTrainConfig
    summary: dict[str, Any]


def registration_train_config(
    overrides: dict[str, Any] | None = None, config: str | Path | None = None, *, time_budget: str | float | None = None,
    max_steps: int = 0, seed: int = 0, base: RegistrationTrainConfig | None = None,
) -> RegistrationTrainConfig:  # fmt: skip
    """The settings of a registration training run, checked: ``base`` (default: the defaults), then the keyword
    arguments, then the ``config`` file, then ``overrides`` (later ones win; see
    :func:`segmorph.configs.training_config`).

    Args:
        overrides: Dotted keys, e.g. ``{"registration.dice_weight": 1, "train.batch_size": 4}``.
        config: YAML/JSON file of settings, nested or dotted.
        time_budget: ``"20m"``-style text or seconds (None: the default 20 minutes, or none when
            ``max_steps`` alone is given).
        max_steps: Step limit (0: the time budget alone).
        seed: ``train.seed``.
        base: Settings to start from (a resumed run's ``config.json``).

    Raises:
        SegmorphError: One line naming the key that is unknown, of the wrong type or out of range.
    """
    return training_config(base or RegistrationTrainConfig(), overrides, config, name=CONFIG_NAME,
                           time_budget=time_budget, max_steps=max_steps, seed=seed)  # fmt: skip


def train_registration_run(
    dataset: str | Path, out: str | Path, *, time_budget: str | float | None = None, max_steps: int = 0,
    segmentation_model: str | Path | None = None, overrides: dict[str, Any] | None = None,
    config: str | Path | None = None, device: str = "cpu", seed: int = 0, resume: bool = False,
    show_progress: bool = True, log: str = "csv",
) -> RegistrationTrainResult:  # fmt: skip
    """Train a learned registration model on a dataset into the run folder ``out``.

    The settings (:class:`RegistrationTrainConfig`) are checked before anything is read or written and saved
    as ``out/config.json``; the folder then holds checkpoints, ``train_log.csv``, ``run.json`` and
    ``summary.json`` (see :func:`train_registration`). Resuming starts from the run's ``config.json``.

    Args:
        dataset: MSD-layout dataset folder; labels, when present, add a Dice term.
        out: Run folder.
        time_budget: ``"20m"``-style text or seconds (default 20 minutes; none with ``max_steps`` alone).
        max_steps: Step limit (0: the time budget alone).
        segmentation_model: A segmorph segmentation run whose label probabilities the network also sees.
        overrides: Dotted keys of :class:`RegistrationTrainConfig`, e.g. ``{"registration.dice_weight": 1}``.
        config: YAML/JSON file of settings (``overrides`` win over it).
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        seed: Seed of the split, the weights and the pairs (``train.seed``).
        resume: Continue from the run folder's last checkpoint.
        show_progress: Progress bar and summary lines.
        log: ``"csv"`` (``train_log.csv`` only) or ``"tensorboard"``: also TensorBoard event files of its
            scalars in ``out/tensorboard`` (needs the tensorboard package).

    Returns:
        Steps, time, the monitor score and the settings.

    Raises:
        SegmorphError: Bad settings (one line, nothing written) or bad data.

    Example:
        >>> result = train_registration_run("msd_hippocampus", "runs/reg", time_budget="20m",
        ...                                 overrides={"train.batch_size": 4})
    """
    check_log(log)
    out = Path(out)
    stored = out / CONFIG_FILE
    base = None
    if resume and stored.is_file():
        base = apply_naming_file(lambda values: apply_overrides(RegistrationTrainConfig(), values, CONFIG_NAME),
                                 load_overrides_file(stored), stored)  # fmt: skip
    settings = registration_train_config(overrides, config, time_budget=time_budget, max_steps=max_steps, seed=seed,
                                         base=base)  # fmt: skip
    asked = {**(load_overrides_file(config) if config is not None else {}), **(overrides or {})}
    if (
        "registration.label_guidance" in asked
        and settings.registration.label_guidance > 0
        and segmentation_model is None
    ):
        raise SegmorphError("registration.label_guidance: needs a segmentation model (--segmentation-model), whose "
                            "probabilities the moving labels stand in for")  # fmt: skip
    train = settings.train
    request = RegistrationTrainRequest(
        dataset=Path(dataset), out=out, time_budget_s=train.time_budget_s, max_steps=train.max_steps,
        config=settings.registration, batch_size=train.batch_size, learning_rate=train.learning_rate, fold=train.fold,
        num_folds=train.num_folds, seed=train.seed, device=device, resume=resume, show_progress=show_progress,
        segmentation_run=None if segmentation_model is None else Path(segmentation_model),
        steps_per_epoch=train.steps_per_epoch, config_record=config_to_dict(settings), log=log,
    )  # fmt: skip
    summary = train_registration(request)
    return RegistrationTrainResult(
        out=out, steps=summary["steps"], elapsed_s=summary["elapsed_s"], stopped_because=summary["stopped_because"],
        monitor_score=summary["monitor_score"], best_monitor_score=summary["best_monitor_score"], config=settings,
        summary=summary,
    )  # fmt: skip


def train_registration(request: RegistrationTrainRequest) -> dict[str, Any]:
    """Train a learned registration model; writes checkpoints, logs, run.json and summary.json (and config.json
    when the request carries its settings: see :func:`train_registration_run`, which checks them first)."""
    check_run_folder(request.out, request.dataset, request.segmentation_run)
    check_log(request.log)
    spec = load_dataset(request.dataset)
    spec = spec if spec.labels else infer_labels(spec)
    split = split_registration_cases(list(spec.case_ids), request.fold, request.num_folds, request.seed,
                                     request.dataset)  # fmt: skip
    task, prior, labelled = _registration_task(request, spec, split)
    config, monitor_pairs = task.config, task.val_pairs
    torch.manual_seed(request.seed)
    network = build_registration_network(len(config.train_shape), config)
    train_config = _train_config(request, config)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    if request.config_record is not None:
        atomic_write_text(out / CONFIG_FILE, json.dumps(request.config_record, indent=2) + "\n")
    _write_provenance(out, spec, request, split)
    if prior is not None:
        prior.copy_to(out)
    console.print(
        f"segmorph: registration U-Net {list(config.features)} ({count_parameters(network):,} parameters), "
        f"{len(split['train'])} training cases, {len(monitor_pairs)} monitor pairs, grid {list(config.train_shape)}, "
        f"{'similarity + Dice' if labelled and config.dice_weight > 0 else 'similarity only'}"
        f"{', segmentation prior ' + str(request.segmentation_run) if prior is not None else ''}",
        highlight=False,
    )  # fmt: skip
    network_config = dict(network.config, name="unet")
    extra = registration_checkpoint_config(config, spec.labels if labelled else {})
    tracker = open_tracker(request.log, out)
    result = fit_task(network, task, train_config, out, network_config, request.device, request.resume,
                      callbacks=() if tracker is None else (tracker,), show_progress=request.show_progress,
                      extra_config=extra)  # fmt: skip
    summary = {
        "monitor_score": MONITOR_DICE if labelled else f"-{config.similarity} loss",
        "best_monitor_score": result.best_score, "best_epoch": result.best_epoch, "steps": result.steps,
        "elapsed_s": round(result.elapsed_s, 1), "stopped_because": result.stopped_because, "precision": result.precision,
        "split": {k: len(v) for k, v in split.items()},
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _registration_task(
    request: RegistrationTrainRequest, spec: DatasetSpec, split: dict[str, list[str]]
) -> tuple[RegistrationTask, Any, bool]:
    """The training task (its pairs, monitor pairs and settings), the segmentation prior (or None) and whether
    every case has a label map (label-guided training and a Dice monitor)."""
    config = request.config
    prior = None
    if request.segmentation_run is not None:
        from segmorph.registration.learned.prior import SegmentationPrior

        prior = SegmentationPrior(request.segmentation_run, request.device)
        config = replace(config, prior_classes=prior.num_classes)
    train_cases = load_registration_cases(spec, split["train"], config.train_shape)
    monitor_cases = load_registration_cases(spec, split["monitor"], config.train_shape)
    num_classes = class_count(spec) if spec.labels else 0
    labelled = num_classes > 0 and all(c.label is not None for c in train_cases + monitor_cases)
    train = _pair_data(train_cases, labelled, num_classes, prior)
    monitor = _pair_data(monitor_cases, labelled, num_classes, prior)
    if not (train.can_guide() and monitor.can_guide()):
        config = replace(config, label_guidance=0.0)  # labels can stand in only for a prior of their classes
    monitor_pairs = draw_pairs(min(MONITOR_PAIRS, len(monitor_cases) * (len(monitor_cases) - 1)),
                               len(monitor_cases), request.seed)  # fmt: skip
    return RegistrationTask(train, monitor, monitor_pairs, config, request.batch_size), prior, labelled


def _train_config(request: RegistrationTrainRequest, config: LearnedConfig) -> TrainConfig:
    """The training loop's settings of a registration request."""
    try:
        return TrainConfig(
            patch_size=config.train_shape, batch_size=request.batch_size, learning_rate=request.learning_rate,
            weight_decay=0.0, max_steps=request.max_steps, time_budget_s=request.time_budget_s,
            steps_per_epoch=request.steps_per_epoch, augment=config.flip, seed=request.seed, schedule="cosine",
            warmup=0.02,
        )  # fmt: skip
    except ValueError as err:  # the training shape times the batch beyond the memory budget, ...
        raise SegmorphError(f"registration training: {err}", request.dataset) from None


def _pair_data(cases, labelled: bool, num_classes: int, prior=None) -> PairData:
    labels = [c.label.data for c in cases] if labelled else None
    return PairData.from_cases([c.image for c in cases], labels, num_classes, prior)


def _write_provenance(
    out: Path, spec: DatasetSpec, request: RegistrationTrainRequest, split: dict[str, list[str]]
) -> None:
    """``run.json`` (see :mod:`segmorph.provenance`); a resumed run appends to the first run's record."""
    facts = {
        "kind": "registration", "dataset": str(Path(request.dataset).resolve()), "seed": request.seed,
        "segmentation_prior": str(request.segmentation_run) if request.segmentation_run else None,
        "fold": request.fold, "num_folds": request.num_folds, "split": split, "log": request.log,
    }  # fmt: skip
    if request.log == "tensorboard":
        facts["tensorboard_dir"] = TENSORBOARD_FOLDER
    record = write_run_record(out, facts, data_fingerprint(spec), resume=request.resume)
    if data_changed(record):
        console.print("warning: the dataset's files changed since this run started (see run.json)", highlight=False)
