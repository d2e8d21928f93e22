"""Classification cross-validation as one workflow: optionally set a grouped hold-out aside, train the chosen
folds of a grouped, stratified k-fold split of the rest under one time budget, pool every image's out-of-fold
probabilities, choose the decision threshold on them, optionally train a final model on every image not held
out, and score the folds' ensemble (and the final model) on the hold-out.

* **Split.** With ``holdout_groups`` F, about F of each class's images (whole groups, seeded by the split
  seed; :func:`segmorph.classification.split.grouped_holdout_split`) are set aside first; no fold trains or
  validates on them. The rest is dealt into ``num_folds`` folds, whole groups, class by class
  (:func:`segmorph.classification.split.grouped_kfold`). ``fold_<k>/`` is an ordinary classification run
  trained on the other folds and validated on fold k.
* **Budget.** The folds share the time budget (:func:`segmorph.folds.fold_budget`) unless ``budget_per_fold``.
  The final model trains for one fold's share (the budget over the number of folds; with
  ``budget_per_fold`` the budget itself), after the folds.
* **Resuming.** A fold marked done in ``crossval.json`` is never trained again; an interrupted fold resumes
  from its last checkpoint, as does an interrupted final model.
* **Threshold.** Youden's J (as a single run chooses it on its validation images) on the pooled out-of-fold
  probabilities: each image scored by the one fold model that never trained on it.

The folder layout is in :mod:`segmorph.classification.crossval_layout`.
"""

from __future__ import annotations

import csv
import io as _io
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from segmorph.classification.config import ClassifierConfig
from segmorph.classification.crossval_layout import (
    CROSSVAL_FILE,
    FINAL_FOLDER,
    HOLDOUT_CSV,
    OUT_OF_FOLD_CSV,
    OUT_OF_FOLD_JSON,
    TASK,
    fold_folder,
)
from segmorph.classification.data import ClassificationDataset, InputSpec, load_inputs
from segmorph.classification.ensemble import load_fold_ensemble, load_run_classifier
from segmorph.classification.pipeline import MODEL_FILE, initial_input_and_network, train_classifier, transfer_check
from segmorph.classification.plots import plot_confusion, plot_roc
from segmorph.classification.request import ClassifyRequest, load_classification_dataset, set_aside, split_seed
from segmorph.classification.split import grouped_kfold
from segmorph.classification.task import predict_probabilities
from segmorph.configs import CONFIG_FILE, config_to_dict
from segmorph.errors import SegmorphError
from segmorph.folds import check_crossval_record, fold_budget, read_crossval_record
from segmorph.io import atomic_write_text
from segmorph.metrics.classification import choose_threshold, classification_report, macro_auc, predict_classes
from segmorph.outputs import check_run_folder
from segmorph.progress import console
from segmorph.records import finite_number, read_csv_rows, read_json

THRESHOLD_RULE = "Youden's J on the pooled out-of-fold probabilities"


