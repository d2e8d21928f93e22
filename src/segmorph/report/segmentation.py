"""Report of a segmentation run (``segmorph train``): plan, provenance, curves, metrics, worst cases.

Per-case scores come from ``validation/metrics.csv`` when the run wrote one, else they are computed
here with :func:`segmorph.metrics.segmentation.case_metrics` from ``validation/<case>`` and the reference (the
run's ``validation/reference/<case>``, else the dataset's label file). Predictions lie on their scan's
own grid, so each case is drawn on the grid of its prediction, with the scan read from the dataset
named in ``run.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import grid_difference
from segmorph.io import image_suffix, read_image, strip_suffix
from segmorph.metrics.segmentation import case_metrics
from segmorph.report.common import curves, number, read_csv, read_json, run_facts
from segmorph.report.html import Markup, Section, esc, facts_table, join, json_details, note, slice_viewer, table, tag
from segmorph.report.slices import EXTRA_COLOUR, MISSED_COLOUR, legend_items, segmentation_stack

SUMMARY_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("precision", "precision"), ("recall", "recall"),
                   ("hd95", "HD95 mm"), ("assd", "ASSD mm"), ("volume_diff", "volume diff"))  # fmt: skip


@dataclass
class CaseScore:
    """Scores of one validation case, per foreground class name."""

    case: str
    dice: dict[str, float] = field(default_factory=dict)
    hd95: dict[str, float] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        values = [v for v in self.dice.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan


def is_segmentation_run(folder: Path) -> bool:
    """A ``segmorph train`` run folder: ``plan.json`` beside its summary, log or run record."""
    others = ("summary.json", "train_log.csv", "run.json", "validation")
    return (folder / "plan.json").is_file() and any((folder / name).exists() for name in others)


def segmentation_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a segmentation run's report, showing the ``cases`` worst validation cases."""
    plan = read_json(run_dir / "plan.json") or {}
    record = read_json(run_dir / "run.json") or {}
    summary = read_json(run_dir / "summary.json") or {}
    labels = _foreground_labels(plan)
    finder = DatasetFiles(record, run_dir)
    scores = case_scores(run_dir, labels, finder)
    sections = [
        Section("overview", "Overview", _overview(run_dir, plan, summary, record), narrow=True),
        Section("plan", "Plan", _plan_section(plan), narrow=True),
        Section("run", "Run record", _run_section(record), narrow=True),
        Section("curves", "Training curves", curves(run_dir, "validation Dice", labels)),
        Section("metrics", "Validation metrics", _metrics_section(summary, scores, labels)),
        Section("cases", "Cases, worst first", _cases_section(run_dir, scores, labels, finder, cases)),
    ]  # fmt: skip
    return "Segmentation run", sections


def _foreground_labels(plan: dict[str, Any]) -> dict[int, str]:
    raw = plan.get("labels") or {}
    try:
        return {int(k): str(v) for k, v in raw.items() if int(k) > 0}
    except (TypeError, ValueError, AttributeError):
        return {}


def _overview(run_dir: Path, plan: dict, summary: dict, record: dict) -> Markup:
    fit = summary.get("fit") or {}
    validation = summary.get("validation") or {}
    facts = {
        "run folder": str(run_dir.resolve()), "dataset": record.get("dataset"),
        "network": _network_text(plan.get("network") or {}), "best validation Dice": fit.get("best_val_dice"),
        "best epoch": fit.get("best_epoch"), "steps": fit.get("steps"),
        "training time": f"{fit['elapsed_s'] / 60:.1f} min" if isinstance(fit.get("elapsed_s"), (int, float)) else None,
        "stopped because": fit.get("stopped_because"), "precision": fit.get("precision"),
        "train cases": summary.get("train_cases"),
        "validation cases": summary.get("val_cases"),
        "prediction time per case (s)": validation.get("seconds_per_case"),
    }  # fmt: skip
    return facts_table({**facts, **few_label_facts(record, summary)})


