"""``segmorph synthesize train``: a label-to-image GAN trained in a segmentation plan's preprocessed space.

The dataset is planned and preprocessed exactly as ``segmorph train`` would (same fingerprint, target spacing,
normalisation, patch and split), so the generator's images live where a segmentation model's training
cases live and can be mixed into them (:func:`segmorph.synthesis.sampling.synthetic_cases`). The generator's
levels follow the plan's U-Net (widths capped, :class:`~segmorph.synthesis.task.GanSettings`); training runs
through :func:`segmorph.engine.loop.fit_task` with :class:`~segmorph.synthesis.task.GanTask`.

The run folder holds ``checkpoint_best.pt`` / ``checkpoint_last.pt`` (the generator; the config records the
plan's preprocessing, the labels, the channels, the dimensionality and the raw intensity scale; the last one
also the discriminator and its optimiser), ``plan.json``, ``run.json`` (``"kind": "synthesis"``),
``train_log.csv``, ``curves.png``, ``summary.json`` and ``samples.png`` (:mod:`segmorph.synthesis.pictures`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from segmorph.engine.checkpoints import load_checkpoint
from segmorph.engine.distributed import launched_by_torchrun
from segmorph.engine.loop import FitResult, TrainConfig, fit_task
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_text
from segmorph.nn import count_parameters
from segmorph.outputs import check_run_folder
from segmorph.progress import console
from segmorph.provenance import data_fingerprint, write_run_record
from segmorph.records import read_json
from segmorph.segmentation.datasets import DatasetSpec, infer_labels, load_dataset, load_sample, split_cases
from segmorph.segmentation.plan import Plan, make_plan
from segmorph.segmentation.preprocess import fingerprint, load_preprocessed, preprocess_dataset
from segmorph.synthesis.deform import Deformation, deform_labels
from segmorph.synthesis.model import RUN_KIND, IntensityScale, SynthesisModel, label_names, raw_scale
from segmorph.synthesis.networks import (
    LabelToImageGenerator,
    PatchDiscriminator,
    discriminator_features,
    discriminator_patch,
)
from segmorph.synthesis.pictures import SampleRow, write_sample_grid
from segmorph.synthesis.task import GanSettings, GanTask

SCALE_CASES = 10  # raw training images whose intensities give the raw scale (IntensityScale)
PICTURE_CASES = 4  # rows of samples.png


@dataclass(frozen=True)
class SynthesisRequest:
    """What ``segmorph synthesize train`` was asked to do.

    Attributes:
        dataset: Labelled dataset folder (MSD layout or paired folders).
        out: Run folder.
        time_budget_s: Training time limit in seconds (0: only ``max_steps``).
        max_steps: Step limit (0: only the time budget).
        device: ``cpu``, ``cuda`` or ``mps``.
        images_dir, labels_dir: Folders of a paired-folder dataset (relative to ``dataset``).
        target_spacing: Voxel size in mm to plan for (as ``segmorph train --spacing``).
        network_dims: 2 for a 2D generator of 3D scans (slices), None: the scans' dimensions.
        fold, num_folds: The split of ``segmorph train`` (validation fold; -1: no validation).
        train_cases: Train only on these case ids of the training part (e.g. the labelled few); empty: all.
        labelled_cases: Train only on this many cases of the training part, chosen as ``segmorph train
            --labelled-cases`` chooses them (same fold and seed); 0: all.
        seed: Seed of the split, the weights and the draws.
        resume: Continue the run in ``out`` from its last checkpoint (its plan and GAN settings).
        cache_dir: Preprocessing cache (default ``out/preprocessed``).
        show_progress: Progress bars and the summary line.
        settings: The GAN's settings.
    """

    dataset: Path
    out: Path
    time_budget_s: float = 1200.0
    max_steps: int = 0
    device: str = "cpu"
    images_dir: Path | None = None
    labels_dir: Path | None = None
    target_spacing: tuple[float, ...] | None = None
    network_dims: int | None = None
    fold: int = 0
    num_folds: int = 5
    train_cases: tuple[str, ...] = ()
    labelled_cases: int = 0
    seed: int = 0
    resume: bool = False
    cache_dir: Path | None = None
    show_progress: bool = True
    settings: GanSettings = field(default_factory=GanSettings)


@dataclass(frozen=True)
class RunSetup:
    """What a GAN run trains with: the plan, the GAN's settings and the split (case ids)."""

    plan: Plan
    settings: GanSettings
    train_ids: list[str]
    val_ids: list[str]


