"""Choose what to predict with on out-of-fold predictions: one cross-validation run, or the ensemble of two.

Each run is a cross-validation run (:func:`segmorph.segmentation.api.cross_validate`) of one configuration, e.g.
3D at the median spacing, 3D at a coarser ``--spacing``, or another plan. Every case must be scored out of
fold in every run (the runs' splits may differ). The candidates are each run alone and the ensemble of each
pair, whose class probabilities per case are the mean of the two runs' out-of-fold probabilities. Each
candidate is scored by the Dice per class of the most likely class against the reference, averaged over the
cases, and ranked by the mean of those over the classes. The best single run is chosen unless a pair scores
higher (to the 5 decimals stored).

The output folder (an ensemble folder) holds::

    find_best.json        every candidate's out-of-fold Dice per class and mean, ranked; the choice and why
    ensemble.json         {"members": [absolute run folders]}: the chosen run, or the two runs of the chosen pair
    postprocessing.json   the clean-up chosen on the chosen candidate's out-of-fold predictions
                          (:func:`segmorph.segmentation.postprocess_choice.choose_postprocessing`)

``segmorph predict DIR`` and ``Segmenter(DIR)`` predict with it: the mean of the members' probabilities,
then that clean-up (:mod:`segmorph.segmentation.ensemble`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.folds import read_crossval_record
from segmorph.io import atomic_write_text, read_image
from segmorph.metrics.segmentation import dice_score
from segmorph.outputs import Output, check_outputs
from segmorph.progress import console, track
from segmorph.records import read_json
from segmorph.segmentation.crossval_layout import (
    CROSSVAL_FILE,
    POSTPROCESSING_FILE,
    TASK,
    fold_folder,
    is_cross_validation_run,
)
from segmorph.segmentation.postprocess_choice import choose_postprocessing, describe

FIND_BEST_FILE = "find_best.json"
ENSEMBLE_FILE = "ensemble.json"
SHOWN_MISSING = 3  # missing cases named in a refusal


def is_ensemble_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds an ``ensemble.json`` (an ensemble folder written by :func:`find_best`)."""
    return (Path(folder) / ENSEMBLE_FILE).is_file()


@dataclass(frozen=True)
class OutOfFold:
    """The out-of-fold files of one cross-validation run.

    Attributes:
        run: The run folder.
        labels: Label value -> class name (background included), from the folds' plans.
        files: Case -> (probabilities ``.npz`` (K, *S), reference label map) of the fold that held it out.
    """

    run: Path
    labels: dict[int, str]
    files: dict[str, tuple[Path, Path]]


def out_of_fold(run: str | Path) -> OutOfFold:
    """The out-of-fold probabilities and references of every fold a cross-validation run has done.

    Raises:
        SegmorphError: Not a cross-validation run, no fold done, or folds whose plans name different labels.
    """
    run = Path(run)
    if not is_cross_validation_run(run):
        raise SegmorphError(f"not a cross-validation run (no {CROSSVAL_FILE}; train it with --folds)", run)
    record = read_crossval_record(run / CROSSVAL_FILE, TASK)
    states = record.get("fold_states")
    done = sorted(int(k) for k, s in states.items() if isinstance(s, dict) and s.get("state") == "done") if isinstance(
        states, dict) else []  # fmt: skip
    if not done:
        raise SegmorphError("no fold of this cross-validation run is done", run)
    labels: dict[int, str] = {}
    files: dict[str, tuple[Path, Path]] = {}
    for fold in done:
        folder = fold_folder(run, fold)
        fold_labels = _plan_labels(folder / "plan.json")
        if labels and fold_labels != labels:
            raise SegmorphError(f"labels {fold_labels} differ from fold {done[0]}'s {labels}", folder / "plan.json")
        labels = fold_labels
        validation = folder / "validation"
        for path in sorted((validation / "probabilities").glob("*.npz")):
            files[path.stem] = (path, validation / "reference" / f"{path.stem}.nii.gz")
    return OutOfFold(run, labels, files)


def _plan_labels(path: Path) -> dict[int, str]:
    raw = read_json(path, "plan").get("labels")
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise SegmorphError("plan: labels must map label values to names", path) from None


