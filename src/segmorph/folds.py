"""Folds of a cross-validation workflow: how they are named on the command line, and how they share a time budget.

Both segmentation (:mod:`segmorph.segmentation.crossval`) and classification cross-validation use these rules.
The folds share the run's time budget unless each has its own: each fold, when it starts, gets an equal share
of what is left after the folds already done, less an allowance for its own planning and validation (the
smallest such overhead measured on the folds before it; a tenth of an equal share before any has run).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segmorph.errors import SegmorphError
from segmorph.progress import console
from segmorph.records import read_json

FIRST_OVERHEAD_SHARE = 0.1  # before any fold has run: planning and validation take about this share of a fold
MIN_FOLD_BUDGET_S = 30.0
MAX_FOLDS = 100_000  # a crossval.json naming more folds than this is refused (no dataset here has as many cases)


def parse_folds(text: str, num_folds: int) -> tuple[int, ...]:
    """``"all"`` -> ``(0, ..., num_folds - 1)``; ``"0,2,4"`` -> ``(0, 2, 4)`` (sorted, each once).

    Raises:
        SegmorphError: A value that is not a fold number in ``0..num_folds-1``, or an empty list.
    """
    if text.strip().lower() == "all":
        return tuple(range(num_folds))
    folds = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= num_folds:
            raise SegmorphError(
                f"folds: expected 'all' or fold numbers in 0..{num_folds - 1} (e.g. 0,2,4), got {text!r}"
            )
        folds.add(int(part))
    if not folds:
        raise SegmorphError(f"folds: expected 'all' or a list of folds, got {text!r}")
    return tuple(sorted(folds))


def fold_budget(record: dict[str, Any], fold: int) -> float:
    """Fold ``fold``'s training time in seconds: the per-fold budget, or an equal share of the total budget left.

    Args:
        record: The cross-validation record: ``time_budget_s`` (0: no time limit), ``budget_per_fold``,
            ``folds`` (the folds asked for) and ``fold_states`` (fold -> ``state``, and for done folds ``wall_s``,
            the whole fold's seconds, and ``fit_s``, its training seconds).
        fold: The fold about to start (named in the warning when the budget is spent).
    """
    total = float(record["time_budget_s"])
    if total <= 0 or record["budget_per_fold"]:
        return total
    states = record["fold_states"]
    done = [s for s in states.values() if s.get("state") == "done"]
    left = [k for k in record["folds"] if states.get(str(k), {}).get("state") != "done"]
    used = sum(float(s.get("wall_s", 0.0)) for s in done)
    share = total / max(len(record["folds"]), 1)
    overheads = [float(s["wall_s"]) - float(s["fit_s"]) for s in done if "wall_s" in s and "fit_s" in s]
    overhead = min(overheads) if overheads else FIRST_OVERHEAD_SHARE * share
    budget = (total - used) / max(len(left), 1) - overhead
    if budget < MIN_FOLD_BUDGET_S:
        console.print(f"warning: the time budget is spent; fold {fold} trains for {MIN_FOLD_BUDGET_S:.0f} s",
                      highlight=False)  # fmt: skip
        return MIN_FOLD_BUDGET_S
    return budget


def read_crossval_record(path: str | Path, task: str) -> dict[str, Any]:
    """A run's ``crossval.json``, checked wherever a reader relies on it (segmentation and classification).

    Args:
        path: The file.
        task: ``"segmentation"`` or ``"classification"``; a record naming another task is refused (a record
            without ``task`` is taken as ``task``).

    Returns:
        The record: ``num_folds`` a whole number in 2..:data:`MAX_FOLDS`, ``folds`` distinct fold numbers in
        ``0..num_folds-1``, ``fold_states`` an object of fold number -> ``{"state": ..., "wall_s": s, "fit_s":
        s}`` (finite seconds >= 0 where given), ``time_budget_s`` finite and >= 0 where given.

    Raises:
        SegmorphError: Naming ``path``: unreadable, not an object, or a field above that is not as described.
    """
    return check_crossval_record(read_json(path, "cross-validation record"), task, path)


def check_crossval_record(record: dict[str, Any], task: str, path: str | Path) -> dict[str, Any]:
    """A parsed ``crossval.json`` (from ``path``), checked as :func:`read_crossval_record` checks it; returned as is."""
    if record.get("task", task) != task:
        raise SegmorphError(f"holds a {record.get('task')!r} cross-validation record, not {task}", path)
    num_folds = record.get("num_folds")
    if not _whole(num_folds) or not 2 <= num_folds <= MAX_FOLDS:
        raise SegmorphError(f"num_folds: expected a whole number in 2..{MAX_FOLDS}, got {num_folds!r}", path)
    folds = record.get("folds")
    if (not isinstance(folds, list) or not all(_whole(k) and 0 <= k < num_folds for k in folds)
            or len(set(folds)) != len(folds)):  # fmt: skip
        raise SegmorphError(f"folds: expected distinct fold numbers in 0..{num_folds - 1}, got {_short(folds)}", path)
    _check_fold_states(record.get("fold_states", {}), num_folds, path)
    budget = record.get("time_budget_s", 0.0)
    if not _seconds(budget):
        raise SegmorphError(f"time_budget_s: expected seconds >= 0, got {budget!r}", path)
    return record


def _check_fold_states(states: Any, num_folds: int, path: str | Path) -> None:
    if not isinstance(states, dict):
        raise SegmorphError(f"fold_states: expected an object of fold number -> state, got {_short(states)}", path)
    for key, state in states.items():
        if not (key.isdigit() and int(key) < num_folds) or not isinstance(state, dict):
            raise SegmorphError(f"fold_states: {key!r}: expected a fold number in 0..{num_folds - 1} with an object",
                                path)  # fmt: skip
        if not isinstance(state.get("state", ""), str):
            raise SegmorphError(f"fold_states: {key!r}: state must be a string", path)
        times = {name: state[name] for name in ("wall_s", "fit_s", "budget_s") if name in state}
        for name, value in times.items():
            if not _seconds(value):
                raise SegmorphError(f"fold_states: {key!r}: {name} {value!r} is not seconds >= 0", path)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)  # fmt: skip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
