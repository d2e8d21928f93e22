"""The classification jobs: train a classifier into a run folder, and classify new images with a run folder.

A run folder holds:

* ``run.json``: provenance (command, versions, seed, dataset, the split file by file with the training images
  left unlabelled by ``labelled_fraction``, input spec, settings, and with ``init`` the tensors loaded from
  that run and those not: ``transfer``, see :class:`segmorph.nn.transfer.TransferRecord`).
* ``checkpoint_best.pt`` / ``checkpoint_last.pt``, ``train_log.csv``, ``curves.png``: from the training loop
  (with ``ensemble`` N > 1: in ``member_0/`` ... ``member_<N-1>/``, one per member, each trained with seed
  ``seed + k`` for ``1/N`` of the budget; the members' probabilities are averaged).
* ``classifier.pt``: the kept weights (``select``: by default the mean of the averaged weights over the last
  ``tail_average`` of training, or the best epoch's), their batch-norm statistics re-estimated on the clean
  training images (``refresh_batch_norm``), with everything needed to use them in its JSON config: network,
  class names, target column, input spec (size, channels, normalisation), scoring views and the threshold.
* ``summary.json``: validation metrics at the chosen threshold (and at argmax), training facts.
* ``val_predictions.csv``, ``roc.png``, ``confusion.png``.

The decision threshold (two classes) maximises Youden's J on the validation images, so the validation metrics
at that threshold are optimistic (with ``select="best"`` the AUC too: the epoch is picked on the same images);
metrics on images the run never saw are the honest ones.
"""

from __future__ import annotations

import csv
import io as _io
import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.classification.config import SELECTIONS, ClassifierConfig
from segmorph.classification.data import (
    ClassificationDataset,
    InputSpec,
    choose_input_size,
    load_inputs,
    resolve_labels_file,
)
from segmorph.classification.init_source import source_input_size
from segmorph.classification.plots import plot_confusion, plot_roc
from segmorph.classification.request import (
    ClassifyRequest,
    load_classification_dataset,
    network_config,
    set_aside,
    split_dataset,
)
from segmorph.classification.task import (
    ClassificationTask,
    classification_augment_config,
    refresh_batch_norm,
)
from segmorph.configs import CONFIG_FILE, config_to_dict
from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint
from segmorph.engine.loop import FitResult, TrainConfig, fit_task
from segmorph.engine.tracking import TENSORBOARD_FOLDER, check_log, open_tracker
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_text
from segmorph.metrics.classification import choose_threshold, classification_report, predict_classes
from segmorph.nn import build_network, count_parameters
from segmorph.nn.classifiers import Ensemble
from segmorph.nn.registry import check_network_size
from segmorph.nn.transfer import TransferRecord, initialize_from
from segmorph.outputs import check_run_folder
from segmorph.progress import console
from segmorph.provenance import RUN_FILE, data_changed, files_fingerprint, write_run_record
from segmorph.qc.quality import check_before_training
from segmorph.records import read_json_if_present

MODEL_FILE = "classifier.pt"


