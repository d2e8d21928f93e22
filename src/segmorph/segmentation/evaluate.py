"""Evaluate predicted label maps against references: per case x class CSV, JSON summary, table.

Files are paired by case id (the file name without its image suffix, see
:func:`segmorph.io.strip_suffix`), so ``case_01.png`` pairs with ``case_01.nii.gz``; a DICOM-SEG file
``case_01.dcm`` is a label map too, its frames placed on the grid of the mask it is paired with. Every
reference case must have a prediction: a missing one is an error, never a case silently
left out of the means. Predictions without a reference are listed in the summary under
``unmatched_predictions`` and printed as a warning. Metric definitions and the rule for
empty masks are in :mod:`segmorph.metrics.segmentation`.

Class names come from the labels given, a run folder or dataset given (:func:`read_label_names`), or the
``dataset.json`` beside the reference folder (MSD layout: ``labelsTr/../dataset.json``) when its labels cover
every value found; else a value ``v`` is named ``label_<v>``. Distances (HD95, ASSD) and volumes are in mm for
scans and in pixels for pictures (PNG, JPEG, ...: no physical pixel size, see
:func:`segmorph.io.has_physical_spacing`); each row and the summary say which in ``unit``.

Partial annotations: where a reference holds the dataset's declared ignore value (``"ignore"`` in the
``dataset.json`` of ``--labels-from``, else in the ``dataset.json`` beside the reference folder; see
:func:`segmorph.segmentation.datasets.declared_ignore`), those voxels are left out of every metric
(:mod:`segmorph.metrics.segmentation`) and the value is not a class. The summary names it under ``ignore``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from io import StringIO
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from segmorph.errors import SegmorphError
from segmorph.image import check_same_grid
from segmorph.io import (
    atomic_write_text,
    distance_unit,
    folder_files,
    has_physical_spacing,
    image_suffix,
    is_segmentation_file,
    read_image,
    read_label_map,
    strip_suffix,
)
from segmorph.metrics.segmentation import METRIC_NAMES, ROW_KEYS, case_metrics
from segmorph.outputs import check_outputs
from segmorph.records import read_json
from segmorph.segmentation.datasets import declared_ignore, parse_label_names

TABLE_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("precision", "Precision"), ("recall", "Recall"),
                 ("hd95", "HD95"), ("assd", "ASSD"))  # fmt: skip
DISTANCE_METRICS = ("hd95", "assd")  # shown with the unit of the rows (mm or px)
CSV_COLUMNS = ("case", *ROW_KEYS, "unit")


def _case_files(folder: Path, role: str) -> dict[str, Path]:
    """Case id -> image file in ``folder`` (hidden files, e.g. unfinished atomic writes, are skipped)."""
    if not folder.is_dir():
        raise SegmorphError(f"{role} folder does not exist", folder)
    cases: dict[str, Path] = {}
    for path in folder_files(folder, lambda p: bool(image_suffix(p)) or is_segmentation_file(p)):
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
        raise SegmorphError(
            f"no prediction matches a reference case; references: {_names(refs)}; predictions: {_names(preds)}",
            pred_dir,
        )
    missing = set(refs) - set(preds)
    if missing:
        raise SegmorphError(f"{len(missing)} reference case(s) have no prediction: {_names(missing)}", pred_dir)
    return [(case, preds[case], refs[case]) for case in common], sorted(set(preds) - set(refs))


def _read_pair(pred_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, ref, spacing)``: spatial label arrays ``(I, J[, K])`` and the spacing per axis, geometry checked.

    The spacing is the reference's in mm, or 1 per axis for pictures (distances then count pixels).
    """
    if is_segmentation_file(ref_path) and not is_segmentation_file(pred_path):  # a DICOM-SEG lands on the other
        pred = read_image(pred_path, is_label=True)
        ref = read_label_map(ref_path, like=pred)
    else:
        ref = read_image(ref_path, is_label=True)
        pred = read_label_map(pred_path, like=ref)
    check_same_grid(pred, ref, f"prediction differs from reference {ref_path.name}", pred_path)
    spacing = ref.affine.spacing if has_physical_spacing(ref_path) else np.ones(ref.ndim)
    return pred.numpy()[0], ref.numpy()[0], spacing


def _values_found(pairs: Sequence[tuple[str, Path, Path]], ignore: int | None = None) -> set[int]:
    """Foreground values present in any pred or ref, ``ignore`` left out (reads every pair once)."""
    values: set[int] = set()
    for _, pred_path, ref_path in pairs:
        pred, ref, _ = _read_pair(pred_path, ref_path)
        values.update(np.unique(pred).tolist(), np.unique(ref).tolist())
    values.discard(0)
    values.discard(ignore)
    if not values:
        raise SegmorphError(
            "no foreground label in any prediction or reference; give labels explicitly", pairs[0][2].parent
        )
    return {int(v) for v in values}


