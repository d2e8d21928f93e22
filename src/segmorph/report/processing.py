"""Reports of ``segmorph enhance`` and ``segmorph baseline`` output folders.

An enhance folder holds ``enhance.json``::

    {"kind": "enhance", "steps": ["channel:green", "clahe"],
     "cases": [{"case": "21_training", "input": "/abs/in.png", "output": "21_training.png"}, ...]}

A baseline folder holds ``baseline.json`` (the same ``cases``, plus ``method``, ``params``, ``steps`` and
``reference``: a folder of reference label maps or null) and, when a reference was given, ``metrics.csv``
as :mod:`segmorph.segmentation.evaluate` writes it (one row per case and class).

``input`` is the path the run read, ``output`` a file name inside the folder. An input that has moved
or vanished since is reported as "input not found" in place of its pictures; a record of another layout
raises ``TypeError``, ``KeyError`` or ``ValueError``, which :func:`segmorph.report.build_report` turns
into one error line. Pictures are the middle slice along ``K`` (3D) with ``I`` across and ``J`` down;
three-channel images are shown as RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import Image, grid_difference
from segmorph.io import read_image
from segmorph.report.common import number, read_csv, read_json
from segmorph.report.html import (
    Markup,
    Panel,
    Section,
    SliceStack,
    esc,
    facts_table,
    join,
    json_details,
    note,
    slice_viewer,
    table,
    tag,
)
from segmorph.report.html import image as image_tag
from segmorph.report.segmentation import SUMMARY_METRICS, image_files
from segmorph.report.slices import (
    EXTRA_COLOUR,
    MISSED_COLOUR,
    display_size,
    legend_items,
    picture_uri,
    segmentation_stack,
    thumbnail,
)

__all__ = [
    "CaseEntry",
    "baseline_report",
    "enhance_report",
    "intensity_figures",
    "is_baseline_folder",
    "is_enhance_folder",
    "mask_stack",
    "record_cases",
    "rgb_slice",
]

ENHANCE_RECORD = "enhance.json"
BASELINE_RECORD = "baseline.json"
METRICS_FILE = "metrics.csv"
THUMBNAIL_PX = 200  # longer side of a before/after picture, CSS pixels
PERCENTILE_SAMPLE = 2_000_000  # voxels, evenly strided, for the intensity range
FIGURE_KEYS = ("min", "max", "mean", "std", "contrast")  # of intensity_figures, in table order


@dataclass(frozen=True)
class CaseEntry:
    """One case of a record: its name, the input path it was made from, and its file name in the folder."""

    case: str
    input: Path
    output: str


def is_enhance_folder(folder: Path) -> bool:
    """A ``segmorph enhance`` output folder: it holds ``enhance.json``."""
    return (folder / ENHANCE_RECORD).is_file()


def is_baseline_folder(folder: Path) -> bool:
    """A ``segmorph baseline`` output folder: it holds ``baseline.json``."""
    return (folder / BASELINE_RECORD).is_file()


# -- records ---------------------------------------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected text, got {type(value).__name__}")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
    return [_text(item, f"{where}[{n}]") for n, item in enumerate(value)]


def _record(folder: Path, name: str, kind: str) -> dict[str, Any]:
    record = read_json(folder / name) or {}
    if record.get("kind") != kind:
        raise ValueError(f"{name}: kind is {record.get('kind')!r}, expected {kind!r}")
    return record


def record_cases(record: dict[str, Any]) -> list[CaseEntry]:
    """The ``cases`` of an enhance or baseline record.

    Raises:
        KeyError: An entry lacks ``case``, ``input`` or ``output`` (or there is no ``cases``).
        TypeError: ``cases`` is not a list of objects holding text.
        ValueError: An ``output`` is not a plain file name (it must lie inside the folder).
    """
    cases = record["cases"]
    if not isinstance(cases, list):
        raise TypeError(f"cases: expected a list, got {type(cases).__name__}")
    entries = []
    for n, entry in enumerate(cases):
        if not isinstance(entry, dict):
            raise TypeError(f"cases[{n}]: expected an object, got {type(entry).__name__}")
        output = _text(entry["output"], f"cases[{n}].output")
        if output in ("", ".", "..") or Path(output).name != output:
            raise ValueError(f"cases[{n}].output: expected a file name inside the folder, got {output!r}")
        entries.append(CaseEntry(_text(entry["case"], f"cases[{n}].case"),
                                 Path(_text(entry["input"], f"cases[{n}].input")), output))  # fmt: skip
    return entries


def _read(path: Path, what: str, is_label: bool = False) -> tuple[Image | None, str]:
    """The image at ``path``, or None and why not ("<what> not found: path" when nothing is there)."""
    if not path.exists():
        return None, f"{what} not found: {path}"
    try:
        return read_image(path, is_label=is_label), ""
    except SegmorphError as err:
        return None, f"{what} unreadable: {err}"


# -- pictures --------------------------------------------------------------------------------------


def _picture(image: Image, caption: str) -> Markup:
    """A captioned picture of an image (its middle ``K`` slice in 3D), shown with its voxel spacing's aspect."""
    array = image.numpy()
    uri = picture_uri(rgb_slice(array)) if array.shape[0] == 3 else thumbnail(array, THUMBNAIL_PX)[0]
    width, height = display_size(image.spatial_shape[:2], image.spacing[:2], THUMBNAIL_PX)
    picture = image_tag(uri, caption, width, height, class_="thumb")
    return tag("figure", join([picture, tag("figcaption", caption)]))


