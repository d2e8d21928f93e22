"""``segmorph classify train|predict``: argument parsing and the thin verb handlers.

Wiring (in :mod:`segmorph.cli.main`): ``add_classify_arguments(sub)`` with the top-level sub-parsers (or with an
already made ``classify`` parser), and ``run_classify(args)`` as the handler; bad input raises
:class:`segmorph.errors.SegmorphError`, which the top level turns into one line and exit code 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.classification.config import SELECTIONS
from segmorph.cli.arguments import (
    flag_overrides,
    non_negative_int,
    parse_duration,
    parse_seed,
    parse_size,
    say,
    verb_parser,
)
from segmorph.errors import SegmorphError
from segmorph.nn.names import network_names

EXAMPLES = {
    "train": (
        "segmorph classify train ../shared/datasets/busi_ultrasound --labels labels.csv --target lesion "
        "--group dup_group --out runs/busi --time-budget 15m\n"
        "  segmorph classify train images_by_class/ --out runs/cls --model simplecnn --size 96 --max-steps 500\n"
        "  segmorph classify train ../shared/datasets/busi_ultrasound --labels labels.csv --target lesion "
        "--group dup_group --folds all --holdout-groups 0.2 --out runs/busi_cv --time-budget 15m\n"
        "  segmorph classify train ../shared/datasets/busi_ultrasound --labels labels.csv --target lesion "
        "--group dup_group --labelled-fraction 0.1 --init runs/busi_pretrain --out runs/busi_few --time-budget 15m"
    ),
    "predict": "segmorph classify predict runs/busi scans/ --out predictions.csv --cam cams/\n"
    "  segmorph classify predict runs/busi_cv scans/ --out predictions.csv --folds 0,1,2",
}


def add_classify_arguments(target: argparse.ArgumentParser | argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``classify`` verb with its ``train`` and ``predict`` sub-verbs.

    Args:
        target: The top-level sub-parsers (a ``classify`` parser is made in it) or the ``classify`` parser itself.

    Returns:
        The ``classify`` parser.
    """
    if isinstance(target, argparse._SubParsersAction):
        text = "Train an image classifier (normal vs lesion, ...) or classify images, with Grad-CAM maps."
        examples = f"{EXAMPLES['train'].splitlines()[0]}\n  {EXAMPLES['predict']}"
        target = verb_parser(target, "classify", text, examples)
    sub = target.add_subparsers(dest="classify_verb", required=True, metavar="{train,predict}")
    _add_train(verb_parser(sub, "train", "Train a classifier; writes a run folder with metrics, ROC and confusion "
                           "plots and the decision threshold. With --folds: cross-validation (fold models, "
                           "out-of-fold scores and threshold, optional hold-out and final model).",
                           EXAMPLES["train"]))  # fmt: skip
    _add_predict(verb_parser(sub, "predict", "Classify images with a trained run; optional Grad-CAM overlays.",
                             EXAMPLES["predict"]))  # fmt: skip
    target.set_defaults(handler=run_classify)
    return target


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_train_data(p.add_argument_group("data"))
    _add_train_split(p.add_argument_group("split and cross-validation"))
    _add_train_model(p.add_argument_group("network and optimisation"))
    _add_train_few_labels(p.add_argument_group("few labels"))
    _add_train_scoring(p.add_argument_group("weights kept and scoring"))
    _add_train_run(p.add_argument_group("run"))


def _add_train_data(p: argparse._ArgumentGroup) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (with a labels CSV, or one sub-folder per class)")
    p.add_argument("--labels", type=Path, help="labels CSV (inside DATASET, or a path); omit for class folders")
    p.add_argument("--target", default="label", help="CSV column holding the class (default: label)")
    p.add_argument("--class-names", type=_names, metavar="NAME[,NAME...]",
                   help="names of the classes in the order of their sorted values, e.g. normal,lesion for 0,1 "
                        "(default: the values themselves)")  # fmt: skip
    p.add_argument("--group", help="CSV column of groups kept on one side of the split (patient, duplicates)")
    p.add_argument("--file-column", default="file", help="CSV column holding image paths (default: file)")
    p.add_argument("--out", type=Path, required=True, help="run folder")