def read_label_names(source: str | Path) -> dict[int, str]:
    """Label value -> name (0 included when listed) from a run folder, a dataset folder or a dataset.json file.

    A run folder's names are its ``plan.json``'s ``labels`` (those it was trained with); a dataset folder's are its
    ``dataset.json``'s ``labels``.

    Raises:
        SegmorphError: ``source`` holds neither file, or the file or its ``labels`` cannot be read.
    """
    source = Path(source)
    if source.is_dir():
        path = source / "plan.json" if (source / "plan.json").is_file() else source / "dataset.json"
        if not path.is_file():
            raise SegmorphError("holds no plan.json (a run folder) nor dataset.json (a dataset folder) to name "
                                "labels", source)  # fmt: skip
    else:
        path = source
    meta = read_json(path, path.name)
    if not isinstance(meta.get("labels"), dict) or not meta["labels"]:
        raise SegmorphError("missing key 'labels' (an object of label values and names)", path)
    return parse_label_names(meta["labels"], path)


def read_ignore_value(source: str | Path) -> int | None:
    """The ignore value declared by a dataset folder's or a ``dataset.json`` file's ``dataset.json``; None when the
    source is no dataset (a run folder) or declares none.

    Raises:
        SegmorphError: The file cannot be read or its ignore declaration is malformed.
    """
    source = Path(source)
    path = source / "dataset.json" if source.is_dir() else source
    if path.name != "dataset.json" or not path.is_file():
        return None
    return declared_ignore(read_json(path, path.name), path)


def _ignore_beside(ref_dir: Path) -> int | None:
    """The ignore value of the ``dataset.json`` in the reference folder's parent; None when there is none or it
    cannot be read (as for :func:`dataset_label_names`); a readable file with a malformed declaration is refused."""
    path = ref_dir.resolve().parent / "dataset.json"
    try:
        meta = read_json(path, path.name) if path.is_file() else None
    except SegmorphError:
        return None
    return None if meta is None else declared_ignore(meta, path)


def dataset_label_names(ref_dir: str | Path) -> dict[int, str] | None:
    """The names of the ``dataset.json`` in the reference folder's parent (MSD: ``labelsTr/..``), or None when
    there is none or it cannot be read (the names are then a guess, never a reason to fail)."""
    path = Path(ref_dir).resolve().parent / "dataset.json"
    if not path.is_file():
        return None
    try:
        return read_label_names(path)
    except SegmorphError:
        return None


def name_labels(values: Iterable[int], known: Mapping[int, str] | None = None) -> dict[int, str]:
    """Foreground ``values`` (0 dropped) -> names: ``known``'s when they name every value, else ``label_<value>``."""
    values = sorted({int(v) for v in values} - {0})
    if known and all(v in known for v in values):
        return {v: str(known[v]) for v in values}
    return {v: f"label_{v}" for v in values}


def _choose_labels(pairs: Sequence[tuple[str, Path, Path]], ref_dir: Path, ignore: int | None) -> dict[int, str]:
    """Names of the dataset.json beside ``ref_dir`` when they cover every value found, else ``label_<value>``."""
    found = _values_found(pairs, ignore)
    known = {k: v for k, v in (dataset_label_names(ref_dir) or {}).items() if k != 0}
    return known if known and found <= set(known) else name_labels(found)


def _distance_unit(pairs: Sequence[tuple[str, Path, Path]], ref_dir: Path) -> str:
    """The unit of distances of every pair: mm for scans, px for pictures; a mix of both is refused."""
    units = {distance_unit(ref) for _, _, ref in pairs}
    if len(units) > 1:
        raise SegmorphError("references mix pictures (distances in px) and scans (distances in mm); evaluate them "
                            "in separate folders", ref_dir)  # fmt: skip
    return units.pop()


def evaluate_arrays(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float]]], labels: dict[int, str], unit: str = "mm",
    ignore: int | None = None,
) -> list[dict]:  # fmt: skip
    """Metrics for in-memory cases.

    Args:
        cases: ``(case_id, pred, ref, spacing)`` with label maps ``(I, J[, K])`` and the size of a voxel per axis.
        labels: Foreground label value -> class name (0 is dropped).
        unit: The unit of ``spacing``, hence of distances (and of volumes, cubed or squared): ``mm``, or ``px``
            for pictures measured with spacing 1.
        ignore: The references' value of unannotated voxels, left out of every metric; None: every voxel counts.

    Returns:
        One row per case x class, keys :data:`CSV_COLUMNS`.
    """
    labels = {int(k): v for k, v in labels.items() if int(k) != 0}
    return [{"case": case, **row, "unit": unit} for case, pred, ref, spacing in cases
            for row in case_metrics(pred, ref, spacing, labels, ignore)]  # fmt: skip


def summarize(rows: Sequence[dict]) -> dict:
    """Per class mean/std (population, ddof=0)/median of every metric, and the mean over classes.

    NaN is never skipped (``np.mean``, not ``np.nanmean``): a bad value would show, not vanish.
    """
    per_class: dict[str, dict] = {}
    for label in sorted({row["label"] for row in rows}):
        chosen = [row for row in rows if row["label"] == label]
        stats: dict = {
            "name": chosen[0]["name"],
            "cases": len(chosen),
            "empty_ref": sum(bool(r["empty_ref"]) for r in chosen),
            "empty_pred": sum(bool(r["empty_pred"]) for r in chosen),
        }
        for metric in METRIC_NAMES:
            values = np.array([row[metric] for row in chosen], dtype=np.float64)
            stats[metric] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "median": float(np.median(values)),
            }
        per_class[str(label)] = stats
    overall = {m: float(np.mean([c[m]["mean"] for c in per_class.values()])) for m in METRIC_NAMES}
    units = sorted({str(row.get("unit", "mm")) for row in rows})
    return {"cases": len({row["case"] for row in rows}), "classes": per_class, "mean_over_classes": overall,
            "unit": units[0] if len(units) == 1 else "/".join(units)}  # fmt: skip


