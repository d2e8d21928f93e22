"""Report of a segmentation cross-validation run (``segmorph train --folds``) and of an ensemble folder
(``segmorph find-best``).

A cross-validation run shows its folds (state, budget, time, best validation Dice), the out-of-fold Dice per
class beside each fold's (``cross_validation.json``), the postprocessing decision with every candidate's
out-of-fold Dice (``postprocessing.json``), the folds' training curves, and the worst cases out of fold drawn as
in a single run's report (:mod:`segmorph.report.segmentation`). An ensemble folder shows every run and pair
ranked by out-of-fold Dice (``find_best.json``), the choice and why, and its postprocessing decision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segmorph.report.common import curves, number, read_csv, read_json
from segmorph.report.html import Markup, Section, facts_table, figure, join, note, table, tag
from segmorph.report.segmentation import (
    CaseScore,
    DatasetFiles,
    case_scores,
    case_view,
    legend,
    prediction_files,
)
from segmorph.report.slices import figure_uri, plt
from segmorph.segmentation.crossval_layout import (
    CROSSVAL_FILE,
    OUT_OF_FOLD_JSON,
    POSTPROCESSING_FILE,
    fold_folder,
)
from segmorph.segmentation.find_best import ENSEMBLE_FILE, FIND_BEST_FILE

__all__ = ["crossval_report", "ensemble_report", "postprocessing_section"]


def crossval_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a cross-validation run's report, drawing the ``cases`` worst out-of-fold cases."""
    record = read_json(run_dir / CROSSVAL_FILE) or {}
    summary = read_json(run_dir / OUT_OF_FOLD_JSON) or {}
    decision = read_json(run_dir / POSTPROCESSING_FILE)
    folds = _done_folds(record)
    sections = [
        Section("overview", "Overview", _overview(run_dir, record, summary), narrow=True),
        Section("folds", "Folds", _folds_table(run_dir, record), narrow=True),
        Section("out-of-fold", "Out-of-fold Dice", _out_of_fold_section(summary)),
        Section("postprocessing", "Postprocessing", postprocessing_section(decision)),
        Section("curves", "Training curves", _curves_section(run_dir, folds)),
        Section("cases", "Cases out of fold, worst first", _cases_section(run_dir, folds, cases)),
    ]  # fmt: skip
    return "Segmentation cross-validation", sections


def _done_folds(record: dict[str, Any]) -> list[int]:
    states = record.get("fold_states") or {}
    return sorted(int(k) for k, s in states.items() if isinstance(s, dict) and s.get("state") == "done")


def _overview(run_dir: Path, record: dict, summary: dict) -> Markup:
    budget = record.get("time_budget_s")
    dataset = (read_json(fold_folder(run_dir, (_done_folds(record) or [0])[0]) / "run.json") or {}).get("dataset")
    facts = {
        "run folder": str(run_dir.resolve()), "dataset": dataset,
        "folds done": f"{len(_done_folds(record))} of {record.get('num_folds')}", "split seed": record.get("seed"),
        "time budget": None if not budget else f"{number(budget) / 60:.1f} min "
                                                  + ("per fold" if record.get("budget_per_fold") else "for all folds"),
        "max steps": record.get("max_steps") or None, "cases scored out of fold": summary.get("cases"),
        "out-of-fold mean Dice": summary.get("mean_dice"), "postprocessing": summary.get("postprocessing"),
    }  # fmt: skip
    return facts_table(facts)


def _folds_table(run_dir: Path, record: dict) -> Markup:
    states = record.get("fold_states") or {}
    if not states:
        return note(f"{CROSSVAL_FILE} records no fold yet")
    rows = []
    for key in sorted(states, key=int):
        state = states[key]
        fit = (read_json(fold_folder(run_dir, int(key)) / "summary.json") or {}).get("fit") or {}
        rows.append([f"fold {key}", state.get("state"), _minutes(state.get("budget_s")), _minutes(state.get("wall_s")),
                     _minutes(state.get("fit_s")), fit.get("best_val_dice")])  # fmt: skip
    return join([table(["fold", "state", "budget (min)", "wall time (min)", "training (min)", "best validation Dice"],
                       rows), note("wall time includes planning and the out-of-fold validation; budget 0: none")])  # fmt: skip


def _minutes(seconds: Any) -> float | None:
    value = number(seconds)
    return None if math.isnan(value) else round(value / 60, 2)


