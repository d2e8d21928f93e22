"""What each command-line verb does: parse-free functions of the argparse namespace."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.progress import console

DATA_HINT = (
    "the MSD Task04 hippocampus data were not found; download Task04_Hippocampus.tar from "
    "http://medicaldecathlon.com/ (CC BY-SA 4.0), unpack it and pass its folder with --data"
)


def _overrides(args: argparse.Namespace) -> tuple:
    from segmorph.plan import load_overrides_file, parse_overrides

    values = load_overrides_file(args.config) if args.config else {}
    values.update(parse_overrides(args.overrides))
    return tuple(values.items())


def _request(args: argparse.Namespace, out: Path, **extra):
    from segmorph.pipeline import TrainRequest

    return TrainRequest(
        dataset=args.dataset, out=out, time_budget_s=_time_budget(args), max_steps=args.max_steps, device=args.device,
        overrides=_overrides(args), target_spacing=args.spacing, images_dir=args.images, labels_dir=args.labels,
        seed=args.seed, **extra,
    )  # fmt: skip


def _time_budget(args: argparse.Namespace) -> float:
    """--time-budget, else 20 minutes, else none when --max-steps alone limits training.

    The learning-rate schedule follows the larger of the step and time fractions, so only a run limited by
    steps alone is repeatable bit for bit.
    """
    if args.time_budget is not None:
        return args.time_budget
    return 0.0 if args.max_steps > 0 else 1200.0


def run_train(args: argparse.Namespace) -> int:
    from segmorph.pipeline import train_segmentation

    request = _request(
        args, args.out, fold=args.fold, num_folds=args.folds, val_cases=tuple(args.val_cases), resume=args.resume, cache_dir=args.cache,
        validate_with_predictor=not args.no_validate, show_progress=not args.quiet,
    )  # fmt: skip
    summary = train_segmentation(request)
    fit = summary["fit"]
    console.print(
        f"trained {fit['steps']} steps in {fit['elapsed_s'] / 60:.1f} min ({fit['stopped_because']}); "
        f"best validation Dice {fit['best_val_dice']:.4f} at epoch {fit['best_epoch']}; run folder {args.out}",
        highlight=False,
    )
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from segmorph.pipeline import plan_dataset

    _, plan = plan_dataset(_request(args, args.out))
    plan.save(args.out)
    print(json.dumps(plan.to_dict(), indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from segmorph.predict import PredictOptions, predict_files

    options = PredictOptions(
        mirror=not args.no_mirror, overlap=args.overlap, batch_size=args.batch_size,
        largest_component=args.largest_component, amp=args.amp, checkpoint=args.checkpoint, compile=args.compile,
    )  # fmt: skip
    written = predict_files(
        args.run, args.scans, args.out, args.device, options, skip_existing=args.skip_existing,
        overlays=args.overlays, save_probabilities=args.probabilities, suffix=args.suffix, show_progress=not args.quiet,
    )  # fmt: skip
    console.print(f"wrote {len(written)} masks to {args.out}", highlight=False)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from segmorph.evaluate import evaluate_folders

    evaluate_folders(args.predictions, args.references, args.out)
    console.print(f"wrote {args.out} and {args.out.with_suffix('.json')}", highlight=False)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from segmorph.io import read_image

    for path in args.files:
        image = read_image(path, check_finite=False)
        values = image.numpy()
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"),) * 2
        fmt = lambda a: "(" + ", ".join(f"{v:.6g}" for v in np.ravel(a)) + ")"  # noqa: E731
        print(f"{path}")
        print(f"  shape      {image.spatial_shape} x {image.num_channels} channel(s)  (axes I, J[, K])")
        print(f"  spacing    {fmt(image.affine.spacing)} mm")
        print(f"  origin     {fmt(image.affine.origin)} mm (LPS)")
        print(f"  direction  {fmt(image.affine.direction)}")
        print(f"  dtype      {values.dtype}  range [{low:.6g}, {high:.6g}]  non-finite voxels {values.size - finite.size}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from segmorph.export import export_model
    from segmorph.predict import PredictOptions, Predictor

    predictor = Predictor(args.run, "cpu", PredictOptions(checkpoint=args.checkpoint))
    plan = predictor.plan
    shape = (1, len(plan.channel_names), *plan.train.patch_size)
    export_model(predictor.model, shape, args.format, args.out)
    console.print(f"wrote {args.out} ({args.format}, input shape {list(shape)})", highlight=False)
    return 0


def run_baseline(args: argparse.Namespace) -> int:
    from segmorph.baselines import segment_folder
    from segmorph.io import list_images

    params: dict = {}
    if args.method == "otsu":
        params["classes"] = args.classes
    else:
        if not args.seeds:
            raise SegmorphError("region_grow needs at least one --seed-point")
        params["seeds"] = [_seed_point(s) for s in args.seeds]
        if args.tolerance is not None:
            params["tolerance"] = args.tolerance
    if args.fill_holes:
        params["fill_holes"] = True
    if args.largest_component:
        params["largest_component"] = True
    written = segment_folder(list_images(args.scans), args.out, args.method, **params)
    console.print(f"wrote {len(written)} masks to {args.out}", highlight=False)
    return 0


def _seed_point(text: str) -> tuple[int, ...]:
    try:
        point = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SegmorphError(f"--seed-point {text!r}: expected voxel indices I,J[,K]") from None
    if len(point) not in (2, 3):
        raise SegmorphError(f"--seed-point {text!r}: expected 2 or 3 voxel indices")
    return point


def find_demo_data(given: Path | None) -> Path:
    """The hippocampus dataset folder: ``given``, or ../shared/datasets/msd_hippocampus near here."""
    candidates = [given] if given else [
        Path.cwd() / ".." / "shared" / "datasets" / "msd_hippocampus",
        Path(__file__).resolve().parents[3] / "shared" / "datasets" / "msd_hippocampus",
        Path.cwd() / "shared" / "datasets" / "msd_hippocampus",
    ]  # fmt: skip
    for candidate in candidates:
        if candidate and (candidate / "dataset.json").is_file():
            return candidate.resolve()
    raise SegmorphError(DATA_HINT, given)


def run_demo(args: argparse.Namespace) -> int:
    from segmorph.demo import run_demo as demo

    demo(find_demo_data(args.data), args.out, args.time_budget, args.device)
    return 0


# -- registration ----------------------------------------------------------------------------------


def run_register(args: argparse.Namespace) -> int:
    from segmorph.registration import run

    model = run.load_model(args.model, args.device, args.passes) if args.method == "learned" else None
    if args.pairs is not None:
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
        dice = [r["metrics"]["mean_dice"] for r in records if "metrics" in r]
        seconds = np.mean([r["seconds"] for r in records])
        extra = f", mean Dice {np.mean(dice):.4f}" if dice else ""
        console.print(f"registered {len(records)} pairs, {seconds:.2f} s per pair{extra}; summary {args.out / 'summary.csv'}",
                      highlight=False)  # fmt: skip
        return 0
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
    console.print(f"{line}; folder {args.out}", highlight=False)
    return 0


def run_train_registration(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from segmorph.registration.learned import LearnedConfig
    from segmorph.registration.training import RegistrationTrainRequest, train_registration

    config = LearnedConfig()
    if args.dice_weight is not None:
        config = replace(config, dice_weight=args.dice_weight)
    if args.similarity:
        config = replace(config, similarity=args.similarity)
    if args.label_guidance is not None:
        if not 0 <= args.label_guidance <= 1:
            raise SegmorphError(f"--label-guidance {args.label_guidance}: expected a share in 0..1")
        if args.label_guidance > 0 and args.segmentation_model is None:
            raise SegmorphError("--label-guidance needs --segmentation-model (labels stand in for its probabilities)")
        config = replace(config, label_guidance=args.label_guidance)
    request = RegistrationTrainRequest(
        dataset=args.dataset, out=args.out, time_budget_s=_time_budget(args), max_steps=args.max_steps, config=config,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed, device=args.device,
        resume=args.resume, show_progress=not args.quiet, segmentation_run=args.segmentation_model,
    )  # fmt: skip
    summary = train_registration(request)
    console.print(f"best monitor {summary['monitor_score']} {summary['best_monitor_score']:.4f} after {summary['steps']} steps; "
                  f"run folder {args.out}", highlight=False)  # fmt: skip
    return 0


def run_warp(args: argparse.Namespace) -> int:
    from segmorph.registration.run import warp_file

    warped = warp_file(args.image, args.transform, args.out, args.labels, args.reference, args.interpolation)
    console.print(f"wrote {args.out} {warped.spatial_shape}", highlight=False)
    return 0


def run_evaluate_registration(args: argparse.Namespace) -> int:
    from segmorph.registration.run import evaluate_registration

    landmarks = tuple(args.landmarks) if args.landmarks else None
    metrics = evaluate_registration(args.reg_dir, args.fixed_labels, args.fixed_image, landmarks)
    for row in metrics.get("labels", []):
        print(f"{row['name']:>10}  Dice {row['dice']:.4f}  HD95 {row['hd95']:.2f} mm")
    print(f"folding {metrics['folding_percent']:.4f}%  std log|J| {metrics['log_jacobian_std']:.4f}")
    if "tre" in metrics:
        tre = metrics["tre"]
        print(f"TRE {tre['mean_mm']:.2f} mm (before {tre['before_mean_mm']:.2f} mm, {tre['count']} landmarks)")
    return 0


def run_atlas_segment(args: argparse.Namespace) -> int:
    from segmorph.registration.atlas import run_atlas_command

    return run_atlas_command(args)


def run_anonymize(args: argparse.Namespace) -> int:
    from segmorph.anonymize import run_anonymize as anonymize

    return anonymize(args)


def run_classify(args: argparse.Namespace) -> int:
    from segmorph.classify.cli import run_classify as classify

    return classify(args)


def run_report(args: argparse.Namespace) -> int:
    """``segmorph report``: build the page and print where it is."""
    from segmorph.report import build_report

    path = build_report(args.run_dir, args.out, args.cases)
    print(f"report written to {path}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    """``segmorph explain``: Grad-CAM and TTA uncertainty maps per scan."""
    from segmorph.explain import ExplainOptions, explain_files

    options = ExplainOptions(tuple(args.classes), args.tta, args.seed, not args.no_cam, args.layer, args.checkpoint)
    written = explain_files(args.run, args.scans, args.out, options, args.device, show_progress=not args.quiet)
    console.print(f"explained {len(written)} scan(s) in {args.out}", highlight=False)
    return 0