def find_best(runs: Sequence[str | Path], out: str | Path, show: bool = True) -> dict[str, Any]:
    """Rank each cross-validation run and each pair's ensemble by out-of-fold Dice; make ``out`` an ensemble
    folder of the best (see the module docstring).

    Args:
        runs: Two or more cross-validation run folders of one dataset.
        out: The ensemble folder to write (``find_best.json``, ``ensemble.json``, ``postprocessing.json``).
        show: Print the ranking as a table and the choice.

    Returns:
        The record written to ``find_best.json``: ``runs``, ``cases``, ``classes`` (value -> name),
        ``candidates`` (best first, each with ``name``, ``members``, ``dice`` per class value and ``mean_dice``),
        ``choice`` (``name``, ``members``, ``mean_dice``, ``reason``) and ``postprocessing`` (in words).

    Raises:
        SegmorphError: Fewer than two runs, a run given twice, a folder that is not a cross-validation run, a
            case that a run did not score out of fold, runs with different labels or references, or an output
            that would overwrite an input.

    Example:
        >>> record = find_best(["runs/h_3d", "runs/h_coarse"], "runs/h_best")
        >>> record["choice"]["name"], record["choice"]["mean_dice"]
    """
    runs = [Path(r) for r in runs]
    out = Path(out)
    _check_request(runs, out)
    found = [out_of_fold(run) for run in runs]
    cases = _common_cases(found)
    labels = _common_labels(found)
    names = _display_names(runs)
    candidates = [(i,) for i in range(len(runs))] + list(itertools.combinations(range(len(runs)), 2))
    scores = _score(found, cases, labels, candidates, show)
    ranked = sorted(
        (_candidate(c, names, runs, scores[c]) for c in candidates),
        key=lambda c: (-c["mean_dice"], len(c["members"]), c["name"]),
    )  # fmt: skip
    choice = _choose(ranked)
    chosen = next(c for c in candidates if [str(runs[i].resolve()) for i in c] == choice["members"])
    decision = choose_postprocessing(_chosen_masks(found, cases, chosen), {k: v for k, v in labels.items() if k})
    record = {"runs": [{"name": n, "path": str(r.resolve())} for n, r in zip(names, runs, strict=True)],
              "cases": len(cases), "classes": {str(k): v for k, v in labels.items() if k}, "candidates": ranked,
              "choice": choice, "postprocessing": describe(decision)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / POSTPROCESSING_FILE, json.dumps(decision, indent=2) + "\n")
    atomic_write_text(out / ENSEMBLE_FILE, json.dumps({"members": choice["members"]}, indent=2) + "\n")
    atomic_write_text(out / FIND_BEST_FILE, json.dumps(record, indent=2) + "\n")
    if show:
        print_ranking(record)
    return record


def _check_request(runs: list[Path], out: Path) -> None:
    if len(runs) < 2:
        raise SegmorphError(f"find-best compares cross-validation runs: give at least two, got {len(runs)}")
    seen: dict[Path, Path] = {}
    for run in runs:
        if run.resolve() in seen:
            raise SegmorphError(f"given twice (also as {seen[run.resolve()]})", run)
        seen[run.resolve()] = run
    if is_cross_validation_run(out) or (out / "plan.json").is_file():
        raise SegmorphError("holds a run; choose another folder for the ensemble", out)
    outputs = [Output.folder(out), *(Output.file(out / name) for name in (FIND_BEST_FILE, ENSEMBLE_FILE,
                                                                          POSTPROCESSING_FILE))]  # fmt: skip
    check_outputs(outputs, inputs=runs)


def _common_cases(found: list[OutOfFold]) -> list[str]:
    cases = sorted(set().union(*(f.files for f in found)))
    if not cases:
        raise SegmorphError("no out-of-fold probabilities (fold_<k>/validation/probabilities/<case>.npz) in "
                            f"{', '.join(str(f.run) for f in found)}")  # fmt: skip
    for each in found:
        missing = [case for case in cases if case not in each.files]
        if missing:
            shown = ", ".join(missing[:SHOWN_MISSING]) + (", ..." if len(missing) > SHOWN_MISSING else "")
            raise SegmorphError(f"{len(missing)} of {len(cases)} cases not scored out of fold ({shown}); every run "
                                "must hold every case out of fold (train all its folds)", each.run)  # fmt: skip
    return cases


def _common_labels(found: list[OutOfFold]) -> dict[int, str]:
    for each in found[1:]:
        if each.labels != found[0].labels:
            raise SegmorphError(f"labels {each.labels} differ from {found[0].run}'s {found[0].labels}", each.run)
    return found[0].labels


def _display_names(runs: list[Path]) -> list[str]:
    """Each run by its folder's name, or by the path given where two runs share a name."""
    names = [run.resolve().name for run in runs]
    return [name if names.count(name) == 1 else str(run) for name, run in zip(names, runs, strict=True)]


Candidate = tuple[int, ...]  # indices of the runs whose out-of-fold probabilities are averaged


def _case_probabilities(found: list[OutOfFold], case: str) -> tuple[list[Any], np.ndarray]:
    """Every run's probabilities ``(K, *S)`` of one case, and the reference ``(*S)`` (the same in every run)."""
    from segmorph.segmentation.pipeline import read_probabilities

    reference_path = found[0].files[case][1]
    reference = read_image(reference_path, is_label=True).numpy()[0]
    probabilities = []
    for each in found:
        path, other_reference = each.files[case]
        values = read_probabilities(path)
        if tuple(values.shape[1:]) != reference.shape or values.shape[0] != len(found[0].labels):
            raise SegmorphError(f"probabilities of shape {tuple(values.shape)} do not match the reference "
                                f"{reference.shape} with {len(found[0].labels)} classes", path)  # fmt: skip
        if each is not found[0]:
            _check_same_reference(other_reference, reference, reference_path)
        probabilities.append(values)
    return probabilities, reference