def _out_of_fold_section(summary: dict) -> Markup:
    classes = summary.get("classes") or {}
    if not classes:
        return note(f"no {OUT_OF_FOLD_JSON}: the run has not finished a fold's validation")
    folds = [str(k) for k in summary.get("folds") or []]
    header = ["class", "cases", "out of fold", *(f"fold {k}" for k in folds), "folds mean ± std", "HD95 out of fold"]
    rows = []
    for key, stats in classes.items():
        per_fold = stats.get("dice_per_fold") or {}
        rows.append([f"{key}: {stats.get('name', key)}", stats.get("cases"), _pm(stats, "dice_out_of_fold", "dice_std"),
                     *(per_fold.get(k) for k in folds), _pm(stats, "fold_mean", "fold_std"),
                     stats.get("hd95_out_of_fold")])  # fmt: skip
    blank = [None] * (len(folds) + 2)
    rows.append(["mean over classes", summary.get("cases"), summary.get("mean_dice"), *blank])
    return join([table(header, rows),
                 note("out of fold: mean ± std over every case, each scored by the model of the fold that held it "
                      "out; fold k: the mean over that fold's cases; HD95 in mm (before postprocessing)")])  # fmt: skip


def _pm(stats: dict, mean: str, std: str) -> str | None:
    if mean not in stats:
        return None
    return f"{number(stats[mean]):.4f} ± {number(stats.get(std)):.4f}"


def postprocessing_section(decision: dict | None) -> Markup:
    """The clean-up chosen per class on out-of-fold predictions, with every candidate's out-of-fold Dice."""
    if decision is None:
        return note(f"no {POSTPROCESSING_FILE}: nothing is cleaned up after prediction")
    rows = []
    for key, choice in (decision.get("classes") or {}).items():
        chosen = choice.get("method")
        if chosen == "min_size":
            chosen = f"min_size:{choice.get('min_voxels')}"
        for candidate, dice in (choice.get("candidates") or {}).items():
            rows.append([f"{key}: {choice.get('name', key)}", _candidate_text(candidate), dice,
                         number(dice) - number(choice.get("dice_before")), "chosen" if candidate == chosen else ""])  # fmt: skip
    return join([
        table(["class", "clean-up", "out-of-fold Dice", "change", ""], rows),
        note(f"chosen on {decision.get('cases')} out-of-fold cases: a clean-up is taken only where it raises the "
             "class's mean Dice; predict applies the chosen one (predict --largest-component overrides it)"),
    ])  # fmt: skip


def _candidate_text(key: str) -> str:
    if key == "none":
        return "none (as predicted)"
    if key == "largest_component":
        return "keep the largest component"
    return f"remove components under {key.partition(':')[2]} voxels"


def _curves_section(run_dir: Path, folds: list[int]) -> Markup:
    if not folds:
        return note("no fold is done")
    logs = {k: read_csv(fold_folder(run_dir, k) / "train_log.csv") for k in folds}
    logs = {k: rows for k, rows in logs.items() if rows and "epoch" in rows[0]}
    parts = [figure(figure_uri(_plot_folds(logs)), f"every fold's train_log.csv ({len(logs)} folds)")] if logs else [
        note("no fold has a train_log.csv")]  # fmt: skip
    for fold in folds:
        labels = _fold_labels(run_dir, fold)
        parts.append(details_markup(f"fold {fold}: loss, validation Dice per class, learning rate",
                                    curves(fold_folder(run_dir, fold), "validation Dice", labels)))  # fmt: skip
    return join(parts)


def details_markup(title: str, body: Markup) -> Markup:
    """A collapsed block holding markup (a figure, a table)."""
    return tag("details", join([tag("summary", title), body]))


def _plot_folds(logs: dict[int, list[dict[str, str]]]) -> plt.Figure:
    """Train loss and mean validation Dice per epoch, one line per fold."""
    figure_, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(11, 3.2))
    for fold, rows in logs.items():
        epochs = [number(r["epoch"]) for r in rows]
        if "train_loss" in rows[0]:
            loss_axis.plot(epochs, [number(r["train_loss"]) for r in rows], marker=".", label=f"fold {fold}")
        if "val_dice" in rows[0]:
            score_axis.plot(epochs, [number(r["val_dice"]) for r in rows], marker=".", label=f"fold {fold}")
    loss_axis.set(title="train loss", xlabel="epoch")
    score_axis.set(title="validation Dice (mean over classes)", xlabel="epoch")
    score_axis.legend(fontsize=7, loc="lower right")
    figure_.tight_layout()
    return figure_