def train_classifier(request: ClassifyRequest, config: ClassifierConfig | None = None) -> dict[str, Any]:
    """Split, prepare, train, choose the threshold and write the run folder (see the module docstring).

    Args:
        request: What to train.
        config: The settings ``request`` was made from, written as ``config.json`` before training.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        SegmorphError: Bad input (missing files or columns, too few groups per class, ...).
    """
    out = Path(request.out)
    _check_request(request)
    dataset = load_classification_dataset(request)
    quality = {"ran": False, "flagged_cases": []}
    if request.check and not request.resume:
        quality = check_before_training(request.dataset, request.labels, request.target, request.file_column)
    train_index, val_index = split_dataset(dataset, request)
    spec, net = _input_and_network(request, dataset, out)
    train_config = _train_config(request, spec)
    request = _with_resumed_init(request)
    check_network_size(net["name"], {k: v for k, v in net.items() if k != "name"})  # before anything is written
    transfer = transfer_check(request, net)  # a source that does not fit is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if config is not None:
        atomic_write_text(out / CONFIG_FILE, json.dumps(config_to_dict(config), indent=2) + "\n")
    _write_provenance(out, request, dataset, train_index, val_index, spec, net, train_config, quality, transfer)
    images = load_inputs(dataset.paths, spec, request.show_progress)
    labels = torch.tensor(dataset.labels, dtype=torch.int64)
    augment = classification_augment_config(spec.ndim, request.augment)
    task = ClassificationTask(images[train_index], labels[train_index], images[val_index], labels[val_index],
                              dataset.class_names, request.batch_size, augment, request.label_smoothing,
                              request.mixup, request.mirror, request.shift)  # fmt: skip
    if request.show_progress:
        console.print(_summary_line(request, spec, build_network(net), dataset, train_index, val_index),
                      highlight=False)  # fmt: skip
        if transfer is not None and not request.resume:
            console.print(transfer.summary(), highlight=False, soft_wrap=True)
    facts = _classifier_facts(dataset, request, spec, threshold=request.threshold)
    if request.ensemble <= 1:
        model, result = _fit_member(request, task, net, train_config, out, facts)
        return _finish(out, model, task, dataset, val_index, facts, net, train_config, [result], request.device)
    ensemble, results = _fit_ensemble(request, task, net, train_config, out, facts)
    return _finish(out, ensemble, task, dataset, val_index, facts, ensemble.config, train_config, results,
                   request.device)  # fmt: skip


def _check_request(request: ClassifyRequest) -> None:
    """Refuse settings out of range and an output folder that would overwrite an input, before anything is read."""
    if request.ensemble < 1:
        raise SegmorphError(f"ensemble: expected at least 1 network, got {request.ensemble}")
    check_select(request.select)
    if not 0.0 <= request.tail_average <= 1.0:
        raise SegmorphError(f"tail average: expected a fraction of training in [0, 1], got {request.tail_average}")
    if not 0.0 <= request.shift < 0.5:
        raise SegmorphError(f"tta shift: expected a fraction of the image size in [0, 0.5), got {request.shift}")
    check_log(request.log)
    check_run_folder(Path(request.out), request.dataset, request.labels, request.init)


