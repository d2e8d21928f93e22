"""The public Python API of classification: train a classifier into a run folder, and classify images with it.

Example:
    >>> import segmorph as sm
    >>> result = sm.train_classifier("busi_ultrasound", "runs/busi", labels="labels.csv", target="lesion",
    ...                              group="dup_group", time_budget="15m", overrides={"model.width": 32})
    >>> classifier = sm.Classifier(result.out)
    >>> classifier(sm.read_image("scan.png"))  # probabilities in the order of classifier.class_names
    >>> cv = sm.cross_validate_classifier("busi_ultrasound", "runs/busi_cv", labels="labels.csv", target="lesion",
    ...                                   group="dup_group", time_budget="15m", holdout_groups=0.2)
    >>> cv.auc, cv.holdout["ensemble"]["auc"]  # pooled out-of-fold, and the folds' ensemble on the hold-out
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.classification.config import ClassifierConfig, classifier_config
from segmorph.classification.crossval import train_cross_validation
from segmorph.classification.crossval_layout import FINAL_FOLDER
from segmorph.classification.ensemble import load_run_classifier
from segmorph.classification.init_source import source_model
from segmorph.classification.pipeline import train_classifier as train_from_request
from segmorph.classification.predict import image_probabilities
from segmorph.classification.request import ClassifyRequest
from segmorph.configs import CONFIG_FILE
from segmorph.engine.tracking import check_log
from segmorph.folds import parse_folds
from segmorph.image import Image
from segmorph.metrics.classification import predict_classes


@dataclass(frozen=True)
class ClassifierResult:
    """What :func:`train_classifier` did.

    Attributes:
        out: The run folder (:class:`Classifier` and ``segmorph classify predict`` take it).
        steps: Training steps taken (all ensemble members together).
        elapsed_s: Training time in seconds.
        stopped_because: Why training ended.
        auc: Validation AUC (two classes) or macro AUC.
        balanced_accuracy: Validation balanced accuracy at ``threshold``.
        threshold: Decision threshold on the positive class's probability (two classes), else None (argmax).
        config: The settings the run was asked for (also ``out/config.json``).
        summary: ``summary.json``'s contents.
    """

    out: Path
    steps: int
    elapsed_s: float
    stopped_because: str
    auc: float | None
    balanced_accuracy: float | None
    threshold: float | None
    config: ClassifierConfig
    summary: dict[str, Any]


def train_classifier(
    dataset: str | Path, out: str | Path, *, labels: str | Path | None = None, target: str = "label",
    group: str | None = None, time_budget: str | float | None = None, max_steps: int = 0,
    overrides: dict[str, Any] | None = None, config: str | Path | None = None, device: str = "cpu", seed: int = 0,
    resume: bool = False, show_progress: bool = True, file_column: str = "file", check: bool = True,
    class_names: Sequence[str] | None = None, log: str = "csv", init: str | Path | None = None,
    freeze_encoder_steps: int | None = None, labelled_fraction: float | None = None,
) -> ClassifierResult:  # fmt: skip
    """Train an image classifier on a dataset into the run folder ``out``.

    The settings (:class:`~segmorph.classification.config.ClassifierConfig`: sections ``model``, ``data``,
    ``train``, ``scoring``) are checked before anything is read or written and saved as ``out/config.json``;
    see :mod:`segmorph.classification.pipeline` for the rest of the run folder. Resuming starts from the
    run's ``config.json``.

    Args:
        dataset: Folder with a labels CSV, or one sub-folder of images per class.
        out: Run folder.
        labels: Labels CSV (inside ``dataset``, or a path); None: class-per-folder layout.
        target: CSV column holding the class.
        group: CSV column of groups kept on one side of the split (patient, duplicates).
        time_budget: ``"15m"``-style text or seconds (default 15 minutes; none with ``max_steps`` alone).
        max_steps: Step limit (0: the time budget alone).
        overrides: Dotted keys, e.g. ``{"model.width": 32, "train.batch_size": 16}`` (win over ``config``).
        config: YAML/JSON file of settings, nested or dotted.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        seed: ``train.seed``: weights, batches, augmentation (and the split unless ``data.split_seed``).
        resume: Continue the run in ``out`` from its last checkpoint.
        show_progress: Progress bars and a summary line.
        file_column: CSV column holding image paths (relative to ``dataset``).
        check: Run the dataset quality check first (:func:`segmorph.qc.quality.check_before_training`; not
            on ``resume``): one warning line when it flags images; it never changes the data.
        class_names: Names of the classes in the order of their sorted values in ``target`` (``0, 1`` ->
            ``["normal", "lesion"]``); None: the values themselves.
        log: ``"csv"`` (``train_log.csv`` only) or ``"tensorboard"``: also TensorBoard event files of its
            scalars in ``out/tensorboard`` (needs the tensorboard package).
        init: A run folder or checkpoint (a pretraining run, another classification run) whose tensors of
            matching name and shape start the network; what was loaded and what not is printed and kept in
            ``run.json`` (``transfer``). Its classifier (``model.name``, ``model.width``) and input size are
            used unless the settings give them.
        freeze_encoder_steps: ``train.freeze_encoder_steps``: for this many first steps only the final
            linear layer trains.
        labelled_fraction: ``data.labelled_fraction``: share of the training images kept (whole groups, per
            class, seeded by ``seed``); the rest are not trained on; validation is untouched.

    Returns:
        Steps, time, validation AUC, balanced accuracy, the threshold and the settings.

    Raises:
        SegmorphError: Bad settings (one line, nothing written) or bad data.
    """
    check_log(log)
    out = Path(out)
    base = _base_settings(out, resume, init)
    extra = _few_label_settings(freeze_encoder_steps, labelled_fraction)
    settings = classifier_config({**extra, **(overrides or {})}, config, time_budget=time_budget, max_steps=max_steps,
                                 seed=seed, base=base)  # fmt: skip
    request = request_from_config(dataset, out, settings, labels=labels, target=target, group=group,
                                  file_column=file_column, device=device, resume=resume,
                                  show_progress=show_progress, check=check, class_names=class_names,
                                  log=log, init=init)  # fmt: skip
    summary = train_from_request(request, settings)
    fit, validation = summary["fit"], summary["validation"]
    return ClassifierResult(
        out=out, steps=fit["steps"], elapsed_s=fit["elapsed_s"], stopped_because=fit["stopped_because"],
        auc=validation.get("auc"), balanced_accuracy=validation.get("balanced_accuracy"),
        threshold=summary["threshold"], config=settings, summary=summary,
    )  # fmt: skip


@dataclass(frozen=True)
class ClassifierCrossValidation:
    """What :func:`cross_validate_classifier` did; everything it wrote is in ``out``.

    Attributes:
        out: The cross-validation run folder (:class:`Classifier` and ``segmorph classify predict`` take it).
        folds: The folds done.
        images: Images scored out of fold.
        auc: Pooled out-of-fold ROC AUC (two classes) or macro AUC.
        balanced_accuracy: Pooled out-of-fold balanced accuracy at ``threshold``.
        threshold: Decision threshold chosen on the pooled out-of-fold probabilities (two classes), else None.
        fold_auc: Fold -> that fold's validation AUC.
        holdout: The hold-out figures (``images``; ``ensemble`` and, with a final model, ``final``: AUC,
            balanced accuracy, confusion matrix at ``threshold``), or None without a hold-out.
        final: The final model's folder, or None.
        summary: ``cross_validation.json``'s contents.
    """

    out: Path
    folds: tuple[int, ...]
    images: int
    auc: float | None
    balanced_accuracy: float | None
    threshold: float | None
    fold_auc: dict[int, float | None]
    holdout: dict[str, Any] | None
    final: Path | None
    summary: dict[str, Any]


def cross_validate_classifier(
    dataset: str | Path, out: str | Path, *, folds: str | Sequence[int] = "all", num_folds: int | None = None,
    holdout_groups: float = 0.0, final: bool = False, budget_per_fold: bool = False, labels: str | Path | None = None,
    target: str = "label", group: str | None = None, time_budget: str | float | None = None, max_steps: int = 0,
    overrides: dict[str, Any] | None = None, config: str | Path | None = None, device: str = "cpu", seed: int = 0,
    resume: bool = False, show_progress: bool = True, file_column: str = "file", check: bool = True,
    class_names: Sequence[str] | None = None, log: str = "csv", init: str | Path | None = None,
    freeze_encoder_steps: int | None = None, labelled_fraction: float | None = None,
) -> ClassifierCrossValidation:  # fmt: skip
    """Cross-validate a classifier: train the folds of a grouped, stratified k-fold split into ``out/fold_<k>``
    under one time budget, pool the out-of-fold probabilities and choose the decision threshold on them;
    optionally set a grouped hold-out aside first and score the folds' ensemble on it, and train a final model
    on every image not held out. :class:`Classifier` and ``segmorph classify predict`` then use the run
    (see :mod:`segmorph.classification.crossval`).

    Args:
        dataset, labels, target, group, max_steps, overrides, config, device, seed, show_progress, file_column,
            check, class_names, log, freeze_encoder_steps, labelled_fraction: As for :func:`train_classifier`.
        init: As for :func:`train_classifier`: every fold (and the final model) starts from it; on ``resume``
            the run's own.
        out: Cross-validation run folder.
        folds: ``"all"``, ``"0,2,4"`` or fold numbers to train now (folds already done are skipped).
        num_folds: Folds of the split (``data.num_folds``, default 5).
        holdout_groups: Share of each class's images (whole groups, seeded by ``data.split_seed`` or ``seed``)
            set aside before the folds and scored at the end (0: none).
        final: After the folds, train one model on every image not held out for one fold's share of the
            budget, with the out-of-fold threshold (``out/final``; predict uses it unless told otherwise).
        budget_per_fold: ``time_budget`` is each fold's, not every fold's together.
        time_budget: Time for every fold together (default 15 minutes).
        resume: Continue the run in ``out``: folds done are kept, an interrupted fold resumes.

    Returns:
        A :class:`ClassifierCrossValidation`.

    Raises:
        SegmorphError: Bad settings (nothing written), bad data, or a class with fewer groups than folds.
    """
    check_log(log)
    out = Path(out)
    base = _base_settings(out, resume, init)
    extra = {} if num_folds is None else {"data.num_folds": num_folds}
    extra.update(_few_label_settings(freeze_encoder_steps, labelled_fraction))
    settings = classifier_config({**extra, **(overrides or {})}, config, time_budget=time_budget,
                                 max_steps=max_steps, seed=seed, base=base)  # fmt: skip
    chosen = parse_folds(folds if isinstance(folds, str) else ",".join(map(str, folds)), settings.data.num_folds)
    request = request_from_config(dataset, out, settings, labels=labels, target=target, group=group,
                                  file_column=file_column, device=device, resume=resume,
                                  show_progress=show_progress, check=check, class_names=class_names,
                                  log=log, init=init)  # fmt: skip
    summary = train_cross_validation(request, chosen, budget_per_fold=budget_per_fold,
                                     holdout_groups=holdout_groups, final=final, config=settings)  # fmt: skip
    pooled = summary["out_of_fold"]
    final_folder = out / FINAL_FOLDER
    return ClassifierCrossValidation(
        out=out, folds=tuple(summary["folds"]), images=summary["images"], auc=pooled["auc"],
        balanced_accuracy=pooled["balanced_accuracy"], threshold=summary["threshold"],
        fold_auc={int(k): v["auc"] for k, v in summary["per_fold"].items()}, holdout=summary.get("holdout"),
        final=final_folder if (final_folder / "classifier.pt").is_file() else None, summary=summary,
    )  # fmt: skip


def request_from_config(
    dataset: str | Path, out: str | Path, config: ClassifierConfig, *, labels: str | Path | None = None,
    target: str = "label", group: str | None = None, file_column: str = "file", device: str = "cpu",
    resume: bool = False, show_progress: bool = True, check: bool = True, class_names: Sequence[str] | None = None,
    log: str = "csv", init: str | Path | None = None,
) -> ClassifyRequest:  # fmt: skip
    """The :class:`ClassifyRequest` of checked settings (:class:`~segmorph.classification.config.ClassifierConfig`)
    and the dataset's description (labels CSV and its columns; see :class:`ClassifyRequest`)."""
    model, data, train, scoring = config.model, config.data, config.train, config.scoring
    return ClassifyRequest(
        dataset=Path(dataset), out=Path(out), labels=None if labels is None else Path(labels), target=target,
        group=group, file_column=file_column, model=model.name, width=model.width, dropout=model.dropout,
        size=data.size, val_fraction=data.val_fraction, fold=data.fold, num_folds=data.num_folds,
        split_seed=data.split_seed, batch_size=train.batch_size, learning_rate=train.learning_rate,
        weight_decay=train.weight_decay, time_budget_s=train.time_budget_s, max_steps=train.max_steps,
        steps_per_epoch=train.steps_per_epoch, patience_epochs=train.patience_epochs, seed=train.seed,
        amp=train.amp, augment=train.augment, label_smoothing=train.label_smoothing, mixup=train.mixup,
        ema_decay=train.ema_decay, tail_average=train.tail_average, select=train.select,
        refresh_batch_norm=train.refresh_batch_norm, ensemble=train.ensemble, mirror=scoring.mirror,
        shift=scoring.shift, device=device, resume=resume, show_progress=show_progress, check=check,
        class_names=None if class_names is None else tuple(class_names), log=log,
        init=None if init is None else Path(init), freeze_encoder_steps=train.freeze_encoder_steps,
        labelled_fraction=data.labelled_fraction,
    )  # fmt: skip