def train_cross_validation(
    request: ClassifyRequest, folds: Sequence[int], *, budget_per_fold: bool = False, holdout_groups: float = 0.0,
    final: bool = False, config: ClassifierConfig | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train ``folds`` of the ``request.num_folds``-fold split into ``request.out/fold_<k>``, score out of fold,
    then (``final``) train ``request.out/final`` and (``holdout_groups``) score the hold-out.

    Args:
        request: As for one run; ``out`` is the cross-validation run folder, ``time_budget_s`` the budget of
            every fold together (each fold's with ``budget_per_fold``), ``num_folds`` and the split seed the
            split's, ``resume`` continues the run; ``fold``, ``val_fraction``, ``validate`` and ``threshold``
            are set per fold.
        folds: Fold numbers to train now (folds already done are skipped).
        budget_per_fold: ``time_budget_s`` is each fold's, not the total.
        holdout_groups: Share of each class's images (whole groups) set aside before the folds (0: none).
        final: After the folds, train one model on every image not held out, with the out-of-fold threshold.
        config: The settings ``request`` was made from, written as ``config.json`` of the run and of every fold.

    Returns:
        The out-of-fold summary, with the hold-out figures (also ``cross_validation.json``).

    Raises:
        SegmorphError: The folder holds a cross-validation run and ``resume`` is not set (or is set and it
            holds none), the run's split differs, a class has fewer groups than folds, or bad data.
    """
    out = Path(request.out)
    if not 0.0 <= holdout_groups < 1.0:
        raise SegmorphError(f"holdout groups: expected a share in [0, 1), got {holdout_groups}")
    check_run_folder(out, request.dataset, request.labels, request.init)
    request = replace(request, holdout_groups=holdout_groups, fold=None, validate=True, threshold=None)
    record = _read_record(out, request)
    if record is not None and request.class_names is None and record.get("named_classes"):
        request = replace(request, class_names=tuple(record["named_classes"]))  # --class-names of the start
    if record is not None and request.init is None and record.get("init"):
        request = replace(request, init=Path(record["init"]))  # --init of the start, for folds not started yet
    dataset = load_classification_dataset(request)
    development, held_out = _check_split(dataset, request)
    if record is None:  # an --init that does not fit is refused before anything is written
        transfer_check(request, initial_input_and_network(request, dataset)[1])
    record = _start_record(out, request, record, dataset, folds, budget_per_fold, final, held_out)
    if config is not None:
        atomic_write_text(out / CONFIG_FILE, json.dumps(config_to_dict(config), indent=2) + "\n")
    for fold in folds:
        if record["fold_states"].get(str(fold), {}).get("state") == "done":
            console.print(f"fold {fold}: done earlier; skipped", highlight=False)
            continue
        first = not any(s.get("state") == "done" for s in record["fold_states"].values())
        _train_fold(out, request, record, fold, first, config)
    summary = summarize_out_of_fold(out, show=request.show_progress)
    if record["final"]:
        _train_final(out, request, record, summary["threshold"], config)
    if held_out:
        summary["holdout"] = score_holdout(out, dataset, held_out, summary["threshold"], request.device)
        atomic_write_text(out / OUT_OF_FOLD_JSON, json.dumps(summary, indent=2) + "\n")
        if request.show_progress:
            print_holdout(summary["holdout"], dataset.class_names)
    return summary


def _check_split(dataset: ClassificationDataset, request: ClassifyRequest) -> tuple[list[int], list[int]]:
    """``(development, held out)`` indices; refuses a split a fold could not make, before anything trains."""
    development, held_out = set_aside(dataset, request)
    labels = [dataset.labels[i] for i in development]
    groups = [dataset.groups[i] for i in development]
    grouped_kfold(labels, groups, request.num_folds, split_seed(request), dataset.class_names)
    return development, held_out


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _read_record(out: Path, request: ClassifyRequest) -> dict[str, Any] | None:
    path = out / CROSSVAL_FILE
    if not path.is_file():
        if request.resume:
            raise SegmorphError("--resume: no crossval.json here to continue", out)
        return None
    record = read_json(path, "cross-validation record")
    if not request.resume:
        raise SegmorphError("holds a cross-validation run: add --resume to continue it, or choose another --out", out)
    if record.get("task") != TASK:
        raise SegmorphError("is not a classification cross-validation run (crossval.json's task)", path)
    check_crossval_record(record, TASK, path)
    asked = {"num_folds": request.num_folds, "split_seed": split_seed(request),
             "holdout_groups": request.holdout_groups}  # fmt: skip
    found = {key: record.get(key) for key in asked}
    if found != asked:
        raise SegmorphError(f"holds a split with {found}; asked for {asked}", path)
    return record


def _start_record(
    out: Path, request: ClassifyRequest, record: dict[str, Any] | None, dataset: ClassificationDataset,
    folds: Sequence[int], budget_per_fold: bool, final: bool, held_out: list[int],
) -> dict[str, Any]:  # fmt: skip
    images = [_relative(dataset.items[i].path, dataset.root) for i in held_out]
    if record is not None:
        if record.get("holdout", {}).get("images", []) != images:
            raise SegmorphError("the hold-out images differ from the run's (did the dataset change?)",
                                out / CROSSVAL_FILE)  # fmt: skip
        record["folds"] = sorted(set(record.get("folds", [])) | set(folds))
        record["final"] = bool(record.get("final")) or final
        _save(out, record)
        return record
    record = {"task": TASK, "num_folds": request.num_folds, "split_seed": split_seed(request),
              "holdout_groups": request.holdout_groups, "folds": sorted(folds),
              "time_budget_s": request.time_budget_s, "budget_per_fold": budget_per_fold,
              "max_steps": request.max_steps, "final": final, "class_names": list(dataset.class_names),
              "named_classes": None if request.class_names is None else list(request.class_names),
              "holdout": {"share": request.holdout_groups, "images": images}, "fold_states": {},
              "init": None if request.init is None else str(request.init),
              "final_state": {}}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _save(out, record)
    return record


def _save(out: Path, record: dict[str, Any]) -> None:
    atomic_write_text(out / CROSSVAL_FILE, json.dumps(record, indent=2) + "\n")


def _started(folder: Path) -> bool:
    """Whether a run folder holds a last checkpoint to resume (its own, or its first ensemble member's)."""
    return (folder / "checkpoint_last.pt").is_file() or (folder / "member_0" / "checkpoint_last.pt").is_file()


def _train_fold(
    out: Path, request: ClassifyRequest, record: dict[str, Any], fold: int, first: bool,
    config: ClassifierConfig | None,
) -> None:  # fmt: skip
    folder = fold_folder(out, fold)
    resume = _started(folder)
    budget = fold_budget(record, fold)
    console.print(f"fold {fold} of {record['num_folds']}: " + ("resuming" if resume else "training")
                  + (f", budget {budget / 60:.1f} min" if budget else ""), highlight=False, soft_wrap=True)  # fmt: skip
    fold_request = replace(request, out=folder, fold=fold, resume=resume, time_budget_s=budget,
                           check=request.check and first and not resume)  # fmt: skip
    started = time.perf_counter()
    record["fold_states"][str(fold)] = {"state": "training", "budget_s": round(budget, 1)}
    _save(out, record)
    summary = train_classifier(fold_request, config)
    state = record["fold_states"][str(fold)]
    state.update(state="done", wall_s=round(time.perf_counter() - started, 1), fit_s=float(summary["fit"]["elapsed_s"]))
    _save(out, record)


def final_budget(record: dict[str, Any]) -> float:
    """The final model's training time in seconds: one fold's share of the budget (the budget itself when it
    is per fold; 0 when only a step limit is given)."""
    total = float(record["time_budget_s"])
    return total if record["budget_per_fold"] else total / max(len(record["folds"]), 1)


def _train_final(
    out: Path, request: ClassifyRequest, record: dict[str, Any], threshold: float | None,
    config: ClassifierConfig | None,
) -> None:  # fmt: skip
    if record["final_state"].get("state") == "done":
        console.print("final model: done earlier; skipped", highlight=False)
        return
    folder = out / FINAL_FOLDER
    resume = _started(folder)
    budget = final_budget(record)
    console.print("final model on every image not held out: " + ("resuming" if resume else "training")
                  + (f", budget {budget / 60:.1f} min" if budget else ""), highlight=False, soft_wrap=True)  # fmt: skip
    final_request = replace(request, out=folder, fold=None, validate=False, threshold=threshold, resume=resume,
                            time_budget_s=budget, check=False)  # fmt: skip
    record["final_state"] = {"state": "training", "budget_s": round(budget, 1)}
    _save(out, record)
    started = time.perf_counter()
    summary = train_classifier(final_request, config)
    record["final_state"].update(state="done", wall_s=round(time.perf_counter() - started, 1),
                                 fit_s=float(summary["fit"]["elapsed_s"]))  # fmt: skip
    _save(out, record)


def summarize_out_of_fold(run_dir: str | Path, show: bool = True) -> dict[str, Any]:
    """Pool the done folds' validation probabilities, choose the threshold on them, and write
    ``cross_validation.csv``, ``cross_validation.json``, ``roc.png`` and ``confusion.png``.

    Returns:
        ``folds``, ``num_folds``, ``images``, ``class_names``, ``threshold`` (None: argmax, more than two
        classes), ``threshold_rule``, ``out_of_fold`` (the pooled metrics at that threshold, see
        :func:`segmorph.metrics.classification.classification_report`), ``per_fold`` (fold -> images, AUC,
        balanced accuracy at the pooled threshold, steps), ``fold_auc_mean`` and ``fold_auc_std``.

    Raises:
        SegmorphError: No fold is done, or a fold's records are missing or unreadable.
    """
    run_dir = Path(run_dir)
    record = read_crossval_record(run_dir / CROSSVAL_FILE, TASK)
    done = sorted(int(k) for k, s in record["fold_states"].items() if s.get("state") == "done")
    if not done:
        raise SegmorphError("no fold of this cross-validation run is done", run_dir)
    names = [str(n) for n in read_json(fold_folder(run_dir, done[0]) / "summary.json", "run summary")["class_names"]]
    rows = [row for fold in done for row in _fold_rows(run_dir, fold, names)]
    probabilities = np.array([[row[f"p_{n}"] for n in names] for row in rows], dtype=np.float64)
    labels = np.array([row["label"] for row in rows], dtype=np.int64)
    threshold = choose_threshold(probabilities[:, 1], labels) if len(names) == 2 else None
    predicted = predict_classes(probabilities, threshold)
    per_fold = {str(k): _fold_figures(run_dir, k, rows, probabilities, labels, threshold) for k in done}
    aucs = np.array([f["auc"] for f in per_fold.values() if f["auc"] is not None], dtype=np.float64)
    summary = {
        "task": TASK, "folds": done, "num_folds": record["num_folds"], "images": len(rows), "class_names": names,
        "threshold": None if threshold is None else round(float(threshold), 6), "threshold_rule": THRESHOLD_RULE,
        "out_of_fold": classification_report(probabilities, labels, threshold), "per_fold": per_fold,
        "fold_auc_mean": round(float(aucs.mean()), 5) if aucs.size else None,
        "fold_auc_std": round(float(aucs.std()), 5) if aucs.size else None,
    }  # fmt: skip
    table = [_csv_row(row, names[label], names) for row, label in zip(rows, predicted)]
    atomic_write_text(run_dir / OUT_OF_FOLD_CSV, _csv_text(table))
    atomic_write_text(run_dir / OUT_OF_FOLD_JSON, json.dumps(summary, indent=2) + "\n")
    plot_roc(probabilities, labels, names, run_dir / "roc.png", threshold)
    title = f"out of fold, threshold {threshold:.3f}" if threshold is not None else "out of fold (argmax)"
    plot_confusion(np.asarray(summary["out_of_fold"]["confusion_matrix"]), names, run_dir / "confusion.png", title)
    if show:
        print_out_of_fold(summary)
    return summary


def _fold_rows(run_dir: Path, fold: int, names: list[str]) -> list[dict[str, Any]]:
    """A fold's validation images: ``fold``, ``image``, ``group``, ``true``, ``label`` (index), ``p_<class>``."""
    path = fold_folder(run_dir, fold) / "val_predictions.csv"
    columns = ["file", "group", "true", *(f"p_{n}" for n in names)]
    rows = []
    for number, row in enumerate(read_csv_rows(path, columns, "validation predictions"), start=2):
        if row["true"] not in names:
            raise SegmorphError(f"line {number}: unknown class {row['true']!r} (classes: {', '.join(names)})", path)
        rows.append({"fold": fold, "image": row["file"], "group": row["group"], "true": row["true"],
                     "label": names.index(row["true"]),
                     **{f"p_{n}": finite_number(row[f"p_{n}"], f"line {number}, p_{n}", path) for n in names}})  # fmt: skip
    return rows


def _fold_figures(
    run_dir: Path, fold: int, rows: list[dict[str, Any]], probabilities: np.ndarray, labels: np.ndarray,
    threshold: float | None,
) -> dict[str, Any]:  # fmt: skip
    mine = np.array([row["fold"] == fold for row in rows])
    report = classification_report(probabilities[mine], labels[mine], threshold)
    fit = read_json(fold_folder(run_dir, fold) / "summary.json", "run summary").get("fit") or {}
    auc = macro_auc(probabilities[mine], labels[mine])
    return {"images": int(mine.sum()), "auc": round(float(auc), 5) if np.isfinite(auc) else None,
            "balanced_accuracy": report["balanced_accuracy"], "steps": fit.get("steps"),
            "elapsed_s": fit.get("elapsed_s")}  # fmt: skip


def _csv_row(row: dict[str, Any], predicted: str, names: list[str]) -> dict[str, Any]:
    return {"fold": row["fold"], "image": row["image"], "group": row["group"], "true": row["true"],
            "predicted": predicted, **{f"p_{n}": row[f"p_{n}"] for n in names}}  # fmt: skip


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def score_holdout(
    run_dir: str | Path, dataset: ClassificationDataset, held_out: Sequence[int], threshold: float | None,
    device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Score the folds' ensemble (and the final model, when trained) on the held-out images at the
    out-of-fold ``threshold``; write ``holdout_predictions.csv``.

    Returns:
        ``images`` and, per model (``"ensemble"``, ``"final"``), its
        :func:`~segmorph.metrics.classification.classification_report` (AUC, balanced accuracy, confusion
        matrix, ...), with ``folds`` for the ensemble.
    """
    run_dir = Path(run_dir)
    names = list(dataset.class_names)
    paths = [dataset.items[i].path for i in held_out]
    labels = np.array([dataset.items[i].label for i in held_out], dtype=np.int64)
    ensemble = load_fold_ensemble(run_dir, device=device)
    models = {"ensemble": ensemble}
    if (run_dir / FINAL_FOLDER / MODEL_FILE).is_file():
        models["final"] = load_run_classifier(run_dir, device, use="final")
    results: dict[str, Any] = {"images": len(held_out)}
    columns: dict[str, np.ndarray] = {}
    for key, loaded in models.items():
        images = load_inputs(paths, InputSpec.from_dict(loaded.facts["input"]), show_progress=False)
        probabilities = predict_probabilities(loaded.model, images, torch.device(device),
                                              mirror=loaded.facts.get("mirror", False),
                                              shift=loaded.facts.get("shift", 0.0)).numpy()  # fmt: skip
        results[key] = classification_report(probabilities, labels, threshold)
        columns[key] = probabilities
    results["ensemble"]["folds"] = list(ensemble.folds)
    rows = []
    for row, index in enumerate(held_out):
        item = dataset.items[index]
        cells = {"image": _relative(item.path, dataset.root), "group": item.group, "true": names[item.label]}
        for key, probabilities in columns.items():
            cells[f"{key}_predicted"] = names[int(predict_classes(probabilities[row : row + 1], threshold)[0])]
            cells.update({f"{key}_p_{n}": round(float(p), 6) for n, p in zip(names, probabilities[row])})
        rows.append(cells)
    atomic_write_text(run_dir / HOLDOUT_CSV, _csv_text(rows))
    return results


def print_out_of_fold(summary: dict[str, Any]) -> None:
    """The per-fold and pooled out-of-fold figures as a console table and one line."""
    folds = summary["folds"]
    table = Table(title=f"out-of-fold scores over {summary['images']} images ({len(folds)} of "
                        f"{summary['num_folds']} folds)")  # fmt: skip
    for column in ("fold", "images", "ROC AUC", "balanced accuracy", "steps"):
        table.add_column(column, justify="right")
    for fold in folds:
        figures = summary["per_fold"][str(fold)]
        table.add_row(str(fold), str(figures["images"]), _number(figures["auc"]),
                      _number(figures["balanced_accuracy"]), str(figures["steps"]))  # fmt: skip
    pooled = summary["out_of_fold"]
    table.add_row("pooled", str(pooled["n"]), _number(pooled["auc"]), _number(pooled["balanced_accuracy"]), "")
    console.print(table)
    threshold = summary["threshold"]
    at = f"at threshold {threshold:.3f} ({summary['threshold_rule']})" if threshold is not None else "at argmax"
    console.print(f"out of fold: ROC AUC {_number(pooled['auc'])}, balanced accuracy "
                  f"{_number(pooled['balanced_accuracy'])} {at}; fold AUC {_number(summary['fold_auc_mean'])} ± "
                  f"{_number(summary['fold_auc_std'])}", highlight=False, soft_wrap=True)  # fmt: skip


def print_holdout(holdout: dict[str, Any], class_names: Sequence[str]) -> None:
    """The hold-out figures of the ensemble (and the final model): AUC, balanced accuracy, confusion matrix."""
    for key in ("ensemble", "final"):
        if key not in holdout:
            continue
        report = holdout[key]
        who = f"ensemble of folds {', '.join(map(str, report['folds']))}" if key == "ensemble" else "final model"
        matrix = "; ".join(f"true {name}: " + " ".join(str(v) for v in row)
                           for name, row in zip(class_names, report["confusion_matrix"]))  # fmt: skip
        console.print(f"hold-out ({holdout['images']} images), {who}: ROC AUC {_number(report['auc'])}, balanced "
                      f"accuracy {_number(report['balanced_accuracy'])} at the out-of-fold threshold; confusion "
                      f"(rows true, columns predicted {' '.join(class_names)}): {matrix}", highlight=False, soft_wrap=True)  # fmt: skip


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
