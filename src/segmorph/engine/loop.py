"""The training loop every task uses, with validation, early stopping, a time budget, checkpoints and resume.

:func:`fit_task` takes a :class:`TrainTask` that draws a batch and computes its loss, and scores the model on
validation data (segmentation: :class:`segmorph.segmentation.task.SegmentationTask`; registration and
classification have theirs). Behaviour is changed with a :class:`TrainConfig`, the task and callbacks, never
by subclassing.
"""

from __future__ import annotations

import copy
import csv
import io as _io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from segmorph.configs import MAX_LEARNING_RATE, check, check_allocation, refuse_unknown_keys
from segmorph.engine import distributed as dist
from segmorph.engine.autocast import precision_name
from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint
from segmorph.engine.schedules import learning_rate
from segmorph.io import atomic_write_text
from segmorph.nn.transfer import encoder_parameter_names
from segmorph.progress import TrainingProgress, console


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field can be overridden from a config file or the command line.

    Attributes:
        patch_size: Training patch in voxels, one value per spatial axis.
        batch_size: Patches per step (per process under torchrun).
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
        learning_rate: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        schedule: ``"poly"`` or ``"cosine"``, over the progress fraction (see :mod:`segmorph.engine.schedules`).
        warmup: Fraction of training used to warm the learning rate up.
        max_steps: Stop after this many steps (0: only the time budget limits).
        time_budget_s: Stop, and end the schedule, within this many seconds (0: none).
        steps_per_epoch: Steps between validations and checkpoints.
        patience_epochs: Early stopping: epochs without a better validation Dice (0: off).
        foreground_fraction: Share of patches centred on a foreground voxel.
        loss_alpha: Weight of cross-entropy in ``alpha * CE + (1 - alpha) * Dice``.
        augment: Augmentation switch; its details live in :class:`AugmentConfig`.
        amp: bfloat16 autocast where the device runs it fast (:mod:`segmorph.engine.autocast`), else float32.
        seed: Seed of every random draw.
        val_overlap: Sliding-window overlap during validation.
        ema_decay: Exponential moving average of the weights (0: off). When on, validation,
            ``checkpoint_best.pt`` and so the trained model use the averaged weights; the decay ramps up
            as ``min(ema_decay, (1 + step) / (10 + step))`` so the first steps are not tied to the start.
        tail_average: Also keep the plain mean of the validated weights (the EMA when on) taken at the end
            of every epoch in this last fraction of training (0: off; 0.5: the second half). It is saved
            as ``tail`` beside the weights in ``checkpoint_last.pt``; callers choose whether to use it
            (``segmorph classify train`` does). Unlike the EMA, whose horizon is a few hundred steps, it
            spans a stretch of the trajectory, which steadies where a small-data run ends.
        freeze_encoder_steps: For the first this many steps the encoder's parameters get no update (their
            gradients are dropped before clipping and the optimiser step; see
            :func:`segmorph.nn.transfer.encoder_parameter_names`), so a pretrained encoder is not disturbed
            while the freshly initialised layers settle (0: off).
    """

    patch_size: tuple[int, ...]
    batch_size: int = 2
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    weight_decay: float = 3e-5
    momentum: float = 0.99
    schedule: str = "poly"
    warmup: float = 0.02
    max_steps: int = 0
    time_budget_s: float = 0.0
    steps_per_epoch: int = 100
    patience_epochs: int = 0
    foreground_fraction: float = 0.33
    loss_alpha: float = 0.5
    augment: bool = True
    amp: bool = True
    seed: int = 0
    val_overlap: float = 0.25
    ema_decay: float = 0.0
    tail_average: float = 0.0
    freeze_encoder_steps: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected 0 <= value < 1, got {self.ema_decay}")
        if not 0.0 <= self.tail_average <= 1.0:
            raise ValueError(f"tail_average: expected a fraction of training in [0, 1], got {self.tail_average}")
        if self.max_steps <= 0 and self.time_budget_s <= 0:
            raise ValueError("max_steps/time_budget_s: give at least one limit")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {self.optimizer!r}")
        check(self.batch_size >= 1, f"batch_size: expected at least 1, got {self.batch_size}")
        check(
            0 < self.learning_rate <= MAX_LEARNING_RATE,
            f"learning_rate: expected a value in (0, {MAX_LEARNING_RATE:g}], got {self.learning_rate}",
        )
        check(0 <= self.weight_decay <= 1, f"weight_decay: expected a value in [0, 1], got {self.weight_decay}")
        check(self.max_steps >= 0, f"max_steps: expected at least 0, got {self.max_steps}")
        check(0 <= self.seed < 2**32, f"seed: expected a whole number from 0 to {2**32 - 1}, got {self.seed}")
        check(self.time_budget_s >= 0, f"time_budget_s: expected at least 0 seconds, got {self.time_budget_s}")
        check(self.steps_per_epoch >= 1, f"steps_per_epoch: expected at least 1, got {self.steps_per_epoch}")
        check(self.patience_epochs >= 0, f"patience_epochs: expected at least 0, got {self.patience_epochs}")
        frozen = self.freeze_encoder_steps
        check(frozen >= 0, f"freeze_encoder_steps: expected at least 0, got {frozen}")
        check(self.schedule in ("poly", "cosine"), f"schedule: expected 'poly' or 'cosine', got {self.schedule!r}")
        check(0.0 <= self.warmup < 1.0, f"warmup: expected a fraction in [0, 1), got {self.warmup}")
        check(0.0 <= self.val_overlap < 1.0, f"val_overlap: expected a fraction in [0, 1), got {self.val_overlap}")
        for name in ("foreground_fraction", "loss_alpha"):
            check(
                0.0 <= getattr(self, name) <= 1.0, f"{name}: expected a fraction in [0, 1], got {getattr(self, name)}"
            )
        check(
            all(int(p) >= 1 for p in self.patch_size),
            f"patch_size: expected positive sizes, got {list(self.patch_size)}",
        )
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        check_allocation(math.prod(self.patch_size) * self.batch_size,
                         f"patch_size: {list(self.patch_size)} x batch_size {self.batch_size}")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        refuse_unknown_keys(cls, values, "train config")
        return cls(**values)


@dataclass
class EpochRecord:
    """One line of the training log."""

    epoch: int
    step: int
    elapsed_s: float
    lr: float
    train_loss: float
    val_score: float
    val_scores: list[float] = field(default_factory=list)


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    steps: int
    elapsed_s: float
    history: list[EpochRecord]
    stopped_because: str
    world_size: int = 1
    precision: str = "float32"
    skipped_steps: int = 0


@runtime_checkable
class Tracker(Protocol):
    """Logs each epoch beside ``train_log.csv`` (e.g. :class:`segmorph.engine.tracking.TensorBoardLog`).

    Given to :func:`fit_task` among the callbacks, it is called with :meth:`track` instead of the record,
    and closed when training ends.
    """

    def track(self, step: int, row: dict[str, float], model: nn.Module, device: torch.device) -> None:
        """Log one ``train_log.csv`` row (column -> value) at ``step``; ``model`` holds the validated weights."""
        ...

    def close(self) -> None: ...


Callback = Callable[[EpochRecord], None] | Tracker


class TrainTask(Protocol):
    """What a kind of training supplies to the loop.

    Attributes:
        score_key: Short name of the validation score in logs (``"dice"``, ``"auc"``); higher is better.
        score_parts: Names of the per-part scores :meth:`validate` returns (e.g. one per class).
    """

    score_key: str
    score_parts: Sequence[str]

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        """Draw one training batch with ``generator``, run ``model`` and return the scalar loss."""
        ...

    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        """Per-part validation scores (their mean picks the best checkpoint); empty without validation data."""
        ...


@runtime_checkable
class StatefulTask(Protocol):
    """A task that trains state of its own beside the model (a mean teacher, a GAN's discriminator and its
    optimiser): the loop saves :meth:`state_dict` in ``checkpoint_last.pt`` (key ``task``) and gives it back to
    :meth:`load_state_dict` when the run resumes. Tensors, numbers, strings, lists and dicts only."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class ScheduledTask(Protocol):
    """A task whose loss changes over training (a ramped-up consistency weight, a teacher's decay): before each
    batch the loop gives it the number of steps done and the fraction of training done, the one its learning-rate
    schedule follows (steps over ``max_steps`` or time over ``time_budget_s``), so both run on one clock and resume
    with the run."""

    def at_step(self, step: int, progress: float) -> None: ...


