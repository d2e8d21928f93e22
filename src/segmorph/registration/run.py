"""Registration runs on files: register a pair or a CSV of pairs, warp with a saved transform, score.

A registration folder (``reg/``) holds ``warped.nii.gz``, ``warped_labels.nii.gz`` (when moving
labels are given), the transform (``transform.json``, ``affine.tfm``, and for deformable results
``displacement.nii.gz``, plus ``velocity.nii.gz`` when the field is one velocity's exponential: classical
or one learned pass), ``registration.json`` (what was done, how long),
``metrics.json`` when fixed labels are given, and PNG pictures when asked.
"""

from __future__ import annotations

import csv
import io as _io
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import Image, check_same_grid
from segmorph.io import atomic_write_text, distance_unit, read_image, read_label_map, strip_suffix, write_image
from segmorph.metrics.segmentation import case_metrics
from segmorph.outputs import Output, check_outputs
from segmorph.records import read_csv, read_csv_lines
from segmorph.registration.api import check_pair, measure_deformation, register
from segmorph.registration.spatial import INTERPOLATIONS, LABEL_INTERPOLATIONS
from segmorph.registration.transform import Transform, load_transform, read_fixed_grid, save_transform
from segmorph.segmentation.evaluate import dataset_label_names, name_labels, read_label_names

WARPED_IMAGE = "warped.nii.gz"
WARPED_LABELS = "warped_labels.nii.gz"


@dataclass
class PairRequest:
    """One pair to register and what to do with it."""

    fixed: Path
    moving: Path
    out: Path
    moving_labels: Path | None = None
    fixed_labels: Path | None = None
    method: str = "deformable"
    refine: int = 0
    similarity: str = "ncc"
    pictures: bool = False
    prealign: str | None = None
    fixed_structures: Path | None = None
    moving_structures: Path | None = None
    device: str = "cpu"
    labels_from: Path | None = None  # a run or dataset folder naming the labels (default: see label_names_for)


def label_names_for(fixed_labels: Path | None, labels_from: str | Path | None = None) -> dict[int, str] | None:
    """Label value -> name: those of ``labels_from`` (a run or dataset folder, or a dataset.json), else those of
    the ``dataset.json`` beside the folder of ``fixed_labels`` (MSD: ``labelsTr/..``), else None."""
    if labels_from is not None:
        return read_label_names(labels_from)
    return None if fixed_labels is None else dataset_label_names(Path(fixed_labels).parent)


def read_labels_like(path: Path, image: Image, image_path: Path) -> Image:
    """Read a label map that must lie on ``image``'s grid (same shape and geometry; a DICOM-SEG lands on it)."""
    labels = read_label_map(path, like=image)
    check_same_grid(labels, image, f"label grid differs from its image {image_path.name}'s", path)
    return labels


PAIR_FILES = (WARPED_IMAGE, WARPED_LABELS, "transform.json", "affine.tfm", "displacement.nii.gz", "velocity.nii.gz",
              "metrics.json", "registration.json", "views.png", "grid.png", "jacobian.png", "labels.png")  # fmt: skip
"""Files a registration folder may hold (checked against the inputs before a pair is registered)."""


def pair_outputs(out: Path) -> list[Output]:
    """The outputs of one registration folder: the folder and the files :func:`register_pair` may write."""
    return [Output.folder(out), *(Output.file(Path(out) / name) for name in PAIR_FILES)]


def check_pair_outputs(request: PairRequest, model_dir: str | Path | None = None) -> None:
    """Refuse, before any work, a registration folder that is (or would overwrite) one of the pair's inputs,
    a file of the model's run folder, a file, or not writable (see :func:`segmorph.outputs.check_outputs`)."""
    inputs = [request.fixed, request.moving, request.moving_labels, request.fixed_labels, request.fixed_structures,
              request.moving_structures, model_dir]  # fmt: skip
    check_outputs(pair_outputs(Path(request.out)), inputs=inputs)