def _fold_labels(run_dir: Path, fold: int) -> dict[int, str]:
    raw = (read_json(fold_folder(run_dir, fold) / "plan.json") or {}).get("labels") or {}
    try:
        return {int(k): str(v) for k, v in raw.items() if int(k) > 0}
    except (TypeError, ValueError, AttributeError):
        return {}


def _cases_section(run_dir: Path, folds: list[int], count: int) -> Markup:
    scored: list[tuple[int, CaseScore, DatasetFiles]] = []
    labels: dict[int, str] = {}
    for fold in folds:
        folder = fold_folder(run_dir, fold)
        labels = labels or _fold_labels(run_dir, fold)
        finder = DatasetFiles(read_json(folder / "run.json") or {}, folder)
        scored += [(fold, score, finder) for score in case_scores(folder, _fold_labels(run_dir, fold), finder)]
    if not scored:
        return note("no out-of-fold predictions in the folds' validation folders")
    scored.sort(key=lambda item: (math.isnan(item[1].mean_dice), item[1].mean_dice, item[1].case))
    names = list(labels.values()) or sorted({n for _, s, _ in scored for n in s.dice})
    rows = [[rank, tag("a", s.case, href=f"#case-{rank}") if rank <= count else s.case, fold, s.mean_dice,
             *(s.dice.get(n) for n in names)] for rank, (fold, s, _) in enumerate(scored, start=1)]  # fmt: skip
    views = [case_view(rank, score, prediction_files(fold_folder(run_dir, fold)).get(score.case), finder)
             for rank, (fold, score, finder) in enumerate(scored[:count], start=1)]  # fmt: skip
    listing = details_markup(f"all {len(scored)} cases, worst first",
                             table(["rank", "case", "fold", "mean Dice", *(f"Dice {n}" for n in names)], rows))  # fmt: skip
    return join([note(f"{len(scored)} cases scored out of fold, sorted by mean Dice over classes (before "
                      f"postprocessing); the {min(count, len(scored))} worst are drawn below."),
                 listing, legend(labels), *views])  # fmt: skip


def ensemble_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of an ensemble folder's report (``cases`` is unused: it holds no predictions)."""
    record = read_json(run_dir / FIND_BEST_FILE)
    members = (read_json(run_dir / ENSEMBLE_FILE) or {}).get("members") or []
    decision = read_json(run_dir / POSTPROCESSING_FILE)
    sections = [
        Section("overview", "Choice", _choice(run_dir, record, members), narrow=True),
        Section("comparison", "Runs and pairs compared out of fold", _comparison(record)),
        Section("postprocessing", "Postprocessing of the choice", postprocessing_section(decision)),
    ]  # fmt: skip
    return "Segmentation ensemble", sections


def _choice(run_dir: Path, record: dict | None, members: list) -> Markup:
    choice = (record or {}).get("choice") or {}
    facts = {
        "folder": str(run_dir.resolve()), "chosen": choice.get("name"),
        "out-of-fold mean Dice": choice.get("mean_dice"), "why": choice.get("reason"),
        "members (averaged)": join(tag("div", str(m)) for m in members) if members else None,
        "cases": (record or {}).get("cases"), "postprocessing": (record or {}).get("postprocessing"),
    }  # fmt: skip
    return facts_table(facts)


def _comparison(record: dict | None) -> Markup:
    if record is None:
        return note(f"no {FIND_BEST_FILE}: {ENSEMBLE_FILE} was not written by segmorph find-best")
    classes = record.get("classes") or {}
    chosen = (record.get("choice") or {}).get("members")
    rows = []
    for rank, candidate in enumerate(record.get("candidates") or [], start=1):
        dice = candidate.get("dice") or {}
        kind = "ensemble of two" if len(candidate.get("members") or []) == 2 else "single run"
        rows.append([rank, candidate.get("name"), kind, *(dice.get(k) for k in classes), candidate.get("mean_dice"),
                     "chosen" if candidate.get("members") == chosen else ""])  # fmt: skip
    runs = [[run.get("name"), run.get("path")] for run in record.get("runs") or []]
    return join([
        table(["rank", "candidate", "kind", *(f"Dice {name}" for name in classes.values()), "mean Dice", ""], rows),
        note(f"Dice per class over {record.get('cases')} cases, each predicted by the folds that held it out; a "
             "pair averages its two runs' probabilities. A pair is chosen only when it beats the best single run."),
        details_markup("the runs", table(["run", "folder"], runs)),
    ])  # fmt: skip