def _add_train_split(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--val-fraction", type=float, help="hold-out share, whole groups (default 0.2)")
    p.add_argument("--fold", type=int, metavar="K",
                   help="train one model validated on fold K of a grouped k-fold split, not the hold-out split")  # fmt: skip
    p.add_argument("--folds", metavar="all|K[,K...]",
                   help="cross-validation: train these folds of the grouped, stratified k-fold split (all, or e.g. "
                        "0,2,4) into OUT/fold_K, pool their out-of-fold probabilities (OUT/cross_validation.csv "
                        "and .json) and choose the threshold on them; predict then averages the folds. "
                        "--time-budget is for all folds together; --resume skips the folds done")  # fmt: skip
    p.add_argument("--num-folds", type=int, metavar="N", help="folds of the k-fold split (data.num_folds, default 5)")
    p.add_argument("--budget-per-fold", action="store_true", help="with --folds: --time-budget is each fold's")
    p.add_argument("--holdout-groups", type=float, metavar="F", default=0.0,
                   help="with --folds: first set aside about F of each class's images (whole groups, seeded by "
                        "--split-seed), which no fold sees; the folds' ensemble is scored on them at the end")  # fmt: skip
    p.add_argument("--final", action="store_true",
                   help="with --folds: after the folds, train one model on every image not held out, for one "
                        "fold's share of --time-budget (TIME / folds; with --budget-per-fold, TIME) on top of the "
                        "folds' time, with the out-of-fold threshold, into OUT/final; predict uses it unless "
                        "--use ensemble")  # fmt: skip
    p.add_argument(
        "--split-seed",
        type=parse_seed,
        metavar="S",
        help="seed of the train/validation split alone (default: --seed), to train one split with several seeds",
    )


def _add_train_model(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--time-budget", type=parse_duration,
                   help="training time, e.g. 15m (default 15m; none when only --max-steps is given); with --folds, "
                        "of all folds together")  # fmt: skip
    p.add_argument("--max-steps", type=non_negative_int, default=0, help="stop after this many steps")
    p.add_argument("--model", choices=network_names("classification"),
                   help="resnet (ResNet-18 layout, default) or simplecnn (model.name)")  # fmt: skip
    p.add_argument("--width", type=int, help="channels of the first stage (model.width, default 16)")
    p.add_argument("--size", type=parse_size, metavar="N[,N...]",
                   help="input size in voxels, one value or one per axis (default: from the data, at most 128 in 2D, 64 in 3D)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="images per step (default 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW, cosine; default 2e-3)")
    p.add_argument("--patience", type=int, help="early stopping after N epochs without a better AUC (default 0: off)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    p.add_argument(
        "--dropout", type=float, help="dropout before the last layer (default: 0 for resnet, 0.2 for simplecnn)"
    )
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default 0.1)")
    p.add_argument("--mixup", type=float, help="mixup Beta parameter, 0 turns it off (default 0.2)")
    p.add_argument("--ema", type=float,
                   help="decay of the weight average that is validated and saved, 0 turns it off (default 0.998)")  # fmt: skip
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="train in float32 (default: bfloat16 autocast where the device runs it fast)",
    )
    p.add_argument(
        "--seed",
        type=parse_seed,
        help="seed of the weights, batches and augmentation, and of the split unless --split-seed (default 0)",
    )


def _add_train_few_labels(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--init", type=Path, metavar="PRE_OR_RUN",
                   help="start from the weights of a pretraining run, another classification run or a checkpoint: "
                        "every tensor whose name and shape match is loaded (printed, and listed in run.json); its "
                        "classifier and input size are used unless --model, --width or --size say otherwise")  # fmt: skip
    p.add_argument("--freeze-encoder-steps", type=int, metavar="N",
                   help="for the first N steps train only the final linear layer (train.freeze_encoder_steps, "
                        "default 0)")  # fmt: skip
    p.add_argument("--labelled-fraction", type=float, metavar="F",
                   help="keep only F (0 < F <= 1) of the training images, whole groups, every class, seeded by "
                        "--seed; validation is untouched (data.labelled_fraction, default 1)")  # fmt: skip


