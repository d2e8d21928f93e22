"""What ``segmorph train`` makes of few labels: the training cases that keep their labels (``--labelled-cases``),
the unlabelled scans beside them (``--unlabelled``), the weights it starts from (``--init``), and what ``run.json``
records of them.

Case ids are those of :class:`segmorph.segmentation.datasets.DatasetSpec`; unlabelled scans are preprocessed with the
run's plan into ``(C, *S)`` float32 images (:func:`load_unlabelled`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.errors import SegmorphError
from segmorph.records import read_json
from segmorph.segmentation.datasets import DatasetSpec
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.preprocess import load_preprocessed, preprocess_dataset
from segmorph.segmentation.semisupervised import unlabelled_batch_size
from segmorph.segmentation.unlabelled import unlabelled_spec

FOLD = "fold"
"""The ``--unlabelled`` source that means: the training fold's cases left without labels by ``--labelled-cases``."""


def choose_labelled(train_ids: Sequence[str], count: int, seed: int) -> list[str]:
    """A seeded choice of ``count`` of ``train_ids`` (sorted): the same ids, count and seed give the same cases.

    Raises:
        SegmorphError: ``count`` below 1 or above the number of training cases.

    Example:
        >>> choose_labelled(["a", "b", "c", "d"], 2, seed=0) == choose_labelled(["d", "c", "b", "a"], 2, seed=0)
        True
    """
    ids = sorted(train_ids)
    if not 1 <= count <= len(ids):
        raise SegmorphError(f"--labelled-cases: expected 1 to {len(ids)} (the training fold's cases), got {count}")
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return sorted(ids[i] for i in chosen)


def check_flags(labelled_cases: int, unlabelled: Sequence[str | Path], init: Path | None, freeze_steps: int) -> None:
    """Refuse few-label settings that do not go together, in one line each."""
    if FOLD in unlabelled and not labelled_cases:
        raise SegmorphError("--unlabelled fold: the training fold's unlabelled cases are those --labelled-cases "
                            "leaves without labels; give --labelled-cases N")  # fmt: skip
    if labelled_cases < 0:
        raise SegmorphError(f"--labelled-cases: expected a positive number of cases, got {labelled_cases}")
    if freeze_steps and init is None:
        raise SegmorphError("--freeze-encoder-steps: freezes the encoder loaded by --init; give --init")
    if freeze_steps < 0:
        raise SegmorphError(f"--freeze-encoder-steps: expected 0 or more steps, got {freeze_steps}")


@dataclass(frozen=True)
class FewLabels:
    """The cases of one training run.

    Attributes:
        labelled: Training cases whose labels are used (sorted).
        fold_unlabelled: Training cases whose images alone are used, as unlabelled scans (sorted).
        extra: Unlabelled scans from the other ``--unlabelled`` sources (None: none).
        sources: The ``--unlabelled`` sources as given.
        labelled_cases: The ``--labelled-cases`` count (0: every training case).
    """

    labelled: list[str]
    fold_unlabelled: list[str]
    extra: DatasetSpec | None
    sources: tuple[str, ...]
    labelled_cases: int

    def facts(self) -> dict[str, Any]:
        """``run.json`` entries: ``labelled_cases`` (ids) and ``unlabelled`` (``sources`` and ``cases``)."""
        facts: dict[str, Any] = {}
        if self.labelled_cases:
            facts["labelled_cases"] = self.labelled
        if self.sources:
            cases = self.fold_unlabelled + ([] if self.extra is None else self.extra.case_ids)
            facts["unlabelled"] = {"sources": list(self.sources), "cases": cases}
        return facts


