"""Predict with the folds of a cross-validation run: the mean of the folds' class probabilities.

Each fold's model predicts as a single run does (its own preprocessing, sliding window and mirroring); the
ensemble averages the probabilities on the scan's grid, takes the most likely class, then applies the
postprocessing the run chose on out-of-fold predictions (``postprocessing.json``) unless told otherwise.
A fold without a checkpoint is left out with one warning line naming it.

An ensemble folder written by ``segmorph find-best`` (:mod:`segmorph.segmentation.find_best`) predicts the same
way with the runs its ``ensemble.json`` lists: each run (a cross-validation run or a single model) gives its
probabilities without its own clean-up, their mean gives the most likely class, then the folder's
``postprocessing.json`` (chosen on the out-of-fold predictions of that very ensemble) applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from segmorph.errors import SegmorphError
from segmorph.folds import read_crossval_record
from segmorph.image import Image
from segmorph.progress import console
from segmorph.records import read_json
from segmorph.segmentation.crossval_layout import (
    CROSSVAL_FILE,
    POSTPROCESSING_FILE,
    TASK,
    fold_folder,
    is_cross_validation_run,
)
from segmorph.segmentation.find_best import ENSEMBLE_FILE, is_ensemble_folder, read_members
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.postprocess import keep_largest_component
from segmorph.segmentation.postprocess_choice import apply_postprocessing, check_decision
from segmorph.segmentation.predict import PredictOptions, Predictor, most_likely_class

POSTPROCESS_CHOICES = ("auto", "none")


class _MeanOfMembers:
    """Averages its ``members``' probabilities, then the most likely class and the forced or chosen clean-up."""

    members: list
    plan: Plan
    options: PredictOptions
    decision: dict[str, Any] | None

    def probabilities(self, image: Image) -> torch.Tensor:
        """Mean class probabilities ``(K, *S)`` of the members on the scan's own grid (float32)."""
        total = self.members[0].probabilities(image).float()
        for member in self.members[1:]:
            total += member.probabilities(image).float()
        return total / len(self.members)

    def segment(self, image: Image) -> tuple[Image, torch.Tensor]:
        """Label map ``(1, *S)`` with exactly ``image``'s geometry, and the mean probabilities ``(K, *S)``."""
        probabilities = self.probabilities(image)
        labels = most_likely_class(probabilities)
        if self.options.largest_component:
            labels = keep_largest_component(labels, [k for k in self.plan.labels if k > 0])
        elif self.decision is not None:
            labels = apply_postprocessing(labels, self.decision)
        return Image(torch.from_numpy(labels[None]), image.affine, is_label=True), probabilities


class EnsemblePredictor(_MeanOfMembers):
    """The folds of a cross-validation run as one predictor (same methods as :class:`Predictor`).

    Args:
        run_dir: A cross-validation run folder (``crossval.json`` and ``fold_<k>/``).
        device: Where to run.
        options: How each fold predicts; ``largest_component`` forces that clean-up on every class.
        folds: Which folds to use (default: every fold the run trained).
        postprocess: ``"auto"``: the run's ``postprocessing.json`` decision; ``"none"``: no clean-up.
    """

    def __init__(
        self, run_dir: str | Path, device: str = "cpu", options: PredictOptions = PredictOptions(),
        folds: Sequence[int] | None = None, postprocess: str = "auto",
    ) -> None:  # fmt: skip
        self.run_dir = Path(run_dir)
        _check_postprocess(postprocess)
        record = read_crossval_record(self.run_dir / CROSSVAL_FILE, TASK)
        wanted = list(record["folds"]) if folds is None else list(folds)
        self.folds = _available_folds(self.run_dir, wanted, options.checkpoint)
        self.members = [Predictor(fold_folder(self.run_dir, k), device, options) for k in self.folds]
        _check_same_task([fold_folder(self.run_dir, k) for k in self.folds], self.members)
        self.plan: Plan = self.members[0].plan
        self.device = self.members[0].device
        self.options = options
        self.decision = _read_decision(self.run_dir, postprocess, options, self.plan.labels)


class RunEnsemblePredictor(_MeanOfMembers):
    """The runs an ensemble folder lists (``ensemble.json``, see :mod:`segmorph.segmentation.find_best`) as one
    predictor (same methods as :class:`Predictor`).

    Args:
        run_dir: The ensemble folder.
        device: Where to run.
        options: How each run predicts; ``largest_component`` forces that clean-up on every class.
        postprocess: ``"auto"``: the folder's ``postprocessing.json`` decision; ``"none"``: no clean-up.

    Raises:
        SegmorphError: A bad ``ensemble.json`` or member, or members whose plans name different labels or channels.
    """

    def __init__(
        self, run_dir: str | Path, device: str = "cpu", options: PredictOptions = PredictOptions(),
        postprocess: str = "auto",
    ) -> None:  # fmt: skip
        self.run_dir = Path(run_dir)
        _check_postprocess(postprocess)
        runs = read_members(self.run_dir)
        self.members = [load_predictor(run, device, options, postprocess="none") for run in runs]
        _check_same_task(runs, self.members)
        self.plan: Plan = self.members[0].plan
        self.device = self.members[0].device
        self.options = options
        self.decision = _read_decision(self.run_dir, postprocess, options, self.plan.labels)


