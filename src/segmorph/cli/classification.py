"""``segmorph classify train|predict``: argument parsing and the thin verb handlers.

Wiring (in :mod:`segmorph.cli.main`): ``add_classify_arguments(sub)`` with the top-level sub-parsers (or with an
already made ``classify`` parser), and ``run_classify(args)`` as the handler; bad input raises
:class:`segmorph.errors.SegmorphError`, which the top level turns into one line and exit code 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import parse_duration, parse_size, time_budget, verb_parser
from segmorph.errors import SegmorphError
from segmorph.progress import console

EXAMPLES = {
    "train": (
        "segmorph classify train ../shared/datasets/busi_ultrasound --labels labels.csv --target lesion "
        "--group dup_group --out runs/busi --time-budget 15m\n"
        "  segmorph classify train images_by_class/ --out runs/cls --model simplecnn --size 96 --max-steps 500"
    ),
    "predict": "segmorph classify predict runs/busi scans/ --out predictions.csv --cam cams/",
}
DEFAULT_TIME_BUDGET_S = 900.0


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
                           "plots and the decision threshold.", EXAMPLES["train"]))  # fmt: skip
    _add_predict(verb_parser(sub, "predict", "Classify images with a trained run; optional Grad-CAM overlays.",
                             EXAMPLES["predict"]))  # fmt: skip
    target.set_defaults(handler=run_classify)
    return target


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (with a labels CSV, or one sub-folder per class)")
    p.add_argument("--labels", type=Path, help="labels CSV (inside DATASET, or a path); omit for class folders")
    p.add_argument("--target", default="label", help="CSV column holding the class (default: label)")
    p.add_argument("--group", help="CSV column of groups kept on one side of the split (patient, duplicates)")
    p.add_argument("--file-column", default="file", help="CSV column holding image paths (default: file)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--time-budget", type=parse_duration,
                   help="training time, e.g. 15m (default 15m; none when only --max-steps is given)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps")
    p.add_argument("--model", choices=("resnet", "simplecnn"), default="resnet",
                   help="resnet (ResNet-18 layout, default) or simplecnn")  # fmt: skip
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (default 16)")
    p.add_argument("--size", type=parse_size, metavar="N[,N...]",
                   help="input size in voxels, one value or one per axis (default: from the data, at most 128 in 2D, 64 in 3D)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine; default 2e-3)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="hold-out share, whole groups (default 0.2)")
    p.add_argument("--fold", type=int, help="use fold K of a grouped k-fold split instead of the hold-out split")
    p.add_argument("--folds", type=int, default=5, help="folds of the k-fold split (default 5)")
    p.add_argument("--patience", type=int, default=0, help="early stopping after N epochs without a better AUC")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout before the last layer (default: 0 for resnet, 0.2 for simplecnn)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing (default 0.1)")
    p.add_argument("--mixup", type=float, default=0.2, help="mixup Beta parameter, 0 turns it off (default 0.2)")
    p.add_argument("--ema", type=float, default=0.998,
                   help="decay of the weight average that is validated and saved, 0 turns it off (default 0.998)")  # fmt: skip
    p.add_argument("--no-mirror", action="store_true",
                   help="score the image alone (default: average with its left-right mirror)")  # fmt: skip
    p.add_argument("--tta-shift", type=float, default=0.04, metavar="F",
                   help="also average copies shifted by F of the image size both ways along each axis, in the final "
                        "validation and in predict; 0 turns it off (default 0.04: 5 pixels at 128)")  # fmt: skip
    p.add_argument("--select", choices=("last", "best"), default="last",
                   help="weights kept: the final (averaged) ones, or the epoch of best validation AUC, which is "
                        "picked on the images it is then scored on (default last)")  # fmt: skip
    p.add_argument("--tail-average", type=float, default=0.5, metavar="F",
                   help="with --select last, keep the mean of the averaged weights over the last F of training, "
                        "0 for the final ones (default 0.5)")  # fmt: skip
    p.add_argument("--no-bn-refresh", action="store_true",
                   help="keep the batch-norm statistics of training (default: re-estimated on the unaugmented "
                        "training images)")  # fmt: skip
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train N networks (seeds seed..seed+N-1), each for 1/N of the budget, and average their "
                        "probabilities (default 1)")  # fmt: skip
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument("--no-amp", action="store_true", help="train in float32 (default: bfloat16 autocast where the device runs it fast)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and augmentation, and of the split "
                   "unless --split-seed (default 0)")
    p.add_argument("--split-seed", type=int, metavar="S",
                   help="seed of the train/validation split alone (default: --seed), to train one split with several seeds")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained classification run folder")
    p.add_argument("images", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--out", type=Path, required=True, help="CSV of probabilities and predicted classes")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write Grad-CAM overlays (PNG) into DIR")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_request(args: argparse.Namespace):
    """The :class:`~segmorph.classification.pipeline.ClassifyRequest` of parsed ``classify train`` arguments."""
    from segmorph.classification.pipeline import ClassifyRequest

    budget = time_budget(args, DEFAULT_TIME_BUDGET_S)
    return ClassifyRequest(
        dataset=args.dataset, out=args.out, labels=args.labels, target=args.target, group=args.group,
        file_column=args.file_column, model=args.model, width=args.width, size=args.size, batch_size=args.batch_size,
        learning_rate=args.lr, time_budget_s=budget, max_steps=args.max_steps, patience_epochs=args.patience,
        val_fraction=args.val_fraction, fold=args.fold, num_folds=args.folds, seed=args.seed, device=args.device,
        split_seed=args.split_seed,
        amp=not args.no_amp, augment=not args.no_augment, resume=args.resume, show_progress=not args.quiet,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, mixup=args.mixup, ema_decay=args.ema,
        mirror=not args.no_mirror, shift=args.tta_shift, select=args.select, ensemble=args.ensemble,
        dropout=args.dropout, tail_average=args.tail_average, refresh_batch_norm=not args.no_bn_refresh,
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
    from segmorph.classification.pipeline import train_classifier

    summary = train_classifier(train_request(args))
    console.print(train_summary_line(summary, args.out), highlight=False)
    return 0


def train_summary_line(summary: dict, out: str | Path) -> str:
    """The line ``classify train`` ends with: steps, time, why it stopped, validation AUC and balanced accuracy."""
    fit, val = summary["fit"], summary["validation"]
    threshold = f" at threshold {summary['threshold']:.3f}" if summary["threshold"] is not None else ""
    return (
        f"trained {fit['steps']} steps in {fit['elapsed_s'] / 60:.1f} min ({fit['stopped_because']}); validation "
        f"AUC {val['auc']}, balanced accuracy {val['balanced_accuracy']}{threshold}; run folder {out}"
    )


def _run_predict(args: argparse.Namespace) -> int:
    from segmorph.classification.pipeline import predict_classifier

    rows = predict_classifier(args.run, args.images, args.out, args.cam, args.device, show_progress=not args.quiet)
    extra = f" and {len(rows)} Grad-CAM overlays to {args.cam}" if args.cam else ""
    console.print(f"classified {len(rows)} images: wrote {args.out}{extra}", highlight=False)
    return 0


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph classify train | predict``."""
    add_classify_arguments(sub)
