"""The Python API of segmentation: train a run folder, segment images with it, score masks.

These are the functions ``segmorph train`` and ``segmorph predict`` call; results are small frozen
dataclasses. Images are :class:`segmorph.image.Image` objects (``(C, I, J[, K])`` tensors with their
voxel-to-world geometry in mm), so masks land on each scan's exact grid.

Example:
    >>> import segmorph as sm
    >>> run = sm.train("Task04_Hippocampus", out="runs/h", time_budget="20m")
    >>> mask = sm.Segmenter(run.out)(sm.read_image("scan.nii.gz"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.configs import load_overrides_file, parse_duration
from segmorph.errors import SegmorphError
from segmorph.image import Image, check_same_grid
from segmorph.segmentation.names import DEFAULT_SYNTHETIC_SHARE
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.predict import PredictOptions

DEFAULT_TIME_BUDGET_S = 1200.0  # 20 minutes, as ``segmorph train``


@dataclass(frozen=True)
class Evaluation:
    """Segmentation metrics of predicted masks against references (see :mod:`segmorph.metrics.segmentation`).

    Attributes:
        cases: Number of cases scored.
        mean: Metric name -> mean over classes of the per-class means (``dice``, ``iou``, ``precision``,
            ``recall``, ..., ``hd95`` and ``assd`` in ``unit``).
        per_class: Class name -> metric name -> mean over cases.
        unmatched_predictions: Prediction case ids without a reference (not scored).
        unit: The unit of distances: ``mm``, or ``px`` for pictures (no physical pixel size).
    """

    cases: int
    mean: Mapping[str, float]
    per_class: Mapping[str, Mapping[str, float]]
    unmatched_predictions: tuple[str, ...] = ()
    unit: str = "mm"

    @property
    def dice(self) -> float:
        """Mean Dice over classes."""
        return self.mean["dice"]

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Evaluation:
        """Build from the summary written by :func:`segmorph.segmentation.evaluate.evaluate_folders`."""
        per_class = {
            stats["name"]: {metric: value["mean"] for metric, value in stats.items() if isinstance(value, dict)}
            for stats in summary["classes"].values()
        }  # fmt: skip
        return cls(int(summary["cases"]), dict(summary["mean_over_classes"]), per_class,
                   tuple(summary.get("unmatched_predictions", ())), str(summary.get("unit", "mm")))  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did; everything it wrote is in ``out``.

    Attributes:
        out: Run folder (``plan.json``, ``checkpoint_best.pt``, ``summary.json``, ``validation/``, ...).
        steps: Optimiser steps taken.
        elapsed_s: Training time in seconds (without the final validation).
        stopped_because: Why training stopped (``"step or time limit"`` or ``"early stopping"``).
        best_val_dice: Best patch-level validation Dice during training (NaN without validation).
        best_epoch: Epoch of ``best_val_dice``.
        train_cases: Number of training cases.
        val_cases: Number of validation cases.
        validation: Full-resolution validation metrics on the original grids (None when skipped).
        seconds_per_case: Inference time per validation case in seconds (None when skipped).
    """

    out: Path
    steps: int
    elapsed_s: float
    stopped_because: str
    best_val_dice: float
    best_epoch: int
    train_cases: int
    val_cases: int
    validation: Evaluation | None = None
    seconds_per_case: float | None = None

    @classmethod
    def from_summary(cls, out: Path, summary: Mapping[str, Any]) -> TrainResult:
        """Build from the summary :func:`segmorph.segmentation.pipeline.train_segmentation` returns."""
        fit = summary["fit"]
        validation = summary.get("validation")
        return cls(
            out=Path(out), steps=int(fit["steps"]), elapsed_s=float(fit["elapsed_s"]),
            stopped_because=str(fit["stopped_because"]), best_val_dice=float(fit["best_val_dice"]),
            best_epoch=int(fit["best_epoch"]), train_cases=int(summary["train_cases"]),
            val_cases=int(summary["val_cases"]),
            validation=Evaluation.from_summary(validation["metrics"]) if validation else None,
            seconds_per_case=float(validation["seconds_per_case"]) if validation else None,
        )  # fmt: skip


def time_budget_seconds(time_budget: str | float | None, max_steps: int = 0) -> float:
    """Seconds of a time budget: ``"20m"``, ``"1h30m"``, ``"90s"`` or a number of seconds.

    None means 20 minutes, or no time limit (0) when ``max_steps`` alone limits training.

    Example:
        >>> time_budget_seconds("1h30m"), time_budget_seconds(None, max_steps=50)
        (5400.0, 0.0)
    """
    if time_budget is None:
        return 0.0 if max_steps > 0 else DEFAULT_TIME_BUDGET_S
    try:
        return parse_duration(time_budget)
    except SegmorphError as err:
        raise SegmorphError(f"time_budget: {err.problem}") from None