def _check_same_task(folders: Sequence[Path], members: Sequence[Any]) -> None:
    """Refuse members whose plans name other labels or channels than the first's (their probabilities would not
    average), naming the member's folder."""
    first = members[0].plan
    for folder, member in zip(folders[1:], members[1:], strict=True):
        if (member.plan.labels, member.plan.channel_names) != (first.labels, first.channel_names):
            raise SegmorphError(f"labels or channels differ from those of {folders[0]}; an ensemble averages "
                                "models of one task", folder)  # fmt: skip


def _check_postprocess(postprocess: str) -> None:
    if postprocess not in POSTPROCESS_CHOICES:
        raise SegmorphError(f"postprocess: expected one of {', '.join(POSTPROCESS_CHOICES)}, got {postprocess!r}")


def _read_decision(
    folder: Path, postprocess: str, options: PredictOptions, labels: Iterable[int]
) -> dict[str, Any] | None:
    """The clean-up decision in ``folder/postprocessing.json`` to apply (checked against the run's ``labels``), or
    None (``postprocess="none"``, ``options.largest_component`` or no such file)."""
    path = folder / POSTPROCESSING_FILE
    if postprocess == "none" or options.largest_component or not (path.exists() or path.is_symlink()):
        return None
    return check_decision(read_json(path, "postprocessing decision"), labels, path)


def _available_folds(run_dir: Path, wanted: list[int], checkpoint: str) -> list[int]:
    if not wanted:
        raise SegmorphError("cross-validation run names no folds", run_dir / CROSSVAL_FILE)
    found = [k for k in wanted if (fold_folder(run_dir, k) / f"checkpoint_{checkpoint}.pt").is_file()]
    missing = [k for k in wanted if k not in found]
    if not found:
        raise SegmorphError(f"no fold has a checkpoint_{checkpoint}.pt (folds {_listed(wanted)})", run_dir)
    if missing:
        console.print(f"warning: fold {_listed(missing)} missing (no checkpoint_{checkpoint}.pt); "
                      f"predicting with folds {_listed(found)}", highlight=False)  # fmt: skip
    return found


def _listed(folds: Sequence[int]) -> str:
    return ", ".join(str(k) for k in folds)


AnyPredictor = Predictor | EnsemblePredictor | RunEnsemblePredictor
"""What :func:`load_predictor` gives: each has ``run_dir``, ``plan``, ``probabilities(image)`` and ``segment(image)``."""


def load_predictor(
    run_dir: str | Path, device: str = "cpu", options: PredictOptions = PredictOptions(),
    folds: Sequence[int] | None = None, postprocess: str = "auto",
) -> AnyPredictor:  # fmt: skip
    """The predictor of a run folder: an :class:`EnsemblePredictor` for a cross-validation run, a
    :class:`RunEnsemblePredictor` for an ensemble folder (``ensemble.json``), else a :class:`Predictor`
    (``folds`` must be None but for a cross-validation run)."""
    if is_cross_validation_run(run_dir):
        return EnsemblePredictor(run_dir, device, options, folds, postprocess)
    if is_ensemble_folder(run_dir):
        if folds is not None:
            raise SegmorphError(f"folds: an ensemble of runs ({ENSEMBLE_FILE}) uses every fold of each", run_dir)
        return RunEnsemblePredictor(run_dir, device, options, postprocess)
    if folds is not None:
        raise SegmorphError("folds: this run is a single model, not a cross-validation run", run_dir)
    return Predictor(run_dir, device, options)


def ensemble_members(predictor: AnyPredictor) -> list[tuple[str, Predictor, float]]:
    """The single networks behind a predictor, with each one's weight in its mean of probabilities.

    Returns:
        ``(name, predictor, weight)`` per network, the weights summing to 1: ``("model", predictor, 1.0)`` for a
        single run; ``fold_<k>`` with ``1 / folds`` for a cross-validation run; for an ensemble folder, ``member_<i>``
        (a single run) or ``member_<i>_fold_<k>`` (a cross-validation run), each run's ``1 / runs`` shared among
        its folds, as :class:`RunEnsemblePredictor` averages them.
    """
    if isinstance(predictor, Predictor):
        return [("model", predictor, 1.0)]
    if isinstance(predictor, EnsemblePredictor):
        share = 1.0 / len(predictor.members)
        return [(f"fold_{k}", member, share) for k, member in zip(predictor.folds, predictor.members, strict=True)]
    found = []
    for index, run in enumerate(predictor.members):
        for name, member, weight in ensemble_members(run):
            label = f"member_{index}" if isinstance(run, Predictor) else f"member_{index}_{name}"
            found.append((label, member, weight / len(predictor.members)))
    return found