def _csv_text(rows: Sequence[dict]) -> str:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _print_table(summary: dict) -> None:
    table = Table(title=f"segmentation metrics over {summary['cases']} case(s), mean ± std")
    table.add_column("class")
    unit = summary.get("unit", "mm")
    for metric, header in TABLE_METRICS:
        table.add_column(f"{header} {unit}" if metric in DISTANCE_METRICS else header, justify="right")
    for label, stats in summary["classes"].items():
        cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m, _ in TABLE_METRICS]
        table.add_row(f"{label} {stats['name']}", *cells)
    table.add_row("mean", *[f"{summary['mean_over_classes'][m]:.3f}" for m, _ in TABLE_METRICS], style="bold")
    console = Console()
    if not console.is_terminal:  # logs and pipes: room for every column instead of 80 characters
        console = Console(width=120)
    console.print(table)
    if summary["unmatched_predictions"]:
        console.print(
            f"[yellow]warning:[/] predictions without a reference were not evaluated: "
            f"{_names(summary['unmatched_predictions'])}"
        )


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_csv: Path | None,
    labels: dict[int, str] | None = None,
    console: bool = True,
    labels_from: str | Path | None = None,
    unit: str | None = None,
    ignore: int | None = None,
) -> dict:
    """Compare every reference label map with the prediction of the same case id.

    Args:
        pred_dir: Folder of predicted label maps (any supported format; PNG included).
        ref_dir: Folder of reference label maps; each must have a prediction of the same shape and geometry.
        out_csv: Where to write the per case x class CSV (columns :data:`CSV_COLUMNS`); the summary goes
            beside it as ``<stem>.json``. Nothing is written when None.
        labels: Foreground label value -> class name (0 is dropped); when None, those of ``labels_from``, else
            those of the ``dataset.json`` in ``ref_dir``'s parent when they cover every nonzero value present in
            any prediction or reference, else these values named ``label_<value>`` (each pair is then read twice).
        console: Print a table of mean ± std per class and the mean over classes.
        labels_from: A run folder or dataset folder (or dataset.json) naming the labels (:func:`read_label_names`).
        unit: The unit of distances; when None, ``mm`` for scans and ``px`` for pictures (which are then measured
            with spacing 1). Give ``px`` for scans converted from pictures.
        ignore: The references' value of unannotated voxels, left out of every metric; when None, the value
            declared by ``labels_from`` when it is a dataset, else by the ``dataset.json`` in ``ref_dir``'s parent
            (:func:`read_ignore_value`), else none.

    Returns:
        The summary (as in the JSON file: ``cases``, ``classes``, ``mean_over_classes``, ``unit``,
        ``unmatched_predictions``, and ``ignore`` when one applies) plus ``rows``, the per case x class metric rows.

    Raises:
        SegmorphError: No pairs, a reference without prediction, a pair whose shape or geometry
            (within ``GRID_TOLERANCE_MM``) differs, or references mixing pictures and scans; the message names
            the file.
    """
    pairs, unmatched = pair_cases(Path(pred_dir), Path(ref_dir))
    if out_csv is not None:  # the label maps read are the inputs: a metrics file may sit beside them
        out_csv = Path(out_csv)
        check_outputs([out_csv, out_csv.with_suffix(".json")], inputs=[p for _, *pair in pairs for p in pair])
    if ignore is None and labels_from is not None:
        ignore = read_ignore_value(labels_from)
    if ignore is None:
        ignore = _ignore_beside(Path(ref_dir))
    if labels is None and labels_from is not None:
        labels = read_label_names(labels_from)
    if labels is None:
        labels = _choose_labels(pairs, Path(ref_dir), ignore)
    labels = {int(k): v for k, v in labels.items() if int(k) != 0 and int(k) != ignore}
    if not labels:
        raise SegmorphError("labels: holds no foreground label", labels_from or ref_dir)
    if unit not in (None, "mm", "px"):
        raise SegmorphError(f"unit: expected mm or px, got {unit!r}")
    unit = unit or _distance_unit(pairs, Path(ref_dir))
    rows = evaluate_arrays(((case, *_read_pair(pred, ref)) for case, pred, ref in pairs), labels, unit, ignore)
    summary = {**summarize(rows), "unmatched_predictions": unmatched}
    if ignore is not None:
        summary["ignore"] = ignore
    if out_csv is not None:
        out_csv = Path(out_csv)
        atomic_write_text(out_csv, _csv_text(rows))
        atomic_write_text(out_csv.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    if console:
        _print_table(summary)
    return {**summary, "rows": rows}