def spacing_values(spacing: float | Sequence[float] | None) -> tuple[float, ...] | None:
    """A voxel size in mm to plan for (``spacing`` arguments of the API: one value or one per axis) as a tuple of
    positive floats; None stays None.

    Raises:
        SegmorphError: A value that is not a positive number.
    """
    if spacing is None:
        return None
    values = (spacing,) if isinstance(spacing, (int, float)) else tuple(spacing)
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(v > 0 for v in values):
        raise SegmorphError(f"spacing: expected positive millimetres (one value or x, y, z), got {spacing!r}")
    return values


def _request(
    dataset: str | Path, out: str | Path, *, time_budget: str | float | None, max_steps: int, spacing, overrides,
    config, device: str, seed: int, images_dir, labels_dir, show_progress: bool, **extra: Any,
):  # fmt: skip
    from segmorph.segmentation.pipeline import TrainRequest

    values = load_overrides_file(config) if config is not None else {}
    values.update(overrides or {})
    if max_steps < 0:
        raise SegmorphError(f"max_steps: expected 0 (no step limit) or more, got {max_steps}")
    return TrainRequest(
        dataset=Path(dataset), out=Path(out), time_budget_s=time_budget_seconds(time_budget, max_steps),
        max_steps=max_steps, device=device, overrides=tuple(values.items()), target_spacing=spacing_values(spacing),
        images_dir=None if images_dir is None else Path(images_dir),
        labels_dir=None if labels_dir is None else Path(labels_dir), seed=seed, show_progress=show_progress,
        config_file=None if config is None else Path(config), **extra,
    )  # fmt: skip