def few_labels(
    spec: DatasetSpec, train_ids: Sequence[str], labelled_cases: int, unlabelled: Sequence[str | Path], seed: int
) -> FewLabels:  # fmt: skip
    """The labelled and unlabelled cases of a run; the unlabelled scans' headers are checked against ``spec``
    (dimensionality, channels) by :func:`segmorph.segmentation.unlabelled.unlabelled_spec`.

    Raises:
        SegmorphError: A count out of range, ``fold`` with no case left without labels, a missing source, a
            folder without images, a scan of another dimensionality or channel count.
    """
    labelled = choose_labelled(train_ids, labelled_cases, seed) if labelled_cases else sorted(train_ids)
    rest = [c for c in sorted(train_ids) if c not in labelled] if FOLD in unlabelled else []
    if FOLD in unlabelled and not rest:
        raise SegmorphError(f"--unlabelled fold: --labelled-cases {labelled_cases} leaves no training case without "
                            "labels")  # fmt: skip
    sources = [Path(s) for s in unlabelled if s != FOLD]
    extra = unlabelled_spec(sources, like=spec) if sources else None
    return FewLabels(labelled, rest, extra, tuple(str(s) for s in unlabelled), labelled_cases)


def resumed_settings(run_dir: Path) -> dict[str, Any]:
    """The ``labelled_cases`` count, ``unlabelled`` sources, ``synthetic`` run, share and count, and
    ``annotate_every`` that the run in ``run_dir`` recorded in its ``run.json`` (those it has), for resuming it."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    record = read_json(path, "run record")
    settings: dict[str, Any] = {}
    if isinstance(record.get("labelled_cases"), list):
        settings["labelled_cases"] = len(record["labelled_cases"])
    unlabelled = record.get("unlabelled")
    if isinstance(unlabelled, dict) and isinstance(unlabelled.get("sources"), list):
        settings["unlabelled"] = tuple(str(s) for s in unlabelled["sources"])
    synthetic = record.get("synthetic")
    if isinstance(synthetic, dict) and isinstance(synthetic.get("run"), str):
        settings["synthetic"] = Path(synthetic["run"])
        for key in ("share", "count"):
            if isinstance(synthetic.get(key), (int, float)):
                settings[f"synthetic_{key}"] = synthetic[key]
    if isinstance(record.get("annotate_every"), int):
        settings["annotate_every"] = record["annotate_every"]
    return settings


def load_unlabelled(spec: DatasetSpec | None, plan: Plan, cache: Path, progress: bool = True) -> list[torch.Tensor]:
    """The images ``(C, *S)`` float32 of unlabelled scans preprocessed with ``plan`` (cached in ``cache``)."""
    if spec is None:
        return []
    paths = preprocess_dataset(spec, plan.preprocess, cache, progress=progress)
    return [load_preprocessed(path)[0].image.data.float() for path in paths]


def source_widths(init: Path | None, plan: Plan, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``network.features`` and ``network.residual`` of the ``init`` source (where ``overrides`` set neither), so
    that its weights fit even where the time budget plans another width. None from a source of another
    dimensionality: :func:`segmorph.nn.transfer.initialize_from` refuses it."""
    if init is None:
        return {}
    from segmorph.nn.transfer import source_network

    source = source_network(Path(init))
    if source.get("ndim", plan.ndim) != plan.ndim:
        return {}
    keys = [k for k in ("features", "residual") if k in source and k in plan.network]
    return {f"network.{k}": source[k] for k in keys if f"network.{k}" not in overrides}


def initialize(model: torch.nn.Module, init: Path) -> tuple[str, dict[str, Any]]:
    """Load the matching weights of ``init`` into ``model``: the transfer's summary line and its ``run.json`` record."""
    from segmorph.nn.transfer import initialize_from

    record = initialize_from(model, Path(init))
    return record.summary(), record.to_dict()


def semi_line(plan: Plan, count: int) -> str:
    """The console line of a semi-supervised run with ``count`` unlabelled scans."""
    semi = plan.semi
    extra = unlabelled_batch_size(plan.train.batch_size, semi.unlabelled_share)
    return (f"semi-supervised: {semi.method} on {count} unlabelled scans, {extra} unlabelled patches per step, "
            f"consistency weight {semi.weight:g} (ramp-up over {semi.rampup:.0%} of training), teacher decay "
            f"{semi.teacher_decay:g}")  # fmt: skip
