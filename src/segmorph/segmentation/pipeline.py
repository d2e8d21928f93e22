"""The whole segmentation job: dataset -> fingerprint -> plan -> preprocess -> fit -> validate."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from segmorph.configs import apply_naming_file
from segmorph.engine import distributed as dist
from segmorph.engine.loop import FitResult
from segmorph.engine.tracking import TENSORBOARD_FOLDER, SlicePreview, check_log, open_tracker
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes, atomic_write_text
from segmorph.nn import build_network, count_parameters
from segmorph.outputs import check_run_folder
from segmorph.progress import console
from segmorph.provenance import data_changed, data_fingerprint, write_run_record
from segmorph.qc.quality import check_before_training
from segmorph.readchecks import check_voxel_budget
from segmorph.records import read_json
from segmorph.segmentation.datasets import DatasetSpec, infer_labels, load_dataset, split_cases, split_from_list
from segmorph.segmentation.few_labels import (
    FewLabels,
    check_flags,
    few_labels,
    initialize,
    load_unlabelled,
    resumed_settings,
    semi_line,
    source_widths,
)
from segmorph.segmentation.names import DEFAULT_SYNTHETIC_SHARE
from segmorph.segmentation.plan import Plan, apply_overrides, make_plan
from segmorph.segmentation.preprocess import fingerprint, load_preprocessed, preprocess_dataset
from segmorph.segmentation.semisupervised import SemiSupervisedTask
from segmorph.segmentation.task import fit

Case = tuple[torch.Tensor, torch.Tensor]  # a preprocessed image (C, *S) float32 and its label map (1, *S) int64


@dataclass(frozen=True)
class TrainRequest:
    """What ``segmorph train`` was asked to do.

    Attributes:
        dataset: Dataset folder (MSD layout or paired folders).
        out: Run folder.
        time_budget_s: Training time limit in seconds (0: only ``max_steps``).
        max_steps: Step limit (0: only the time budget).
        device: ``cpu``, ``cuda`` or ``mps``.
        fold: Validation fold of ``num_folds`` (-1: train on all cases, no validation).
        num_folds: Number of cross-validation folds.
        val_cases: Explicit validation case ids (instead of ``fold``).
        overrides: Dotted plan keys to replace (``{"train.batch_size": 4}``).
        config_file: The ``--config`` file some of ``overrides`` came from (an error caused by it names it).
        target_spacing: Voxel size in mm to plan for (ITK x, y, z order, or one value for all axes;
            default: the dataset's median spacing), e.g. ``(2.0,)`` for a fast low-resolution model.
        network_dims: 2 or 3 spatial dimensions of the network (None: the scans'); 2 for 3D scans trains a 2D
            network on slices across the through-plane axis (see :func:`segmorph.segmentation.plan.make_plan`).
        images_dir, labels_dir: Explicit folders for paired-folder datasets.
        resume: Continue the run in ``out`` from its last checkpoint.
        cache_dir: Where preprocessed cases are cached (default ``out/preprocessed``).
        seed: Seed for the split and training.
        validate_with_predictor: After training, segment the validation cases with the full
            predictor (original grid, mirroring) and score them with :mod:`segmorph.metrics.segmentation`.
        check: Run the dataset quality check (:func:`segmorph.qc.quality.check_before_training`) before
            training (not on ``resume``): one warning line when it flags cases; it never changes the data.
        log: ``"csv"`` (``train_log.csv`` only) or ``"tensorboard"``: also TensorBoard event files in
            ``out/tensorboard/`` with the same scalars and a picture of the first validation case
            (:mod:`segmorph.engine.tracking`; needs the ``tensorboard`` extra).
        save_validation_probabilities: Also keep each validation case's class probabilities (see
            :func:`validate_run`), for ensembles scored out of fold.
        labelled_cases: Train on the labels of this many cases of the training fold only (a choice seeded by
            ``seed``); the others are left out of supervised training (0: every training case keeps its labels).
        unlabelled: Unlabelled scans for semi-supervised training (the plan's ``semi`` section): image files,
            folders, DICOM series or dataset folders (:func:`segmorph.segmentation.unlabelled.unlabelled_spec`), and
            ``"fold"``: the training cases ``labelled_cases`` leaves without labels (their images only).
        init: Start from the weights of a pretraining or training run (or a checkpoint file): every tensor whose
            name and shape match is loaded (:func:`segmorph.nn.transfer.initialize_from`), and the network takes
            the source's ``features`` and ``residual`` unless ``network.features`` / ``network.residual`` are set.
        freeze_encoder_steps: With ``init``: the encoder gets no update for this many first steps
            (``train.freeze_encoder_steps``).
        synthetic: A ``segmorph synthesize train`` run folder: before training, its generator makes
            ``synthetic_count`` image/label pairs from elastically deformed label maps of the labelled training
            cases (:func:`segmorph.synthesis.synthetic_cases`), and each training patch comes from them with
            probability ``synthetic_share``.
        synthetic_share: See ``synthetic``.
        synthetic_count: Synthetic pairs to make (0: four per labelled training case, at least 20, at most 200).
        annotate_every: Partial annotation: keep the labels of every K-th slice of each training case across its
            through-plane axis (:func:`segmorph.segmentation.plan.slice_axis_for`) and ignore the others in the loss
            (:func:`segmorph.segmentation.sparse_labels.keep_every_kth_slice`); validation keeps every label. 0: off.
    """

    dataset: Path
    out: Path
    time_budget_s: float = 1200.0
    max_steps: int = 0
    device: str = "cpu"
    fold: int = 0
    num_folds: int = 5
    val_cases: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    target_spacing: tuple[float, ...] | None = None
    network_dims: int | None = None
    images_dir: Path | None = None
    labels_dir: Path | None = None
    resume: bool = False
    cache_dir: Path | None = None
    seed: int = 0
    validate_with_predictor: bool = True
    show_progress: bool = True
    config_file: Path | None = None
    check: bool = True
    log: str = "csv"
    save_validation_probabilities: bool = False
    labelled_cases: int = 0
    unlabelled: tuple[str | Path, ...] = ()
    init: Path | None = None
    freeze_encoder_steps: int = 0
    synthetic: Path | None = None
    synthetic_share: float = DEFAULT_SYNTHETIC_SHARE
    synthetic_count: int = 0
    annotate_every: int = 0

    @property
    def unlabelled_paths(self) -> list[Path]:
        """The ``unlabelled`` sources that are paths (not ``"fold"``)."""
        return [Path(source) for source in self.unlabelled if str(source) != "fold"]


def plan_dataset(request: TrainRequest) -> tuple[DatasetSpec, Plan]:
    """Load the dataset, fingerprint it and make the plan (with overrides applied)."""
    spec = load_dataset(request.dataset, request.images_dir, request.labels_dir)
    if not spec.labels:
        spec = infer_labels(spec)
    facts = fingerprint(spec, progress=request.show_progress)
    _require_foreground(spec, facts)
    try:
        plan = make_plan(spec, facts, request.device, request.time_budget_s, request.max_steps, request.target_spacing,
                         request.network_dims)  # fmt: skip
    except ValueError as err:
        raise SegmorphError(str(err), request.dataset) from None
    overrides = dict(request.overrides)
    overrides.setdefault("train.seed", request.seed)
    if request.freeze_encoder_steps:
        overrides["train.freeze_encoder_steps"] = request.freeze_encoder_steps
    inherited = source_widths(request.init, plan, overrides)
    try:
        plan = apply_naming_file(lambda values: apply_overrides(plan, values), {**inherited, **overrides},
                                 request.config_file)  # fmt: skip
    except SegmorphError as err:
        if not inherited or err.path is not None:
            raise
        given = ", ".join(f"{k} {v}" for k, v in inherited.items())
        raise SegmorphError(f"--init: this source's {given} do not fit this plan ({err.problem}); choose the width "
                            "with --set network.features=[...]", request.init) from None  # fmt: skip
    return spec, plan


def _require_foreground(spec: DatasetSpec, facts: dict[str, Any]) -> None:
    """Refuse a labelled dataset whose label maps are all background: there is nothing to learn.

    One empty label map among others is fine (a scan without the structure); all of them is a mistake.
    """
    labelled = any(case.label is not None for case in spec.cases)
    if labelled and not any(int(k) > 0 and v > 0 for k, v in facts["class_fractions"].items()):
        raise SegmorphError("every label map is empty (background only); training needs foreground", spec.root)


def train_segmentation(request: TrainRequest) -> dict[str, Any]:
    """Plan, preprocess, train and validate; everything lands in ``request.out``.

    Returns:
        A summary: plan, split sizes, fit result and (when validated) the metric summary.
    """
    dist.init_from_environment(dist.local_device(torch.device(request.device)))
    try:
        return _train_segmentation(request)
    finally:
        dist.cleanup()


def _train_segmentation(request: TrainRequest) -> dict[str, Any]:
    out = Path(request.out)
    check_run_folder(out, request.dataset, request.init, request.synthetic, *request.unlabelled_paths,
                     cache=request.cache_dir)  # fmt: skip
    check_log(request.log)
    request = _settled_request(request, out)
    spec, plan = _spec_and_plan(request, out)
    quality = {"ran": False, "flagged_cases": []}
    if request.check and not request.resume and dist.is_main_process():
        quality = check_before_training(request.dataset, images_dir=request.images_dir, labels_dir=request.labels_dir)
    train_ids, val_ids = _split(spec, request)
    cases_of = few_labels(spec, train_ids, request.labelled_cases, request.unlabelled, request.seed)
    _check_extras(request, plan)
    torch.manual_seed(plan.train.seed)
    model = build_network(plan.network)
    transfer = None
    if request.init is not None and not request.resume:  # a resumed run's checkpoint holds its weights
        line, transfer = initialize(model, request.init)
        if dist.is_main_process():
            console.print(line, highlight=False)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        plan.save(out / "plan.json")
        facts = cases_of.facts() | ({} if transfer is None else {"init": str(request.init), "transfer": transfer})
        facts |= _extra_facts(request)
        _write_provenance(out, spec, request, plan, train_ids, val_ids, quality, facts)
    data = _training_data(spec, plan, request, cases_of, val_ids)
    if dist.is_main_process():
        console.print(_summary_line(plan, model, len(data.labelled), len(val_ids)), highlight=False)
        if data.unlabelled:
            console.print(semi_line(plan, len(data.unlabelled)), highlight=False)
    preview = SlicePreview(val_ids[0], *data.validation[0], plan.train, plan.slice_axis) if val_ids else None
    tracker = open_tracker(request.log, out, preview)
    result = fit(
        model, data.labelled, data.validation, plan.train, out, plan.network,
        plan.num_classes, request.device, resume=request.resume, show_progress=request.show_progress,
        callbacks=() if tracker is None else (tracker,), label_names=plan.labels, slice_axis=plan.slice_axis,
        compose=partial(SemiSupervisedTask, unlabelled=data.unlabelled, semi=plan.semi) if data.unlabelled else None,
        synthetic=data.synthetic, synthetic_share=request.synthetic_share,
    )  # fmt: skip
    summary = {"fit": _fit_summary(result), "train_cases": len(data.labelled), "val_cases": len(val_ids)}
    if data.unlabelled:
        summary["unlabelled_cases"] = len(data.unlabelled)
    if request.validate_with_predictor and val_ids and dist.is_main_process():
        summary["validation"] = validate_run(out, spec, val_ids, request.device, request.show_progress,
                                             save_probabilities=request.save_validation_probabilities)  # fmt: skip
    if dist.is_main_process():
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _settled_request(request: TrainRequest, out: Path) -> TrainRequest:
    """``request`` with a resumed run's labelled cases and unlabelled sources where not given again, its few-label
    flags checked."""
    if request.resume:
        recorded = resumed_settings(out).items()
        request = replace(request, **{k: v for k, v in recorded if not getattr(request, k)
                                      or (k.startswith("synthetic_") and request.synthetic is None)})  # fmt: skip
    check_flags(request.labelled_cases, request.unlabelled, request.init, request.freeze_encoder_steps)
    return request


def _spec_and_plan(request: TrainRequest, out: Path) -> tuple[DatasetSpec, Plan]:
    """The dataset and a new plan, or on resume the run's own ``plan.json`` (plan options then warned about)."""
    if not request.resume:
        return plan_dataset(request)
    spec = load_dataset(request.dataset, request.images_dir, request.labels_dir)
    spec = spec if spec.labels else infer_labels(spec)
    if request.target_spacing is not None or request.network_dims is not None or request.overrides:
        console.print("warning: --resume keeps the run's plan.json; --spacing, --network-dims and --set are "
                      "ignored", highlight=False)  # fmt: skip
    return spec, Plan.load(out / "plan.json")


@dataclass(frozen=True)
class _TrainingData:
    """Preprocessed ``(image, label)`` cases of training and validation, unlabelled ``(C, *S)`` volumes and
    synthetic pairs."""

    labelled: list[Case]
    validation: list[Case]
    unlabelled: list[torch.Tensor]
    synthetic: list[Case]


def _training_data(
    spec: DatasetSpec, plan: Plan, request: TrainRequest, cases_of: FewLabels, val_ids: list[str]
) -> _TrainingData:
    """Load (or read from the cache) every case the run uses; labels thinned with ``annotate_every``."""
    labelled, fold_unlabelled = cases_of.labelled, cases_of.fold_unlabelled
    cases = _load_cases(spec, plan, request, labelled + val_ids + fold_unlabelled)
    cache = (Path(request.cache_dir) if request.cache_dir else Path(request.out) / "preprocessed") / "unlabelled"
    unlabelled = [cases.pop(c)[0] for c in fold_unlabelled]
    unlabelled += load_unlabelled(cases_of.extra, plan, cache, request.show_progress)
    if request.annotate_every:
        cases |= {c: (cases[c][0], sparse_label(cases[c][1], plan, request.annotate_every)) for c in labelled}
    synthetic = _synthetic_pairs(request, plan, [cases[c][1] for c in labelled])
    return _TrainingData([cases[c] for c in labelled], [cases[c] for c in val_ids], unlabelled, synthetic)


def _check_extras(request: TrainRequest, plan: Plan) -> None:
    """Refuse a bad ``annotate_every`` or ``synthetic_share``, or a GAN run that does not fit ``plan``, before
    anything is written."""
    if request.annotate_every < 0 or (request.annotate_every and plan.image_ndim != 3):
        raise SegmorphError(f"--annotate-every: expected a number of slices (1 or more) for 3D scans, got "
                            f"{request.annotate_every} for {plan.image_ndim}D scans")  # fmt: skip
    if request.synthetic is None and (request.synthetic_share != DEFAULT_SYNTHETIC_SHARE or request.synthetic_count):
        raise SegmorphError("--synthetic-share and --synthetic-count need --synthetic (a GAN run)")
    if request.synthetic is not None:
        from segmorph.synthesis import synthetic_cases

        if not 0.0 < request.synthetic_share < 1.0:
            raise SegmorphError(
                f"--synthetic-share: expected a fraction between 0 and 1, got {request.synthetic_share}"
            )
        if request.synthetic_count < 0:
            raise SegmorphError(f"--synthetic-count: expected 0 or more pairs, got {request.synthetic_count}")
        voxels = float(math.prod(plan.median_shape)) * (plan.network_channels + 1)  # an image and its label map
        check_voxel_budget(request.synthetic_count * voxels, f"--synthetic-count {request.synthetic_count} pairs "
                           f"of about {math.prod(plan.median_shape):,} voxels, kept in memory", request.synthetic)  # fmt: skip
        synthetic_cases(request.synthetic, [], plan, 0, plan.train.seed)  # the GAN loads and fits the plan


def _extra_facts(request: TrainRequest) -> dict[str, Any]:
    """``run.json`` entries of the synthetic pairs and the partial annotation, for the record and for resuming."""
    facts: dict[str, Any] = {}
    if request.synthetic is not None:
        facts["synthetic"] = {"run": str(request.synthetic), "share": request.synthetic_share,
                              "count": request.synthetic_count}  # fmt: skip
    if request.annotate_every:
        facts["annotate_every"] = request.annotate_every
    return facts


def sparse_label(label: torch.Tensor, plan: Plan, every: int) -> torch.Tensor:
    """``label`` ``(1, *S)`` (preprocessed) with only every ``every``-th slice across the plan's through-plane axis
    annotated, the rest :data:`~segmorph.segmentation.datasets.IGNORE`."""
    from segmorph.segmentation.plan import slice_axis_for
    from segmorph.segmentation.sparse_labels import keep_every_kth_slice

    return keep_every_kth_slice(label, every, slice_axis_for(plan.preprocess.target_spacing))


def _synthetic_pairs(request: TrainRequest, plan: Plan, labels: list[torch.Tensor]) -> list:
    """The GAN-made training pairs of ``request.synthetic`` (none without it)."""
    if request.synthetic is None:
        return []
    from segmorph.synthesis import synthetic_cases

    count = request.synthetic_count or min(200, max(20, 4 * len(labels)))
    pairs = synthetic_cases(request.synthetic, labels, plan, count, plan.train.seed, device=request.device)
    if dist.is_main_process():
        console.print(f"synthetic: {count} pairs from {request.synthetic}, {request.synthetic_share:.0%} of the "
                      "training patches", highlight=False)  # fmt: skip
    return pairs


def _split(spec: DatasetSpec, request: TrainRequest) -> tuple[list[str], list[str]]:
    if request.val_cases:
        return split_from_list(spec.case_ids, request.val_cases, request.dataset)
    return split_cases(spec.case_ids, request.fold, request.num_folds, request.seed, request.dataset)


def _load_cases(spec: DatasetSpec, plan: Plan, request: TrainRequest, case_ids: Sequence[str]) -> dict:
    cache = Path(request.cache_dir) if request.cache_dir else Path(request.out) / "preprocessed"
    paths = preprocess_dataset(spec, plan.preprocess, cache, case_ids=list(case_ids), progress=request.show_progress)
    cases = {}
    for path in paths:
        sample, _ = load_preprocessed(path)
        cases[sample.case_id] = (sample.image.data.float(), sample.label.data.long())
    return cases


def _summary_line(plan: Plan, model: torch.nn.Module, n_train: int, n_val: int) -> str:
    net = plan.network
    slices = "" if plan.slice_axis is None else f" on slices across axis {'IJK'[plan.slice_axis]}"
    return (
        f"segmorph: {net['name']} {plan.ndim}D{slices} features {net['features']} "
        f"({count_parameters(model):,} parameters), "
        f"patch {list(plan.train.patch_size)} x batch {plan.train.batch_size}, {n_train} train / {n_val} val cases, "
        f"budget {plan.train.time_budget_s / 60:.1f} min"
    )


def _fit_summary(result: FitResult) -> dict[str, Any]:
    return {
        "best_val_dice": result.best_score, "best_epoch": result.best_epoch, "steps": result.steps,
        "elapsed_s": round(result.elapsed_s, 1), "stopped_because": result.stopped_because,
        "world_size": result.world_size, "precision": result.precision,
    }  # fmt: skip


def _write_provenance(
    out: Path, spec: DatasetSpec, request: TrainRequest, plan: Plan, train_ids: list[str], val_ids: list[str],
    quality: dict[str, Any], extra_facts: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """``run.json``: command, versions, seeds, data fingerprint, split and the dataset check's flagged cases
    (see :mod:`segmorph.provenance`)."""
    facts = {
        "dataset": str(spec.root), "seed": request.seed, "train_seed": plan.train.seed, "fold": request.fold,
        "num_folds": request.num_folds, "max_steps": plan.train.max_steps, "time_budget_s": plan.train.time_budget_s,
        "train_cases": train_ids, "val_cases": val_ids, "preprocess_steps": list(plan.preprocess.steps),
        "quality_check": quality, "log": request.log, **(extra_facts or {}),
    }  # fmt: skip
    if request.log == "tensorboard":
        facts["tensorboard_dir"] = TENSORBOARD_FOLDER
    codes = _declared_segment_codes(spec)
    if codes is not None:
        facts["segment_codes"] = codes
    record = write_run_record(out, facts, data_fingerprint(spec), resume=request.resume)
    if data_changed(record):
        console.print("warning: the dataset's files changed since this run started (see run.json)", highlight=False)


def _declared_segment_codes(spec: DatasetSpec) -> dict[str, Any] | None:
    """The dataset.json's ``segment_codes`` (DICOM-SEG category and type codes per label), kept in ``run.json`` so
    that the run's DICOM-SEG outputs carry them wherever the dataset later goes."""
    path = Path(spec.root) / "dataset.json"
    if not path.is_file():
        return None
    codes = read_json(path, "dataset.json").get("segment_codes")
    return codes if isinstance(codes, dict) else None


def validate_run(
    run_dir: Path, spec: DatasetSpec, val_ids: Sequence[str], device: str = "cpu", show_progress: bool = True,
    mirror: bool = True, save_probabilities: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Segment the validation cases with the saved model and score them on their original grids.

    Writes ``validation/<case>.nii.gz``, ``validation/metrics.csv`` (+ ``.json``) and the overlay pictures
    of the worst cases (:func:`write_validation_overlays`) in ``run_dir``; with ``save_probabilities`` also
    ``validation/probabilities/<case>.npz`` (:func:`write_probabilities`).
    """
    from segmorph.io import distance_unit, write_image
    from segmorph.progress import track
    from segmorph.segmentation.datasets import load_sample, with_declared_ignore
    from segmorph.segmentation.evaluate import evaluate_folders
    from segmorph.segmentation.predict import PredictOptions, Predictor

    predictor = Predictor(run_dir, device, PredictOptions(mirror=mirror))
    pred_dir, ref_dir = run_dir / "validation", run_dir / "validation" / "reference"
    started = time.perf_counter()
    for case_id in track(val_ids, "validate", total=len(val_ids), enabled=show_progress):
        sample = load_sample(spec.case(case_id), spec)
        if sample.label is None:
            raise SegmorphError(f"validation case {case_id} has no label", spec.case(case_id).images[0])
        mask, probabilities = predictor.segment(sample.image)
        if save_probabilities:
            write_probabilities(probabilities, pred_dir / PROBABILITIES_FOLDER / f"{case_id}.npz")
        write_image(mask, pred_dir / f"{case_id}.nii.gz")
        write_image(
            replace(sample.label, data=with_declared_ignore(sample.label.data, spec)), ref_dir / f"{case_id}.nii.gz"
        )
    seconds = (time.perf_counter() - started) / max(len(val_ids), 1)
    labels = {k: v for k, v in spec.labels.items() if k > 0}
    unit = distance_unit(spec.case(val_ids[0]).label) if val_ids else "mm"  # pictures keep no spacing: px
    summary = evaluate_folders(pred_dir, ref_dir, pred_dir / "metrics.csv", labels, console=show_progress, unit=unit,
                               ignore=spec.ignore)  # fmt: skip
    write_validation_overlays(run_dir, spec, summary["rows"], labels)
    summary = {k: v for k, v in summary.items() if k != "rows"}
    return {"seconds_per_case": round(seconds, 3), "metrics": summary}


PROBABILITIES_FOLDER = "probabilities"


def write_probabilities(probabilities: torch.Tensor, path: Path) -> Path:
    """Class probabilities ``(K, *S)`` on the scan's grid as a compressed ``.npz`` (key ``probabilities``,
    float16: about 3 decimal digits, plenty to average and take the most likely class), written atomically."""
    import io as _io

    import numpy as np

    buffer = _io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities.float().numpy().astype(np.float16))
    return atomic_write_bytes(path, buffer.getvalue())


def read_probabilities(path: Path) -> torch.Tensor:
    """Probabilities written by :func:`write_probabilities`, as float32 ``(K, *S)``."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return torch.from_numpy(data["probabilities"].astype(np.float32))
    except (OSError, KeyError, ValueError) as err:
        raise SegmorphError(f"cannot read probabilities ({err})", path) from None


def write_validation_overlays(
    run_dir: Path, spec: DatasetSpec, rows: Sequence[dict], labels: dict[int, str], count: int = 3
) -> list[Path]:  # fmt: skip
    """Overlay pictures of the ``count`` validation cases of lowest mean Dice over classes (worst first).

    Writes ``validation/overlays/<case>_overlay.png`` in ``run_dir`` (:func:`segmorph.plots.overlay_slices`):
    the prediction ``validation/<case>.nii.gz`` as a fill, the case's reference label map as an outline, a
    legend naming ``labels``. A subfolder, so that the validation folder holds only label maps.

    Args:
        rows: Per case x class metric rows with keys ``case`` and ``dice`` (as from ``evaluate_folders``).
        labels: Foreground label value -> name.
    """
    import numpy as np

    from segmorph.io import read_image
    from segmorph.plots import overlay_slices
    from segmorph.segmentation.datasets import load_sample

    written = []
    for case_id, dice in worst_cases(rows, count):
        sample = load_sample(spec.case(case_id), spec)
        prediction = read_image(run_dir / "validation" / f"{case_id}.nii.gz", is_label=True).numpy()[0]
        reference = None if sample.label is None else np.maximum(sample.label.numpy()[0], 0)  # ignored: background
        path = run_dir / "validation" / "overlays" / f"{case_id}_overlay.png"
        image = sample.image.numpy()
        title = f"{case_id}: mean Dice {dice:.3f} (validation)"
        written.append(overlay_slices(image, prediction, path, reference, title=title, label_names=labels))
    return written


def worst_cases(rows: Sequence[dict], count: int) -> list[tuple[str, float]]:
    """``(case, mean Dice over its rows)`` of the ``count`` lowest means, lowest first; NaN counts as lowest."""
    per_case: dict[str, list[float]] = {}
    for row in rows:
        per_case.setdefault(str(row["case"]), []).append(float(row["dice"]))
    means = [(case, sum(values) / len(values)) for case, values in per_case.items()]
    return sorted(means, key=lambda item: float("-inf") if math.isnan(item[1]) else item[1])[:count]
