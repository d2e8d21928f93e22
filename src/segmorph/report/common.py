"""Pieces every kind of report uses: tolerant file reading, training curves, embedded PNG files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from segmorph.records import read_csv as read_csv_table
from segmorph.records import read_json_if_present
from segmorph.report.html import Markup, figure, note
from segmorph.report.slices import figure_uri, file_uri, plt


def read_json(path: Path) -> dict[str, Any] | None:
    """A run folder's JSON record (an object), or None when it is missing (a report shows what it can).

    Raises:
        SegmorphError: The record is there but tampered: a folder, not UTF-8, invalid, too deep, or not an
            object (see :func:`segmorph.records.read_json`).
    """
    return read_json_if_present(path, path.name)


def read_csv(path: Path) -> list[dict[str, str]] | None:
    """The rows of a run folder's CSV file with a header, or None when it is missing.

    Raises:
        SegmorphError: The file is there but not a UTF-8 CSV table (see :func:`segmorph.records.read_csv`).
    """
    if not path.exists() and not path.is_symlink():
        return None
    return read_csv_table(path, kind=path.name, allow_empty=True).rows


def number(text: Any) -> float:
    """A CSV/JSON cell as a float (NaN when empty or not a number)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def embedded_png(path: Path, caption: str) -> Markup | None:
    """A PNG file of the run shown as a figure, or None when it is missing."""
    try:
        payload = path.read_bytes()
    except OSError:
        return None
    return figure(file_uri(payload, path.suffix), caption)


def curves(run_dir: Path, score: str = "validation score", class_names: dict[int, str] | None = None) -> Markup:
    """Training curves re-drawn from ``train_log.csv``; the run's ``curves.png`` when the log is unreadable.

    Args:
        run_dir: The run folder.
        score: What the ``val_*`` columns are, for the plot title.
        class_names: Label value -> name, to name per-class columns such as ``val_dice_2``.
    """
    rows = read_csv(run_dir / "train_log.csv")
    if rows and "epoch" in rows[0]:
        return figure(figure_uri(_plot_log(rows, score, class_names or {})), f"train_log.csv: {len(rows)} epochs")
    picture = embedded_png(run_dir / "curves.png", "curves.png")
    return picture if picture is not None else note("no train_log.csv or curves.png in the run folder")


def _plot_log(rows: list[dict[str, str]], score: str, class_names: dict[int, str]) -> plt.Figure:
    """Train loss, validation scores (the mean thick, per class thin, best epoch marked) and learning rate."""
    epochs = [number(r["epoch"]) for r in rows]
    columns = list(rows[0])
    score_columns = [c for c in columns if c.startswith("val_")]
    main = next((c for c in score_columns if c.count("_") == 1), score_columns[0] if score_columns else None)
    if len(score_columns) == 2:  # one class score beside the mean: the same curve twice (e.g. binary AUC)
        score_columns = [main]
    figure_, (loss_axis, score_axis, lr_axis) = plt.subplots(1, 3, figsize=(14, 3.4))
    best_text = ""
    if "train_loss" in columns:
        loss_axis.plot(epochs, [number(r["train_loss"]) for r in rows], color="tab:blue")
    loss_axis.set(title="train loss", xlabel="epoch")
    for column in score_columns:
        values = [number(r[column]) for r in rows]
        thick = column == main
        score_axis.plot(epochs, values, linewidth=2 if thick else 0.9, alpha=1 if thick else 0.7,
                        label=_curve_name(column, class_names))  # fmt: skip
        if thick and any(not math.isnan(v) for v in values):
            best = max(range(len(values)), key=lambda i: -math.inf if math.isnan(values[i]) else values[i])
            score_axis.scatter([epochs[best]], [values[best]], color="black", zorder=3, s=18)
            best_text = f" (best {values[best]:.4f}, epoch {epochs[best]:g})"
    score_axis.set(title=score + best_text, xlabel="epoch")
    if score_columns:
        score_axis.legend(fontsize=7, loc="lower right")
    if "lr" in columns:
        lr_axis.plot(epochs, [number(r["lr"]) for r in rows], color="tab:green")
    lr_axis.set(title="learning rate", xlabel="epoch")
    figure_.tight_layout()
    return figure_


def _curve_name(column: str, class_names: dict[int, str]) -> str:
    """``val_dice`` -> ``dice (mean)``; ``val_dice_2`` -> the name of class 2 (or ``dice_2``);
    ``val_dice_Anterior`` (a log that names its classes) -> ``Anterior``."""
    name = column.removeprefix("val_")
    score, _, part = name.partition("_")
    if not part:
        return f"{name} (mean)" if class_names else name
    if part.isdigit():
        return class_names.get(int(part), name)
    return part


def run_facts(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Chosen entries of a ``run.json`` record, lists of cases shown by their count."""
    facts: dict[str, Any] = {}
    for key in keys:
        value = record.get(key)
        if isinstance(value, list) and key != "command":
            value = f"{len(value)} entries"
        elif key == "command" and isinstance(value, list):
            value = " ".join(str(v) for v in value)
        facts[key] = value
    fingerprint = record.get("data_fingerprint")
    if isinstance(fingerprint, dict):
        facts["data fingerprint"] = f"{str(fingerprint.get('sha256', ''))[:16]}… ({fingerprint.get('files')} files)"
    return facts