def few_label_facts(record: dict, summary: dict) -> dict[str, Any]:
    """What a run used besides its labelled cases (from ``run.json`` and ``summary.json``): the labelled share
    of the training fold, unlabelled scans, the weights it started from, synthetic pairs, partial annotation.
    Empty for a run that used none of them."""
    facts: dict[str, Any] = {}
    if isinstance(record.get("labelled_cases"), list) and isinstance(record.get("train_cases"), list):
        facts["labelled training cases"] = f"{len(record['labelled_cases'])} of {len(record['train_cases'])}"
    if summary.get("unlabelled_cases"):
        facts["unlabelled scans (semi-supervised)"] = summary["unlabelled_cases"]
    transfer = record.get("transfer")
    if isinstance(transfer, dict) and isinstance(transfer.get("loaded"), list):
        total = len(transfer["loaded"]) + len(transfer.get("skipped") or {})
        facts["initialised from"] = (
            f"{record.get('init', transfer.get('source'))} ({len(transfer['loaded'])} of {total} tensors)"
        )
    synthetic = record.get("synthetic")
    if isinstance(synthetic, dict):
        facts["synthetic pairs"] = f"from {synthetic.get('run')}, share {synthetic.get('share')}"
    if record.get("annotate_every"):
        facts["annotated slices"] = f"every {record['annotate_every']}th (the others ignored)"
    return facts


def _network_text(network: dict) -> str | None:
    if not network:
        return None
    return f"{network.get('name', '?')} {network.get('ndim', '?')}D, features {network.get('features')}"


def _plan_section(plan: dict) -> Markup:
    if not plan:
        return note("plan.json is missing or unreadable")
    preprocess, train = plan.get("preprocess") or {}, plan.get("train") or {}
    facts = {
        "dimensions": plan.get("ndim"), "labels": ", ".join(f"{k}: {v}" for k, v in (plan.get("labels") or {}).items()),
        "channels": plan.get("channel_names"), "modalities": plan.get("modalities"),
        "median shape": plan.get("median_shape"), "target spacing (mm)": preprocess.get("target_spacing"),
        "normalisation": preprocess.get("normalization"), "network": _network_text(plan.get("network") or {}),
        "patch size": train.get("patch_size"), "batch size": train.get("batch_size"),
        "optimizer": train.get("optimizer"), "learning rate": train.get("learning_rate"),
        "schedule": train.get("schedule"), "max steps": train.get("max_steps"),
        "time budget (s)": train.get("time_budget_s"), "augmentation": train.get("augment"),
        "mixed precision (where fast)": train.get("amp"), "seed": train.get("seed"),
    }  # fmt: skip
    return join([facts_table(facts), json_details("plan.json (all values)", plan)])


def _run_section(record: dict) -> Markup:
    if not record:
        return note("run.json is missing or unreadable")
    keys = ("command", "time", "segmorph", "python", "torch", "numpy", "simpleitk", "platform", "seed", "fold",
            "num_folds", "max_steps", "time_budget_s", "train_cases", "val_cases")  # fmt: skip
    return join([facts_table(run_facts(record, keys)), json_details("run.json", record)])


def _metrics_section(summary: dict, scores: list[CaseScore], labels: dict[int, str]) -> Markup:
    metrics = (summary.get("validation") or {}).get("metrics") or {}
    classes = metrics.get("classes") or {}
    if not classes:
        return _metrics_from_scores(scores, labels)
    unit = str(metrics.get("unit", "mm"))  # px for pictures (no physical pixel size)
    header = ["class", "cases", *(name.replace("mm", unit) for _, name in SUMMARY_METRICS), "empty ref", "empty pred"]
    rows = []
    for key, values in classes.items():
        cells = [_mean_std(values.get(metric)) for metric, _ in SUMMARY_METRICS]
        rows.append([f"{key}: {values.get('name', key)}", values.get("cases"), *cells,
                     values.get("empty_ref"), values.get("empty_pred")])  # fmt: skip
    mean = metrics.get("mean_over_classes") or {}
    if mean:
        rows.append(["mean over classes", metrics.get("cases"), *(mean.get(m) for m, _ in SUMMARY_METRICS), None, None])
    parts = [table(header, rows), note("mean ± standard deviation over cases, median below; "
                                        f"HD95 and ASSD in {unit}, volumes in {unit}³ ({unit}² in 2D)")]  # fmt: skip
    unmatched = metrics.get("unmatched_predictions")
    if unmatched:
        parts.append(note(f"predictions without a reference: {', '.join(map(str, unmatched))}"))
    return join(parts)


