"""The pretraining job: unlabelled scans -> plan (or classifier input) -> preprocessing -> fit -> run folder.

A run folder ``PRE`` holds:

* ``checkpoint_best.pt`` (highest validation ``1 - NMSE``) and ``checkpoint_last.pt`` (for ``--resume``), written by
  :func:`segmorph.engine.loop.fit_task`. Their config holds ``network`` (the constructor config of the network
  whose weights the file holds, under its own parameter names once ``transfer_prefix`` is removed: "" for a
  U-Net, ``"network."`` for a classifier, whose decoder lies under ``decoder.``), ``transfer_prefix``, and
  ``pretraining``: the ``objective`` (:class:`~segmorph.pretraining.objectives.ObjectiveConfig` as a dict), the
  ``network`` name, and for a classifier the ``input`` (a :class:`segmorph.classification.data.InputSpec` dict:
  the input size and channels a classifier trained from it must take).
* ``run.json`` (``"kind": "pretraining"``, the images, the split, the objective, provenance), ``summary.json``.
* ``plan.json`` (U-Net): the segmentation plan ``segmorph train`` makes for these images and budget, its network
  with ``num_classes`` = input channels and no deep supervision; ``preprocessed/`` its cache.
* ``train_log.csv``, ``curves.png`` and ``reconstructions.png`` (:mod:`segmorph.pretraining.pictures`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segmorph.engine.checkpoints import load_checkpoint
from segmorph.engine.loop import FitResult, TrainConfig, fit_task
from segmorph.errors import SegmorphError, SegmorphWarning
from segmorph.io import atomic_write_text
from segmorph.nn import build_network, count_parameters
from segmorph.outputs import Output, check_outputs
from segmorph.pretraining.networks import CLASSIFIER_PREFIX, ClassifierAutoencoder, unet_pretraining_config
from segmorph.pretraining.objectives import OBJECTIVES, ObjectiveConfig
from segmorph.pretraining.pictures import PICTURE, ReconstructionPreview, draw_reconstructions
from segmorph.pretraining.task import (
    ReconstructionTask,
    ValidationSet,
    image_drawer,
    patch_drawer,
    spatial_augmentation,
)
from segmorph.progress import console
from segmorph.provenance import data_changed, data_fingerprint, write_run_record
from segmorph.records import read_json
from segmorph.segmentation.datasets import DatasetSpec, load_dataset
from segmorph.segmentation.plan import Plan, make_plan
from segmorph.segmentation.preprocess import fingerprint, load_preprocessed, preprocess_dataset
from segmorph.segmentation.unlabelled import unlabelled_spec
from segmorph.transforms import AugmentConfig

NETWORKS = ("unet", "resnet", "simplecnn")
VAL_SHARE = 0.1  # images held out for validation (at least one)
VAL_PATCHES = (8, 64)  # fewest and most validation patches (or images)
VAL_VOXELS = 1 << 23  # most voxels of all validation patches together
VAL_SEED = 7919  # added to the seed for the validation patches and their corruption
CLASSIFIER_BATCH = {2: 32, 3: 8}


@dataclass(frozen=True)
class PretrainRequest:
    """What ``segmorph pretrain`` was asked to do.

    Attributes:
        images: Image files, folders of images, DICOM series folders or dataset folders (labels left aside).
        out: Run folder.
        time_budget_s: Training time limit in seconds (0: only ``max_steps``).
        max_steps: Step limit (0: only the time budget).
        objective: ``"mask"`` or ``"denoise"`` (see :mod:`segmorph.pretraining.objectives`).
        network: ``"unet"`` (for ``segmorph train --init``), ``"resnet"`` or ``"simplecnn"`` (for ``segmorph
            classify train --init``).
        block: Side of the masked or shuffled cubes in voxels, at most the patch's shortest side; None: 8 for 3D
            U-Net patches, 4 for 2D ones, an eighth of a classifier input's shortest side (at least 4), never more
            than the patch's shortest side.
        mask_ratio: Share of the blocks hidden (``mask``).
        target_spacing: U-Net: plan for this voxel size in mm (as ``segmorph train --spacing``).
        network_dims: U-Net: 2 or 3 (as ``segmorph train --network-dims``; None: the scans').
        width: Classifier: first-stage channels (as ``segmorph classify train --width``).
        size: Classifier: input size in voxels (one value: every axis); None: chosen from the images as
            ``segmorph classify train`` chooses it.
        device: ``cpu``, ``cuda`` or ``mps``.
        seed: Seed of the split, the weights, the patches and the corruption.
        resume: Continue the run in ``out`` from ``checkpoint_last.pt`` with its own settings.
        show_progress: Progress bars and a summary line.
    """

    images: tuple[Path, ...]
    out: Path
    time_budget_s: float = 1200.0
    max_steps: int = 0
    objective: str = "mask"
    network: str = "unet"
    block: int | None = None
    mask_ratio: float = 0.6
    target_spacing: tuple[float, ...] | None = None
    network_dims: int | None = None
    width: int = 16
    size: tuple[int, ...] | None = None
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    show_progress: bool = True


@dataclass
class Setup:
    """A prepared pretraining: the model, its task and settings, and what the run folder records."""

    model: nn.Module
    task: ReconstructionTask
    train: TrainConfig
    network: dict[str, Any]
    prefix: str
    pretraining: dict[str, Any]
    summary: str


def run_pretraining(request: PretrainRequest) -> dict[str, Any]:
    """Pretrain as ``request`` says; everything lands in ``request.out`` (see the module docstring).

    Inputs are read and checked before anything is written: a refused input leaves no run folder behind.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        SegmorphError: Bad input (a missing source, a folder without images, images of mixed dimensionality or
            channels, an unreadable file, options that do not fit the network) or a run folder that would
            overwrite an input.
    """
    _check_request(request)
    out = Path(request.out)
    sources = [Path(p) for p in request.images]
    check_outputs([Output.folder(out)], inputs=sources, outside=[p for p in sources if p.is_dir()])
    stored = _resumed_config(out) if request.resume else None
    spec = _scans(sources)
    kind = (stored or {}).get("pretraining", {}).get("network", request.network)
    _warn_kept_settings(request, stored)
    # everything is read and checked before the run folder is made
    plan = _unet_plan(request, spec, out, stored is not None) if kind == "unet" else None
    inputs = _classifier_inputs(request, spec, stored) if kind != "unet" else None
    train_ids, val_ids = _split(spec, request, out)
    out.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        plan.save(out / "plan.json")
        setup = _unet_setup(request, spec, plan, train_ids, val_ids, stored)
    else:
        setup = _classifier_setup(request, kind, inputs, train_ids, val_ids, stored)
    _write_provenance(out, spec, request, setup, train_ids, val_ids)
    if request.show_progress:
        console.print(setup.summary, highlight=False)
    torch.manual_seed(setup.train.seed)
    preview = ReconstructionPreview(setup.task, out / PICTURE, f"{kind} pretraining, {setup.task.objective.name}")
    result = fit_task(
        setup.model, setup.task, setup.train, out, setup.network, request.device, resume=request.resume,
        callbacks=(preview,), show_progress=request.show_progress,
        extra_config={"transfer_prefix": setup.prefix, "pretraining": setup.pretraining},
    )  # fmt: skip
    return _finish(out, setup, result, request.device, len(train_ids), len(val_ids))


def _scans(sources: list[Path]) -> DatasetSpec:
    """The unlabelled scans of ``sources``; where one is a dataset folder with a ``dataset.json``, named with its
    channel names and modalities, so that a CT dataset is planned with CT normalisation as ``segmorph train`` plans
    it."""
    described = next((s for s in sources if s.is_dir() and (s / "dataset.json").is_file()), None)
    return unlabelled_spec(sources, like=None if described is None else load_dataset(described))


def _check_request(request: PretrainRequest) -> None:
    if request.network not in NETWORKS:
        raise SegmorphError(f"network: expected one of {', '.join(NETWORKS)}, got {request.network!r}")
    if request.objective not in OBJECTIVES:
        raise SegmorphError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {request.objective!r}")
    if request.max_steps < 0 or request.time_budget_s < 0:
        raise SegmorphError("max steps and time budget: expected at least 0")
    if request.max_steps == 0 and request.time_budget_s <= 0:
        raise SegmorphError("give a time budget or a step limit")
    if request.network != "unet" and (request.target_spacing is not None or request.network_dims is not None):
        raise SegmorphError("--spacing and --network-dims plan a U-Net; a classifier takes whole images (see --size)")
    if request.network == "unet" and request.size is not None:
        raise SegmorphError("--size is a classifier's input size; a U-Net's patch comes from its plan")
    if request.width < 1:
        raise SegmorphError(f"width: expected at least 1 channel, got {request.width}")
    _objective(request, 3)  # the objective's own checks, before anything is read


def _objective(request: PretrainRequest, default_block: int, patch: Sequence[int] | None = None) -> ObjectiveConfig:
    """The objective asked for (where no block is given: ``default_block``, at most the shortest side of ``patch``),
    refused with one line where its block is under a voxel or larger than the shortest side of ``patch``."""
    if request.block is None:
        block = default_block if patch is None else min(default_block, *patch)  # small images: smaller blocks
    else:
        block = request.block
    if patch is not None and block > min(patch):
        raise SegmorphError(f"block: {block} voxels is larger than the shortest side of the {list(patch)} patch")
    try:
        return ObjectiveConfig(request.objective, block, mask_ratio=request.mask_ratio)
    except ValueError as err:
        raise SegmorphError(str(err)) from None


def _resumed_config(out: Path) -> dict[str, Any]:
    """The stored config of the run being resumed (``checkpoint_last.pt``), refusing a run that is no pretraining."""
    last = out / "checkpoint_last.pt"
    if not last.is_file():
        raise SegmorphError("--resume: no checkpoint_last.pt here to continue from", out)
    _, config, _ = load_checkpoint(last)
    if not isinstance(config.get("pretraining"), dict):
        raise SegmorphError("--resume: not a pretraining run (its checkpoint has no pretraining settings)", last)
    return config


def _warn_kept_settings(request: PretrainRequest, stored: dict[str, Any] | None) -> None:
    if stored is None:
        return
    kept = stored["pretraining"]
    if kept.get("network") != request.network or kept.get("objective", {}).get("name") != request.objective:
        console.print(f"warning: --resume keeps the run's settings (network {kept.get('network')}, objective "
                      f"{kept.get('objective', {}).get('name')})", highlight=False)  # fmt: skip


def _split(spec: DatasetSpec, request: PretrainRequest, out: Path) -> tuple[list[str], list[str]]:
    """Training and validation image ids: a seeded ``VAL_SHARE`` (at least one) held out; one image is both.

    A resumed run keeps the split its ``run.json`` records.
    """
    ids = spec.case_ids
    if request.resume:
        record = read_json(out / "run.json", "run record")
        train, val = list(record.get("train_cases", [])), list(record.get("val_cases", []))
        missing = sorted(set(train + val) - set(ids))
        if missing or not train:
            raise SegmorphError(f"--resume: image {missing[0] if missing else '?'} of the run is not among the images "
                                "given", out / "run.json")  # fmt: skip
        return train, val
    if len(ids) == 1:
        return list(ids), list(ids)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(request.seed)).tolist()
    held = max(1, round(VAL_SHARE * len(ids)))
    val = sorted(ids[i] for i in order[:held])
    return [i for i in ids if i not in set(val)], val


# -- U-Net -------------------------------------------------------------------------------------------------------


def _unet_plan(request: PretrainRequest, spec: DatasetSpec, out: Path, resume: bool) -> Plan:
    """The plan ``segmorph train`` makes for these images and budget, its network an autoencoder's."""
    if resume:
        return Plan.load(out / "plan.json")
    facts = fingerprint(spec, progress=request.show_progress)
    try:
        with warnings.catch_warnings():  # the labels' channels are not the autoencoder's: no word on them
            warnings.simplefilter("ignore", SegmorphWarning)
            plan = make_plan(spec, facts, request.device, request.time_budget_s, request.max_steps,
                             request.target_spacing, request.network_dims)  # fmt: skip
    except ValueError as err:
        raise SegmorphError(str(err), spec.root) from None
    _objective(request, unet_block(plan.ndim), plan.train.patch_size)  # a block the patch holds, before any write
    return replace(plan, network=unet_pretraining_config(plan.network), train=replace(plan.train, seed=request.seed))


def unet_block(ndim: int) -> int:
    """The default block side of a U-Net's patches: 8 voxels in 3D, 4 in 2D."""
    return 8 if ndim == 3 else 4


def _unet_setup(
    request: PretrainRequest, spec: DatasetSpec, plan: Plan, train_ids: list[str], val_ids: list[str],
    stored: dict[str, Any] | None,
) -> Setup:  # fmt: skip
    """Preprocess (cached in ``out/preprocessed``), then the U-Net, the patch drawer and the validation patches."""
    cache = Path(request.out) / "preprocessed"
    ids = list(dict.fromkeys(train_ids + val_ids))
    paths = preprocess_dataset(spec, plan.preprocess, cache, case_ids=ids, progress=request.show_progress)
    images = {}
    for path in paths:
        sample, _ = load_preprocessed(path)
        images[sample.case_id] = sample.image.data.float()
    config = plan.train
    objective = _stored_objective(stored) or _objective(request, unet_block(plan.ndim), config.patch_size)
    augmenter = spatial_augmentation(AugmentConfig(), plan.ndim) if config.augment else None
    draw, _ = patch_drawer([images[c] for c in train_ids], config.patch_size, plan.slice_axis, augmenter)
    _, val_sampler = patch_drawer([images[c] for c in val_ids], config.patch_size, plan.slice_axis)
    count = _validation_count(2 * config.batch_size, config.patch_size, images[val_ids[0]].shape[0])
    clean, inside = val_sampler.sample(count, torch.Generator().manual_seed(config.seed + VAL_SEED))
    validation = ValidationSet.make(clean, objective, config.seed + VAL_SEED, inside.bool())
    task = ReconstructionTask(draw, validation, objective, config.batch_size, config.amp)
    torch.manual_seed(config.seed)
    model = build_network(plan.network)
    facts = {"network": "unet", "objective": objective.to_dict(), "score": _score_text(objective)}
    summary = _unet_summary(plan, model, objective, train_ids, val_ids)
    return Setup(model, task, config, plan.network, "", facts, summary)


def _validation_count(wanted: int, patch: tuple[int, ...], channels: int) -> int:
    """Validation patches: ``wanted`` within :data:`VAL_PATCHES`, and at most :data:`VAL_VOXELS` voxels in all."""
    fewest, most = VAL_PATCHES
    fits = max(1, VAL_VOXELS // max(1, math.prod(patch) * channels))
    return max(1, min(max(wanted, fewest), most, fits))


def _unet_summary(plan: Plan, model: nn.Module, objective: ObjectiveConfig, train: list[str], val: list[str]) -> str:
    net = plan.network
    slices = "" if plan.slice_axis is None else f" on slices across axis {'IJK'[plan.slice_axis]}"
    return (f"segmorph pretrain: unet {plan.ndim}D{slices} features {net['features']} ({count_parameters(model):,} "
            f"parameters), {objective.describe()}; patch {list(plan.train.patch_size)} x batch "
            f"{plan.train.batch_size}, {len(train)} train / {len(val)} val images, {_limit(plan.train)}")  # fmt: skip


# -- classifiers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierInputs:
    """The classifier inputs of every image: ``spec`` (InputSpec), ``images`` ``(N, C, *size)``, ``ids``."""

    spec: Any
    images: torch.Tensor
    ids: tuple[str, ...]


def _classifier_inputs(request: PretrainRequest, spec: DatasetSpec, stored: dict[str, Any] | None) -> ClassifierInputs:
    """Every image prepared as ``segmorph classify train`` prepares it (:mod:`segmorph.classification.data`)."""
    from segmorph.classification.data import InputSpec, choose_input_size, load_inputs

    for case in spec.cases:
        if len(case.images) != 1:
            raise SegmorphError(f"a classifier reads one file per image; case {case.case_id} has "
                                f"{len(case.images)} channel files", case.images[0])  # fmt: skip
    paths = [case.images[0] for case in spec.cases]
    if stored is not None:
        input_spec = InputSpec.from_dict(stored["pretraining"]["input"])
    else:
        size, channels = choose_input_size(paths)
        if request.size:
            if len(request.size) not in (1, len(size)):
                raise SegmorphError(f"size: gives {len(request.size)} values for {len(size)}D images")
            size = tuple(request.size) * len(size) if len(request.size) == 1 else tuple(request.size)
        input_spec = InputSpec(size, channels)
    images = load_inputs(paths, input_spec, request.show_progress)
    return ClassifierInputs(input_spec, images, tuple(spec.case_ids))


def classifier_network(name: str, width: int, ndim: int, channels: int) -> dict[str, Any]:
    """The classifier config ``segmorph classify train --model name --width width`` builds (2 classes: the final
    linear layer is not pretrained, so the class count does not matter)."""
    from segmorph.classification.request import ClassifyRequest, network_config

    request = ClassifyRequest(dataset=Path("."), out=Path("."), model=name, width=width)
    return network_config(request, ndim, channels, 2)


def _classifier_setup(
    request: PretrainRequest, name: str, inputs: ClassifierInputs, train_ids: list[str], val_ids: list[str],
    stored: dict[str, Any] | None,
) -> Setup:  # fmt: skip
    from segmorph.classification.task import classification_augment_config

    spec = inputs.spec
    position = {case_id: i for i, case_id in enumerate(inputs.ids)}
    if stored is not None:
        network = stored["network"]
        config = TrainConfig.from_dict({**stored["train"], "patch_size": tuple(stored["train"]["patch_size"])})
        objective = _stored_objective(stored)
    else:
        network = classifier_network(name, request.width, spec.ndim, spec.channels)
        config = TrainConfig(
            patch_size=spec.size, batch_size=CLASSIFIER_BATCH[spec.ndim], optimizer="adamw", learning_rate=1e-3,
            weight_decay=0.05, schedule="cosine", warmup=0.05, max_steps=request.max_steps,
            time_budget_s=request.time_budget_s, steps_per_epoch=25, seed=request.seed,
        )  # fmt: skip
        objective = _objective(request, max(4, min(spec.size) // 8), spec.size)
    train_images = inputs.images[[position[c] for c in train_ids]]
    val_images = inputs.images[[position[c] for c in val_ids]]
    augmenter = spatial_augmentation(classification_augment_config(spec.ndim), spec.ndim) if config.augment else None
    count = _validation_count(len(val_ids), spec.size, spec.channels)
    clean = val_images[torch.arange(count) % len(val_ids)]  # each image once, then again with other blocks hidden
    task = ReconstructionTask(image_drawer(train_images, augmenter), ValidationSet.make(clean, objective,
                              config.seed + VAL_SEED), objective, config.batch_size, config.amp)  # fmt: skip
    torch.manual_seed(config.seed)
    model = ClassifierAutoencoder(network)
    facts = {"network": name, "objective": objective.to_dict(), "score": _score_text(objective),
             "input": spec.to_dict(), "decoder": "upsampling conv-BN-ReLU stages and a 1x1 convolution (decoder.*)"}  # fmt: skip
    width = network.get("width", (network.get("features") or [None])[0])
    summary = (f"segmorph pretrain: {name} {spec.ndim}D width {width} ({count_parameters(model.network):,} encoder "
               f"parameters), {objective.describe()}; input {list(spec.size)} x batch {config.batch_size}, "
               f"{len(train_ids)} train / {len(val_ids)} val images, {_limit(config)}")  # fmt: skip
    return Setup(model, task, config, network, CLASSIFIER_PREFIX, facts, summary)


# -- shared ------------------------------------------------------------------------------------------------------


def _stored_objective(stored: dict[str, Any] | None) -> ObjectiveConfig | None:
    if stored is None:
        return None
    try:
        return ObjectiveConfig.from_dict(stored["pretraining"]["objective"])
    except (KeyError, TypeError, ValueError) as err:
        raise SegmorphError(f"--resume: the run's objective cannot be read ({err})") from None


def _limit(config: TrainConfig) -> str:
    """``budget 20.0 min``, ``30 steps`` or both."""
    parts = [f"budget {config.time_budget_s / 60:.1f} min"] if config.time_budget_s > 0 else []
    return ", ".join(parts + ([f"at most {config.max_steps} steps"] if config.max_steps > 0 else []))


def _score_text(objective: ObjectiveConfig) -> str:
    return f"1 - NMSE over the {objective.target_name} voxels of fixed validation patches (higher is better)"


def _write_provenance(
    out: Path, spec: DatasetSpec, request: PretrainRequest, setup: Setup, train_ids: list[str], val_ids: list[str]
) -> None:  # fmt: skip
    facts = {
        "kind": "pretraining", "images": [str(p) for p in request.images], "dataset": str(spec.root),
        "network": setup.pretraining["network"], "objective": setup.pretraining["objective"],
        "score": setup.pretraining["score"], "transfer_prefix": setup.prefix, "seed": request.seed,
        "max_steps": setup.train.max_steps, "time_budget_s": setup.train.time_budget_s,
        "train_cases": train_ids, "val_cases": val_ids,
    }  # fmt: skip
    if "input" in setup.pretraining:
        facts["input"] = setup.pretraining["input"]
    record = write_run_record(out, facts, data_fingerprint(spec), resume=request.resume)
    if data_changed(record):
        console.print("warning: the images changed since this run started (see run.json)", highlight=False)


def _finish(out: Path, setup: Setup, result: FitResult, device: str, train: int, val: int) -> dict[str, Any]:
    """Draw ``reconstructions.png`` with the best weights and write ``summary.json``."""
    state, _, _ = load_checkpoint(out / "checkpoint_best.pt", map_location="cpu")
    setup.model.load_state_dict(state)
    title = f"{setup.pretraining['network']} pretraining, {setup.task.objective.name}: best epoch {result.best_epoch}"
    draw_reconstructions(setup.task, setup.model, torch.device(device), out / PICTURE, title)
    summary = {
        "fit": {
            "best_val_r2": result.best_score, "best_epoch": result.best_epoch, "steps": result.steps,
            "elapsed_s": round(result.elapsed_s, 1), "stopped_because": result.stopped_because,
            "precision": result.precision,
        },
        "network": setup.pretraining["network"], "objective": setup.task.objective.describe(),
        "score": setup.pretraining["score"], "train_images": train, "val_images": val,
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