def train(
    dataset: str | Path,
    out: str | Path,
    *,
    time_budget: str | float | None = None,
    max_steps: int = 0,
    fold: int = 0,
    num_folds: int = 5,
    val_cases: Sequence[str] = (),
    spacing: float | Sequence[float] | None = None,
    network_dims: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    resume: bool = False,
    validate: bool = True,
    show_progress: bool = True,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    check: bool = True,
    log: str = "csv",
    labelled_cases: int = 0,
    unlabelled: Sequence[str | Path] = (),
    init: str | Path | None = None,
    freeze_encoder_steps: int = 0,
    synthetic: str | Path | None = None,
    synthetic_share: float = DEFAULT_SYNTHETIC_SHARE,
    synthetic_count: int = 0,
    annotate_every: int = 0,
) -> TrainResult:
    """Plan, preprocess, train and validate a segmentation model into the run folder ``out``.

    Args:
        dataset: Dataset folder: MSD/nnU-Net layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``) or
            paired folders.
        out: Run folder to write (plan, checkpoints, logs, validation masks and metrics).
        time_budget: Training time: ``"20m"``, ``"1h30m"``, ``"90s"`` or seconds. None: 20 minutes, or no
            time limit when ``max_steps`` is given.
        max_steps: Step limit (0: none). Alone, it makes training time-independent and repeatable.
        fold: Validation fold of ``num_folds`` (-1: train on every case, no validation).
        num_folds: Number of cross-validation folds.
        val_cases: Explicit validation case ids (instead of ``fold``).
        spacing: Voxel size in mm to plan for (one value, or x, y, z); None: the dataset's median.
        network_dims: 2 or 3 spatial dimensions of the network; None: the scans'. 2 for 3D scans trains a 2D
            network on slices across the through-plane axis (that of the largest spacing) and predicts slice by
            slice (the slice axis is stored in ``plan.json``).
        overrides: Plan values to replace by dotted key, e.g. ``{"train.batch_size": 4}``.
        config: JSON/YAML file of plan overrides (``overrides`` win over it).
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        seed: Seed of the split and of training.
        resume: Continue the run in ``out`` from its last checkpoint (its plan is kept).
        validate: After training, segment the validation cases on their original grids and score them.
        show_progress: Progress bars and summary lines on the console.
        images_dir: Image folder of a paired-folder dataset (relative to ``dataset``).
        labels_dir: Label folder of a paired-folder dataset (relative to ``dataset``).
        cache_dir: Preprocessing cache (default ``out/preprocessed``).
        check: Run the dataset quality check first (:func:`segmorph.qc.quality.check_before_training`; not
            on ``resume``): one warning line when it flags cases; the data and the split are never changed.
        log: ``"csv"`` (``train_log.csv``) or ``"tensorboard"``: also TensorBoard event files in
            ``out/tensorboard/`` with the same scalars and a picture of a validation case at each epoch
            (needs ``pip install segmorph[tensorboard]``).
        labelled_cases: Keep the labels of this many training cases only (a choice seeded by ``seed``, from the
            training fold; validation cases are untouched); 0: all. ``run.json`` lists the cases chosen.
        unlabelled: Unlabelled scans for semi-supervised training with a mean teacher (settings: the plan's
            ``semi`` section, e.g. ``{"semi.weight": 1.0}``): image files, folders, DICOM series or dataset
            folders, and ``"fold"``: the training cases that ``labelled_cases`` leaves without labels.
        init: A pretraining run, a segmentation run of the same dimensionality or a checkpoint file: every
            weight whose name and shape match is loaded (the network takes the source's widths); ``run.json``
            lists what was loaded and what was not.
        freeze_encoder_steps: With ``init``: the encoder gets no update for this many first steps.
        synthetic: A ``segmorph synthesize train`` run: its generator makes ``synthetic_count`` image/label pairs
            (0: four per labelled case, 20 to 200) from deformed label maps of the labelled training cases, and
            each training patch comes from them with probability ``synthetic_share``.
        synthetic_share: See ``synthetic``.
        synthetic_count: See ``synthetic``.
        annotate_every: Partial annotation of 3D scans: only every K-th slice of each training case across its
            through-plane axis keeps its labels, the others are ignored in the loss (0: every slice).

    Returns:
        A :class:`TrainResult`.

    Raises:
        SegmorphError: Bad dataset, settings or overrides; the message names the file or argument.

    Example:
        >>> run = train("Task04_Hippocampus", out="runs/h", time_budget="20m")
        >>> run.validation.dice
        >>> few = train("Task04_Hippocampus", out="runs/h5", labelled_cases=5, unlabelled=["fold"])
    """
    from segmorph.segmentation.pipeline import train_segmentation

    request = _request(
        dataset, out, time_budget=time_budget, max_steps=max_steps, spacing=spacing, overrides=overrides,
        config=config, device=device, seed=seed, images_dir=images_dir, labels_dir=labels_dir,
        show_progress=show_progress, fold=fold, num_folds=num_folds, val_cases=tuple(val_cases), resume=resume,
        cache_dir=None if cache_dir is None else Path(cache_dir), validate_with_predictor=validate, check=check,
        log=log, network_dims=network_dims, labelled_cases=labelled_cases,
        unlabelled=(unlabelled,) if isinstance(unlabelled, (str, Path)) else tuple(unlabelled),
        init=None if init is None else Path(init), freeze_encoder_steps=freeze_encoder_steps,
        synthetic=None if synthetic is None else Path(synthetic), synthetic_share=synthetic_share,
        synthetic_count=synthetic_count, annotate_every=annotate_every,
    )  # fmt: skip
    return TrainResult.from_summary(request.out, train_segmentation(request))


@dataclass(frozen=True)
class CrossValidationResult:
    """What :func:`cross_validate` did; everything it wrote is in ``out``.

    Attributes:
        out: Cross-validation run folder (``crossval.json``, ``fold_<k>/``, ``cross_validation.csv``, ...).
        folds: The folds done.
        cases: Cases scored out of fold.
        mean_dice: Out-of-fold Dice, mean over cases then over classes (before postprocessing).
        per_class: Class name -> out-of-fold mean Dice.
        fold_dice: Class name -> fold -> that fold's mean Dice.
        postprocessing: The clean-up chosen on the out-of-fold predictions, in words.
    """

    out: Path
    folds: tuple[int, ...]
    cases: int
    mean_dice: float
    per_class: dict[str, float]
    fold_dice: dict[str, dict[int, float]]
    postprocessing: str

    @classmethod
    def from_summary(cls, out: Path, summary: Mapping[str, Any]) -> CrossValidationResult:
        """Build from the summary of :func:`segmorph.segmentation.crossval.summarize_folds`."""
        classes = summary["classes"].values()
        return cls(
            out=Path(out), folds=tuple(summary["folds"]), cases=int(summary["cases"]),
            mean_dice=float(summary["mean_dice"]),
            per_class={c["name"]: float(c["dice_out_of_fold"]) for c in classes},
            fold_dice={c["name"]: {int(k): float(v) for k, v in c["dice_per_fold"].items()} for c in classes},
            postprocessing=str(summary["postprocessing"]),
        )  # fmt: skip


