"""Cross-validation as one workflow: train the chosen folds of one split under one time budget, score every
case out of fold, and choose postprocessing on those out-of-fold predictions.

The folds share the run's time budget (unless ``budget_per_fold``): each fold, when it starts, gets an equal
share of what is left after the time the earlier folds took and an allowance for its own planning and
validation (measured on the folds before it). The folds share one preprocessing cache. A fold whose
``summary.json`` exists is done and is never trained again; a fold with only a last checkpoint is resumed.
The layout of the run folder is in :mod:`segmorph.segmentation.crossval_layout`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from segmorph.errors import SegmorphError
from segmorph.folds import check_crossval_record, fold_budget, read_crossval_record
from segmorph.io import atomic_write_bytes, atomic_write_text, read_image
from segmorph.outputs import check_run_folder
from segmorph.progress import console
from segmorph.records import read_json
from segmorph.segmentation.crossval_layout import (
    CROSSVAL_FILE,
    OUT_OF_FOLD_CSV,
    OUT_OF_FOLD_JSON,
    POSTPROCESSING_FILE,
    TASK,
    fold_folder,
)
from segmorph.segmentation.pipeline import TrainRequest, train_segmentation
from segmorph.segmentation.postprocess_choice import choose_postprocessing, describe


def train_cross_validation(
    request: TrainRequest, folds: Sequence[int], budget_per_fold: bool = False
) -> dict[str, Any]:
    """Train ``folds`` of the ``request.num_folds``-fold split into ``request.out/fold_<k>``, then score out of fold.

    Args:
        request: As for one model; ``out`` is the cross-validation run folder, ``time_budget_s`` the budget of
            every fold together (of each fold with ``budget_per_fold``); ``fold`` and ``val_cases`` are unused.
        folds: Fold numbers to train now (folds already done are skipped).
        budget_per_fold: ``time_budget_s`` is each fold's, not the total.

    Returns:
        The out-of-fold summary (also in ``cross_validation.json``).

    Raises:
        SegmorphError: The folder holds a cross-validation run and ``resume`` is not set, or a different split.
    """
    out = Path(request.out)
    check_run_folder(out, request.dataset, cache=request.cache_dir)
    record = _start_record(out, request, folds, budget_per_fold)
    request = _recorded_configuration(request, record)
    for fold in folds:
        if record["fold_states"].get(str(fold), {}).get("state") == "done":
            console.print(f"fold {fold}: done earlier; skipped", highlight=False)
            continue
        _train_fold(
            out, request, record, fold, first=not any(s.get("state") == "done" for s in record["fold_states"].values())
        )
    return summarize_folds(out, show=request.show_progress)


def _start_record(out: Path, request: TrainRequest, folds: Sequence[int], budget_per_fold: bool) -> dict[str, Any]:
    path = out / CROSSVAL_FILE
    if path.is_file():
        record = read_json(path, "cross-validation record")
        if record.get("task", TASK) != TASK:
            raise SegmorphError(f"holds a {record.get('task')} cross-validation run; choose another --out", out)
        check_crossval_record(record, TASK, path)
        if not request.resume:
            raise SegmorphError(
                "holds a cross-validation run: add --resume to continue it, or choose another --out", out
            )
        if (record.get("num_folds"), record.get("seed")) != (request.num_folds, request.seed):
            raise SegmorphError(f"holds a {record.get('num_folds')}-fold split with seed {record.get('seed')}; "
                                f"asked for {request.num_folds} folds with seed {request.seed}", path)  # fmt: skip
        record["folds"] = sorted(set(record.get("folds", [])) | set(folds))
        return record
    if request.resume:
        raise SegmorphError("--resume: no crossval.json here to continue", out)
    record = {"task": TASK, "num_folds": request.num_folds, "seed": request.seed, "folds": sorted(folds),
              "time_budget_s": request.time_budget_s, "budget_per_fold": budget_per_fold,
              "max_steps": request.max_steps, "configuration": _configuration(request), "fold_states": {}}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _save(out, record)
    return record


def _configuration(request: TrainRequest) -> dict[str, Any]:
    """What makes the folds one configuration: network dimensions, target spacing, plan overrides."""
    spacing = None if request.target_spacing is None else list(request.target_spacing)
    return {"network_dims": request.network_dims, "target_spacing": spacing,
            "overrides": [[key, value] for key, value in request.overrides]}  # fmt: skip


def _recorded_configuration(request: TrainRequest, record: dict[str, Any]) -> TrainRequest:
    """``request`` with the run's recorded configuration, so that folds trained later (``--resume``) match the
    first ones; a different configuration asked for is ignored with one warning line."""
    recorded = record.get("configuration")
    if recorded is None:
        return request
    asked = _configuration(request)
    if request.resume and any(asked[k] not in (None, []) and asked[k] != recorded[k] for k in asked):
        console.print("warning: --resume keeps the run's configuration (network dims, spacing, --set); "
                      "the ones given are ignored", highlight=False)  # fmt: skip
    spacing = recorded["target_spacing"]
    return replace(request, network_dims=recorded["network_dims"],
                   target_spacing=None if spacing is None else tuple(spacing),
                   overrides=tuple((key, value) for key, value in recorded["overrides"]))  # fmt: skip


def _save(out: Path, record: dict[str, Any]) -> None:
    atomic_write_text(out / CROSSVAL_FILE, json.dumps(record, indent=2) + "\n")


def _train_fold(out: Path, request: TrainRequest, record: dict[str, Any], fold: int, first: bool) -> None:
    folder = fold_folder(out, fold)
    resume = (folder / "checkpoint_last.pt").is_file()
    budget = fold_budget(record, fold)
    console.print(f"fold {fold} of {record['num_folds']}: " + ("resuming" if resume else "training")
                  + (f", budget {budget / 60:.1f} min" if budget else ""), highlight=False)  # fmt: skip
    fold_request = replace(
        request, out=folder, fold=fold, val_cases=(), resume=resume, time_budget_s=budget,
        cache_dir=request.cache_dir or out / "preprocessed", check=request.check and first and not resume,
        save_validation_probabilities=True,
    )  # fmt: skip
    started = time.perf_counter()
    record["fold_states"][str(fold)] = {"state": "training", "budget_s": round(budget, 1)}
    _save(out, record)
    summary = train_segmentation(fold_request)
    took = time.perf_counter() - started
    state = record["fold_states"][str(fold)]
    state.update(state="done", wall_s=round(took, 1), fit_s=float(summary["fit"]["elapsed_s"]))
    _save(out, record)
    if not (out / "plan.json").is_file():  # the folds' common plan, where tools look for a run's labels and channels
        atomic_write_bytes(out / "plan.json", (folder / "plan.json").read_bytes())


def summarize_folds(run_dir: str | Path, show: bool = True) -> dict[str, Any]:
    """Gather the done folds' validation metrics into the out-of-fold table and summary, and choose
    postprocessing on the out-of-fold masks.

    Writes ``cross_validation.csv`` (the folds' ``validation/metrics.csv`` rows with a ``fold`` column),
    ``cross_validation.json`` (per class: out-of-fold mean and std over every case, each fold's mean, the mean
    and std of those) and ``postprocessing.json``.
    """
    run_dir = Path(run_dir)
    record = read_crossval_record(run_dir / CROSSVAL_FILE, TASK)
    done = sorted(int(k) for k, s in record["fold_states"].items() if s.get("state") == "done")
    if not done:
        raise SegmorphError("no fold of this cross-validation run is done", run_dir)
    rows = [row for fold in done for row in _fold_rows(run_dir, fold)]
    summary = {"folds": done, "num_folds": record["num_folds"], "cases": len({r["case"] for r in rows}),
               "classes": _class_summary(rows, done)}  # fmt: skip
    summary["mean_dice"] = round(float(np.mean([c["dice_out_of_fold"] for c in summary["classes"].values()])), 5)
    labels = {int(k): c["name"] for k, c in summary["classes"].items()}
    decision = choose_postprocessing(_out_of_fold_pairs(run_dir, done), labels)
    summary["postprocessing"] = describe(decision)
    atomic_write_text(run_dir / OUT_OF_FOLD_CSV, _csv_text(rows))
    atomic_write_text(run_dir / OUT_OF_FOLD_JSON, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / POSTPROCESSING_FILE, json.dumps(decision, indent=2) + "\n")
    if show:
        _print_summary(summary, record)
    return summary


def _fold_rows(run_dir: Path, fold: int) -> list[dict[str, str]]:
    path = fold_folder(run_dir, fold) / "validation" / "metrics.csv"
    if not path.is_file():
        raise SegmorphError("fold has no validation metrics (trained with --no-validate?)", path)
    with path.open(newline="") as handle:
        return [{"fold": str(fold), **row} for row in csv.DictReader(handle)]


def _class_summary(rows: list[dict[str, str]], folds: list[int]) -> dict[str, Any]:
    classes: dict[str, Any] = {}
    for label in sorted({r["label"] for r in rows}, key=int):
        chosen = [r for r in rows if r["label"] == label]
        dice = np.array([float(r["dice"]) for r in chosen])
        per_fold = {str(k): float(np.mean([float(r["dice"]) for r in chosen if r["fold"] == str(k)])) for k in folds}
        fold_means = np.array(list(per_fold.values()))
        classes[label] = {"name": chosen[0]["name"], "cases": len(chosen),
                          "dice_out_of_fold": round(float(dice.mean()), 5), "dice_std": round(float(dice.std()), 5),
                          "dice_per_fold": {k: round(v, 5) for k, v in per_fold.items()},
                          "fold_mean": round(float(fold_means.mean()), 5), "fold_std": round(float(fold_means.std()), 5),
                          "hd95_out_of_fold": round(float(np.mean([float(r["hd95"]) for r in chosen])), 4),
                          "unit": chosen[0].get("unit", "mm")}  # fmt: skip
    return classes


def _out_of_fold_pairs(run_dir: Path, folds: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for fold in folds:
        validation = fold_folder(run_dir, fold) / "validation"
        for path in sorted(validation.glob("*.nii.gz")):
            reference = validation / "reference" / path.name
            pairs.append((read_image(path, is_label=True).numpy()[0], read_image(reference, is_label=True).numpy()[0]))
    return pairs


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _print_summary(summary: dict[str, Any], record: dict[str, Any]) -> None:
    folds = summary["folds"]
    table = Table(title=f"out-of-fold Dice over {summary['cases']} cases ({len(folds)} of {record['num_folds']} folds)")
    table.add_column("class")
    table.add_column("out of fold", justify="right")
    for fold in folds:
        table.add_column(f"fold {fold}", justify="right")
    table.add_column("folds mean ± std", justify="right")
    for label, stats in summary["classes"].items():
        cells = [f"{stats['dice_per_fold'][str(k)]:.4f}" for k in folds]
        table.add_row(f"{label} {stats['name']}", f"{stats['dice_out_of_fold']:.4f} ± {stats['dice_std']:.4f}", *cells,
                      f"{stats['fold_mean']:.4f} ± {stats['fold_std']:.4f}")  # fmt: skip
    console.print(table)
    console.print(f"mean out-of-fold Dice {summary['mean_dice']:.4f}; postprocessing: {summary['postprocessing']}",
                  highlight=False)  # fmt: skip