def _mean_std(values: Any) -> Any:
    """``mean ± std`` with the median in small print below."""
    if not isinstance(values, dict):
        return values
    text = esc(f"{number(values.get('mean')):.4g} ± {number(values.get('std')):.3g}")
    if "median" in values:
        text = Markup(f"{text}<br><small>median {esc(number(values['median']))}</small>")
    return text


def _metrics_from_scores(scores: list[CaseScore], labels: dict[int, str]) -> Markup:
    if not scores:
        return note("no validation metrics: summary.json has none and validation/ holds no scored cases")
    rows = []
    for name in labels.values():
        dice = np.array([s.dice.get(name, math.nan) for s in scores])
        hd95 = np.array([s.hd95.get(name, math.nan) for s in scores])
        rows.append([name, len(scores), float(np.nanmean(dice)), float(np.nanstd(dice)), float(np.nanmean(hd95))])
    return join([table(["class", "cases", "Dice mean", "Dice std", "HD95 mm mean"], rows),
                 note("computed from the validation predictions (summary.json holds no metrics)")])  # fmt: skip


# -- per case --------------------------------------------------------------------------------------


def case_scores(run_dir: Path, labels: dict[int, str], finder: DatasetFiles) -> list[CaseScore]:
    """Per-case Dice and HD95 of the validation predictions, worst mean Dice first (unscored cases last)."""
    rows = read_csv(run_dir / "validation" / "metrics.csv")
    scores = _scores_from_rows(rows) if rows and {"case", "dice"} <= set(rows[0]) else _computed_scores(
        run_dir, labels, finder)  # fmt: skip
    return sorted(scores, key=lambda s: (math.isnan(s.mean_dice), s.mean_dice, s.case))


def _scores_from_rows(rows: list[dict[str, str]]) -> list[CaseScore]:
    by_case: dict[str, CaseScore] = {}
    for row in rows:
        score = by_case.setdefault(row["case"], CaseScore(row["case"]))
        name = row.get("name") or f"label_{row.get('label')}"
        score.dice[name], score.hd95[name] = number(row.get("dice")), number(row.get("hd95"))
    return list(by_case.values())


def _computed_scores(run_dir: Path, labels: dict[int, str], finder: DatasetFiles) -> list[CaseScore]:
    scores = []
    for case, prediction_path in prediction_files(run_dir).items():
        reference_path = finder.reference(case)
        if reference_path is None:
            continue
        try:
            prediction = read_image(prediction_path, is_label=True)
            reference = read_image(reference_path, is_label=True)
            names = labels or {int(v): f"label_{int(v)}" for v in np.unique(reference.numpy()) if v > 0}
            rows = case_metrics(prediction.numpy()[0], reference.numpy()[0], reference.spacing, names)
        except (SegmorphError, ValueError):
            scores.append(CaseScore(case))
            continue
        scores.append(CaseScore(case, {r["name"]: r["dice"] for r in rows}, {r["name"]: r["hd95"] for r in rows}))
    return scores


def prediction_files(run_dir: Path) -> dict[str, Path]:
    """Case id -> predicted mask in ``run_dir/validation`` (hidden files skipped)."""
    return image_files(run_dir / "validation")