def cross_validate(
    dataset: str | Path,
    out: str | Path,
    *,
    folds: str | Sequence[int] = "all",
    num_folds: int = 5,
    time_budget: str | float | None = None,
    budget_per_fold: bool = False,
    max_steps: int = 0,
    spacing: float | Sequence[float] | None = None,
    network_dims: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    resume: bool = False,
    show_progress: bool = True,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    check: bool = True,
    log: str = "csv",
) -> CrossValidationResult:
    """Train the folds of a ``num_folds``-fold split into ``out/fold_<k>``, score every case out of fold and
    choose postprocessing on the out-of-fold predictions; :class:`Segmenter` and ``segmorph predict`` then
    use the folds as an ensemble.

    Args:
        dataset: Dataset folder (as for :func:`train`).
        out: Cross-validation run folder.
        folds: ``"all"``, ``"0,2,4"`` or a sequence of fold numbers to train now.
        num_folds: Folds of the split (the split is :func:`segmorph.segmentation.datasets.split_cases`'s).
        time_budget: Time for every fold together (each fold's with ``budget_per_fold``), as for :func:`train`.
        budget_per_fold: ``time_budget`` is each fold's.
        resume: Continue the run in ``out``: folds done are kept, an interrupted fold resumes.
        max_steps, spacing, network_dims, overrides, config, device, seed, show_progress, images_dir, labels_dir,
            cache_dir, check, log: As for :func:`train` (``cache_dir`` defaults to ``out/preprocessed``, shared by the
            folds).

    Returns:
        A :class:`CrossValidationResult`.

    Example:
        >>> cv = cross_validate("Task04_Hippocampus", out="runs/h_cv", time_budget="20m")
        >>> cv.mean_dice, cv.postprocessing
    """
    from segmorph.folds import parse_folds
    from segmorph.segmentation.crossval import train_cross_validation

    chosen = (
        parse_folds(folds, num_folds) if isinstance(folds, str) else parse_folds(",".join(map(str, folds)), num_folds)
    )
    request = _request(
        dataset, out, time_budget=time_budget, max_steps=max_steps, spacing=spacing, overrides=overrides,
        config=config, device=device, seed=seed, images_dir=images_dir, labels_dir=labels_dir,
        show_progress=show_progress, num_folds=num_folds, resume=resume,
        cache_dir=None if cache_dir is None else Path(cache_dir), check=check, log=log, network_dims=network_dims,
    )  # fmt: skip
    return CrossValidationResult.from_summary(request.out, train_cross_validation(request, chosen, budget_per_fold))


def plan(
    dataset: str | Path,
    *,
    time_budget: str | float | None = None,
    max_steps: int = 0,
    spacing: float | Sequence[float] | None = None,
    network_dims: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
) -> Plan:
    """The plan :func:`train` would use (spacing, normalisation, patch, network, training), without training.

    Arguments as for :func:`train`. Save it with ``plan.save("plan.json")``.

    Example:
        >>> p = plan("Task04_Hippocampus", time_budget="20m")
        >>> p.train.patch_size  # voxels per spatial axis
    """
    from segmorph.segmentation.pipeline import plan_dataset

    request = _request(
        dataset, Path("."), time_budget=time_budget, max_steps=max_steps, spacing=spacing, overrides=overrides,
        config=config, device=device, seed=seed, images_dir=images_dir, labels_dir=labels_dir,
        show_progress=show_progress, network_dims=network_dims,
    )  # fmt: skip
    return plan_dataset(request)[1]


