"""Evaluate predicted label maps against references: per case x class CSV, JSON summary, table.

Files are paired by case id (the file name without its image suffix, see
:func:`segmorph.io.strip_suffix`), so ``case_01.png`` pairs with ``case_01.nii.gz``. Every
reference case must have a prediction: a missing one is an error, never a case silently
left out of the means. Predictions without a reference are listed in the summary under
``unmatched_predictions`` and printed as a warning. Metric definitions and the rule for
empty masks are in :mod:`segmorph.metrics.segmentation`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from io import StringIO
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from segmorph.errors import SegmorphError
from segmorph.image import check_same_grid
from segmorph.io import atomic_write_text, image_suffix, read_image, strip_suffix
from segmorph.metrics.segmentation import METRIC_NAMES, ROW_KEYS, case_metrics
from segmorph.outputs import check_outputs

TABLE_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("precision", "Precision"), ("recall", "Recall"),
                 ("hd95", "HD95 mm"), ("assd", "ASSD mm"))
CSV_COLUMNS = ("case", *ROW_KEYS)


def _case_files(folder: Path, role: str) -> dict[str, Path]:
    """Case id -> image file in ``folder`` (hidden files, e.g. unfinished atomic writes, are skipped)."""
    if not folder.is_dir():
        raise SegmorphError(f"{role} folder does not exist", folder)
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not image_suffix(path):
            continue
        case = strip_suffix(path)
        if case in cases:
            raise SegmorphError(f"two {role} files for case {case!r}: {cases[case].name} and {path.name}", folder)
        cases[case] = path
    if not cases:
        raise SegmorphError(f"{role} folder holds no image files", folder)
    return cases


def _names(cases: Iterable[str], limit: int = 5) -> str:
    cases = sorted(cases)
    more = f" and {len(cases) - limit} more" if len(cases) > limit else ""
    return ", ".join(cases[:limit]) + more


def pair_cases(pred_dir: Path, ref_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair prediction and reference files by case id.

    Returns:
        ``[(case, pred_path, ref_path), ...]`` sorted by case, and the prediction cases without a reference.

    Raises:
        SegmorphError: A folder is missing or empty, nothing pairs, or a reference case has no prediction.
    """
    preds, refs = _case_files(Path(pred_dir), "prediction"), _case_files(Path(ref_dir), "reference")
    common = sorted(set(preds) & set(refs))
    if not common:
        raise SegmorphError(f"no prediction matches a reference case; references: {_names(refs)}; "
                            f"predictions: {_names(preds)}", pred_dir)
    missing = set(refs) - set(preds)
    if missing:
        raise SegmorphError(f"{len(missing)} reference case(s) have no prediction: {_names(missing)}", pred_dir)
    return [(case, preds[case], refs[case]) for case in common], sorted(set(preds) - set(refs))