def register_pair(request: PairRequest, model=None) -> dict[str, Any]:
    """Register one pair and write its folder; returns the registration record (with metrics)."""
    check_pair_outputs(request, getattr(model, "run_dir", None))
    fixed, moving = read_image(request.fixed), read_image(request.moving)
    check_pair(fixed, moving, request.fixed, request.moving)
    moving_labels = read_labels_like(request.moving_labels, moving, request.moving) if request.moving_labels else None
    fixed_labels = read_labels_like(request.fixed_labels, fixed, request.fixed) if request.fixed_labels else None
    structures = _read_structures(request, fixed, moving)
    started = time.perf_counter()
    try:
        transform = register(fixed, moving, request.method, similarity=request.similarity, model=model,
                             moving_labels=moving_labels, structures=structures, refine=request.refine,
                             prealign=request.prealign, device=request.device)  # fmt: skip
    except SegmorphError as err:
        if err.path is not None:
            raise
        raise SegmorphError(err.problem, request.moving) from None  # name the pair's moving file
    seconds = time.perf_counter() - started
    out = Path(request.out)
    save_transform(transform, out, fixed.affine, fixed.spatial_shape)
    warped = transform.warp(moving, fixed.affine, fixed.spatial_shape)
    write_image(warped, out / WARPED_IMAGE)
    warped_labels = None
    if moving_labels is not None:
        warped_labels = transform.warp(moving_labels, fixed.affine, fixed.spatial_shape)
        write_image(warped_labels, out / WARPED_LABELS)
    record: dict[str, Any] = {
        "fixed": str(request.fixed), "moving": str(request.moving), "method": request.method,
        "refine": request.refine, "similarity": request.similarity, "seconds": round(seconds, 3),
    }  # fmt: skip
    if request.method == "learned" and model is not None:
        record["passes"] = model.passes_used(request.refine)
        record["label_guided"] = model.guided_by(moving_labels)
    names = label_names_for(request.fixed_labels, request.labels_from) if fixed_labels is not None else None
    if fixed_labels is not None:
        unit = distance_unit(request.fixed_labels)
        record["metrics"] = registration_metrics(transform, fixed, fixed_labels, warped_labels, names=names, unit=unit)
        atomic_write_text(out / "metrics.json", json.dumps(record["metrics"], indent=2) + "\n")
    if request.pictures:
        from segmorph.registration.pictures import save_registration_pictures

        save_registration_pictures(out, fixed, moving, warped, transform, fixed_labels, warped_labels, moving_labels,
                                   label_names=names)  # fmt: skip
    atomic_write_text(out / "registration.json", json.dumps(record, indent=2) + "\n")
    return record


def _read_structures(request: PairRequest, fixed: Image, moving: Image) -> tuple[Image, Image] | None:
    if (request.fixed_structures is None) != (request.moving_structures is None):
        raise SegmorphError("give both --fixed-structures and --moving-structures, or neither")
    if request.fixed_structures is None:
        return None
    return (read_labels_like(request.fixed_structures, fixed, request.fixed),
            read_labels_like(request.moving_structures, moving, request.moving))  # fmt: skip


def registration_metrics(transform: Transform, fixed: Image, fixed_labels: Image | None = None,
                         warped_labels: Image | None = None, landmarks: tuple[Path, Path] | None = None,
                         names: Mapping[int, str] | None = None, unit: str = "mm") -> dict:  # fmt: skip
    """Dice/HD95 per label (named and measured as in :func:`label_overlap`), folding %, std of log det(J), and TRE
    when landmark files are given."""
    metrics: dict[str, Any] = {}
    if fixed_labels is not None and warped_labels is not None:
        metrics["labels"] = label_overlap(warped_labels, fixed_labels, names, unit)
        values = [row["dice"] for row in metrics["labels"]]
        metrics["mean_dice"] = float(np.mean(values)) if values else float("nan")
    metrics.update(deformation_quality(transform, fixed))
    if landmarks is not None:
        metrics["tre"] = target_registration_error(transform, *landmarks)
    return metrics


def label_overlap(warped_labels: Image, fixed_labels: Image, names: Mapping[int, str] | None = None,
                  unit: str = "mm") -> list[dict]:  # fmt: skip
    """One row per foreground label present in either map: Dice, HD95, ASSD, ... (see metrics.py) and ``unit``.

    Args:
        warped_labels: The moving labels warped onto the fixed grid.
        fixed_labels: The fixed image's labels, same grid.
        names: Label value -> name, used when it names every label present (else ``label_<value>``).
        unit: ``mm`` (distances from the grid's spacing) or ``px`` (pictures: distances counted in pixels).
    """
    pred, ref = warped_labels.numpy()[0], fixed_labels.numpy()[0]
    labels = name_labels(np.union1d(np.unique(pred), np.unique(ref)).tolist(), names)
    spacing = fixed_labels.spacing if unit == "mm" else np.ones(fixed_labels.ndim)
    return [{**row, "unit": unit} for row in case_metrics(pred, ref, spacing, labels)] if labels else []


def deformation_quality(transform: Transform, fixed: Image) -> dict[str, float]:
    """Folding (% of fixed voxels with det(J) <= 0) and the std of log det(J) of the whole transform."""
    return asdict(measure_deformation(transform, fixed))