class Segmenter:
    """A trained segmentation run, loaded once and applied to many images.

    Preprocessing, sliding-window inference with Gaussian weighting (and mirroring), undoing the
    preprocessing and postprocessing are those of ``segmorph predict``, which uses this class too.

    Args:
        run_dir: Run folder written by :func:`train` (``plan.json`` and ``checkpoint_<checkpoint>.pt``), or a
            cross-validation run written by :func:`cross_validate` (its folds' mean probabilities), or a folder
            written by :func:`segmorph.segmentation.find_best.find_best` (the chosen run or pair of runs).
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        checkpoint: ``"best"`` or ``"last"``.
        mirror: Average over mirrorings along every spatial axis (test-time augmentation).
        overlap: Sliding-window overlap in [0, 1).
        largest_component: Keep only the largest connected component of each class.
        amp: bfloat16 autocast where the device runs it fast (the default; False: float32 everywhere).
        compile: Compile the network with TorchInductor (a few seconds once; faster per image).
        batch_size: Tiles per forward pass.
        folds: For a cross-validation run (:func:`cross_validate`): the folds to average (default: all it has).
        postprocess: For a cross-validation run: ``"auto"`` applies the clean-up chosen on its out-of-fold
            predictions, ``"none"`` skips it.

    Example:
        >>> seg = Segmenter("runs/h")
        >>> mask = seg(read_image("scan.nii.gz"))  # label map (1, I, J, K) on the scan's grid
    """

    def __init__(
        self, run_dir: str | Path, device: str = "cpu", *, checkpoint: str = "best", mirror: bool = True,
        overlap: float = 0.5, largest_component: bool = False, amp: bool = True, compile: bool = False,
        batch_size: int = 4, folds: Sequence[int] | None = None, postprocess: str = "auto",
    ) -> None:  # fmt: skip
        from segmorph.segmentation.ensemble import load_predictor

        self.run_dir = Path(run_dir)
        self.device = device
        options = PredictOptions(  # checks its own values
            mirror=mirror, overlap=overlap, batch_size=batch_size, largest_component=largest_component, amp=amp,
            checkpoint=checkpoint, compile=compile,
        )  # fmt: skip
        self.predictor = load_predictor(self.run_dir, device, options, folds, postprocess)

    def __repr__(self) -> str:
        return f"Segmenter({str(self.run_dir)!r}, device={self.device!r})"

    @property
    def plan(self) -> Plan:
        """The run's plan (spacing, normalisation, patch, network)."""
        return self.predictor.plan

    @property
    def labels(self) -> dict[int, str]:
        """Label value -> class name (0 = background)."""
        return dict(self.plan.labels)

    def __call__(self, image: Image) -> Image:
        """Label map of ``image``: ``(1, *S)`` uint8 (int32 beyond 256 classes), ``is_label=True``, with
        exactly ``image``'s grid (shape and affine)."""
        return self.predictor.segment(_checked(image))[0]

    def probabilities(self, image: Image) -> Image:
        """Class probabilities ``(K, *S)`` float32 (K classes, background first) on ``image``'s grid."""
        image = _checked(image)
        return Image(self.predictor.probabilities(image).float(), image.affine)


def _checked(image: Image) -> Image:
    if not isinstance(image, Image):
        raise SegmorphError(f"expected a segmorph Image (see segmorph.read_image), got {type(image).__name__}")
    return image


def evaluate(
    predictions: str | Path | Image,
    references: str | Path | Image,
    out: str | Path | None = None,
    labels: Mapping[int, str] | None = None,
    show_table: bool = False,
    labels_from: str | Path | None = None,
) -> Evaluation:
    """Score predicted label maps against references: Dice, IoU, precision, recall, HD95 and ASSD (mm), ...

    Args:
        predictions: A folder of predicted masks, or one mask (an :class:`Image`).
        references: A folder of reference masks paired by case name, or one mask on the prediction's grid.
        out: CSV to write, one row per case and class (a JSON summary goes beside); folders only.
        labels: Foreground label value -> class name (default: those of ``labels_from``; for folders, else those of
            a ``dataset.json`` beside the references that names every value present; else every value present,
            ``label_<value>``).
        show_table: Print a table of the metrics (folders only).
        labels_from: A run folder (its plan's labels) or a dataset folder (its dataset.json's labels).

    Returns:
        An :class:`Evaluation`.

    Raises:
        SegmorphError: Missing or unpaired cases, or masks whose shape or geometry differ.

    Example:
        >>> evaluate("masks/", "labelsTr/", out="metrics.csv").dice
    """
    from segmorph.segmentation.evaluate import evaluate_arrays, evaluate_folders, read_label_names, summarize

    if isinstance(predictions, Image) or isinstance(references, Image):
        if not (isinstance(predictions, Image) and isinstance(references, Image)):
            raise SegmorphError("predictions and references: give two Images or two folders")
        if out is not None:
            raise SegmorphError("out: metrics files are written for folders only")
        check_same_grid(predictions, references, "predictions: grid differs from the references'", None)
        pred, ref = predictions.numpy()[0], references.numpy()[0]
        if labels is None and labels_from is not None:
            labels = read_label_names(labels_from)
        if labels is None:
            values = sorted({int(v) for v in np.union1d(np.unique(pred), np.unique(ref))} - {0})
            labels = {v: f"label_{v}" for v in values}
        if not any(int(k) != 0 for k in labels):
            raise SegmorphError("labels: no foreground label to score")
        rows = evaluate_arrays([("case", pred, ref, references.spacing)], dict(labels))
        return Evaluation.from_summary(summarize(rows))
    summary = evaluate_folders(predictions, references, None if out is None else Path(out),
                               None if labels is None else dict(labels), console=show_table,
                               labels_from=labels_from)  # fmt: skip
    return Evaluation.from_summary(summary)
