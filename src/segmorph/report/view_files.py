"""``segmorph view`` from files: scans paired with masks by case name, label names from a run or dataset.

:func:`write_view` is what ``segmorph view`` runs; :func:`prediction_view` and :func:`evaluation_view` write the
pages of ``segmorph predict --view`` and ``segmorph evaluate --view``. The page itself is
:func:`segmorph.report.view.build_view`.

Case names follow ``predict`` and ``evaluate``: the file name without its image suffix and without nnU-Net's
``_0000`` channel suffix (:func:`segmorph.io.mask_file_name`), so ``scans/case_1_0000.nii.gz`` pairs with
``masks/case_1.nii.gz`` and ``labels/case_1.png`` with ``pictures/case_1.png``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.io import case_name, list_images, mask_file_name
from segmorph.outputs import check_outputs
from segmorph.records import read_json
from segmorph.report.view import MAX_CASES, ViewCase, build_view
from segmorph.segmentation.datasets import parse_label_names

__all__ = ["check_evaluation_view", "evaluation_files", "evaluation_view", "label_names",
           "prediction_view", "view_cases", "write_view"]  # fmt: skip


# -- label names ------------------------------------------------------------------------------------


def label_names(source: str | Path) -> dict[int, str]:
    """Label value -> name from a run folder (its ``plan.json``), a dataset folder (``dataset.json``) or either file.

    Both ``dataset.json`` forms are read: MSD ``{"1": "Anterior"}`` and nnU-Net v2 ``{"Anterior": 1}``.

    Raises:
        SegmorphError: Neither file is there, or its ``labels`` entry is missing or malformed.
    """
    path = Path(source)
    if path.is_dir():
        found = [path / name for name in ("plan.json", "dataset.json") if (path / name).is_file()]
        if not found:
            raise SegmorphError("holds neither plan.json (a segmorph run) nor dataset.json (a dataset) to name "
                                "labels", path)  # fmt: skip
        path = found[0]
    raw = read_json(path, "label names").get("labels")
    if not isinstance(raw, dict) or not raw:
        raise SegmorphError("has no 'labels' object of label values and names", path)
    return parse_label_names(raw, path)


# -- cases from files and folders -------------------------------------------------------------------


def view_cases(scans: Sequence[str | Path], masks: Sequence[str | Path] = ()) -> tuple[list[ViewCase], list[str]]:
    """Pair scans with masks: a mask file belongs to the one scan given, a mask folder is matched by case name.

    Args:
        scans: Image files, folders of images or DICOM series folders.
        masks: One entry per mask layer: a file (with a single scan) or a folder of masks named like the scans.

    Returns:
        The cases, in scan order, and the layer names: a folder's name; a mask file's case name, or its
        folder's name when it is named like the scan (``labelsTr`` for ``labelsTr/case_1.nii.gz``).

    Raises:
        SegmorphError: A path is missing, a mask file is given with several scans, a folder matches no scan,
            or a folder holds two masks for one case.
    """
    files = list_images(scans)
    layers = [_layer(Path(source), files) for source in masks]
    names = _unique([_layer_name(Path(source), files) for source in masks])
    cases = [ViewCase(case_name(scan), scan, tuple(layer.get(case_name(scan)) for layer in layers)) for scan in files]
    return cases, names


def _layer_name(source: Path, scans: list[Path]) -> str:
    """A folder's name; a mask file's case name, or its folder's name when it shares the scan's case name."""
    if source.is_dir():
        return source.name
    name = case_name(source)
    if name == case_name(scans[0]):
        return source.resolve().parent.name or "mask"
    return name


def _layer(source: Path, scans: list[Path]) -> dict[str, Path]:
    if source.is_file():
        if len(scans) != 1:
            raise SegmorphError(f"a mask file goes with one scan, got {len(scans)} scans; give a folder of masks "
                                "named like the scans", source)  # fmt: skip
        return {case_name(scans[0]): source}
    found: dict[str, Path] = {}
    for path in list_images([source]):
        case = case_name(path)
        if case in found:
            raise SegmorphError(f"two masks for case {case!r}: {found[case].name} and {path.name}", source)
        found[case] = path
    wanted = {case_name(scan) for scan in scans}
    if not wanted & set(found):
        raise SegmorphError(f"no mask is named like a scan (scans: {_names(wanted)}; masks: {_names(found)})",
                            source)  # fmt: skip
    return found


def _names(cases: Any, limit: int = 4) -> str:
    cases = sorted(cases)
    return ", ".join(cases[:limit]) + (f" and {len(cases) - limit} more" if len(cases) > limit else "")


def _unique(names: list[str]) -> list[str]:
    result: list[str] = []
    for name in names:
        result.append(name if name not in result else f"{name} ({len(result) + 1})")
    return result


def write_view(
    scans: str | Path | Sequence[str | Path], masks: Sequence[str | Path] = (), out: str | Path = "view.html",
    labels_from: str | Path | None = None,
) -> Path:  # fmt: skip
    """Write one page showing scans with their masks (what ``segmorph view`` does).

    Args:
        scans: An image file, a folder of images or DICOM series folder, or a list of those.
        masks: Mask files (with one scan) or folders of masks matched by case name, one per layer; with two,
            the first is the prediction and the second the reference.
        out: The HTML file to write (atomically).
        labels_from: A run folder, dataset folder, ``plan.json`` or ``dataset.json`` naming the label values.

    Returns:
        The path written.

    Raises:
        SegmorphError: A missing or unreadable input, a mask off its scan's grid (naming the mask), or an output
            that would overwrite an input.
    """
    scans = [scans] if isinstance(scans, (str, Path)) else list(scans)
    inputs = [*scans, *masks, labels_from]
    check_outputs([Path(out)], inputs=inputs)
    labels = label_names(labels_from) if labels_from is not None else {}
    cases, layers = view_cases(scans, masks)
    return build_view(cases, out, layers, labels, inputs=inputs)


def prediction_view(run_dir: str | Path, scans: Sequence[str | Path], out_dir: str | Path,
                    suffix: str | None = None) -> Path:  # fmt: skip
    """``OUT/view.html`` for ``segmorph predict --view``: each scan with the mask predict wrote for it.

    Label names come from the run's ``plan.json``; scans whose mask is missing are shown without one.
    """
    out_dir = Path(out_dir)
    files = list_images(scans)
    masks = [out_dir / mask_file_name(scan, suffix) for scan in files]
    cases = [ViewCase(case_name(scan), scan, (mask if mask.is_file() else None,)) for scan, mask in zip(files, masks)]
    labels = label_names(run_dir) if (Path(run_dir) / "plan.json").is_file() else {}
    title = f"predictions of {Path(run_dir).name}" + _limited(len(cases), "first")
    return build_view(cases[:MAX_CASES], out_dir / "view.html", ["prediction"], labels, title, [run_dir, *scans])


def _limited(count: int, which: str) -> str:
    return f" ({which} {MAX_CASES} of {count} cases)" if count > MAX_CASES else ""


def evaluation_files(predictions: str | Path, references: str | Path,
                     scans: str | Path | None = None) -> list[tuple[str, Path, Path, Path | None]]:  # fmt: skip
    """``(case, prediction, reference, scan or None)`` paired by case name, as ``evaluate`` pairs them."""
    from segmorph.segmentation.evaluate import pair_cases

    pairs, _ = pair_cases(Path(predictions), Path(references))
    found = {case_name(scan): scan for scan in list_images([scans])} if scans is not None else {}
    return [(case, prediction, reference, found.get(case)) for case, prediction, reference in pairs]


def check_evaluation_view(out: str | Path, predictions: str | Path, references: str | Path,
                          scans: str | Path | None = None) -> None:  # fmt: skip
    """Refuse, before any work, a view page that would overwrite a mask or scan it shows."""
    files = evaluation_files(predictions, references, scans)
    check_outputs([Path(out)], inputs=[path for _, *paths in files for path in paths])


def evaluation_view(rows: Sequence[Mapping[str, Any]], predictions: str | Path, references: str | Path,
                    out: str | Path, scans: str | Path | None = None) -> Path:  # fmt: skip
    """The page of ``segmorph evaluate --view``: prediction and reference of every case, worst mean Dice first.

    Args:
        rows: ``evaluate``'s per case x class rows (``case``, ``label``, ``name``, ``dice``); they give the
            order, the Dice in the case list and the label names.
        predictions: Folder of predicted masks.
        references: Folder of reference masks.
        out: The HTML file.
        scans: Optional scans (a folder or file) matched by case name; without them masks are drawn on black.
    """
    dice: dict[str, list[float]] = {}
    for row in rows:
        dice.setdefault(str(row["case"]), []).append(float(row["dice"]))
    labels = {int(row["label"]): str(row["name"]) for row in rows}
    files = evaluation_files(predictions, references, scans)
    cases = [ViewCase(case, scan, (prediction, reference),
                      f"mean Dice {np.mean(dice[case]):.3f}" if case in dice else "")
             for case, prediction, reference, scan in files]  # fmt: skip
    worst = {case: np.mean(values) for case, values in dice.items()}
    cases.sort(key=lambda c: (-math.inf if math.isnan(worst.get(c.name, math.nan)) else worst[c.name], c.name))
    inputs = [path for _, *paths in files for path in paths]
    title = "evaluation, worst mean Dice first" + _limited(len(cases), "worst")
    return build_view(cases[:MAX_CASES], out, ["prediction", "reference"], labels, title, inputs)