def read_landmarks(path: Path) -> np.ndarray:
    """Points in mm from a CSV with columns x,y,z (LPS world; a header row is optional), ``(N, n)``."""
    rows = read_csv_lines(path, "landmarks file")
    if rows and not _is_number(rows[0][1][0]):
        rows = rows[1:]
    points = []
    for line, cells in rows:
        try:
            point = [float(v) for v in cells]
        except ValueError:
            raise SegmorphError(f"line {line}: landmarks must be rows of numbers x,y,z in mm", path) from None
        if not np.isfinite(point).all():
            raise SegmorphError(f"line {line}: landmarks must be finite numbers x,y,z in mm, got {','.join(cells)}",
                                path)  # fmt: skip
        points.append(point)
    if not points or len({len(p) for p in points}) != 1 or len(points[0]) not in (2, 3):
        raise SegmorphError(f"expected rows of 2 or 3 coordinates, got {sorted({len(p) for p in points})} values per row",
                            path)  # fmt: skip
    return np.array(points, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def target_registration_error(transform: Transform, fixed_points: Path, moving_points: Path) -> dict[str, float]:
    """Distances (mm) between mapped fixed landmarks ``T(p_fixed)`` and their moving counterparts."""
    fixed, moving = read_landmarks(fixed_points), read_landmarks(moving_points)
    if fixed.shape != moving.shape:
        raise SegmorphError(f"has {len(moving)} landmarks, {fixed_points.name} has {len(fixed)}", moving_points)
    before = np.linalg.norm(fixed - moving, axis=1)
    after = np.linalg.norm(transform.map_points(fixed).numpy() - moving, axis=1)
    return {"mean_mm": float(after.mean()), "max_mm": float(after.max()), "before_mean_mm": float(before.mean()),
            "count": int(len(after))}  # fmt: skip


def evaluate_registration(reg_dir: Path, fixed_labels: Path | None = None, fixed_image: Path | None = None,
                          landmarks: tuple[Path, Path] | None = None,
                          labels_from: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Score a registration folder: labels against ``fixed_labels``, folding, TRE; writes metrics.json.

    Labels are named by ``labels_from`` (a run or dataset folder), else by the dataset.json beside the folder of
    ``fixed_labels`` (:func:`label_names_for`); distances are in mm, or px for picture label maps.
    """
    reg_dir = Path(reg_dir)
    landmark_files = landmarks or ()
    check_outputs([reg_dir / "metrics.json"], inputs=[fixed_labels, fixed_image, *landmark_files])
    transform = load_transform(reg_dir)
    grid_source = fixed_image or fixed_labels or reg_dir / WARPED_IMAGE
    grid = read_image(grid_source, is_label=grid_source == fixed_labels)
    reference = read_labels_like(fixed_labels, grid, grid_source) if fixed_labels else None
    warped_labels = None
    if reference is not None:
        if not (reg_dir / WARPED_LABELS).exists():
            raise SegmorphError(f"no {WARPED_LABELS} (register with --moving-labels to score labels)", reg_dir)
        warped_labels = read_labels_like(reg_dir / WARPED_LABELS, grid, grid_source)
    names = label_names_for(fixed_labels, labels_from) if fixed_labels else None
    unit = distance_unit(fixed_labels) if fixed_labels else "mm"
    metrics = registration_metrics(transform, grid, reference, warped_labels, landmarks, names, unit)
    atomic_write_text(reg_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def warp_file(source: Path, transform_path: Path, out: Path, labels: bool, reference: Path | None = None,
              interpolation: str | None = None) -> Image:  # fmt: skip
    """Resample an image or label map with a saved transform onto the fixed grid and write it.

    The fixed grid is ``reference`` when given, else the grid stored with the transform
    (``transform.json``'s ``fixed_grid``, or the grid of a displacement field file). ``out`` may be none of
    these inputs nor a file of the transform folder (checked before anything is read).
    """
    check_outputs([Path(out)], inputs=[source, transform_path, reference])
    transform = load_transform(transform_path)
    affine, shape = _fixed_grid(transform_path, reference)
    if transform.ndim not in (None, affine.ndim):
        raise SegmorphError(f"transform is {transform.ndim}D but its fixed grid is {affine.ndim}D", transform_path)
    moving = read_image(source, is_label=labels)
    allowed = LABEL_INTERPOLATIONS if labels else INTERPOLATIONS
    if interpolation is not None and interpolation not in allowed:
        raise SegmorphError(f"--interpolation {interpolation} is not for {'label maps' if labels else 'images'} "
                            f"(use one of {', '.join(allowed)})", source)  # fmt: skip
    if moving.ndim != affine.ndim:
        raise SegmorphError(f"is {moving.ndim}D but the transform's grid is {affine.ndim}D", source)
    warped = transform.warp(moving, affine, shape, interpolation)
    write_image(warped, out)
    return warped


def _fixed_grid(transform_path: Path, reference: Path | None):
    if reference is not None:
        image = read_image(reference, check_finite=False)
        return image.affine, image.spatial_shape
    record = transform_path / "transform.json" if transform_path.is_dir() else None
    if record is not None and record.exists():
        return read_fixed_grid(record)
    if transform_path.is_file() and transform_path.suffix.lower() not in (".tfm", ".txt", ".mat"):
        field = read_image(transform_path)
        return field.affine, field.spatial_shape
    raise SegmorphError("an affine transform file carries no grid; give --reference FIXED_IMAGE", transform_path)


# -- many pairs ------------------------------------------------------------------------------------


def read_pairs_csv(path: Path) -> list[dict[str, Path | None]]:
    """Rows of ``fixed,moving[,fixed_labels,moving_labels]`` (header row required); paths relative to the CSV."""
    table = read_csv(path, ("fixed", "moving"), "pairs CSV")
    pairs = []
    for number, row in zip(table.lines, table.rows):
        entry = {}
        for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
            value = (row.get(key) or "").strip()
            entry[key] = (path.parent / value) if value else None
        if entry["fixed"] is None or entry["moving"] is None:
            raise SegmorphError(f"line {number}: fixed and moving are required", path)
        pairs.append(entry)
    return pairs


def register_pairs(pairs_csv: Path, out: Path, method: str, model=None, refine: int = 0, similarity: str = "ncc",
                   pictures: bool = False, progress: bool = True, prealign: str | None = None,
                   device: str = "cpu") -> list[dict]:  # fmt: skip
    """Register every pair of a CSV (the model loaded once); one folder per pair plus ``summary.csv``.

    Every output is checked against every input before the first pair is registered. When a pair fails, the
    pairs before it keep their folders and ``summary.csv`` lists them (what finished), and the error is raised,
    naming the failed pair's file; nothing is written when the first pair fails.
    """
    from segmorph.progress import track

    requests = pair_requests(pairs_csv, out, method, refine, similarity, pictures, prealign, device)
    check_pairs_outputs(pairs_csv, out, requests, getattr(model, "run_dir", None))
    records: list[dict] = []
    try:
        for request in track(requests, "register", len(requests), enabled=progress):
            records.append({"folder": request.out.name, **register_pair(request, model)})
    finally:
        if records:
            atomic_write_text(Path(out) / "summary.csv", _summary_csv(records))
    return records


def pair_requests(pairs_csv: Path, out: Path, method: str = "deformable", refine: int = 0, similarity: str = "ncc",
                  pictures: bool = False, prealign: str | None = None, device: str = "cpu") -> list[PairRequest]:  # fmt: skip
    """One :class:`PairRequest` per row of a pairs CSV, each with its folder ``out/pair_<i>_<fixed>_<moving>``."""
    requests = []
    for index, pair in enumerate(read_pairs_csv(Path(pairs_csv))):
        folder = Path(out) / f"pair_{index:03d}_{strip_suffix(pair['fixed'].name)}_{strip_suffix(pair['moving'].name)}"
        requests.append(PairRequest(pair["fixed"], pair["moving"], folder, pair["moving_labels"], pair["fixed_labels"],
                                    method, refine, similarity, pictures, prealign, device=device))  # fmt: skip
    return requests


def check_pairs_outputs(pairs_csv: Path, out: Path, requests: list[PairRequest],
                        model_dir: str | Path | None = None) -> None:  # fmt: skip
    """Refuse, before any work, ``--pairs`` outputs (the folder, each pair's folder and files, ``summary.csv``)
    that would overwrite the CSV, an image or label map of any pair, or a file of the model's run folder."""
    outputs = [Output.folder(out), Output.file(Path(out) / "summary.csv")]
    for request in requests:
        outputs += pair_outputs(request.out)
    inputs = [pairs_csv, model_dir]
    for r in requests:
        inputs += [r.fixed, r.moving, r.fixed_labels, r.moving_labels]
    check_outputs(outputs, inputs=inputs)


def _summary_csv(records: list[dict]) -> str:
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["pair", "fixed", "moving", "method", "seconds", "mean_dice", "folding_percent"])
    for r in records:
        metrics = r.get("metrics", {})
        writer.writerow([r["folder"], r["fixed"], r["moving"], r["method"], r["seconds"],
                         metrics.get("mean_dice", ""), metrics.get("folding_percent", "")])  # fmt: skip
    return buffer.getvalue()


def load_model(model_dir: Path | None, device: str = "cpu", passes: int | None = None, refine: int = 0):
    """The learned model of a run folder, or None; ``passes`` replaces the model's network passes. ``passes`` and
    ``refine`` (instance-optimisation steps) are checked before the model loads (errors name the flags)."""
    if model_dir is None:
        return None
    from segmorph.registration.learned.config import check_passes, check_refine
    from segmorph.registration.learned.model import LearnedRegistration

    try:
        check_refine(refine)
        check_passes(1 if passes is None else passes)
    except ValueError as err:
        raise SegmorphError(f"--{err}") from None
    model = LearnedRegistration.load(model_dir, device)
    if passes is not None:
        model.config = replace(model.config, passes=passes)
    return model