def _base_settings(out: Path, resume: bool, init: str | Path | None) -> ClassifierConfig | None:
    """The settings under the asked ones: on ``resume`` the run's own ``config.json``; for a new run from
    ``init`` the source's classifier (name and width, :func:`segmorph.classification.init_source.source_model`);
    else None (the defaults)."""
    if resume and (out / CONFIG_FILE).is_file():
        return classifier_config(config=out / CONFIG_FILE)  # an error in it names the file
    model = None if init is None or resume else source_model(init)
    return None if model is None else ClassifierConfig(model=model)


def _few_label_settings(freeze_encoder_steps: int | None, labelled_fraction: float | None) -> dict[str, Any]:
    """The config keys the few-label keyword arguments set (those given)."""
    keys = {"train.freeze_encoder_steps": freeze_encoder_steps, "data.labelled_fraction": labelled_fraction}
    return {key: value for key, value in keys.items() if value is not None}


class Classifier:
    """A trained classifier (a ``classify train`` run folder), loaded once and applied to many images.

    Calling it on an :class:`~segmorph.image.Image` ``(C, I, J[, K])`` returns the class probabilities ``(K,)``
    in the order of :attr:`class_names`, scored as in validation (the run's input preparation, mirror and
    shifted views). On a cross-validation run (:func:`cross_validate_classifier`) it is, as in
    ``classify predict``, the run's final model when it has one, else the mean of its folds' probabilities,
    with the threshold chosen on the out-of-fold probabilities (:attr:`description` says which).

    Args:
        run_dir: The run folder (with ``classifier.pt``; runs written by earlier versions load too), or a
            cross-validation run folder.
        device: Where the network runs.
        folds: Cross-validation runs: the folds to average (default: every fold trained; implies the ensemble).
        use: Cross-validation runs: ``"final"`` or ``"ensemble"`` (default: the final model when trained).

    Example:
        >>> classifier = Classifier("runs/busi")
        >>> probabilities = classifier(read_image("scan.png"))
        >>> classifier.predict(read_image("scan.png"))
        'malignant'
    """

    def __init__(
        self, run_dir: str | Path, device: str | torch.device = "cpu", *, folds: str | Sequence[int] | None = None,
        use: str | None = None,
    ) -> None:  # fmt: skip
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        loaded = load_run_classifier(self.run_dir, self.device, folds, use)
        self.model, self.facts, self.description = loaded.model, loaded.facts, loaded.description

    @property
    def class_names(self) -> list[str]:
        """Class names, in the order of the probabilities."""
        return list(self.facts["class_names"])

    @property
    def threshold(self) -> float | None:
        """Decision threshold on the second class's probability (two classes), else None (argmax)."""
        return self.facts["threshold"]

    def __call__(self, image: Image) -> np.ndarray:
        """Class probabilities ``(K,)`` of ``image``."""
        return image_probabilities(self.model, self.facts, image, self.device)[0]

    def predict(self, image: Image) -> str:
        """The class name of ``image`` (two classes: the second when its probability reaches :attr:`threshold`)."""
        probabilities = self(image)
        return self.class_names[int(predict_classes(probabilities[None], self.threshold)[0])]
