"""Folds of a cross-validation workflow: how they are named on the command line, and how they share a time budget.

Both segmentation (:mod:`segmorph.segmentation.crossval`) and classification cross-validation use these rules.
The folds share the run's time budget unless each has its own: each fold, when it starts, gets an equal share
of what is left after the folds already done, less an allowance for its own planning and validation (the
smallest such overhead measured on the folds before it; a tenth of an equal share before any has run).
"""

from __future__ import annotations

from typing import Any

from segmorph.errors import SegmorphError
from segmorph.progress import console

FIRST_OVERHEAD_SHARE = 0.1  # before any fold has run: planning and validation take about this share of a fold
MIN_FOLD_BUDGET_S = 30.0


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
    used = sum(float(s["wall_s"]) for s in done)
    share = total / max(len(record["folds"]), 1)
    overheads = [float(s["wall_s"]) - float(s["fit_s"]) for s in done]
    overhead = min(overheads) if overheads else FIRST_OVERHEAD_SHARE * share
    budget = (total - used) / max(len(left), 1) - overhead
    if budget < MIN_FOLD_BUDGET_S:
        console.print(f"warning: the time budget is spent; fold {fold} trains for {MIN_FOLD_BUDGET_S:.0f} s",
                      highlight=False)  # fmt: skip
        return MIN_FOLD_BUDGET_S
    return budget