def train_synthesis(request: SynthesisRequest) -> dict[str, Any]:
    """Plan, preprocess and train the GAN; everything lands in ``request.out`` (see the module docstring).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        SegmorphError: One line naming the file: a missing or empty dataset folder, unlabelled cases, a label
            map on another grid than its image, undeclared label values, a run folder inside the dataset, a
            resumed folder that is not a GAN run; a start by torchrun with several processes.
    """
    if launched_by_torchrun():  # each process would train its own discriminator and write the same files
        raise SegmorphError("synthesize train runs in one process: start it without torchrun")
    out = Path(request.out)
    check_run_folder(out, request.dataset, cache=request.cache_dir)
    spec = labelled_spec(request.dataset, request.images_dir, request.labels_dir)
    setup = _resumed_setup(out) if request.resume else _new_setup(spec, request)
    out.mkdir(parents=True, exist_ok=True)
    setup.plan.save(out / "plan.json")
    facts = {"kind": RUN_KIND, "dataset": str(spec.root), "seed": request.seed, "fold": request.fold,
             "num_folds": request.num_folds, "train_cases": setup.train_ids, "val_cases": setup.val_ids,
             "gan": setup.settings.to_dict(), "time_budget_s": setup.plan.train.time_budget_s,
             "max_steps": setup.plan.train.max_steps}  # fmt: skip
    write_run_record(out, facts, data_fingerprint(spec), resume=request.resume)
    cases = _load_cases(spec, setup.plan, request, setup.train_ids + setup.val_ids)
    images = [load_sample(spec.case(c), spec).image.numpy() for c in setup.train_ids[:SCALE_CASES]]
    result, task = _fit(setup, cases, raw_scale(images, setup.plan.preprocess), request)
    shown = (setup.val_ids or setup.train_ids)[:PICTURE_CASES]
    write_samples(out, shown, [cases[c] for c in shown], request.device, request.seed)
    summary = {
        "best_val_correlation": result.best_score if task.val_cases else None, "best_epoch": result.best_epoch,
        "steps": result.steps, "elapsed_s": round(result.elapsed_s, 1), "stopped_because": result.stopped_because,
        "precision": result.precision, "train_cases": len(setup.train_ids), "val_cases_scored": len(task.val_cases),
        "last_losses": task.last_losses, "samples": "samples.png",
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _fit(setup: RunSetup, cases: dict, scale: IntensityScale, request: SynthesisRequest) -> tuple[FitResult, GanTask]:
    """Build the generator, the discriminator and the task, and train through the engine's loop."""
    plan, settings = setup.plan, setup.settings
    torch.manual_seed(request.seed)
    generator = _generator(plan, settings)
    features = discriminator_features(plan.train.patch_size, settings.discriminator_width)
    discriminator = PatchDiscriminator(plan.ndim, plan.num_classes + plan.network_channels, features)
    config = _train_config(plan, settings, request)
    val_cases = [cases[c] for c in setup.val_ids[: settings.validation_cases]]
    task = GanTask([cases[c] for c in setup.train_ids], val_cases, config, settings, discriminator, plan.num_classes,
                   _channel_names(plan), plan.slice_axis)  # fmt: skip
    if request.show_progress:
        line = _summary_line(plan, generator, discriminator, len(setup.train_ids), len(val_cases), config)
        console.print(line, highlight=False)
    extra = checkpoint_facts(plan, settings, scale, discriminator.config)
    result = fit_task(generator, task, config, request.out, generator.config, request.device, request.resume,
                      show_progress=request.show_progress, extra_config=extra)  # fmt: skip
    return result, task


def _new_setup(spec: DatasetSpec, request: SynthesisRequest) -> RunSetup:
    plan = _plan(spec, request)  # reads every case: a bad one is named before the split is made
    train_ids, val_ids = _split(spec, request)
    return RunSetup(plan, request.settings, train_ids, val_ids)


def _resumed_setup(out: Path) -> RunSetup:
    """The plan, GAN settings and split of the run being resumed, refusing a folder of another kind."""
    record = read_json(out / "run.json", "run record") if (out / "run.json").is_file() else {}
    if record.get("kind") != RUN_KIND:
        raise SegmorphError('--resume: not a GAN run folder (run.json has no "kind": "synthesis")', out)
    path = out / "checkpoint_last.pt"
    _, config, _ = load_checkpoint(path)
    try:
        settings = GanSettings.from_dict(config["gan"])
        train_ids, val_ids = [str(c) for c in record["train_cases"]], [str(c) for c in record["val_cases"]]
    except (KeyError, TypeError, ValueError) as err:
        raise SegmorphError(f"the run's GAN settings or split do not fit this segmorph ({err})", path) from None
    return RunSetup(Plan.load(out / "plan.json"), settings, train_ids, val_ids)


def labelled_spec(dataset: Path, images_dir: Path | None = None, labels_dir: Path | None = None) -> DatasetSpec:
    """The dataset, every case labelled, label values declared (read from the files when not declared).

    Raises:
        SegmorphError: A case without a label map (naming its image): a label-conditioned GAN learns from pairs.
    """
    spec = load_dataset(dataset, images_dir, labels_dir)
    for case in spec.cases:
        if case.label is None:
            raise SegmorphError("this case has no label map; a label-conditioned GAN learns from labelled cases "
                                "(give --labels with --images)", case.images[0])  # fmt: skip
    return spec if spec.labels else infer_labels(spec)


def _plan(spec: DatasetSpec, request: SynthesisRequest) -> Plan:
    facts = fingerprint(spec, progress=request.show_progress)
    if not any(int(k) > 0 and v > 0 for k, v in facts["class_fractions"].items()):
        raise SegmorphError("every label map is empty (background only); a GAN conditioned on labels needs foreground",
                            spec.root)  # fmt: skip
    try:
        plan = make_plan(spec, facts, request.device, request.time_budget_s, request.max_steps, request.target_spacing,
                         request.network_dims)  # fmt: skip
    except ValueError as err:
        raise SegmorphError(str(err), request.dataset) from None
    divisor = 2 ** (len(plan.network["features"]) - 1)
    return replace(plan, train=replace(plan.train, patch_size=discriminator_patch(plan.train.patch_size, divisor)))


def _split(spec: DatasetSpec, request: SynthesisRequest) -> tuple[list[str], list[str]]:
    """``segmorph train``'s split (same fold, folds and seed), the training part narrowed to ``train_cases`` or to
    ``labelled_cases`` of them (:func:`segmorph.segmentation.few_labels.choose_labelled`)."""
    train_ids, val_ids = split_cases(spec.case_ids, request.fold, request.num_folds, request.seed, request.dataset)
    if request.train_cases:
        chosen = set(request.train_cases)
        outside = sorted(chosen - set(train_ids))
        if outside:
            where = "validation cases of this split" if set(outside) <= set(val_ids) else "not cases of the dataset"
            raise SegmorphError(f"train cases {', '.join(outside[:5])}: {where}", request.dataset)
        train_ids = [c for c in train_ids if c in chosen]
    if request.labelled_cases:
        from segmorph.segmentation.few_labels import choose_labelled

        if request.train_cases:
            raise SegmorphError("give the training cases (train_cases) or their number (labelled_cases), not both")
        train_ids = choose_labelled(train_ids, request.labelled_cases, request.seed)
    return train_ids, val_ids


def _load_cases(spec: DatasetSpec, plan: Plan, request: SynthesisRequest, case_ids: list[str]) -> dict:
    cache = Path(request.cache_dir) if request.cache_dir else Path(request.out) / "preprocessed"
    paths = preprocess_dataset(spec, plan.preprocess, cache, case_ids=case_ids, progress=request.show_progress)
    cases = {}
    for path in paths:
        sample, _ = load_preprocessed(path)
        cases[sample.case_id] = (sample.image.data.float(), sample.label.data.long())
    return cases


def _generator(plan: Plan, settings: GanSettings) -> LabelToImageGenerator:
    """The plan's U-Net levels (widths capped at ``settings.generator_width_cap``) as a SPADE generator."""
    features = [min(int(f), settings.generator_width_cap) for f in plan.network["features"]]
    return LabelToImageGenerator(plan.ndim, plan.num_classes, plan.network_channels, features,
                                 settings.noise_channels, settings.dropout)  # fmt: skip


def _train_config(plan: Plan, settings: GanSettings, request: SynthesisRequest) -> TrainConfig:
    """The plan's patch, batch, budget and epochs, with the generator's learning rate and no weight decay,
    augmentation, averaging or early stopping (the task flips patches itself)."""
    return replace(plan.train, learning_rate=settings.generator_lr, weight_decay=0.0, augment=False, ema_decay=0.0,
                   tail_average=0.0, patience_epochs=0, foreground_fraction=settings.foreground_fraction,
                   seed=request.seed)  # fmt: skip


def _channel_names(plan: Plan) -> list[str]:
    """Names of the channels the generator makes (after the plan's enhance steps)."""
    from segmorph.segmentation.preprocess import channels_after_steps

    kept = channels_after_steps(plan.preprocess.steps, len(plan.channel_names))
    return [plan.channel_names[c] for c in kept]


def checkpoint_facts(plan: Plan, settings: GanSettings, scale: IntensityScale, discriminator: dict) -> dict[str, Any]:
    """What a GAN checkpoint stores beside ``network`` and ``train``: the plan's preprocessing, labels, channels
    and dimensionality (``ndim``: the scans'), the raw intensity scale and the GAN's settings."""
    kept = _channel_names(plan)
    modalities = [plan.modalities[plan.channel_names.index(name)] for name in kept]
    return {
        "kind": RUN_KIND, "preprocess": plan.preprocess.to_dict(), "labels": label_names(plan.labels),
        "channel_names": kept, "modalities": modalities, "ndim": plan.image_ndim, "slice_axis": plan.slice_axis,
        "intensity": scale.to_dict(), "gan": settings.to_dict(), "discriminator": discriminator,
    }  # fmt: skip


def _summary_line(plan: Plan, generator, discriminator, n_train: int, n_val: int, config: TrainConfig) -> str:
    slices = "" if plan.slice_axis is None else f" on slices across axis {'IJK'[plan.slice_axis]}"
    budget = f"budget {config.time_budget_s / 60:.1f} min" if config.time_budget_s else f"{config.max_steps} steps"
    return (f"segmorph: GAN {plan.ndim}D{slices}: SPADE generator {generator.config['features']} "
            f"({count_parameters(generator):,} parameters), PatchGAN {discriminator.config['features']} "
            f"({count_parameters(discriminator):,}), patch {list(config.patch_size)} x batch {config.batch_size}, "
            f"{n_train} train / {n_val} val cases, {budget}")  # fmt: skip


def write_samples(run_dir: Path, case_ids: list[str], cases: list[tuple[torch.Tensor, torch.Tensor]],
                  device: str = "cpu", seed: int = 0) -> Path:  # fmt: skip
    """``samples.png``: for each case, its label map and real image beside images the best generator makes from
    that label map and from a random elastic deformation of it (:func:`segmorph.synthesis.pictures.write_sample_grid`)."""
    model = SynthesisModel(run_dir, device)
    spacing = model.preprocess.target_spacing or (1.0,) * model.ndim
    rows = []
    for index, (case_id, (image, label)) in enumerate(zip(case_ids, cases)):
        draws = torch.Generator().manual_seed(seed * 1000 + index)
        label = label.clamp_min(0)
        deformed = deform_labels(label, spacing, draws, Deformation())
        rows.append(SampleRow(case_id, label, image, model.generate(label, draws), deformed,
                              model.generate(deformed, draws)))  # fmt: skip
    title = f"{run_dir.resolve().name}: real vs synthetic images (best checkpoint)"
    return write_sample_grid(run_dir / "samples.png", rows, model.scale, model.modalities, model.labels, title)