def fit_task(
    model: nn.Module,
    task: TrainTask,
    config: TrainConfig,
    run_dir: str | Path,
    network_config: dict,
    device: str | torch.device = "cpu",
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    show_progress: bool = True,
    extra_config: dict | None = None,
) -> FitResult:
    """Train ``model`` on batches drawn by ``task``, validating every ``config.steps_per_epoch`` steps.

    The loop behind :func:`fit`, for any kind of model (same writes, torchrun support, resume and
    early stopping). Checkpoints store ``{"network": network_config, "train": config, **extra_config}``
    as JSON beside the weights; ``config.patch_size`` and the other segmentation fields mean what the
    task makes of them.
    """
    loop = TrainingLoop(model, task, config, Path(run_dir), network_config, extra_config or {}, device)
    if resume:
        loop.restore()
    return loop.run(callbacks, show_progress)


class TrainingLoop:
    """One training run: the optimiser, the weight averages, the step and epoch counters, validation,
    checkpoints and the log. Built by :func:`fit_task`; ``restore()`` then ``run()``."""

    def __init__(self, model, task, config, run_dir, network_config, extra_config, device):
        self.config = config
        self.task = task
        self.device = dist.local_device(torch.device(device))
        self.distributed = dist.init_from_environment(self.device)
        self.run_dir = run_dir
        self.network_config = network_config
        self.extra_config = extra_config
        self.model = model.to(self.device)
        self.train_model = nn.parallel.DistributedDataParallel(self.model) if self.distributed else self.model
        self.generator = torch.Generator().manual_seed(config.seed + 1000 * dist.rank())
        self.optimizer = _make_optimizer(self.model, config)
        self.frozen = _encoder_parameters(self.model) if config.freeze_encoder_steps > 0 else []
        self.ema = frozen_copy(self.model) if config.ema_decay > 0 else None
        self.tail: nn.Module | None = None  # the tail average, from its first epoch on
        self.tail_count = 0
        self.skipped_steps = 0  # steps whose gradients were not finite: counted, the weights left as they were
        self.step = 0
        self.epoch = 0
        self.elapsed_before = 0.0
        self.best = -1.0
        self.best_epoch = -1
        self.history: list[EpochRecord] = []

    # -- state ---------------------------------------------------------------------------------
    def restore(self) -> None:
        path = self.run_dir / "checkpoint_last.pt"
        state, _, extras = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(extras.get("ema", state))
        if "tail" in extras:
            self.tail = frozen_copy(self.model)
            self.tail.load_state_dict(extras["tail"])
        self.optimizer.load_state_dict(extras["optimizer"])
        counters = json.loads(extras["counters_json"])
        self.tail_count = counters.get("tail_count", 0)
        self.skipped_steps = counters.get("skipped_steps", 0)
        self.step, self.epoch = counters["step"], counters["epoch"]
        self.elapsed_before, self.best, self.best_epoch = (
            counters["elapsed_s"],
            counters["best"],
            counters["best_epoch"],
        )
        self.history = [EpochRecord(**r) for r in counters["history"]]
        self.generator.set_state(extras["generator"])
        if isinstance(self.task, StatefulTask) and "task" in extras:
            self.task.load_state_dict(extras["task"])
        if dist.is_main_process():
            remove_stale_checkpoint_files(self.run_dir)

    def _checkpoint(self, name: str) -> None:
        counters = {
            "step": self.step, "epoch": self.epoch, "elapsed_s": self.elapsed(), "best": self.best,
            "best_epoch": self.best_epoch, "history": [asdict(r) for r in self.history], "tail_count": self.tail_count,
            "skipped_steps": self.skipped_steps,
        }  # fmt: skip
        config = {"network": self.network_config, "train": self.config.to_dict(), **self.extra_config}
        # The best checkpoint holds the weights that were validated (the average when EMA is on); the last
        # one holds the trained weights, with the average beside them for resuming.
        best = name == "checkpoint_best.pt" and self.ema is not None
        extras = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        if self.tail is not None:
            extras["tail"] = self.tail.state_dict()
        if isinstance(self.task, StatefulTask) and name == "checkpoint_last.pt":
            extras["task"] = self.task.state_dict()
        save_checkpoint(
            self.run_dir / name, (self.ema if best else self.model).state_dict(), config,
            optimizer=self.optimizer.state_dict(), counters_json=json.dumps(counters),
            generator=self.generator.get_state(), **extras,
        )  # fmt: skip

    # -- timing --------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def progress(self) -> float:
        fractions = []
        if self.config.max_steps > 0:
            fractions.append(self.step / self.config.max_steps)
        if self.config.time_budget_s > 0:
            fractions.append(self.elapsed() / self.config.time_budget_s)
        return max(fractions)

    # -- loop ----------------------------------------------------------------------------------
    def run(self, callbacks: Sequence[Callback], show_progress: bool) -> FitResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        main = dist.is_main_process()
        reason = "step or time limit"
        with TrainingProgress(enabled=show_progress and main) as bar:
            # Resuming a run that had already finished (killed while validating) adds no empty epoch.
            while not self._finished():
                losses = [self._train_step() for _ in range(self.config.steps_per_epoch) if not self._finished()]
                self.epoch += 1
                record = self._end_epoch(losses)
                bar.update(self.progress(), self.step, record.train_loss, record.val_score, self._time_left())
                for callback in callbacks if main else ():
                    self._notify(callback, record)
                if self._finished():
                    break
                if self._should_stop_early():
                    reason = "early stopping"
                    break
        if main:
            self._write_curves()
            if self.skipped_steps and show_progress:
                console.print(f"warning: {self.skipped_steps} of {self.step} steps skipped: their gradients were not "
                              "finite (NaN or infinite)", highlight=False, soft_wrap=True)  # fmt: skip
        for tracker in (c for c in callbacks if isinstance(c, Tracker)):
            tracker.close()
        return FitResult(self.best, self.best_epoch, self.step, self.elapsed(), self.history, reason, dist.world_size(),
                         precision_name(self.device, self.config.amp), self.skipped_steps)  # fmt: skip

    def _finished(self) -> bool:
        return dist.any_true(self.progress() >= 1.0, self.device)

    def _time_left(self) -> float:
        if self.config.time_budget_s > 0:
            return max(self.config.time_budget_s - self.elapsed(), 0.0)
        per_step = self.elapsed() / max(self.step, 1)
        return per_step * max(self.config.max_steps - self.step, 0)

    def _train_step(self) -> float:
        self.model.train()
        progress = self.progress()
        lr = learning_rate(self.config.learning_rate, progress, self.config.schedule, self.config.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if isinstance(self.task, ScheduledTask):
            self.task.at_step(self.step, progress)
        loss = self.task.batch_loss(self.train_model, self.generator, self.device, self.config.amp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.step < self.config.freeze_encoder_steps:
            for parameter in self.frozen:  # no gradient: the optimiser leaves it untouched (weight decay too)
                parameter.grad = None
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        if torch.isfinite(norm):  # a NaN or infinite gradient (a degenerate batch) would poison every weight
            self.optimizer.step()
        else:
            self.skipped_steps += 1
        self.step += 1
        if self.ema is not None:
            update_average(self.ema, self.model, min(self.config.ema_decay, (1 + self.step) / (10 + self.step)))
        return float(loss.detach())

    def _end_epoch(self, losses: list[float]) -> EpochRecord:
        lr = self.optimizer.param_groups[0]["lr"]
        parts = self._validate() if dist.is_main_process() else []
        val_score = float(sum(parts) / len(parts)) if parts else float("nan")
        train_loss = sum(losses) / len(losses) if losses else float("nan")
        record = EpochRecord(self.epoch, self.step, round(self.elapsed(), 2), lr, train_loss, val_score, parts)
        self.history.append(record)
        if dist.is_main_process():
            self._update_best(record)
            self._update_tail()
            self._checkpoint("checkpoint_last.pt")
            self._write_log()
        return record

    def _update_best(self, record: EpochRecord) -> None:
        """Keep the epoch as the best if its validation score is the highest so far. Until an epoch gets a
        finite score (no validation data, or validation it could not score, such as the R² of constant
        images), the latest epoch is the best; an epoch without a finite score never replaces a scored one."""
        scored = bool(record.val_scores) and math.isfinite(record.val_score)
        scored_before = any(r.val_scores and math.isfinite(r.val_score) for r in self.history if r is not record)
        better = not scored_before or (scored and record.val_score > self.best)
        if better:
            self.best = record.val_score if scored else float(record.epoch if not record.val_scores else math.nan)
            self.best_epoch = record.epoch
            self._checkpoint("checkpoint_best.pt")

    def _update_tail(self) -> None:
        """Fold the validated weights into the tail average once training is in its last ``tail_average``."""
        if self.config.tail_average <= 0 or self.progress() < 1.0 - self.config.tail_average:
            return
        source = self.ema if self.ema is not None else self.model
        if self.tail is None:
            self.tail = frozen_copy(source)
        update_average(self.tail, source, self.tail_count / (self.tail_count + 1))
        self.tail_count += 1

    def _should_stop_early(self) -> bool:
        patience = self.config.patience_epochs
        stop = bool(patience) and self.best_epoch >= 0 and self.epoch - self.best_epoch > patience
        return dist.any_true(stop, self.device)

    def _validated_model(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    def _validate(self) -> list[float]:
        model = self._validated_model()
        model.eval()
        return [float(v) for v in self.task.validate(model, self.device)]

    # -- outputs -------------------------------------------------------------------------------
    def _notify(self, callback: Callback, record: EpochRecord) -> None:
        if isinstance(callback, Tracker):
            values = [record.epoch, record.step, record.elapsed_s, record.lr, record.train_loss, record.val_score]
            row = dict(zip(self._log_columns(), [*values, *record.val_scores]))
            callback.track(record.step, row, self._validated_model(), self.device)
        else:
            callback(record)

    def _log_columns(self) -> list[str]:
        names = [f"val_{part}" for part in self.task.score_parts]
        return ["epoch", "step", "elapsed_s", "lr", "train_loss", f"val_{self.task.score_key}", *names]

    def _write_log(self) -> None:
        buffer = _io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self._log_columns())
        for r in self.history:
            writer.writerow(
                [r.epoch, r.step, r.elapsed_s, f"{r.lr:.6g}", f"{r.train_loss:.5f}", r.val_score, *r.val_scores]
            )
        atomic_write_text(self.run_dir / "train_log.csv", buffer.getvalue())

    def _write_curves(self) -> None:
        from segmorph.plots import plot_training_curves

        plot_training_curves(self.history, self.run_dir / "curves.png", f"validation {self.task.score_key}")


def _encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model``'s encoder (:func:`segmorph.nn.transfer.encoder_parameter_names`)."""
    names = set(encoder_parameter_names(model))
    return [parameter for name, parameter in model.named_parameters() if name in names]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for the weight average: same weights, no gradients, eval mode."""
    average = copy.deepcopy(model).eval()
    for parameter in average.parameters():
        parameter.requires_grad_(False)
    return average


@torch.no_grad()
def update_average(average: nn.Module, model: nn.Module, decay: float) -> None:
    """``average = decay * average + (1 - decay) * model`` for float tensors; others (counters) are copied."""
    for kept, current in zip(average.state_dict().values(), model.state_dict().values()):
        if kept.dtype.is_floating_point:
            kept.mul_(decay).add_(current.detach().to(kept.dtype), alpha=1.0 - decay)
        else:
            kept.copy_(current)


def remove_stale_checkpoint_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files that killed writers left beside the checkpoints (``.checkpoint_*.pt.*``).

    A process killed while saving cannot clean up after itself; its half-written temporary file is never
    renamed into place (see :func:`segmorph.io.atomic_write_bytes`), but each one holds up to a whole
    checkpoint. Called when a run resumes, when no other process writes into the run folder.
    """
    stale = sorted(run_dir.glob(".checkpoint_*.pt.*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum, nesterov=True,
            weight_decay=config.weight_decay,
        )  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
