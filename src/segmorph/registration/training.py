"""``segmorph train-registration``: learn a registration network from a labelled dataset.

The cases are split like segmentation folds (seeded): the training part supplies random pairs;
the held-out part is divided into a few *monitor* cases, whose fixed pairs pick the best
checkpoint, and the remaining *held-out* cases, which training never sees (benchmarks use them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from segmorph.datasets import DatasetSpec, infer_labels, load_dataset, split_cases
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_text
from segmorph.nn import count_parameters
from segmorph.progress import console
from segmorph.provenance import data_changed, data_fingerprint, write_run_record
from segmorph.registration.learned import (
    LearnedConfig,
    PairData,
    RegistrationTask,
    build_registration_network,
    registration_checkpoint_config,
)
from segmorph.registration.pairs import draw_pairs, load_registration_cases
from segmorph.train import TrainConfig, fit_task

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


MONITOR_DICE = "Dice"  # the monitor score of labelled datasets; unlabelled ones are scored by -similarity loss


def split_registration_cases(case_ids: list[str], fold: int, num_folds: int, seed: int,
                             dataset: Path | None = None) -> dict[str, list[str]]:  # fmt: skip
    """``train``, ``monitor`` and ``held_out`` case lists (disjoint); ``dataset`` names the folder in errors."""
    train, rest = split_cases(case_ids, fold, num_folds, seed)
    if len(rest) < 2 or len(train) < 2:
        raise SegmorphError(f"need at least 4 cases to train registration, found {len(case_ids)}", dataset)
    monitor = rest[: min(MONITOR_CASES, max(2, len(rest) // 3))]
    return {"train": train, "monitor": monitor, "held_out": [c for c in rest if c not in monitor]}


def train_registration(request: RegistrationTrainRequest) -> dict[str, Any]:
    """Train a learned registration model; writes checkpoints, logs, run.json and summary.json."""
    spec = load_dataset(request.dataset)
    spec = spec if spec.labels else infer_labels(spec)
    split = split_registration_cases(list(spec.case_ids), request.fold, request.num_folds, request.seed,
                                     request.dataset)  # fmt: skip
    config = request.config
    prior = None
    if request.segmentation_run is not None:
        from segmorph.registration.prior import SegmentationPrior

        prior = SegmentationPrior(request.segmentation_run, request.device)
        config = replace(config, prior_classes=prior.num_classes)
    train_cases = load_registration_cases(spec, split["train"], config.train_shape)
    monitor_cases = load_registration_cases(spec, split["monitor"], config.train_shape)
    num_classes = max(spec.labels) + 1 if spec.labels else 0
    labelled = num_classes > 0 and all(c.label is not None for c in train_cases + monitor_cases)
    train = _pair_data(train_cases, labelled, num_classes, prior)
    monitor = _pair_data(monitor_cases, labelled, num_classes, prior)
    if not (train.can_guide() and monitor.can_guide()):
        config = replace(config, label_guidance=0.0)  # labels can stand in only for a prior of their classes
    monitor_pairs = draw_pairs(min(MONITOR_PAIRS, len(monitor_cases) * (len(monitor_cases) - 1)),
                               len(monitor_cases), request.seed)  # fmt: skip
    task = RegistrationTask(train, monitor, monitor_pairs, config, request.batch_size)
    torch.manual_seed(request.seed)
    network = build_registration_network(len(config.train_shape), config)
    train_config = TrainConfig(
        patch_size=config.train_shape, batch_size=request.batch_size, learning_rate=request.learning_rate,
        weight_decay=0.0, max_steps=request.max_steps, time_budget_s=request.time_budget_s, steps_per_epoch=100,
        augment=config.flip, seed=request.seed, schedule="cosine", warmup=0.02,
    )  # fmt: skip
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
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
    result = fit_task(network, task, train_config, out, network_config, request.device, request.resume,
                      show_progress=request.show_progress, extra_config=extra)  # fmt: skip
    summary = {
        "monitor_score": MONITOR_DICE if labelled else f"-{config.similarity} loss",
        "best_monitor_score": result.best_score, "best_epoch": result.best_epoch, "steps": result.steps,
        "elapsed_s": round(result.elapsed_s, 1), "stopped_because": result.stopped_because, "precision": result.precision,
        "split": {k: len(v) for k, v in split.items()},
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _pair_data(cases, labelled: bool, num_classes: int, prior=None) -> PairData:
    labels = [c.label.data for c in cases] if labelled else None
    return PairData.from_cases([c.image for c in cases], labels, num_classes, prior)


def _write_provenance(out: Path, spec: DatasetSpec, request: RegistrationTrainRequest, split: dict[str, list[str]]) -> None:
    """``run.json`` (see :mod:`segmorph.provenance`); a resumed run appends to the first run's record."""
    facts = {
        "kind": "registration", "dataset": str(Path(request.dataset).resolve()), "seed": request.seed,
        "segmentation_prior": str(request.segmentation_run) if request.segmentation_run else None,
        "fold": request.fold, "num_folds": request.num_folds, "split": split,
    }  # fmt: skip
    record = write_run_record(out, facts, data_fingerprint(spec), resume=request.resume)
    if data_changed(record):
        console.print("warning: the dataset's files changed since this run started (see run.json)", highlight=False)
