"""``baseline`` on files: classical segmentation of image files, folders and DICOM series into a folder of
masks, with a record (``baseline.json``) and, against reference masks, the metrics (``metrics.csv``).

Per-case inputs (seed masks, field-of-view masks, references) are matched to the scans by case name
(the file name without its image suffix), as ``segmorph evaluate`` matches predictions to references.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import Image, check_same_grid
from segmorph.io import atomic_write_text, case_name, list_images, mask_file_name, read_image, strip_suffix, write_image
from segmorph.outputs import Output, check_outputs
from segmorph.processing.steps import parse_steps
from segmorph.segmentation.baselines import SEEDED, field_of_view, seed_from_mask, segment
from segmorph.segmentation.evaluate import CSV_COLUMNS, evaluate_arrays, summarize

__all__ = ["RECORD_NAME", "segment_folder"]

RECORD_NAME = "baseline.json"
METRICS_NAME = "metrics.csv"


def _per_case(source: str | Path | None, scans: Sequence[Path], what: str) -> dict[Path, Path] | None:
    """One file per scan: ``source`` itself when it is a file, else the file of the same case name inside it."""
    if source is None:
        return None
    source = Path(source)
    if source.is_file():
        return dict.fromkeys(scans, source)
    if not source.is_dir():
        raise SegmorphError(f"no such {what} file or folder", source)
    by_case = {case_name(p): p for p in list_images([source])}
    matched = {scan: by_case.get(case_name(scan)) for scan in scans}
    missing = [case_name(scan) for scan, found in matched.items() if found is None]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SegmorphError(f"no {what} for case(s) {', '.join(missing[:3])}{more}", source)
    return matched  # type: ignore[return-value]


def _read_on_grid(path: Path, like: Image, what: str) -> Image:
    labels = read_image(path, is_label=True)
    check_same_grid(labels, like, f"{what} is not on the scan's grid", path)
    return labels


def _case_params(params: dict, seed_file: Path | None, image: Image) -> dict:
    if seed_file is None:
        return dict(params)
    try:
        seed = seed_from_mask(_read_on_grid(seed_file, image, "seed mask"))
    except ValueError as err:
        raise SegmorphError(str(err), seed_file) from None
    return {**params, "seeds": [seed]}


def segment_folder(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    method: str,
    steps: str | Sequence[str] = (),
    mask: str | Path | None = None,
    seed_masks: str | Path | None = None,
    reference: str | Path | None = None,
    **params: Any,
) -> list[Path]:
    """Segment each input file (or DICOM folder) and write its mask to ``out_dir``.

    Args:
        inputs: Image files, folders of images or DICOM series folders.
        out_dir: Output folder, created when missing; gets one mask per input (named after it), the record
            ``baseline.json`` and, with ``reference``, ``metrics.csv`` and ``metrics.json``.
        method: A key of :data:`segmorph.segmentation.baselines.METHODS`.
        steps: Enhance steps run before the method (e.g. ``channel:green,clahe``).
        mask: ``"auto"`` (each scan's field of view), a mask file for every scan, or a folder of masks
            matched by case name: statistics come from inside the mask and results are 0 outside it.
        seed_masks: Mask file or folder matched by case name: each scan's seed is the foreground voxel
            nearest the centre of its mask (seeded methods; replaces ``seeds``).
        reference: Folder of reference masks matched by case name: metrics of every case, foreground
            (any label above 0) against foreground, inside the mask when one is given.
        **params: Arguments of the method (``classes``, ``seeds``, ``tolerance``, ``multiplier``,
            ``iterations``, ``sigmas``, ``threshold``...) and of ``postprocess`` (``opening_mm``,
            ``closing_mm``, ``fill_holes``, ``largest_component``).

    Returns:
        The written mask paths, in input order.

    Raises:
        SegmorphError: Bad steps or parameters, an unmatched per-case file, an output that would overwrite
            an input, or an input that cannot be read or segmented (naming the file).
    """
    parsed = parse_steps(steps)
    if method in SEEDED and seed_masks is None and not params.get("seeds"):
        raise SegmorphError(f"{method} needs seed points or seed masks")
    scans = list_images(inputs)
    out_dir = Path(out_dir)
    masks = None if mask in (None, "auto") else _per_case(mask, scans, "mask")
    seeds = _per_case(seed_masks, scans, "seed mask")
    references = _per_case(reference, scans, "reference mask")
    names = [mask_file_name(p) for p in scans]
    records = [out_dir / RECORD_NAME] + ([out_dir / METRICS_NAME, out_dir / "metrics.json"] if references else [])
    outputs = [Output.folder(out_dir), *(Output.file(out_dir / n, p) for n, p in zip(names, scans, strict=True)),
               *(Output.file(r) for r in records)]  # fmt: skip
    extra_inputs = [p for table in (masks, seeds, references) if table for p in table.values()]
    check_outputs(outputs, inputs=[*map(Path, inputs), *scans, *extra_inputs])  # before any image is read
    written, rows = [], []
    for scan, name in zip(scans, names, strict=True):
        image = read_image(scan)
        case_mask = _case_mask(image, masks[scan] if masks else mask)
        try:
            result = segment(image, method, parsed, case_mask, **_case_params(params, seeds and seeds[scan], image))
        except (ValueError, SegmorphError) as err:
            raise SegmorphError(getattr(err, "problem", str(err)), scan) from None
        written.append(write_image(result, out_dir / name))
        if references:
            rows += _score(strip_suffix(name), result, _read_on_grid(references[scan], image, "reference"), case_mask)
    _write_record(out_dir, method, params, parsed, mask, seed_masks, reference, scans, names)
    if references:
        _write_metrics(out_dir, rows)
    return written


def _case_mask(image: Image, mask: str | Path | None) -> np.ndarray | None:
    """The scan's mask as a boolean ``(I, J[, K])`` array: its field of view for ``auto``, a file read and
    checked against the scan's grid, or None."""
    if mask is None:
        return None
    if mask == "auto":
        return field_of_view(image)
    return _read_on_grid(Path(mask), image, "mask").numpy()[0] > 0


def _score(case: str, result: Image, reference: Image, inside: np.ndarray | None) -> list[dict]:
    predicted, expected = result.numpy()[0] > 0, reference.numpy()[0] > 0
    if inside is not None:
        predicted, expected = predicted & inside, expected & inside
    spacing = reference.affine.spacing
    return evaluate_arrays([(case, predicted.astype(np.int64), expected.astype(np.int64), spacing)], {1: "foreground"})


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _write_record(out_dir: Path, method: str, params: dict, steps, mask, seed_masks, reference,
                  scans: Sequence[Path], names: Sequence[str]) -> None:  # fmt: skip
    def absolute(path: str | Path | None) -> str | None:
        return None if path is None else path if path == "auto" else str(Path(path).resolve())

    record = {
        "kind": "baseline",
        "method": method,
        "params": {k: _json_value(v) for k, v in params.items()},
        "steps": [step.text for step in steps],
        "mask": absolute(mask),
        "seed_masks": absolute(seed_masks),
        "reference": absolute(reference),
        "cases": [{"case": strip_suffix(n), "input": str(s.resolve()), "output": n} for s, n in zip(scans, names)],
    }
    atomic_write_text(out_dir / RECORD_NAME, json.dumps(record, indent=2) + "\n")


def _write_metrics(out_dir: Path, rows: list[dict]) -> None:
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / METRICS_NAME, buffer.getvalue())
    atomic_write_text(out_dir / "metrics.json", json.dumps(summarize(rows), indent=2) + "\n")