def _read_pair(pred_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, ref, spacing)``: spatial label arrays ``(I, J[, K])`` and spacing in mm, geometry checked."""
    pred, ref = read_image(pred_path, is_label=True), read_image(ref_path, is_label=True)
    check_same_grid(pred, ref, f"prediction differs from reference {ref_path.name}", pred_path)
    return pred.numpy()[0], ref.numpy()[0], ref.affine.spacing


def _infer_labels(pairs: Sequence[tuple[str, Path, Path]]) -> dict[int, str]:
    """Foreground values present in any pred or ref, named ``label_<value>`` (reads every pair once)."""
    values: set[int] = set()
    for _, pred_path, ref_path in pairs:
        pred, ref, _ = _read_pair(pred_path, ref_path)
        values.update(np.unique(pred).tolist(), np.unique(ref).tolist())
    values.discard(0)
    if not values:
        raise SegmorphError("no foreground label in any prediction or reference; give labels explicitly",
                            pairs[0][2].parent)
    return {int(v): f"label_{v}" for v in sorted(values)}


def evaluate_arrays(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float]]], labels: dict[int, str]
) -> list[dict]:
    """Metrics for in-memory cases.

    Args:
        cases: ``(case_id, pred, ref, spacing)`` with label maps ``(I, J[, K])`` and spacing in mm.
        labels: Foreground label value -> class name (0 is dropped).

    Returns:
        One row per case x class, keys :data:`CSV_COLUMNS`.
    """
    labels = {int(k): v for k, v in labels.items() if int(k) != 0}
    return [{"case": case, **row} for case, pred, ref, spacing in cases
            for row in case_metrics(pred, ref, spacing, labels)]


def summarize(rows: Sequence[dict]) -> dict:
    """Per class mean/std (population, ddof=0)/median of every metric, and the mean over classes.

    NaN is never skipped (``np.mean``, not ``np.nanmean``): a bad value would show, not vanish.
    """
    per_class: dict[str, dict] = {}
    for label in sorted({row["label"] for row in rows}):
        chosen = [row for row in rows if row["label"] == label]
        stats: dict = {"name": chosen[0]["name"], "cases": len(chosen),
                       "empty_ref": sum(bool(r["empty_ref"]) for r in chosen),
                       "empty_pred": sum(bool(r["empty_pred"]) for r in chosen)}
        for metric in METRIC_NAMES:
            values = np.array([row[metric] for row in chosen], dtype=np.float64)
            stats[metric] = {"mean": float(values.mean()), "std": float(values.std()),
                             "median": float(np.median(values))}
        per_class[str(label)] = stats
    overall = {m: float(np.mean([c[m]["mean"] for c in per_class.values()])) for m in METRIC_NAMES}
    return {"cases": len({row["case"] for row in rows}), "classes": per_class, "mean_over_classes": overall}


def _csv_text(rows: Sequence[dict]) -> str:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _print_table(summary: dict) -> None:
    table = Table(title=f"segmentation metrics over {summary['cases']} case(s), mean ± std")
    table.add_column("class")
    for _, header in TABLE_METRICS:
        table.add_column(header, justify="right")
    for label, stats in summary["classes"].items():
        cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m, _ in TABLE_METRICS]
        table.add_row(f"{label} {stats['name']}", *cells)
    table.add_row("mean", *[f"{summary['mean_over_classes'][m]:.3f}" for m, _ in TABLE_METRICS], style="bold")
    console = Console()
    if not console.is_terminal:  # logs and pipes: room for every column instead of 80 characters
        console = Console(width=120)
    console.print(table)
    if summary["unmatched_predictions"]:
        console.print(f"[yellow]warning:[/] predictions without a reference were not evaluated: "
                      f"{_names(summary['unmatched_predictions'])}")


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_csv: Path | None,
    labels: dict[int, str] | None = None,
    console: bool = True,
) -> dict:
    """Compare every reference label map with the prediction of the same case id.

    Args:
        pred_dir: Folder of predicted label maps (any supported format; PNG included).
        ref_dir: Folder of reference label maps; each must have a prediction of the same shape and geometry.
        out_csv: Where to write the per case x class CSV (columns :data:`CSV_COLUMNS`); the summary goes
            beside it as ``<stem>.json``. Nothing is written when None.
        labels: Foreground label value -> class name; when None, every nonzero value present in any
            prediction or reference, named ``label_<value>`` (each pair is then read twice). 0 is dropped.
        console: Print a table of mean ± std per class and the mean over classes.

    Returns:
        The summary (as in the JSON file: ``cases``, ``classes``, ``mean_over_classes``,
        ``unmatched_predictions``) plus ``rows``, the per case x class metric rows.

    Raises:
        SegmorphError: No pairs, a reference without prediction, or a pair whose shape or geometry
            (within ``GRID_TOLERANCE_MM``) differs; the message names the file.
    """
    pairs, unmatched = pair_cases(Path(pred_dir), Path(ref_dir))
    if out_csv is not None:  # the label maps read are the inputs: a metrics file may sit beside them
        out_csv = Path(out_csv)
        check_outputs([out_csv, out_csv.with_suffix(".json")], inputs=[p for _, *pair in pairs for p in pair])
    labels = _infer_labels(pairs) if labels is None else {int(k): v for k, v in labels.items() if int(k) != 0}
    if not labels:
        raise SegmorphError("labels: holds no foreground label", ref_dir)
    rows = evaluate_arrays(((case, *_read_pair(pred, ref)) for case, pred, ref in pairs), labels)
    summary = {**summarize(rows), "unmatched_predictions": unmatched}
    if out_csv is not None:
        out_csv = Path(out_csv)
        atomic_write_text(out_csv, _csv_text(rows))
        atomic_write_text(out_csv.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    if console:
        _print_table(summary)
    return {**summary, "rows": rows}
