"""A classification run folder as one classifier: a single run's model, or a cross-validation run's folds
averaged (or its final model).

The folds of a cross-validation run (:mod:`segmorph.classification.crossval`) become one
:class:`~segmorph.nn.classifiers.Ensemble`: the mean of the folds' probabilities, each fold scored as it
was validated (its scoring views; a fold trained with ``ensemble`` N is itself the mean of its members).
Its decision threshold is the one chosen on the pooled out-of-fold probabilities
(``cross_validation.json``), never one chosen on images a model was fit on. A fold asked for but without a
``classifier.pt`` is left out with one warning line naming it. With ``--final`` the run also holds
``final/``, one model trained on every image not held out, which is used unless the ensemble is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segmorph.classification.crossval_layout import (
    CROSSVAL_FILE,
    FINAL_FOLDER,
    OUT_OF_FOLD_JSON,
    TASK,
    fold_folder,
    is_classification_cross_validation,
)
from segmorph.classification.pipeline import MODEL_FILE
from segmorph.classification.predict import load_classifier
from segmorph.errors import SegmorphError
from segmorph.folds import parse_folds, read_crossval_record
from segmorph.nn.classifiers import Ensemble
from segmorph.progress import console
from segmorph.records import read_json

USES = ("final", "ensemble")
"""What predicts for a cross-validation run: its final model, or the mean of its folds."""
SHARED_FACTS = ("class_names", "input", "mirror", "shift")
"""What every fold of one ensemble must agree on: classes, input preparation and scoring views."""


@dataclass(frozen=True)
class RunClassifier:
    """The classifier of a run folder, loaded.

    Attributes:
        model: Maps prepared inputs ``(B, C, *S)`` to logits (or log-probabilities) ``(B, K)``, in eval mode.
        facts: Its ``classifier`` facts (class names, input spec, scoring views, threshold).
        kind: ``"single"`` (a run's one model), ``"ensemble"`` (a cross-validation run's folds) or ``"final"``
            (a cross-validation run's final model).
        description: What predicts, in words (``"the ensemble of folds 0, 1, 2"``).
        folds: The folds averaged (empty unless ``kind`` is ``"ensemble"``).
    """

    model: torch.nn.Module
    facts: dict[str, Any]
    kind: str
    description: str
    folds: tuple[int, ...] = ()


def load_run_classifier(
    run_dir: str | Path, device: str | torch.device = "cpu", folds: str | Sequence[int] | None = None,
    use: str | None = None,
) -> RunClassifier:  # fmt: skip
    """The classifier of a ``classify train`` run folder, single or cross-validated.

    Args:
        run_dir: A run folder (``classifier.pt``) or a cross-validation run folder (``crossval.json``).
        device: Where the network runs.
        folds: Cross-validation runs: the folds to average (``"all"``, ``"0,2"`` or numbers; default: every
            fold the run trained). Giving folds means the ensemble.
        use: Cross-validation runs: ``"final"`` or ``"ensemble"``; None: the final model when the run has
            one and no ``folds`` are given, else the ensemble.

    Raises:
        SegmorphError: ``folds``/``use`` on a single run, an unknown ``use``, no final model, no fold with a
            model, no out-of-fold threshold yet, or folds that disagree on classes or input.
    """
    run_dir = Path(run_dir)
    if use is not None and use not in USES:
        raise SegmorphError(f"use: expected one of {', '.join(USES)}, got {use!r}")
    if not is_classification_cross_validation(run_dir):
        if folds is not None or use is not None:
            raise SegmorphError("--folds/--use: this run is a single model, not a cross-validation run", run_dir)
        model, facts = load_classifier(run_dir, device)
        return RunClassifier(model, facts, "single", "the run's model")
    final = run_dir / FINAL_FOLDER
    if use is None:
        use = "final" if folds is None and (final / MODEL_FILE).is_file() else "ensemble"
    if use == "final":
        if folds is not None:
            raise SegmorphError("--folds chooses folds of the ensemble: drop it, or use the ensemble")
        if not (final / MODEL_FILE).is_file():
            raise SegmorphError(f"no final model (no {FINAL_FOLDER}/{MODEL_FILE}): train with --final", run_dir)
        model, facts = load_classifier(final, device)
        threshold = out_of_fold_threshold(run_dir)
        return RunClassifier(model, {**facts, "threshold": threshold}, "final",
                             "the final model (trained on every image not held out)")  # fmt: skip
    return load_fold_ensemble(run_dir, folds, device)


def load_fold_ensemble(
    run_dir: str | Path, folds: str | Sequence[int] | None = None, device: str | torch.device = "cpu"
) -> RunClassifier:
    """The mean of the folds' probabilities as one network, with the out-of-fold threshold (see the module
    docstring); ``folds`` as for :func:`load_run_classifier`."""
    run_dir = Path(run_dir)
    record = read_crossval_record(run_dir / CROSSVAL_FILE, TASK)
    num_folds = record["num_folds"]
    if folds is None:
        wanted = list(record["folds"])
    else:
        wanted = list(parse_folds(folds if isinstance(folds, str) else ",".join(map(str, folds)), num_folds))
    found = _available_folds(run_dir, wanted)
    threshold = out_of_fold_threshold(run_dir)
    loaded = [load_classifier(fold_folder(run_dir, k), device) for k in found]
    facts = _shared_facts(run_dir, found, [f for _, f in loaded])
    if len(loaded) == 1:
        model = loaded[0][0]
    else:
        model = Ensemble([m.config for m, _ in loaded])
        for slot, (member, _) in zip(model.members, loaded):
            slot.load_state_dict(member.state_dict())
        model = model.to(device).eval()
    return RunClassifier(model, {**facts, "threshold": threshold}, "ensemble", f"the ensemble of folds {_listed(found)}",
                         tuple(found))  # fmt: skip


def out_of_fold_threshold(run_dir: str | Path) -> float | None:
    """The decision threshold chosen on the run's pooled out-of-fold probabilities (None: argmax, more than
    two classes).

    Raises:
        SegmorphError: No ``cross_validation.json`` yet (no fold finished).
    """
    path = Path(run_dir) / OUT_OF_FOLD_JSON
    if not path.is_file():
        raise SegmorphError(f"no {OUT_OF_FOLD_JSON}: no fold has finished, so there is no out-of-fold threshold; "
                            "continue the run with --resume", run_dir)  # fmt: skip
    threshold = read_json(path, "out-of-fold summary").get("threshold")
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise SegmorphError(f"threshold: expected a probability from 0 to 1 or null, got {threshold!r}", path)
    return float(threshold)


def _available_folds(run_dir: Path, wanted: list[int]) -> list[int]:
    if not wanted:
        raise SegmorphError("the cross-validation run names no folds", run_dir / CROSSVAL_FILE)
    found = [k for k in wanted if (fold_folder(run_dir, k) / MODEL_FILE).is_file()]
    missing = [k for k in wanted if k not in found]
    if not found:
        raise SegmorphError(f"no fold has a {MODEL_FILE} (folds {_listed(wanted)})", run_dir)
    if missing:
        console.print(f"warning: fold {_listed(missing)} missing (no {MODEL_FILE}); predicting with folds "
                      f"{_listed(found)}", highlight=False, soft_wrap=True)  # fmt: skip
    return found


def _shared_facts(run_dir: Path, folds: list[int], facts: list[dict[str, Any]]) -> dict[str, Any]:
    first = facts[0]
    for fold, other in zip(folds[1:], facts[1:]):
        differing = [key for key in SHARED_FACTS if other.get(key) != first.get(key)]
        if differing:
            raise SegmorphError(f"fold {fold} differs from fold {folds[0]} in {', '.join(differing)}: the folds "
                                "cannot be averaged", fold_folder(run_dir, fold) / MODEL_FILE)  # fmt: skip
    return dict(first)


def _listed(folds: Sequence[int]) -> str:
    return ", ".join(str(k) for k in folds)