def _check_same_reference(path: Path, reference: np.ndarray, first: Path) -> None:
    if not np.array_equal(read_image(path, is_label=True).numpy()[0], reference):
        raise SegmorphError(f"reference differs from {first} (runs of different datasets?)", path)


def _labels_of(probabilities: list[Any], candidate: Candidate) -> np.ndarray:
    """The most likely class ``(*S)`` of the mean of the candidate's runs' probabilities."""
    from segmorph.segmentation.predict import most_likely_class

    total = probabilities[candidate[0]].clone()
    for index in candidate[1:]:
        total += probabilities[index]
    return most_likely_class(total / len(candidate))


def _score(
    found: list[OutOfFold], cases: list[str], labels: dict[int, str], candidates: list[Candidate], show: bool
) -> dict[Candidate, dict[int, list[float]]]:  # fmt: skip
    scores: dict[Candidate, dict[int, list[float]]] = {c: {k: [] for k in labels if k} for c in candidates}
    for case in track(cases, "find-best", total=len(cases), enabled=show):
        probabilities, reference = _case_probabilities(found, case)
        for candidate in candidates:
            predicted = _labels_of(probabilities, candidate)
            for value, values in scores[candidate].items():
                values.append(dice_score(predicted == value, reference == value))
    return scores


def _candidate(
    candidate: Candidate, names: list[str], runs: list[Path], dice: dict[int, list[float]]
) -> dict[str, Any]:
    per_class = {str(k): round(float(np.mean(v)), 5) for k, v in dice.items()}
    return {"name": " + ".join(names[i] for i in candidate), "members": [str(runs[i].resolve()) for i in candidate],
            "dice": per_class, "mean_dice": round(float(np.mean([float(np.mean(v)) for v in dice.values()])), 5)}  # fmt: skip


def _choose(ranked: list[dict[str, Any]]) -> dict[str, Any]:
    single = next(c for c in ranked if len(c["members"]) == 1)
    pair = next(c for c in ranked if len(c["members"]) == 2)
    if pair["mean_dice"] > single["mean_dice"]:
        chosen = pair
        reason = (f"the ensemble {pair['name']} scores {pair['mean_dice']:.5f} out of fold, above the best single "
                  f"run {single['name']} ({single['mean_dice']:.5f})")  # fmt: skip
    else:
        chosen = single
        reason = (f"{single['name']} scores {single['mean_dice']:.5f} out of fold; the best ensemble of two, "
                  f"{pair['name']} ({pair['mean_dice']:.5f}), does not beat it")  # fmt: skip
    return {"name": chosen["name"], "members": chosen["members"], "mean_dice": chosen["mean_dice"], "reason": reason}


def _chosen_masks(found: list[OutOfFold], cases: list[str], candidate: Candidate) -> list[tuple[Any, Any]]:
    """(most likely class, reference) ``(*S)`` of every case for the chosen candidate, to choose postprocessing on."""
    pairs = []
    for case in cases:
        probabilities, reference = _case_probabilities([found[i] for i in candidate], case)
        pairs.append((_labels_of(probabilities, tuple(range(len(candidate)))), reference))
    return pairs


def print_ranking(record: dict[str, Any]) -> None:
    """The candidates of a ``find_best.json`` record as a table, best first, and the choice in one line."""
    from rich.table import Table

    classes = record["classes"]
    table = Table(title=f"out-of-fold Dice over {record['cases']} cases")
    for column in ("rank", "candidate", *classes.values(), "mean"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for rank, candidate in enumerate(record["candidates"], start=1):
        chosen = candidate["members"] == record["choice"]["members"]
        table.add_row(str(rank), candidate["name"] + (" (chosen)" if chosen else ""),
                      *(f"{candidate['dice'][k]:.4f}" for k in classes), f"{candidate['mean_dice']:.4f}",
                      style="bold" if chosen else None)  # fmt: skip
    console.print(table)
    console.print(f"chosen: {record['choice']['reason']}; postprocessing: {record['postprocessing']}", highlight=False)


def read_members(folder: str | Path) -> list[Path]:
    """The run folders an ensemble folder's ``ensemble.json`` lists (relative ones taken from ``folder``).

    Raises:
        SegmorphError: ``ensemble.json`` is not ``{"members": [folder, ...]}`` with at least one member, or a
            member is missing or is itself an ensemble folder.
    """
    folder = Path(folder)
    path = folder / ENSEMBLE_FILE
    members = read_json(path, "ensemble record").get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise SegmorphError('expected {"members": [run folder, ...]} with at least one run folder', path)
    runs = [Path(m) if Path(m).is_absolute() else folder / m for m in members]
    for run in runs:
        if not run.is_dir():
            raise SegmorphError(f"member run folder {run} not found (moved or deleted?)", path)
        if is_ensemble_folder(run):
            raise SegmorphError(f"member {run} is itself an ensemble folder; list its runs instead", path)
    return runs