def image_files(folder: Path) -> dict[str, Path]:
    """Case id -> image file of a folder (hidden files skipped; none when the folder is missing)."""
    if not folder.is_dir():
        return {}
    return {strip_suffix(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and image_suffix(p)}  # fmt: skip


class DatasetFiles:
    """The dataset of a run (from ``run.json``), to find scans and reference labels by case id."""

    def __init__(self, record: dict, run_dir: Path) -> None:
        self.own_references = image_files(run_dir / "validation" / "reference")
        self.spec = None
        self.problem = "run.json names no dataset"
        dataset = record.get("dataset")
        if not dataset:
            return
        from segmorph.segmentation.datasets import load_dataset

        root = Path(dataset)
        if not root.is_absolute() and not root.is_dir():
            root = run_dir / root
        try:
            self.spec = load_dataset(root)
        except SegmorphError as err:
            self.problem = f"cannot read the dataset ({err})"

    def case(self, case_id: str):
        if self.spec is None:
            return None
        return next((c for c in self.spec.cases if c.case_id == case_id), None)

    def reference(self, case_id: str) -> Path | None:
        """The reference label map: the run's copy in ``validation/reference``, else the dataset's."""
        if case_id in self.own_references:
            return self.own_references[case_id]
        case = self.case(case_id)
        return None if case is None else case.label


def _cases_section(
    run_dir: Path, scores: list[CaseScore], labels: dict[int, str], finder: DatasetFiles, count: int
) -> Markup:
    if not scores:
        return note("no validation predictions in validation/ (the run was not validated)")
    shown = scores[:count]
    names = list(labels.values()) or sorted({n for s in scores for n in s.dice})
    header = ["rank", "case", "mean Dice", *(f"Dice {n}" for n in names), *(f"HD95 {n} (mm)" for n in names)]
    rows = []
    for rank, score in enumerate(scores, start=1):
        case_cell = tag("a", score.case, href=f"#case-{rank}") if rank <= len(shown) else score.case
        rows.append([rank, case_cell, score.mean_dice, *(score.dice.get(n) for n in names),
                     *(score.hd95.get(n) for n in names)])  # fmt: skip
    predictions = prediction_files(run_dir)
    views = [case_view(rank, score, predictions.get(score.case), finder) for rank, score in enumerate(shown, start=1)]
    listing = join([tag("summary", f"all {len(scores)} validation cases, worst first"), table(header, rows)])
    all_cases = tag("details", listing, open="" if len(scores) <= 2 * count else None)
    return join([
        note(f"{len(scores)} validation cases sorted by mean Dice over classes; the {len(shown)} worst are drawn "
             "below. The slider moves through the slices."),
        all_cases, legend(labels), *views,
    ])  # fmt: skip


def legend(labels: dict[int, str]) -> Markup:
    """The colours of the case views: each label's, then missed and extra voxels."""
    items = [(colour, name) for colour, name in legend_items(labels)]
    items += [(f"rgb{MISSED_COLOUR}", "missed (reference only)"), (f"rgb{EXTRA_COLOUR}", "extra (prediction only "
                                                                                       "or wrong class)")]  # fmt: skip
    swatches = [join([Markup(f'<span style="background:{esc(colour)}"></span>'), name]) for colour, name in items]
    return tag("p", join(["colours:", *swatches]), class_="legend")


def case_view(rank: int, score: CaseScore, prediction_path: Path | None, finder: DatasetFiles) -> Markup:
    """Heading with the case's scores and its slice viewer (scan, reference, prediction, differences)."""
    per_class = ", ".join(f"{n} {v:.3f}" for n, v in score.dice.items())
    heading = tag("h3", f"#{rank} {score.case}: mean Dice {score.mean_dice:.4f}" + (f" ({per_class})" if per_class
                                                                                     else ""))  # fmt: skip
    reference_path = finder.reference(score.case)
    if prediction_path is None or reference_path is None:
        return _case_block(rank, [heading, note("prediction or reference file not found")])
    try:
        prediction = read_image(prediction_path, is_label=True)
        reference = read_image(reference_path, is_label=True)
    except SegmorphError as err:
        return _case_block(rank, [heading, note(str(err))])
    image, problem = _scan_on_grid(finder, score.case, prediction)
    parts = [heading]
    if problem:
        parts.append(note(f"labels drawn without the scan: {problem}"))
    grid_problem = grid_difference(reference, prediction)
    if grid_problem:
        parts.append(note(f"reference grid differs from the prediction's: {grid_problem}"))
        return _case_block(rank, parts)
    stack = segmentation_stack(image, reference.numpy()[0], prediction.numpy()[0], prediction.spacing)
    parts.append(slice_viewer(f"case-{rank}-viewer", stack))
    return _case_block(rank, parts)


def _case_block(rank: int, parts: list[Markup]) -> Markup:
    return tag("div", join(parts), class_="case", id=f"case-{rank}")


def _scan_on_grid(finder: DatasetFiles, case_id: str, prediction) -> tuple[np.ndarray | None, str]:
    """The case's scan ``(C, *S)`` when it lies on the prediction's grid, else None and why not."""
    case = finder.case(case_id)
    if case is None:
        return None, finder.problem if finder.spec is None else f"case {case_id} is not in the dataset"
    try:
        channels = [read_image(path) for path in case.images]
    except SegmorphError as err:
        return None, str(err)
    first = channels[0]
    problem = grid_difference(first, prediction)
    if problem:
        return None, f"the scan's grid differs from the prediction's: {problem}"
    return np.concatenate([c.numpy() for c in channels], axis=0), ""
