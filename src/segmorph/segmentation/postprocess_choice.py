"""Postprocessing chosen on out-of-fold predictions, per class, as nnU-Net does.

For each foreground class the candidates are: nothing; keeping only the largest connected component; and
removing components smaller than a few sizes derived from the references (a tenth, a quarter and half of
the 5th percentile of the reference components' sizes). A candidate is chosen only when it raises the
class's mean Dice over the out-of-fold cases; ties and losses keep the prediction as it is, so a decision
that lowers Dice is never taken. Classes are independent: a clean-up of class ``c`` turns only ``c``
voxels into background, so it changes no other class's Dice.

The decision (``postprocessing.json`` of a cross-validation run) is a dict::

    {"classes": {"1": {"name": "Anterior", "method": "largest_component" | "min_size" | "none",
                       "min_voxels": 0, "dice_before": 0.88, "dice_after": 0.89, "candidates": {...}}},
     "cases": 208}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cc3d
import numpy as np

from segmorph.errors import SegmorphError
from segmorph.metrics.segmentation import dice_score
from segmorph.segmentation.postprocess import keep_largest_component

METHODS = ("none", "largest_component", "min_size")
SIZE_FRACTIONS = (0.1, 0.25, 0.5)

Pair = tuple[np.ndarray, np.ndarray]  # (prediction (*S), reference (*S)) integer label maps of one case


def choose_postprocessing(pairs: Sequence[Pair], labels: Mapping[int, str]) -> dict[str, Any]:
    """Per class, the clean-up that raises out-of-fold mean Dice most (or none), with its evidence.

    Args:
        pairs: ``(prediction, reference)`` label maps ``(*S)`` of every out-of-fold case.
        labels: Foreground label value -> name.

    Returns:
        The decision (see the module docstring); Dice values rounded to 5 decimals.
    """
    if not pairs:
        raise SegmorphError("postprocessing: no out-of-fold predictions to choose on")
    classes = {}
    for value, name in sorted(labels.items()):
        if int(value) == 0:
            continue
        classes[str(value)] = {"name": name, **_choose_for_class(pairs, int(value))}
    return {"classes": classes, "cases": len(pairs)}


def _choose_for_class(pairs: Sequence[Pair], value: int) -> dict[str, Any]:
    candidates = {"none": (0, _mean_dice(pairs, value, None))}
    candidates["largest_component"] = (0, _mean_dice(pairs, value, ("largest_component", 0)))
    for size in _size_candidates(pairs, value):
        candidates[f"min_size:{size}"] = (size, _mean_dice(pairs, value, ("min_size", size)))
    before = candidates["none"][1]
    best_key = max(candidates, key=lambda key: (candidates[key][1], key == "none"))
    if candidates[best_key][1] <= before:
        best_key = "none"
    size, after = candidates[best_key]
    return {"method": best_key.split(":")[0], "min_voxels": int(size), "dice_before": round(before, 5),
            "dice_after": round(after, 5), "candidates": {k: round(v[1], 5) for k, v in candidates.items()}}  # fmt: skip


def _size_candidates(pairs: Sequence[Pair], value: int) -> list[int]:
    sizes = np.concatenate([_component_sizes(reference == value) for _, reference in pairs] or [np.zeros(0)])
    if sizes.size == 0:
        return []
    typical_small = float(np.percentile(sizes, 5))
    return sorted({int(round(typical_small * f)) for f in SIZE_FRACTIONS} - {0, 1})


def _component_sizes(mask: np.ndarray) -> np.ndarray:
    components, count = cc3d.connected_components(np.ascontiguousarray(mask.astype(np.uint8)),
                                                  connectivity=26 if mask.ndim == 3 else 8, return_N=True)  # fmt: skip
    return np.bincount(components.ravel(), minlength=count + 1)[1:]


def _mean_dice(pairs: Sequence[Pair], value: int, step: tuple[str, int] | None) -> float:
    scores = []
    for prediction, reference in pairs:
        cleaned = prediction if step is None else clean_class(prediction, value, *step)
        scores.append(dice_score(cleaned == value, reference == value))
    return float(np.mean(scores))


def clean_class(labels: np.ndarray, value: int, method: str, min_voxels: int = 0) -> np.ndarray:
    """``labels`` ``(*S)`` with one class cleaned: ``largest_component``, ``min_size`` (components of that class
    under ``min_voxels`` voxels removed) or ``none``; removed voxels become background (0)."""
    if method == "none":
        return labels
    if method == "largest_component":
        return keep_largest_component(labels, [value])
    if method == "min_size":
        mask = labels == value
        components = cc3d.connected_components(np.ascontiguousarray(mask.astype(np.uint8)),
                                               connectivity=26 if labels.ndim == 3 else 8)  # fmt: skip
        small = np.bincount(components.ravel())[components] < min_voxels
        out = labels.copy()
        out[mask & small] = 0
        return out
    raise SegmorphError(f"postprocessing: unknown method {method!r} (expected one of {', '.join(METHODS)})")


def check_decision(decision: Any, labels: Iterable[int], path: str | Path) -> dict[str, Any]:
    """A decision read from ``path`` (a run's ``postprocessing.json``), checked before anything applies it.

    Args:
        decision: The parsed JSON.
        labels: The run's label values; the decision's classes must be foreground values among them.
        path: The file, for messages.

    Returns:
        ``decision``, unchanged.

    Raises:
        SegmorphError: Naming ``path``: not an object with a ``classes`` object; a class key that is not a
            foreground label of the run; a class entry that is not an object; a method not in :data:`METHODS`;
            ``min_voxels`` not a whole number >= 0; a Dice (``dice_before``, ``dice_after``, ``candidates``)
            that is not a finite number.
    """
    if not isinstance(decision, Mapping) or not isinstance(decision.get("classes"), Mapping):
        raise SegmorphError('expected {"classes": {label value: clean-up, ...}}', path)
    foreground = sorted(int(v) for v in labels if int(v) > 0)
    for key, choice in decision["classes"].items():
        where = f"classes: {key!r}"
        if not (isinstance(key, str) and key.isdigit() and int(key) in foreground):
            raise SegmorphError(f"{where} is not a foreground label of the run ({', '.join(map(str, foreground))})",
                                path)  # fmt: skip
        if not isinstance(choice, Mapping):
            raise SegmorphError(f"{where}: expected an object with a method, got {type(choice).__name__}", path)
        _check_choice(choice, where, path)
    return dict(decision)


def _check_choice(choice: Mapping[str, Any], where: str, path: str | Path) -> None:
    method = choice.get("method")
    if method not in METHODS:
        raise SegmorphError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}", path)
    size = choice.get("min_voxels", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SegmorphError(f"{where}: min_voxels {size!r} is not a whole number >= 0", path)
    candidates = choice.get("candidates", {})
    if not isinstance(candidates, Mapping):
        raise SegmorphError(f"{where}: candidates must be an object of Dice values", path)
    named = {"dice_before": choice.get("dice_before", 0.0), "dice_after": choice.get("dice_after", 0.0)}
    for name, value in {**named, **{f"candidates {k!r}": v for k, v in candidates.items()}}.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SegmorphError(f"{where}: {name} {value!r} is not a finite number", path)
    if not isinstance(choice.get("name", ""), str):
        raise SegmorphError(f"{where}: name must be a string", path)


def apply_postprocessing(labels: np.ndarray, decision: Mapping[str, Any]) -> np.ndarray:
    """Apply a decision of :func:`choose_postprocessing` (or one read and passed through :func:`check_decision`)
    to a label map ``(*S)``; returns a new map."""
    for value, choice in decision.get("classes", {}).items():
        labels = clean_class(labels, int(value), str(choice.get("method", "none")), int(choice.get("min_voxels", 0)))
    return labels


def describe(decision: Mapping[str, Any]) -> str:
    """One line: ``Anterior: largest component (Dice 0.8812 -> 0.8830); Posterior: none``."""
    parts = []
    for choice in decision.get("classes", {}).values():
        method = choice["method"]
        text = {"none": "none", "largest_component": "largest component"}.get(
            method, f"remove < {choice['min_voxels']} voxels"
        )
        if method != "none":
            text += f" (Dice {choice['dice_before']:.4f} -> {choice['dice_after']:.4f})"
        parts.append(f"{choice['name']}: {text}")
    return "; ".join(parts)