def rgb_slice(image: np.ndarray, longest: int = THUMBNAIL_PX) -> np.ndarray:
    """The middle ``K`` slice of a ``(3, I, J[, K])`` colour image as a ``(J, I, 3)`` picture in 0..1, its colours
    kept: one scale for the three channels (values in 0..1 and 0..255 shown as they are, others stretched
    between their joint 0.5 and 99.5 percentiles), thinned to about ``2 * longest`` pixels a side."""
    planes = image if image.ndim == 3 else image[..., image.shape[-1] // 2]
    step = max(1, int(np.ceil(max(planes.shape[1:]) / (2 * longest))))
    planes = planes[:, ::step, ::step].astype(np.float32)
    low, high = float(planes.min()), float(planes.max())
    if low >= 0 and high <= 255:
        low, high = 0.0, 1.0 if high <= 1 else 255.0
    else:
        low, high = (float(v) for v in np.percentile(planes, [0.5, 99.5]))
    return np.clip((planes - low) / max(high - low, 1e-8), 0, 1).transpose(2, 1, 0)


def mask_stack(image: np.ndarray | None, mask: np.ndarray, spacing: Any) -> SliceStack:
    """Slice viewer of a scan beside the scan with a label map over it (the panels of
    :func:`segmorph.report.slices.segmentation_stack` without a reference).

    Args:
        image: ``(C, I, J[, K])`` scan on the mask's grid, or None (black background).
        mask: ``(I, J[, K])`` label map.
        spacing: Voxel size in mm per spatial axis.
    """
    stack = segmentation_stack(image, mask, mask, spacing)
    series = {"image": stack.series["image"], "mask": stack.series["prediction"]}
    return replace(stack, series=series, panels=[Panel("input", "image"), Panel("input + mask", "image", "mask")])


# -- intensity figures -----------------------------------------------------------------------------


def intensity_figures(image: Image) -> dict[str, float]:
    """Intensity minimum, maximum, mean and standard deviation over all channels and voxels, and the local
    contrast: the mean gradient magnitude (per mm, central differences with the voxel spacing, averaged
    over channels) divided by the 1st-99th percentile intensity range, in 1/mm. Being a ratio, it
    compares images whose intensity scales differ (an 8-bit PNG output against a float input)."""
    array = image.numpy()
    values = array.reshape(-1)
    sample = values[:: max(1, values.size // PERCENTILE_SAMPLE)].astype(np.float64)
    low, high = np.percentile(sample, [1, 99])
    gradient = 0.0
    for channel in array:
        gradient += _mean_gradient(channel.astype(np.float32), image.spacing)
    spread = float(high - low)
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean(dtype=np.float64)),
            "std": float(values.std(dtype=np.float64)),
            "contrast": gradient / len(array) / spread if spread > 0 else 0.0}  # fmt: skip


def _mean_gradient(channel: np.ndarray, spacing: Any) -> float:
    """Mean gradient magnitude of one ``(I, J[, K])`` channel in intensity per mm (axes of length 1 skipped)."""
    squares = np.zeros(channel.shape, np.float32)
    for axis, step in enumerate(spacing):
        if channel.shape[axis] > 1:
            squares += np.gradient(channel, float(step), axis=axis) ** 2
    return float(np.sqrt(squares).mean(dtype=np.float64))


# -- enhance ---------------------------------------------------------------------------------------


def enhance_report(folder: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of an enhance folder's report: the steps, intensity figures of every case before and
    after, and the input beside the output for the first ``cases`` cases."""
    record = _record(folder, ENHANCE_RECORD, "enhance")
    steps = _texts(record["steps"], "steps")
    entries = record_cases(record)
    rows, views = [], []
    for index, entry in enumerate(entries):
        before, before_problem = _read(entry.input, "input")
        after, after_problem = _read(folder / entry.output, "output")
        figures = [intensity_figures(i) if i is not None else {} for i in (before, after)]
        rows.append([entry.case, tag("span", entry.input.name, title=str(entry.input)), entry.output,
                     *(_before_after(*(f.get(key) for f in figures)) for key in FIGURE_KEYS)])  # fmt: skip
        if index < cases:
            views.append(_enhance_view(entry, before, after, [before_problem, after_problem]))
    sections = [
        Section("steps", "Steps", _steps_section(folder, steps, entries), narrow=True),
        Section("intensities", "Intensities before and after", _intensity_table(rows)),
        Section("cases", "Before and after", _views(views, len(entries), "input (left) beside its output (right)")),
    ]  # fmt: skip
    return "Enhanced images", sections


def _steps_section(folder: Path, steps: list[str], entries: list[CaseEntry]) -> Markup:
    facts = {"folder": str(folder.resolve()), "steps": " > ".join(steps) or "none", "cases": len(entries)}
    return join([facts_table(facts), json_details(ENHANCE_RECORD, read_json(folder / ENHANCE_RECORD))])


def _before_after(before: float | None, after: float | None) -> Markup:
    return join([esc(before), Markup(" → "), esc(after)])


def _intensity_table(rows: list[list[Any]]) -> Markup:
    header = ["case", "input", "output", "min", "max", "mean", "std", "local contrast (1/mm)"]
    return join([table(header, rows), note(
        "before → after: the input file (its full path shown on hovering its name) and the output file, over all "
        "channels and voxels; local contrast is the mean gradient magnitude per mm divided by the 1st-99th "
        "percentile intensity range, so it compares images on different intensity scales; – where a file is not "
        "found")])  # fmt: skip


def _enhance_view(entry: CaseEntry, before: Image | None, after: Image | None, problems: list[str]) -> Markup:
    heading = tag("h3", entry.case)
    if before is None or after is None:
        return tag("div", join([heading, *(note(problem) for problem in problems if problem)]), class_="case")
    middle = f", middle slice K = {before.spatial_shape[2] // 2}" if before.ndim == 3 else ""
    pictures = [_picture(before, f"input{middle}"), _picture(after, f"output {entry.output}")]
    return tag("div", join([heading, tag("div", join(pictures), class_="panels")]), class_="case")


def _views(views: list[Markup], total: int, what: str) -> Markup:
    if not views:
        return note("the record lists no cases")
    return join([note(f"{len(views)} of {total} cases drawn: {what}"), *views])


# -- baseline --------------------------------------------------------------------------------------


@dataclass
class CaseDice:
    """Dice per class name of one case, from ``metrics.csv``."""

    case: str
    dice: dict[str, float]

    @property
    def mean_dice(self) -> float:
        values = [v for v in self.dice.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan


def baseline_report(folder: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a baseline folder's report: method, parameters and steps; with ``metrics.csv``,
    the metrics per class and the ``cases`` worst cases by mean Dice drawn with their mask (and reference);
    without it, the first ``cases`` cases drawn with their mask."""
    record = _record(folder, BASELINE_RECORD, "baseline")
    entries = record_cases(record)
    method = _text(record["method"], "method")
    params = record["params"]
    if not isinstance(params, dict):
        raise TypeError(f"params: expected an object, got {type(params).__name__}")
    steps = _texts(record["steps"], "steps")
    reference = record["reference"]
    if reference is not None:
        reference = Path(_text(reference, "reference"))
    rows = _metric_rows(folder)
    facts = {"folder": str(folder.resolve()), "method": method, "steps": " > ".join(steps) or "none",
             "reference": str(reference) if reference else "none (no metrics)", "cases": len(entries)}  # fmt: skip
    parameters = table(("parameter", "value"), params.items(), class_="facts") if params else note("no parameters")
    method_body = join([facts_table(facts), parameters, json_details(BASELINE_RECORD, record)])
    sections = [
        Section("method", "Method", method_body, narrow=True),
        Section("metrics", "Metrics", _metrics_summary(rows) if rows else note(
            f"no {METRICS_FILE}: the baseline was run without a reference")),
        Section("cases", "Cases", _baseline_cases(folder, entries, reference, rows, cases)),
    ]  # fmt: skip
    return "Baseline segmentation", sections


def _metric_rows(folder: Path) -> list[dict[str, str]] | None:
    rows = read_csv(folder / METRICS_FILE)
    if rows is None:
        return None
    missing = [c for c in ("case", "label", "name", "dice") if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{METRICS_FILE}: no column {', '.join(missing)}")
    return rows


def _classes(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """``(label, name)`` of each class in ``rows``, by label value."""
    found = {(row["label"], row["name"]) for row in rows}
    return sorted(found, key=lambda pair: (number(pair[0]), pair[0]))


def _metrics_summary(rows: list[dict[str, str]]) -> Markup:
    metrics = [(key, name) for key, name in SUMMARY_METRICS if key in rows[0]]
    header = ["class", "cases", *(name for _, name in metrics)]
    table_rows, means = [], {key: [] for key, _ in metrics}
    for label, name in _classes(rows):
        chosen = [row for row in rows if row["label"] == label]
        cells = []
        for key, _ in metrics:
            values = np.array([number(row[key]) for row in chosen])
            means[key].append(float(values.mean()))
            cells.append(esc(f"{values.mean():.4g} ± {values.std():.3g}"))
        table_rows.append([f"{label}: {name}", len({row["case"] for row in chosen}), *cells])
    table_rows.append(["mean over classes", len({row["case"] for row in rows}),
                       *(float(np.mean(means[key])) for key, _ in metrics)])  # fmt: skip
    return join([table(header, table_rows), note(f"mean ± standard deviation over cases, from {METRICS_FILE}; "
                                                 "HD95 and ASSD in mm, volumes in mm³")])  # fmt: skip


def _case_dice(rows: list[dict[str, str]]) -> list[CaseDice]:
    """Per-case Dice by class name, worst mean Dice first (cases without a number last)."""
    by_case: dict[str, CaseDice] = {}
    for row in rows:
        by_case.setdefault(row["case"], CaseDice(row["case"], {})).dice[row["name"]] = number(row["dice"])
    return sorted(by_case.values(), key=lambda s: (math.isnan(s.mean_dice), s.mean_dice, s.case))


def _baseline_cases(
    folder: Path, entries: list[CaseEntry], reference: Path | None, rows: list[dict[str, str]] | None, count: int
) -> Markup:
    if not entries:
        return note("the record lists no cases")
    references, parts = {}, []
    if reference is not None:
        if reference.is_dir():
            references = image_files(reference)
        else:
            parts.append(note(f"reference folder not found: {reference}; masks drawn alone"))
    by_case = {entry.case: entry for entry in entries}
    if not rows:
        parts.append(note(f"the first {min(count, len(entries))} of {len(entries)} cases: input beside input + mask"))
        views = [_baseline_view(rank, entry, folder, references.get(entry.case), entry.case)
                 for rank, entry in enumerate(entries[:count], start=1)]  # fmt: skip
        return join([*parts, _legend(references), *views])
    scores = _case_dice(rows)
    names = [name for _, name in _classes(rows)]
    listing = table(["rank", "case", "mean Dice", *(f"Dice {n}" for n in names)],
                    [[rank, s.case, s.mean_dice, *(s.dice.get(n) for n in names)]
                     for rank, s in enumerate(scores, start=1)])  # fmt: skip
    parts.append(note(f"{len(scores)} cases sorted by mean Dice over classes; the {min(count, len(scores))} worst "
                      "are drawn below"))  # fmt: skip
    parts.append(tag("details", join([tag("summary", f"all {len(scores)} cases, worst first"), listing]),
                     open="" if len(scores) <= 2 * count else None))  # fmt: skip
    views = []
    for rank, score in enumerate(scores[:count], start=1):
        title = f"#{rank} {score.case}: mean Dice {score.mean_dice:.4f}"
        entry = by_case.get(score.case)
        if entry is None:
            views.append(_case_block(rank, [tag("h3", title), note(f"{score.case} is not in {BASELINE_RECORD}")]))
        else:
            views.append(_baseline_view(rank, entry, folder, references.get(score.case), title))
    labels = {int(number(label)): name for label, name in _classes(rows) if not math.isnan(number(label))}
    return join([*parts, _legend(references, labels), *views])


def _legend(references: dict[str, Path], labels: dict[int, str] | None = None) -> Markup:
    items = legend_items(labels or {})
    if references:
        items += [(f"rgb{MISSED_COLOUR}", "missed (reference only)"),
                  (f"rgb{EXTRA_COLOUR}", "extra (mask only or wrong class)")]  # fmt: skip
    if not items:
        return Markup("")
    swatches = [join([Markup(f'<span style="background:{esc(colour)}"></span>'), name]) for colour, name in items]
    return tag("p", join(["colours:", *swatches]), class_="legend")


def _baseline_view(rank: int, entry: CaseEntry, folder: Path, reference_path: Path | None, title: str) -> Markup:
    """The case's input beside the input with its mask; with a reference, the reference and the differences too."""
    parts = [tag("h3", title)]
    image, problem = _read(entry.input, "input")
    mask, mask_problem = _read(folder / entry.output, "mask", is_label=True)
    if image is None or mask is None:
        return _case_block(rank, [*parts, *(note(p) for p in (problem, mask_problem) if p)])
    if grid_difference(image, mask):
        return _case_block(rank, [*parts, note(f"the mask's grid differs from the input's: "
                                               f"{grid_difference(image, mask)}")])  # fmt: skip
    labels = mask.numpy()[0]
    if reference_path is None:
        stack = mask_stack(image.numpy(), labels, mask.spacing)
    else:
        truth, truth_problem = _read(reference_path, "reference", is_label=True)
        if truth is not None and grid_difference(truth, mask):
            truth, truth_problem = None, f"the reference's grid differs from the mask's: {grid_difference(truth, mask)}"
        if truth is None:
            parts.append(note(truth_problem))
            stack = mask_stack(image.numpy(), labels, mask.spacing)
        else:
            stack = _with_reference(image.numpy(), truth.numpy()[0], labels, mask.spacing)
    return _case_block(rank, [*parts, slice_viewer(f"case-{rank}-viewer", stack)])


def _with_reference(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, spacing: Any) -> SliceStack:
    """Input, reference, mask and their differences (:func:`segmorph.report.slices.segmentation_stack`)."""
    stack = segmentation_stack(image, reference, mask, spacing)
    panels = [Panel("input", "image"), Panel("input + reference", "image", "reference"),
              Panel("input + mask", "image", "prediction"), Panel("differences", "image", "differences")]  # fmt: skip
    return replace(stack, panels=panels)


def _case_block(rank: int, parts: list[Markup]) -> Markup:
    return tag("div", join(parts), class_="case", id=f"case-{rank}")