def _fit_ensemble(
    request: ClassifyRequest, task: ClassificationTask, net: dict, train_config: TrainConfig, out: Path, facts: dict
) -> tuple[Ensemble, list[FitResult]]:
    """Train ``request.ensemble`` networks one after the other (``out/member_k``, seeds ``seed + k``), sharing the
    time budget and the step limit; the ensemble of the weights each keeps."""
    members, results = [], []
    for k in range(request.ensemble):
        member_config = replace(
            train_config, seed=train_config.seed + k, time_budget_s=train_config.time_budget_s / request.ensemble,
            max_steps=-(-train_config.max_steps // request.ensemble),
        )  # fmt: skip
        model, result = _fit_member(request, task, net, member_config, out / f"member_{k}", facts)
        members.append(model)
        results.append(result)
    ensemble = Ensemble([net] * len(members))
    for slot, model in zip(ensemble.members, members):
        slot.load_state_dict(model.state_dict())
    return ensemble, results


def _fit_member(
    request: ClassifyRequest, task: ClassificationTask, net: dict, train_config: TrainConfig, folder: Path, facts: dict
) -> tuple[torch.nn.Module, FitResult]:
    """Train one network into ``folder`` (resuming it when asked and started) and load the weights ``request.select`` keeps."""
    torch.manual_seed(train_config.seed)
    model = build_network(net)
    resume = request.resume and (folder / "checkpoint_last.pt").is_file()
    if request.init is not None and not resume:
        initialize_from(model, request.init)
    tracker = open_tracker(request.log, folder)
    result = fit_task(model, task, train_config, folder, net, request.device, resume,
                      callbacks=() if tracker is None else (tracker,), show_progress=request.show_progress,
                      extra_config={"classifier": facts})  # fmt: skip
    model.load_state_dict(selected_weights(folder, request.select, request.device))
    if request.refresh_batch_norm:
        refresh_batch_norm(model, task.train_images, request.device, mirror=request.mirror)
    return model, result


def selected_weights(folder: Path, select: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The state dict a finished training folder keeps: ``"best"`` (``checkpoint_best.pt``) or ``"last"``
    (from ``checkpoint_last.pt``: the tail average when the run kept one, else the running average, else the
    final weights)."""
    check_select(select)
    if select == "best":
        return load_checkpoint(folder / "checkpoint_best.pt", map_location=device)[0]
    state, _, extras = load_checkpoint(folder / "checkpoint_last.pt", map_location=device)
    return extras.get("tail", extras.get("ema", state))


def kept_weights_text(facts: dict[str, Any]) -> str:
    """What the kept weights are, in words (``summary.json``'s ``kept_weights``, shown in the report)."""
    if facts["select"] == "best":
        text = "best: the epoch of highest validation AUC"
    elif facts.get("tail_average", 0) > 0:
        text = f"last: mean of the averaged weights over the last {facts['tail_average']:.0%} of training"
    else:
        text = "last: the final averaged weights"
    return text + ("; batch norm re-estimated on the training images" if facts.get("refresh_batch_norm") else "")


def check_select(select: str) -> None:
    """Raise SegmorphError unless ``select`` names a choice of kept weights (:data:`SELECTIONS`)."""
    if select not in SELECTIONS:
        raise SegmorphError(f"select: expected one of {', '.join(SELECTIONS)}, got {select!r}")


def _input_and_network(request: ClassifyRequest, dataset: ClassificationDataset, out: Path) -> tuple[InputSpec, dict]:
    if request.resume:
        last = out / "checkpoint_last.pt"
        _, config, _ = load_checkpoint(last if last.is_file() else out / "member_0" / "checkpoint_last.pt")
        return InputSpec.from_dict(config["classifier"]["input"]), config["network"]
    return initial_input_and_network(request, dataset)


def initial_input_and_network(request: ClassifyRequest, dataset: ClassificationDataset) -> tuple[InputSpec, dict]:
    """The input spec and network config a new run of ``request`` trains: the size asked for, else the one the
    ``init`` source was trained at (when it states one), else one chosen from the data."""
    size, channels = choose_input_size(dataset.paths)
    stated = None if request.init is None else source_input_size(request.init)
    if request.size:
        if len(request.size) not in (1, len(size)):
            raise SegmorphError(f"size: gives {len(request.size)} values for {len(size)}D images")
        size = tuple(request.size) * len(size) if len(request.size) == 1 else tuple(request.size)
        if stated is not None and stated != size and request.show_progress:
            console.print(f"warning: input size {list(size)} differs from the {list(stated)} the --init network was "
                          "trained at", highlight=False, soft_wrap=True)  # fmt: skip
    elif stated is not None and len(stated) == len(size):
        size = stated
    spec = InputSpec(size, channels)
    return spec, network_config(request, spec.ndim, channels, len(dataset.class_names))


def transfer_check(request: ClassifyRequest, net: dict[str, Any]) -> TransferRecord | None:
    """What ``request.init`` loads into the network ``net`` (None without ``init``): run before anything is
    written, so a source that does not fit is refused with one line.

    Raises:
        SegmorphError: Naming the source's checkpoint (see :func:`segmorph.nn.transfer.initialize_from`).
    """
    return None if request.init is None else initialize_from(build_network(net), request.init)


def _with_resumed_init(request: ClassifyRequest) -> ClassifyRequest:
    """On ``resume`` without ``init``: the run's own ``init`` (from ``run.json``), so ensemble members not
    started yet start as the first did."""
    if not request.resume or request.init is not None:
        return request
    record = read_json_if_present(Path(request.out) / RUN_FILE, "run record") or {}
    source = (record.get("transfer") or {}).get("source")
    return request if not isinstance(source, str) else replace(request, init=Path(source))


def _train_config(request: ClassifyRequest, spec: InputSpec) -> TrainConfig:
    if request.max_steps <= 0 and request.time_budget_s <= 0:
        raise SegmorphError("give a time budget or a step limit")
    try:
        return TrainConfig(
            patch_size=spec.size, batch_size=request.batch_size, optimizer="adamw",
            learning_rate=request.learning_rate, weight_decay=request.weight_decay, schedule="cosine", warmup=0.05,
            max_steps=request.max_steps, time_budget_s=request.time_budget_s, steps_per_epoch=request.steps_per_epoch,
            patience_epochs=request.patience_epochs, augment=request.augment, amp=request.amp, seed=request.seed,
            ema_decay=request.ema_decay, tail_average=request.tail_average,
            freeze_encoder_steps=request.freeze_encoder_steps,
        )  # fmt: skip
    except ValueError as err:  # the input size and batch beyond the memory budget, ...
        raise SegmorphError(f"input size and batch: {err}") from None


def _classifier_facts(
    dataset: ClassificationDataset, request: ClassifyRequest, spec: InputSpec, threshold: float | None
) -> dict[str, Any]:
    return {"class_names": list(dataset.class_names), "target": request.target, "input": spec.to_dict(),
            "threshold": threshold, "positive_class": dataset.class_names[1] if len(dataset.class_names) == 2 else None,
            "mirror": request.mirror, "shift": request.shift, "select": request.select,
            "tail_average": request.tail_average, "refresh_batch_norm": request.refresh_batch_norm}  # fmt: skip


def _finish(
    out: Path, model: torch.nn.Module, task: ClassificationTask, dataset: ClassificationDataset, val_index: list[int],
    facts: dict, net: dict, train_config: TrainConfig, results: list[FitResult], device: str,
) -> dict[str, Any]:  # fmt: skip
    """Score the trained ``model`` (kept weights loaded) on validation, choose the threshold (unless ``facts``
    hold one), write the run."""
    if not val_index:
        return _finish_unvalidated(out, model, task, dataset, facts, net, train_config, results)
    probabilities = task.validation_probabilities(model, torch.device(device)).numpy()
    labels = task.val_labels.numpy()
    threshold = facts["threshold"]
    if threshold is None and probabilities.shape[1] == 2:
        threshold = choose_threshold(probabilities[:, 1], labels)
    facts = {**facts, "threshold": threshold}
    save_checkpoint(out / MODEL_FILE, model.state_dict(), {"network": net, "train": train_config.to_dict(),
                                                           "classifier": facts})  # fmt: skip
    report = classification_report(probabilities, labels, threshold)
    names = dataset.class_names
    _write_val_predictions(out / "val_predictions.csv", dataset, val_index, probabilities, threshold)
    plot_roc(probabilities, labels, names, out / "roc.png", threshold)
    plot_confusion(np.asarray(report["confusion_matrix"]), names, out / "confusion.png",
                   f"validation, threshold {threshold:.3f}" if threshold is not None else "validation (argmax)")  # fmt: skip
    summary = {
        "validation": report, "validation_at_argmax": classification_report(probabilities, labels, None),
        "fit": _fit_facts(results, report),
        "class_names": list(names), "threshold": threshold, "input": facts["input"], "network": net,
        "kept_weights": kept_weights_text(facts), "scoring_views": {"mirror": facts["mirror"], "shift": facts["shift"]},
        "train_images": int(task.train_images.shape[0]), "val_images": len(val_index),
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _finish_unvalidated(
    out: Path, model: torch.nn.Module, task: ClassificationTask, dataset: ClassificationDataset, facts: dict,
    net: dict, train_config: TrainConfig, results: list[FitResult],
) -> dict[str, Any]:  # fmt: skip
    """Write the run of a model trained without validation images: its threshold is the one given."""
    save_checkpoint(out / MODEL_FILE, model.state_dict(), {"network": net, "train": train_config.to_dict(),
                                                           "classifier": facts})  # fmt: skip
    summary = {
        "validation": None, "class_names": list(dataset.class_names),
        "fit": {k: v for k, v in _fit_facts(results, {"auc": None}).items() if k not in ("best_val_auc", "best_epoch")},
        "threshold": facts["threshold"], "input": facts["input"], "network": net,
        "kept_weights": kept_weights_text(facts), "scoring_views": {"mirror": facts["mirror"], "shift": facts["shift"]},
        "train_images": int(task.train_images.shape[0]), "val_images": 0,
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _fit_facts(results: list[FitResult], report: dict) -> dict[str, Any]:
    facts = [{"best_val_auc": r.best_score, "best_epoch": r.best_epoch, "steps": r.steps,
              "elapsed_s": round(r.elapsed_s, 1), "stopped_because": r.stopped_because, "precision": r.precision}
             for r in results]  # fmt: skip
    if len(facts) == 1:
        return facts[0]
    reasons = sorted({f["stopped_because"] for f in facts})
    return {"best_val_auc": report["auc"], "steps": sum(f["steps"] for f in facts), "precision": facts[0]["precision"],
            "elapsed_s": round(sum(f["elapsed_s"] for f in facts), 1),
            "stopped_because": f"{len(facts)} members: " + "; ".join(reasons), "members": facts}  # fmt: skip


def threshold_text(threshold: float | None) -> str:
    return "argmax" if threshold is None else f"{threshold:.3f}"


def _write_val_predictions(
    path: Path, dataset: ClassificationDataset, val_index: list[int], probabilities: np.ndarray, threshold: float | None
) -> None:
    predicted = predict_classes(probabilities, threshold)
    rows = []
    for row, index in enumerate(val_index):
        item = dataset.items[index]
        rows.append({"file": _relative(item.path, dataset.root), "group": item.group,
                     "true": dataset.class_names[item.label], "predicted": dataset.class_names[predicted[row]],
                     **probability_columns(probabilities[row], dataset.class_names)})  # fmt: skip
    write_csv(path, rows)


def probability_columns(probabilities: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    return {f"p_{name}": round(float(p), 6) for name, p in zip(class_names, probabilities)}


def write_csv(path: str | Path, rows: list[dict]) -> None:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["file"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _summary_line(request, spec, model, dataset, train_index, val_index) -> str:
    counts = np.bincount(np.asarray(dataset.labels)[val_index], minlength=len(dataset.class_names))
    return (
        f"segmorph classify: {request.model} ({count_parameters(model):,} parameters), input {list(spec.size)} x "
        f"{spec.channels} channel(s), batch {request.batch_size}, {len(train_index)} train / {len(val_index)} val "
        f"images (val per class: {dict(zip(dataset.class_names, counts.tolist()))}), "
        f"budget {request.time_budget_s / 60:.1f} min / {request.max_steps} steps"
    )


def _write_provenance(
    out: Path, request: ClassifyRequest, dataset: ClassificationDataset, train_index: list[int], val_index: list[int],
    spec: InputSpec, net: dict, train_config: TrainConfig, quality: dict[str, Any], transfer: TransferRecord | None,
) -> None:  # fmt: skip
    """``run.json`` (see :mod:`segmorph.provenance`): the fingerprint covers the labels CSV and every image;
    ``quality_check`` holds whether the dataset check ran and the cases it flagged; ``split.unlabelled`` the
    training images left out by ``labelled_fraction``; ``transfer`` what ``init`` loaded (None without)."""

    def files(indices: list[int]) -> list[str]:
        return [_relative(dataset.items[i].path, dataset.root) for i in indices]

    facts = {
        "request": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(request).items()},
        "seed": request.seed, "dataset": str(dataset.root), "class_names": list(dataset.class_names),
        "class_counts": dataset.class_counts(), "input": spec.to_dict(), "network": net,
        "train": train_config.to_dict(),
        "split": {"kind": _split_kind(request), "train": files(train_index), "val": files(val_index),
                  "set_aside": files(set_aside(dataset, request)[1]), "labelled_fraction": request.labelled_fraction,
                  "unlabelled": files(_unlabelled(dataset, request, train_index, val_index))},
        "quality_check": quality, "log": request.log, "transfer": None if transfer is None else transfer.to_dict(),
    }  # fmt: skip
    if request.log == "tensorboard":
        facts["tensorboard_dir"] = TENSORBOARD_FOLDER
    data_files = dataset.paths
    if request.labels is not None:
        data_files = [resolve_labels_file(request.dataset, request.labels), *data_files]
    record = write_run_record(out, facts, files_fingerprint(data_files, dataset.root), resume=request.resume)
    if data_changed(record):
        console.print("warning: the dataset's files changed since this run started (see run.json)", highlight=False)


def _unlabelled(
    dataset: ClassificationDataset, request: ClassifyRequest, train_index: list[int], val_index: list[int]
) -> list[int]:
    """The training-side images ``labelled_fraction`` left out: neither trained, validated on nor set aside."""
    used = set(train_index) | set(val_index)
    return [i for i in set_aside(dataset, request)[0] if i not in used]


def _split_kind(request: ClassifyRequest) -> str:
    if not request.validate:
        return "no validation: every image not set aside"
    return "holdout" if request.fold is None else f"fold {request.fold} of {request.num_folds}"
