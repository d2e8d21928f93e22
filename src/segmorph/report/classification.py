"""Report of a classification run (``segmorph classify train``): metrics, ROC, confusion, worst images.

The worst validation images are the most confidently wrong ones: misclassified rows of
``val_predictions.csv`` sorted by the probability given to their true class, lowest first. Their
paths are relative to the dataset folder named in ``run.json``.

A cross-validation run (``classify train --folds``; layout in :mod:`segmorph.classification.crossval_layout`)
shows the per-fold and pooled out-of-fold figures with the threshold chosen on them, the hold-out figures of
the folds' ensemble (and of the final model), each fold's training curves and the most confidently wrong
out-of-fold images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segmorph.classification.crossval_layout import (
    CROSSVAL_FILE,
    FINAL_FOLDER,
    OUT_OF_FOLD_CSV,
    OUT_OF_FOLD_JSON,
    fold_folder,
    is_classification_cross_validation,
)
from segmorph.errors import SegmorphError
from segmorph.io import read_image
from segmorph.report.common import curves, embedded_png, number, read_csv, read_json, run_facts
from segmorph.report.html import Markup, Section, facts_table, fmt, image, join, json_details, note, table, tag
from segmorph.report.slices import thumbnail

METRICS = (("auc", "ROC AUC"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
           ("precision", "precision"), ("recall", "recall (sensitivity)"), ("specificity", "specificity"),
           ("f1", "F1"), ("n", "images"))  # fmt: skip


def is_classification_run(folder: Path) -> bool:
    """A ``segmorph classify train`` run folder (one model, or a cross-validation run)."""
    if is_classification_cross_validation(folder):
        return True
    if (folder / "classifier.pt").is_file() or (folder / "val_predictions.csv").is_file():
        return True
    record = read_json(folder / "run.json")
    return isinstance(record, dict) and "class_names" in record and not (folder / "plan.json").exists()


def classification_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a classification run's report, with the ``cases`` worst validation images."""
    if is_classification_cross_validation(run_dir):
        return cross_validation_report(run_dir, cases)
    summary = read_json(run_dir / "summary.json") or {}
    record = read_json(run_dir / "run.json") or {}
    named = (("roc.png", "ROC curve (validation)"), ("confusion.png", "confusion matrix (validation)"))
    pictures = [embedded_png(run_dir / name, caption) for name, caption in named]
    sections = [
        Section("overview", "Overview", _overview(run_dir, summary, record), narrow=True),
        Section("metrics", "Validation metrics", _metrics(summary), narrow=True),
        Section("plots", "ROC and confusion", join([p for p in pictures if p is not None]) if any(pictures)
         else note("no roc.png or confusion.png in the run folder")),
        Section("curves", "Training curves", _curves(run_dir)),
        Section("worst", "Most confidently wrong validation images", _worst(run_dir, record, cases)),
        Section("run", "Run record", _run_block(record)),
    ]  # fmt: skip
    return "Classification run", sections