def _add_train_scoring(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--no-mirror", action="store_true",
                   help="score the image alone (default: average with its left-right mirror)")  # fmt: skip
    p.add_argument("--tta-shift", type=float, metavar="F",
                   help="also average copies shifted by F of the image size both ways along each axis, in the final "
                        "validation and in predict; 0 turns it off (default 0.04: 5 pixels at 128)")  # fmt: skip
    p.add_argument("--select", choices=SELECTIONS,
                   help="weights kept: the final (averaged) ones, or the epoch of best validation AUC, which is "
                        "picked on the images it is then scored on (default last)")  # fmt: skip
    p.add_argument("--tail-average", type=float, metavar="F",
                   help="with --select last, keep the mean of the averaged weights over the last F of training, "
                        "0 for the final ones (default 0.5)")  # fmt: skip
    p.add_argument("--no-bn-refresh", action="store_true",
                   help="keep the batch-norm statistics of training (default: re-estimated on the unaugmented "
                        "training images)")  # fmt: skip
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="train N networks (seeds seed..seed+N-1), each for 1/N of the budget, and average their "
                        "probabilities (default 1)")  # fmt: skip


def _add_train_run(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--config", type=Path, help="YAML/JSON file of settings (sections model, data, train, scoring)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set one value, e.g. model.width=32 or train.batch_size=16 (repeatable; wins over --config "
                        "and the flags above; the run's config.json lists every key)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--no-check", action="store_true", help="skip the dataset quality check before training")
    p.add_argument("--log", choices=("csv", "tensorboard"), default="csv",
                   help="csv: train_log.csv (default); tensorboard: also event files in OUT/tensorboard "
                        "(pip install segmorph[tensorboard])")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _names(text: str) -> tuple[str, ...]:
    """``a,b,c`` -> ``("a", "b", "c")``."""
    return tuple(name.strip() for name in text.split(","))


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained classification run folder, or a cross-validation run folder")
    p.add_argument("images", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--out", type=Path, required=True, help="CSV of probabilities and predicted classes")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write Grad-CAM overlays (PNG) into DIR")
    p.add_argument("--device", default="cpu")
    p.add_argument("--folds", metavar="all|K[,K...]",
                   help="cross-validation run: average these folds' probabilities (default: every fold trained; "
                        "a fold without a model is left out with a warning)")  # fmt: skip
    p.add_argument("--use", choices=("final", "ensemble"),
                   help="cross-validation run: its final model (default when trained with --final) or the mean of "
                        "its folds; both use the threshold chosen on the out-of-fold predictions")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


TRAIN_FLAGS = {
    "model": "model.name", "width": "model.width", "dropout": "model.dropout", "size": "data.size",
    "val_fraction": "data.val_fraction", "fold": "data.fold", "num_folds": "data.num_folds",
    "split_seed": "data.split_seed",
    "time_budget": "train.time_budget_s", "batch_size": "train.batch_size", "lr": "train.learning_rate",
    "weight_decay": "train.weight_decay", "patience": "train.patience_epochs", "seed": "train.seed",
    "label_smoothing": "train.label_smoothing", "mixup": "train.mixup", "ema": "train.ema_decay",
    "tail_average": "train.tail_average", "select": "train.select", "ensemble": "train.ensemble",
    "tta_shift": "scoring.shift", "freeze_encoder_steps": "train.freeze_encoder_steps",
    "labelled_fraction": "data.labelled_fraction",
}  # fmt: skip
"""``classify train`` flags and the config keys they set (when given)."""
SWITCHES = {"no_mirror": "scoring.mirror", "no_bn_refresh": "train.refresh_batch_norm", "no_augment": "train.augment",
            "no_amp": "train.amp"}  # fmt: skip
"""``classify train`` switches that turn a config key off (when given)."""


def train_overrides(args: argparse.Namespace) -> dict:
    """The config keys set by parsed ``classify train`` arguments: flags first, then ``--set`` (which wins)."""
    from segmorph.configs import parse_overrides

    overrides = flag_overrides(args, TRAIN_FLAGS)
    overrides.update({key: False for flag, key in SWITCHES.items() if getattr(args, flag)})
    if args.max_steps > 0:
        overrides["train.max_steps"] = args.max_steps
        overrides.setdefault("train.time_budget_s", 0.0)  # a step limit alone: repeatable bit for bit
    overrides.update(parse_overrides(args.overrides))
    return overrides


def train_request(args: argparse.Namespace):
    """The :class:`~segmorph.classification.pipeline.ClassifyRequest` of parsed ``classify train`` arguments."""
    from segmorph.classification.api import request_from_config
    from segmorph.classification.config import classifier_config

    settings = classifier_config(train_overrides(args), args.config)
    return request_from_config(
        args.dataset, args.out, settings, labels=args.labels, target=args.target, group=args.group,
        file_column=args.file_column, device=args.device, resume=args.resume, show_progress=not args.quiet,
        check=not args.no_check, class_names=args.class_names, log=args.log, init=args.init,
    )  # fmt: skip


def run_classify(args: argparse.Namespace) -> int:
    """Run ``classify train`` or ``classify predict``; 0 on success (SegmorphError on bad input)."""
    verb = getattr(args, "classify_verb", None)
    if verb == "train":
        return _run_train(args)
    if verb == "predict":
        return _run_predict(args)
    raise SegmorphError("classify needs a sub-command: train or predict (see segmorph classify --help)")


def _run_train(args: argparse.Namespace) -> int:
    from segmorph.classification.api import train_classifier

    if args.folds is not None:
        return _run_cross_validation(args)
    given = [flag for flag, on in (("--budget-per-fold", args.budget_per_fold), ("--final", args.final),
                                   ("--holdout-groups", args.holdout_groups)) if on]  # fmt: skip
    if given:
        raise SegmorphError(f"{', '.join(given)}: only with --folds (cross-validation)")
    result = train_classifier(
        args.dataset, args.out, labels=args.labels, target=args.target, group=args.group,
        file_column=args.file_column, overrides=train_overrides(args), config=args.config, device=args.device,
        resume=args.resume, show_progress=not args.quiet, check=not args.no_check, class_names=args.class_names,
        log=args.log, init=args.init,
    )  # fmt: skip
    say(train_summary_line(result.summary, args.out), err=True)
    return 0


def _run_cross_validation(args: argparse.Namespace) -> int:
    from segmorph.classification.api import cross_validate_classifier

    if args.fold is not None or args.val_fraction is not None:
        raise SegmorphError("--folds: each fold is validated on itself; drop --fold and --val-fraction")
    result = cross_validate_classifier(
        args.dataset, args.out, folds=args.folds, holdout_groups=args.holdout_groups, final=args.final,
        budget_per_fold=args.budget_per_fold, labels=args.labels, target=args.target, group=args.group,
        file_column=args.file_column, overrides=train_overrides(args), config=args.config, device=args.device,
        resume=args.resume, show_progress=not args.quiet, check=not args.no_check, class_names=args.class_names,
        log=args.log, init=args.init,
    )  # fmt: skip
    say(cross_validation_line(result.summary, args.out), err=True)
    return 0


def cross_validation_line(summary: dict, out: str | Path) -> str:
    """The line ``classify train --folds`` ends with: pooled out-of-fold and hold-out AUC and balanced accuracy."""
    pooled, threshold = summary["out_of_fold"], summary["threshold"]
    at = f" at threshold {threshold:.3f}" if threshold is not None else ""
    line = (f"cross-validation: {len(summary['folds'])} folds, {summary['images']} images out of fold: AUC "
            f"{pooled['auc']}, balanced accuracy {pooled['balanced_accuracy']}{at}")  # fmt: skip
    holdout = summary.get("holdout")
    if holdout:
        line += (f"; hold-out ({holdout['images']} images), ensemble: AUC {holdout['ensemble']['auc']}, balanced "
                 f"accuracy {holdout['ensemble']['balanced_accuracy']}")  # fmt: skip
        if "final" in holdout:
            line += f", final model: AUC {holdout['final']['auc']}, balanced accuracy {holdout['final']['balanced_accuracy']}"
    return f"{line}; run folder {out}"


def train_summary_line(summary: dict, out: str | Path) -> str:
    """The line ``classify train`` ends with: steps, time, why it stopped, validation AUC and balanced accuracy."""
    fit, val = summary["fit"], summary["validation"]
    threshold = f" at threshold {summary['threshold']:.3f}" if summary["threshold"] is not None else ""
    return (
        f"trained {fit['steps']} steps in {fit['elapsed_s'] / 60:.1f} min ({fit['stopped_because']}); validation "
        f"AUC {val['auc']}, balanced accuracy {val['balanced_accuracy']}{threshold}; run folder {out}"
    )


def _run_predict(args: argparse.Namespace) -> int:
    from segmorph.classification.predict import predict_classifier

    rows = predict_classifier(args.run, args.images, args.out, args.cam, args.device, show_progress=not args.quiet,
                              folds=args.folds, use=args.use)  # fmt: skip
    extra = f" and {len(rows)} Grad-CAM overlays to {args.cam}" if args.cam else ""
    say(f"classified {len(rows)} images: wrote {args.out}{extra}", err=True)
    return 0


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph classify train | predict``."""
    add_classify_arguments(sub)
