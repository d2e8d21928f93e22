"""``segmorph register | train-registration | warp | evaluate-registration | atlas-segment``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segmorph.cli.arguments import flag_overrides, non_negative_int, parse_duration, parse_seed, say, verb_parser
from segmorph.errors import SegmorphError
from segmorph.registration.names import (
    FUSIONS,
    MAX_OPTIMISATION_STEPS,
    MAX_PASSES,
    METHODS,
    PREALIGNMENTS,
    SIMILARITY_NAMES,
)

EXAMPLES = {
    "register": "segmorph register fixed.nii.gz moving.nii.gz --out reg/ --moving-labels moving_labels.nii.gz",
    "train-registration": "segmorph train-registration ../shared/datasets/msd_hippocampus --out runs/reg --time-budget 20m "
    "--set train.batch_size=4",
    "warp": "segmorph warp moving_labels.nii.gz --transform reg/ --out warped_labels.nii.gz --labels",
    "evaluate-registration": "segmorph evaluate-registration reg/ --fixed-labels fixed_labels.nii.gz",
    "atlas-segment": "segmorph atlas-segment scan.nii.gz --atlases a1.nii.gz:a1_labels.nii.gz --out seg.nii.gz",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """The registration verbs: register, train-registration, warp, evaluate-registration, atlas-segment."""
    verbs = (
        ("register", "Align a moving scan to a fixed scan (rigid, affine, deformable, learned).", _add_register,
         run_register),
        ("train-registration", "Train a learned registration network on a dataset.", _add_train_registration,
         run_train_registration),
        ("warp", "Resample an image or label map with a saved transform.", _add_warp, run_warp),
        ("evaluate-registration", "Score a registration: Dice, HD95, folding, TRE.", _add_evaluate_registration,
         run_evaluate_registration),
        ("atlas-segment", "Segment a scan by registering labelled atlases and fusing labels.", _add_atlas,
         run_atlas),
    )  # fmt: skip
    for name, help_text, add_arguments, handler in verbs:
        parser = verb_parser(sub, name, help_text, EXAMPLES[name])
        add_arguments(parser)
        parser.set_defaults(handler=handler)


def _add_register(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", type=Path, nargs="?", help="fixed image (its grid is the output grid)")
    p.add_argument("moving", type=Path, nargs="?", help="moving image")
    p.add_argument("--pairs", type=Path, help="CSV with columns fixed,moving[,fixed_labels,moving_labels]")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per pair with --pairs)")
    p.add_argument(
        "--moving-labels",
        type=Path,
        help="label map of the moving image, warped label-wise (each label interpolated, largest weight wins)",
    )
    p.add_argument("--fixed-labels", type=Path, help="label map of the fixed image: writes metrics.json")
    p.add_argument("--method", choices=("rigid", "affine", "deformable", "learned", "structures"), default="deformable",
                   help="structures: align by segmentations only (needs --fixed/--moving-structures)")  # fmt: skip
    p.add_argument("--fixed-structures", type=Path,
                   help="segmentation of the fixed image (e.g. from segmorph predict) to align by label centroids and "
                        "overlap; with another method it is the initialisation")  # fmt: skip
    p.add_argument("--moving-structures", type=Path, help="segmentation of the moving image (same labels)")
    p.add_argument("--model", type=Path, help="train-registration run folder (for --method learned)")
    p.add_argument("--refine", type=int, default=0,
                   help=f"learned: instance-optimisation steps polishing one network pass's field (0 to "
                        f"{MAX_OPTIMISATION_STEPS:,})")  # fmt: skip
    p.add_argument("--passes", type=int,
                   help="learned: network passes, each registering the fixed image to the moving one warped so far "
                        f"(1 to {MAX_PASSES}; default: the model's, 2)")  # fmt: skip
    p.add_argument("--prealign", choices=PREALIGNMENTS,
                   help="learned: alignment before the network: prior (match the centres of the segmentation "
                        "prior's structures), affine, com, none (default: the model's; auto = prior for models "
                        "with a prior, else none)")  # fmt: skip
    p.add_argument("--similarity", choices=SIMILARITY_NAMES, default="ncc",
                   help="classical image similarity: ncc (default, same modality); mi or mind for multi-modal")  # fmt: skip
    p.add_argument("--overlays", action="store_true", help="write checkerboard, grid and Jacobian pictures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train_registration(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (MSD layout); labels, when present, add a Dice term")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument(
        "--time-budget",
        type=parse_duration,
        help="training time, e.g. 20m (default 20m; none when only --max-steps is given)",
    )
    p.add_argument("--max-steps", type=non_negative_int, default=0, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, help="pairs per step (train.batch_size, default 2)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (train.learning_rate, default 1e-3)")
    p.add_argument("--dice-weight", type=float, help="weight of the label Dice term (default 2; 0: unsupervised)")
    p.add_argument("--similarity", choices=SIMILARITY_NAMES, help="image similarity (default ncc)")
    p.add_argument("--segmentation-model", type=Path,
                   help="segmorph segmentation run whose label probabilities the network also sees (copied into "
                        "the run; train it on the same split first; one trained with --spacing 2 is several times cheaper)")  # fmt: skip
    p.add_argument("--label-guidance", type=float,
                   help="share of training pairs (0..1) whose moving prior is the moving labels; such a model then "
                        "takes --moving-labels (and atlas labels) as guidance at inference (default 0.5 with "
                        "--segmentation-model on a labelled dataset, else 0)")  # fmt: skip
    p.add_argument("--config", type=Path, help="YAML/JSON file of settings (sections registration and train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set one value, e.g. registration.dice_weight=1 or train.batch_size=4 (repeatable; wins "
                        "over --config and the flags above; the run's config.json lists every key)")  # fmt: skip
    p.add_argument("--seed", type=parse_seed, help="seed of the split, weights and pairs (train.seed, default 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint (and its config.json)"
    )
    p.add_argument("--log", choices=("csv", "tensorboard"), default="csv",
                   help="csv: train_log.csv (default); tensorboard: also event files in OUT/tensorboard "
                        "(pip install segmorph[tensorboard])")  # fmt: skip
    p.add_argument("--quiet", action="store_true")


def _add_warp(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="image or label map in the moving image's space")
    p.add_argument("--transform", type=Path, required=True,
                   help="registration folder, ITK .tfm file, or displacement field image (mm)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output image")
    p.add_argument("--labels", action="store_true",
                   help="label map: label-wise linear interpolation (largest weight wins), integer output")  # fmt: skip
    p.add_argument("--reference", type=Path, help="fixed image whose grid to use (default: the transform's grid)")
    p.add_argument("--interpolation", choices=("linear", "nearest", "cubic", "label"),
                   help="images: linear (default), nearest or cubic; labels: label (default) or nearest")  # fmt: skip


def _add_evaluate_registration(p: argparse.ArgumentParser) -> None:
    p.add_argument("reg_dir", type=Path, help="folder written by segmorph register")
    p.add_argument("--fixed-labels", type=Path, help="reference label map on the fixed grid")
    p.add_argument(
        "--fixed-image",
        type=Path,
        help="fixed image whose grid is scored (default: the --fixed-labels grid, else the warped image's)",
    )
    p.add_argument("--landmarks", type=Path, nargs=2, metavar=("FIXED_CSV", "MOVING_CSV"),
                   help="corresponding points x,y,z in mm (LPS) for the target registration error")  # fmt: skip


def _add_atlas(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``segmorph atlas-segment``."""
    parser.add_argument("scan", type=Path, help="image to segment (file or DICOM series folder)")
    parser.add_argument("--atlases", nargs="+", required=True, metavar="IMG:LAB",
                        help="atlas image and its label map, joined by ':' (one or more pairs)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="fused segmentation to write (e.g. seg.nii.gz)")
    parser.add_argument("--method", choices=METHODS,
                        help="registration (default deformable; learned when --model is given)")  # fmt: skip
    parser.add_argument("--model", type=Path, help="registration run folder (segmorph train-registration)")
    parser.add_argument("--fusion", choices=FUSIONS, default="weighted",
                        help="weighted: locally weighted vote (default); majority: majority vote")  # fmt: skip
    parser.add_argument("--reference", type=Path, help="reference label map: Dice per label, <out>_metrics.json")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_register(args: argparse.Namespace) -> int:
    from segmorph.registration import run

    _check_method_flags(args)
    model_dir = args.model if args.method == "learned" else None
    if args.pairs is not None and not (args.fixed or args.moving):  # outputs checked before the model loads
        run.check_pairs_outputs(args.pairs, args.out, run.pair_requests(args.pairs, args.out), model_dir)
    elif args.pairs is None and args.fixed is not None and args.moving is not None:
        run.check_pair_outputs(run.PairRequest(args.fixed, args.moving, args.out, args.moving_labels, args.fixed_labels,
                                               fixed_structures=args.fixed_structures,
                                               moving_structures=args.moving_structures), model_dir)  # fmt: skip
    model = run.load_model(args.model, args.device, args.passes, args.refine) if args.method == "learned" else None
    if args.pairs is not None:
        return _register_pairs(args, model)
    if args.fixed is None or args.moving is None:
        raise SegmorphError("give FIXED and MOVING images, or --pairs CSV")
    request = run.PairRequest(args.fixed, args.moving, args.out, args.moving_labels, args.fixed_labels, args.method,
                              args.refine, args.similarity, args.overlays, args.prealign, args.fixed_structures,
                              args.moving_structures, args.device)  # fmt: skip
    record = run.register_pair(request, model)
    line = f"registered {args.moving.name} to {args.fixed.name} ({args.method}) in {record['seconds']:.2f} s"
    if "metrics" in record:
        metrics = record["metrics"]
        if "mean_dice" in metrics:
            line += f", mean Dice {metrics['mean_dice']:.4f}"
        line += f", folding {metrics['folding_percent']:.3f}%"
    say(f"{line}; folder {args.out}", err=True)
    return 0


def _check_method_flags(args: argparse.Namespace) -> None:
    """Refuse flags the chosen ``--method`` needs and lacks, or ignores (the alignment itself is
    :func:`segmorph.registration.api.register`'s; these say what it lacks in the command line's words)."""
    if args.method == "learned" and args.model is None:
        raise SegmorphError("--method learned needs --model RUN_DIR (a segmorph train-registration run)")
    if args.method == "structures" and args.fixed_structures is None and args.moving_structures is None:
        raise SegmorphError("--method structures needs --fixed-structures and --moving-structures")
    learned_only = [flag for flag, given in (("--model", args.model is not None), ("--refine", args.refine != 0),
                                             ("--passes", args.passes is not None)) if given]  # fmt: skip
    if args.method != "learned" and learned_only:
        raise SegmorphError(f"{', '.join(learned_only)}: only with --method learned (the {args.method} method ignores "
                            "them)")  # fmt: skip


def _register_pairs(args: argparse.Namespace, model) -> int:
    """``register --pairs CSV``: every pair of the CSV into its own folder under ``--out``, and ``summary.csv``."""
    from segmorph.registration import run

    if args.fixed or args.moving:
        raise SegmorphError("give either FIXED MOVING or --pairs CSV, not both", args.pairs)
    per_pair = [flag for flag, value in (("--fixed-labels", args.fixed_labels), ("--moving-labels", args.moving_labels),
                ("--fixed-structures", args.fixed_structures), ("--moving-structures", args.moving_structures))
                if value is not None]  # fmt: skip
    if per_pair:
        raise SegmorphError(f"{', '.join(per_pair)}: not with --pairs (label maps go in the CSV's fixed_labels "
                            "and moving_labels columns; structures are for single pairs)", args.pairs)  # fmt: skip
    records = run.register_pairs(args.pairs, args.out, args.method, model, args.refine, args.similarity,
                                 args.overlays, progress=not args.quiet, prealign=args.prealign,
                                 device=args.device)  # fmt: skip
    dice = [r["metrics"]["mean_dice"] for r in records if "mean_dice" in r.get("metrics", {})]
    seconds = np.mean([r["seconds"] for r in records])
    extra = f", mean Dice {np.mean(dice):.4f}" if dice else ""
    say(f"registered {len(records)} pairs, {seconds:.2f} s per pair{extra}; summary {args.out / 'summary.csv'}",
        err=True)  # fmt: skip
    return 0


TRAIN_REGISTRATION_FLAGS = {
    "time_budget": "train.time_budget_s", "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
    "seed": "train.seed", "dice_weight": "registration.dice_weight", "similarity": "registration.similarity",
    "label_guidance": "registration.label_guidance",
}  # fmt: skip
"""``train-registration`` flags and the config keys they set (when given)."""


def run_train_registration(args: argparse.Namespace) -> int:
    from segmorph.configs import parse_overrides
    from segmorph.registration.learned.training import train_registration_run

    overrides = flag_overrides(args, TRAIN_REGISTRATION_FLAGS)
    if args.max_steps > 0:
        overrides["train.max_steps"] = args.max_steps
        overrides.setdefault("train.time_budget_s", 0.0)  # a step limit alone: repeatable bit for bit
    overrides.update(parse_overrides(args.overrides))
    result = train_registration_run(
        args.dataset, args.out, segmentation_model=args.segmentation_model, overrides=overrides, config=args.config,
        device=args.device, resume=args.resume, show_progress=not args.quiet, log=args.log,
    )  # fmt: skip
    say(f"best monitor {result.monitor_score} {result.best_monitor_score:.4f} after {result.steps} steps; "
        f"run folder {args.out}", err=True)  # fmt: skip
    return 0


def run_warp(args: argparse.Namespace) -> int:
    from segmorph.registration.run import warp_file

    warped = warp_file(args.image, args.transform, args.out, args.labels, args.reference, args.interpolation)
    say(f"wrote {args.out} {warped.spatial_shape}", err=True)
    return 0


def run_evaluate_registration(args: argparse.Namespace) -> int:
    from segmorph.registration.run import evaluate_registration

    landmarks = tuple(args.landmarks) if args.landmarks else None
    metrics = evaluate_registration(args.reg_dir, args.fixed_labels, args.fixed_image, landmarks)
    for row in metrics.get("labels", []):
        say(f"{row['name']:>10}  Dice {row['dice']:.4f}  HD95 {row['hd95']:.2f} {row.get('unit', 'mm')}")
    say(f"folding {metrics['folding_percent']:.4f}%  std log|J| {metrics['log_jacobian_std']:.4f}")
    if "tre" in metrics:
        tre = metrics["tre"]
        say(f"TRE {tre['mean_mm']:.2f} mm (before {tre['before_mean_mm']:.2f} mm, {tre['count']} landmarks)")
    return 0


def run_atlas(args: argparse.Namespace) -> int:
    """``segmorph atlas-segment``: run :func:`run_atlas_segment` and print Dice per label."""
    from segmorph.registration.atlas import run_atlas_segment

    method = args.method or ("learned" if args.model else "deformable")
    if args.model is not None and method != "learned":
        raise SegmorphError(f"--model is used only with --method learned, not {method}", args.model)
    summary = run_atlas_segment(
        args.scan, args.atlases, args.out, method, args.fusion, args.model, args.reference,
        progress=not args.quiet, device=args.device,
    )  # fmt: skip
    say(f"wrote {summary['out']} ({len(summary['atlases'])} atlases, {args.fusion} fusion)", err=True)
    for value, dice in summary["dice"].items():
        per_atlas = ", ".join(f"{entry['dice'][value]:.3f}" for entry in summary["atlases"])
        name = summary.get("names", {}).get(value, f"label {value}")
        say(f"{name}: Dice {dice:.3f} (atlases: {per_atlas})", err=True)
    if summary["metrics_file"]:
        say(f"wrote {summary['metrics_file']}", err=True)
    return 0