def _curves(run_dir: Path) -> Markup:
    """The run's training curves; for an ensemble (``--ensemble N``), each member's from ``member_<k>/``."""
    members = sorted(run_dir.glob("member_*/train_log.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if (run_dir / "train_log.csv").is_file() or not members:
        return curves(run_dir, "validation AUC")
    return join([curves(log.parent, f"{log.parent.name}: validation AUC") for log in members])


def _overview(run_dir: Path, summary: dict, record: dict) -> Markup:
    fit = summary.get("fit") or {}
    network = summary.get("network") or record.get("network") or {}
    facts = {
        "run folder": str(run_dir.resolve()), "dataset": record.get("dataset"),
        "classes": summary.get("class_names") or record.get("class_names"), "class counts": record.get("class_counts"),
        "network": f"{network.get('name')} {network.get('ndim')}D" if network else None,
        "input": summary.get("input") or record.get("input"), "decision threshold": summary.get("threshold"),
        "kept weights": summary.get("kept_weights", "best"), "scoring views": summary.get("scoring_views"),
        "best per-epoch validation AUC": fit.get("best_val_auc"), "best epoch": fit.get("best_epoch"),
        "steps": fit.get("steps"),
        "training time": f"{fit['elapsed_s'] / 60:.1f} min" if isinstance(fit.get("elapsed_s"), (int, float)) else None,
        "stopped because": fit.get("stopped_because"), "precision": fit.get("precision"),
        "train images": summary.get("train_images"),
        "validation images": summary.get("val_images"),
    }  # fmt: skip
    return facts_table(facts)


def _metrics(summary: dict) -> Markup:
    at_threshold = summary.get("validation") or {}
    at_argmax = summary.get("validation_at_argmax") or {}
    if not at_threshold and not at_argmax:
        return note("summary.json holds no validation metrics")
    threshold = at_threshold.get("threshold")
    first = f"at threshold {threshold:.4f}" if isinstance(threshold, (int, float)) else "at the run's threshold"
    rows = [[name, at_threshold.get(key), at_argmax.get(key)] for key, name in METRICS]
    parts = [table(["metric", first, "at argmax"], rows)]
    names = summary.get("class_names") or []
    matrix = at_threshold.get("confusion_matrix")
    if isinstance(matrix, list) and matrix:
        labels = [str(n) for n in names] if len(names) == len(matrix) else [str(i) for i in range(len(matrix))]
        header = ["true \\ predicted", *labels]
        parts.append(table(header, [[labels[i], *row] for i, row in enumerate(matrix)]))
    parts.append(note("the threshold is chosen on these validation images, so these numbers are slightly optimistic"))
    return join(parts)


def worst_predictions(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Misclassified rows, lowest probability of the true class first, with ``p_true`` added."""
    wrong = []
    for row in rows:
        if row.get("true") == row.get("predicted"):
            continue
        wrong.append({**row, "p_true": number(row.get(f"p_{row.get('true')}"))})
    return sorted(wrong, key=lambda r: (math.isnan(r["p_true"]), r["p_true"]))


def _worst(run_dir: Path, record: dict, count: int) -> Markup:
    rows = read_csv(run_dir / "val_predictions.csv")
    if rows is None:
        return note("no val_predictions.csv in the run folder")
    return _worst_cards(rows, Path(str(record.get("dataset") or run_dir)), count, "validation")


def _worst_cards(rows: list[dict[str, str]], root: Path, count: int, kind: str) -> Markup:
    wrong = worst_predictions(rows)
    if not wrong:
        return note(f"all {len(rows)} {kind} images are classified correctly")
    cards = [_card(rank, row, root) for rank, row in enumerate(wrong[:count], start=1)]
    return join([
        note(f"{len(wrong)} of {len(rows)} {kind} images are misclassified; the {len(cards)} given the "
             "lowest probability of their true class are shown, most confidently wrong first."),
        tag("div", join(cards), class_="cards"),
    ])  # fmt: skip


def _card(rank: int, row: dict[str, Any], root: Path) -> Markup:
    verdict = f"true {row.get('true')}, predicted {row.get('predicted')}, p(true) {fmt(row['p_true'])}"
    caption = join([tag("b", f"#{rank} "), str(row.get("file")), Markup("<br>"), verdict])
    return tag("figure", join([_thumbnail(root, str(row.get("file", ""))), tag("figcaption", caption)]))


def _thumbnail(root: Path, name: str) -> Markup:
    path = Path(name) if Path(name).is_absolute() else root / name
    try:
        uri, width, height = thumbnail(read_image(path).numpy())
    except (SegmorphError, ValueError, OSError):
        return tag("div", "(image not readable)", class_="note")
    return image(uri, name, width, height, class_="thumb")


def _run_block(record: dict) -> Markup:
    if not record:
        return note("run.json is missing or unreadable")
    keys = ("command", "time", "segmorph", "python", "torch", "numpy", "seed")
    facts = run_facts(record, keys)
    split = record.get("split")
    if isinstance(split, dict):
        train, val = len(split.get("train") or []), len(split.get("val") or [])
        facts["split"] = f"{split.get('kind')}: {train} train / {val} val"
    return join([facts_table(facts), json_details("run.json", record)])


# -- cross-validation runs ----------------------------------------------------------------------------------
def cross_validation_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a classification cross-validation run's report (``cases`` worst out-of-fold images)."""
    record = read_json(run_dir / CROSSVAL_FILE) or {}
    summary = read_json(run_dir / OUT_OF_FOLD_JSON) or {}
    done = [int(k) for k, s in sorted((record.get("fold_states") or {}).items()) if s.get("state") == "done"]
    first = read_json(fold_folder(run_dir, done[0]) / "run.json") if done else None
    named = (("roc.png", "ROC curve (pooled out of fold)"), ("confusion.png", "confusion matrix (out of fold)"))
    pictures = [embedded_png(run_dir / name, caption) for name, caption in named]
    sections = [
        Section("overview", "Overview", _cv_overview(run_dir, record, summary, first or {}), narrow=True),
        Section("folds", "Out-of-fold metrics", _cv_folds(summary), narrow=True),
        Section("holdout", "Hold-out", _cv_holdout(summary), narrow=True),
        Section("plots", "ROC and confusion", join([p for p in pictures if p is not None]) if any(pictures)
                else note("no roc.png or confusion.png in the run folder")),
        Section("curves", "Training curves", _cv_curves(run_dir, done)),
        Section("worst", "Most confidently wrong out-of-fold images", _cv_worst(run_dir, first or {}, cases)),
        Section("run", "Run record", json_details(CROSSVAL_FILE, record) if record else note("no crossval.json")),
    ]  # fmt: skip
    return "Classification cross-validation run", sections


def _cv_curves(run_dir: Path, done: list[int]) -> Markup:
    if not done:
        return note("no fold is done")
    parts = [join([tag("h3", f"fold {k}"), _curves(fold_folder(run_dir, k))]) for k in done]  # members too
    return join(parts)


def _cv_overview(run_dir: Path, record: dict, summary: dict, first: dict) -> Markup:
    holdout = record.get("holdout") or {}
    budget = record.get("time_budget_s")
    final = record.get("final_state") or {}
    facts = {
        "run folder": str(run_dir.resolve()), "dataset": first.get("dataset"),
        "classes": summary.get("class_names") or record.get("class_names"),
        "folds done": f"{', '.join(map(str, summary.get('folds') or []))} of {record.get('num_folds')}",
        "split seed": record.get("split_seed"),
        "hold-out": f"{len(holdout.get('images') or [])} images (share {holdout.get('share')})" if holdout else None,
        "time budget": (f"{budget / 60:.1f} min " + ("per fold" if record.get("budget_per_fold") else "for all folds"))
        if isinstance(budget, (int, float)) and budget > 0 else "none (step limit)",
        "decision threshold": summary.get("threshold"), "threshold chosen by": summary.get("threshold_rule"),
        "final model": f"{FINAL_FOLDER}/ ({final.get('state')})" if final.get("state") else "not trained",
    }  # fmt: skip
    return facts_table(facts)


def _cv_folds(summary: dict) -> Markup:
    pooled = summary.get("out_of_fold") or {}
    per_fold = summary.get("per_fold") or {}
    if not pooled:
        return note("cross_validation.json holds no out-of-fold metrics")
    rows = [[f"fold {k}", f.get("images"), f.get("auc"), f.get("balanced_accuracy"), f.get("steps"),
             f.get("elapsed_s")] for k, f in per_fold.items()]  # fmt: skip
    rows.append(["pooled out of fold", pooled.get("n"), pooled.get("auc"), pooled.get("balanced_accuracy"), "", ""])
    parts = [table(["", "images", "ROC AUC", "balanced accuracy", "steps", "training s"], rows),
             note(f"fold AUC {fmt(summary.get('fold_auc_mean'))} ± {fmt(summary.get('fold_auc_std'))} (mean ± std "
                  "over folds); balanced accuracies at the pooled out-of-fold threshold"),
             table(["metric", "pooled out of fold"], [[name, pooled.get(key)] for key, name in METRICS])]  # fmt: skip
    parts.append(_confusion(pooled.get("confusion_matrix"), summary.get("class_names") or []))
    return join(parts)


def _cv_holdout(summary: dict) -> Markup:
    holdout = summary.get("holdout")
    if not holdout:
        return note("no hold-out: the run was trained without --holdout-groups")
    models = [key for key in ("ensemble", "final") if isinstance(holdout.get(key), dict)]
    header = ["metric", *(f"ensemble of folds {', '.join(map(str, holdout[k].get('folds') or []))}"
                          if k == "ensemble" else "final model" for k in models)]  # fmt: skip
    rows = [[name, *(holdout[k].get(key) for k in models)] for key, name in METRICS]
    parts = [note(f"{holdout.get('images')} images no fold saw, at the out-of-fold threshold"), table(header, rows)]
    for key in models:
        parts.append(tag("h3", "ensemble" if key == "ensemble" else "final model"))
        parts.append(_confusion(holdout[key].get("confusion_matrix"), summary.get("class_names") or []))
    return join(parts)


def _confusion(matrix: Any, names: list) -> Markup:
    if not isinstance(matrix, list) or not matrix:
        return note("no confusion matrix")
    labels = [str(n) for n in names] if len(names) == len(matrix) else [str(i) for i in range(len(matrix))]
    return table(["true \\ predicted", *labels], [[labels[i], *row] for i, row in enumerate(matrix)])


def _cv_worst(run_dir: Path, first: dict, count: int) -> Markup:
    rows = read_csv(run_dir / OUT_OF_FOLD_CSV)
    if rows is None:
        return note(f"no {OUT_OF_FOLD_CSV} in the run folder")
    rows = [{**row, "file": row.get("image", "")} for row in rows]
    return _worst_cards(rows, Path(str(first.get("dataset") or run_dir)), count, "out-of-fold")
