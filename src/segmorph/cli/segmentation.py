"""``segmorph train | plan | predict | evaluate | export | baseline | demo | find-best``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segmorph.cli.arguments import (
    non_negative_int,
    parse_duration,
    parse_seed,
    parse_spacing,
    say,
    time_budget,
    verb_parser,
)
from segmorph.errors import SegmorphError
from segmorph.segmentation.names import DEFAULT_SYNTHETIC_SHARE

EXAMPLES = {
    "train": "segmorph train ../shared/datasets/msd_hippocampus --out runs/hippo --time-budget 20m",
    "plan": "segmorph plan ../shared/datasets/msd_hippocampus --out plan.json --time-budget 20m",
    "predict": "segmorph predict runs/hippo scans/ --out masks/ --overlays",
    "evaluate": "segmorph evaluate masks/ labels/ --out metrics.csv",
    "export": "segmorph export runs/hippo --format onnx --out model.onnx",
    "baseline": "segmorph baseline scans/ --method region_grow --seed-point 20,25,18 --out masks/",
    "demo": "segmorph demo --time-budget 5m",
    "find-best": "segmorph find-best runs/h_cv runs/h_cv_2mm --out runs/h_best",
}
DEFAULT_TIME_BUDGET_S = 1200.0


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """The segmentation verbs: train, plan, predict, evaluate, export, baseline, demo, find-best."""
    verbs = (
        ("train", "Plan, preprocess, train and validate a segmentation model.", _add_train, run_train),
        ("plan", "Write the plan that train would use, without training.", _add_plan, run_plan),
        ("predict", "Segment scans with a trained run; masks keep each scan's geometry.", _add_predict, run_predict),
        ("evaluate", "Score predicted masks against reference masks.", _add_evaluate, run_evaluate),
        ("export", "Export a trained run or an ensemble to ONNX or TorchScript.", _add_export, run_export),
        (
            "baseline",
            "Classical segmentation (Otsu, region growing, level sets, vesselness) for comparison.",
            _add_baseline,
            run_baseline,
        ),
        ("demo", "Train briefly, predict and evaluate on the hippocampus data.", _add_demo, run_demo),
        ("find-best", "Choose among cross-validation runs and their pairs out of fold.", _add_find_best, run_find_best),
    )
    for name, help_text, add_arguments, handler in verbs:
        parser = verb_parser(sub, name, help_text, EXAMPLES[name])
        add_arguments(parser)
        parser.set_defaults(handler=handler)


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (MSD layout with dataset.json, or paired folders)")
    p.add_argument("--images", type=Path, help="image folder of a paired-folder dataset (relative to DATASET)")
    p.add_argument("--labels", type=Path, help="label folder of a paired-folder dataset (relative to DATASET)")
    p.add_argument("--time-budget", type=parse_duration,
                   help="training time, e.g. 20m (default 20m; none when only --max-steps is given)")  # fmt: skip
    p.add_argument("--max-steps", type=non_negative_int, default=0,
                   help="stop after this many steps; alone, it makes training time-independent and repeatable")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--config", type=Path, help="JSON/YAML file overriding plan values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one plan value, e.g. train.batch_size=4 (repeatable)")  # fmt: skip
    p.add_argument("--spacing", type=parse_spacing, metavar="MM",
                   help="plan for this voxel size in mm (one value, or x,y,z) instead of the median spacing; "
                        "e.g. --spacing 2 for a fast low-resolution model (a registration prior)")  # fmt: skip
    p.add_argument("--network-dims", type=int, choices=(2, 3), metavar="2|3",
                   help="2 for 3D scans: a 2D network trained on slices across the through-plane axis (largest "
                        "spacing) and applied slice by slice (default: the scans' dimensions: 3D full "
                        "resolution, or coarser with --spacing)")  # fmt: skip
    p.add_argument("--seed", type=parse_seed, default=0)


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--fold", type=int, default=0, help="validation fold (default 0; -1: no validation)")
    p.add_argument("--folds", metavar="all|K[,K...]",
                   help="cross-validation: train these folds (all, or e.g. 0,2,4) into OUT/fold_K, score every case "
                        "out of fold (OUT/cross_validation.csv), choose postprocessing on those predictions; predict "
                        "then averages the folds. --time-budget is for all folds together")  # fmt: skip
    p.add_argument("--num-folds", type=int, default=5, help="folds of the split (default 5)")
    p.add_argument("--budget-per-fold", action="store_true", help="with --folds: --time-budget is each fold's")
    p.add_argument("--val-cases", nargs="+", default=(), help="explicit validation case ids")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--cache", type=Path, help="preprocessing cache folder (default OUT/preprocessed)")
    p.add_argument("--no-validate", action="store_true", help="skip the final full-resolution validation")
    p.add_argument("--no-check", action="store_true", help="skip the dataset quality check before training")
    p.add_argument("--log", choices=("csv", "tensorboard"), default="csv",
                   help="csv: train_log.csv (default); tensorboard: also event files in OUT/tensorboard "
                        "(pip install segmorph[tensorboard])")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_few_label_args(p)


def _add_few_label_args(p: argparse.ArgumentParser) -> None:
    few = p.add_argument_group("few labels")
    few.add_argument("--labelled-cases", type=int, default=0, metavar="N",
                     help="keep the labels of N training cases only (a choice seeded by --seed from the training "
                          "fold; validation cases untouched); run.json lists them")  # fmt: skip
    few.add_argument("--unlabelled", nargs="+", default=[], metavar="DIR_OR_FILE|fold",
                     help="semi-supervised training (mean teacher; settings: --set semi.KEY=V) with unlabelled "
                          "scans: image files, folders, DICOM series or dataset folders; fold: the training cases "
                          "--labelled-cases leaves without labels")  # fmt: skip
    few.add_argument("--init", type=Path, metavar="PRE_OR_RUN",
                     help="start from the weights of a pretraining run, a segmentation run of the same "
                          "dimensionality or a checkpoint: every weight whose name and shape match is loaded "
                          "(run.json lists them)")  # fmt: skip
    few.add_argument("--freeze-encoder-steps", type=int, default=0, metavar="N",
                     help="with --init: no update of the encoder for the first N steps")  # fmt: skip
    few.add_argument("--synthetic", type=Path, metavar="GAN",
                     help="a segmorph synthesize train run: its generator makes image/label pairs from deformed label "
                          "maps of the labelled training cases, mixed into training")  # fmt: skip
    few.add_argument("--synthetic-share", type=float, default=DEFAULT_SYNTHETIC_SHARE, metavar="F",
                     help="with --synthetic: probability of a training patch coming from the synthetic pairs (0.3)")  # fmt: skip
    few.add_argument("--synthetic-count", type=int, default=0, metavar="N",
                     help="with --synthetic: pairs to make (default: four per labelled case, 20 to 200)")  # fmt: skip
    few.add_argument("--annotate-every", type=int, default=0, metavar="K",
                     help="partial annotation (3D): keep the labels of every K-th slice of each training case across "
                          "its through-plane axis, the others ignored in the loss; validation keeps every label")  # fmt: skip


def _add_plan(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p)
    p.add_argument("--out", type=Path, required=True, help="plan.json to write")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained run folder; a cross-validation run predicts with the mean of its "
                                          "folds' probabilities, an ensemble folder (find-best) with the mean of "
                                          "its runs'")  # fmt: skip
    p.add_argument("scans", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--folds", metavar="K[,K...]", help="cross-validation run: average these folds (default: all)")
    p.add_argument("--postprocess", choices=("auto", "none"), default="auto",
                   help="cross-validation run: auto applies the clean-up chosen on its out-of-fold predictions "
                        "(postprocessing.json; default), none skips it")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder for masks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-mirror", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--largest-component", action="store_true", help="keep the largest component of each class")
    p.add_argument("--probabilities", action="store_true",
                   help="also write class probabilities (<case>_probabilities.nii.gz); with --format dicom-seg the "
                        "SEG holds them instead (FRACTIONAL: the probability of each foreground class)")  # fmt: skip
    p.add_argument("--overlays", action="store_true", help="also write PNG overlays of a few slices")
    p.add_argument("--view", action="store_true",
                   help="also write OUT/view.html: every scan with its mask in one page (see segmorph view)")  # fmt: skip
    p.add_argument("--continue", dest="skip_existing", action="store_true", help="skip cases already written")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--format", dest="suffix", metavar="SUFFIX|dicom-seg|rtstruct",
                   help="output: an image suffix, e.g. .nii.gz (default), .nrrd, .mha; dicom-seg: <case>.dcm, a "
                        "DICOM-SEG object referring to the series (label names and the dataset's segment codes); "
                        "rtstruct: <case>_rtstruct.dcm, an RT Structure Set of contours. The DICOM formats take "
                        "DICOM series folders")  # fmt: skip
    p.add_argument("--precision", choices=("auto", "float32"), default="auto",
                   help="auto (default): bfloat16 autocast where the device runs it fast (CUDA; CPUs with AMX or "
                        "AVX512-BF16), float32 elsewhere; float32: float32 everywhere, for bit-exact work")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="compile the network with TorchInductor: seconds once per process, then faster per "
                        "case; worth it from a few dozen scans")  # fmt: skip
    p.add_argument("--quiet", action="store_true")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", type=Path, help="folder of predicted masks")
    p.add_argument("references", type=Path, help="folder of reference masks (same case names)")
    p.add_argument("--out", type=Path, default=Path("metrics.csv"), help="CSV to write (a JSON summary goes beside)")
    p.add_argument("--view", action="store_true",
                   help="also write view.html beside --out: prediction and reference of every case, differences "
                        "coloured, worst mean Dice first (see segmorph view)")  # fmt: skip
    p.add_argument("--scans", type=Path, metavar="DIR",
                   help="with --view: scans matched by case name, drawn under the masks (default: black)")  # fmt: skip
    p.add_argument("--labels-from", type=Path, metavar="RUN_OR_DATASET",
                   help="label names from a run folder's plan or a dataset.json (default: a dataset.json beside "
                        "the references' folder, when it names every label)")  # fmt: skip


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path,
                   help="trained run folder (its graph outputs logits), or a cross-validation run or find-best folder: "
                        "an ensemble, exported as one graph that outputs the mean of its networks' softmax "
                        "probabilities")  # fmt: skip
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", type=Path, required=True, help="file to write (with --members: a folder)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--members", action="store_true",
                   help="an ensemble as one file of logits per network (fold_<k>.onnx) in the --out folder, with "
                        "combine.json: each file's weight; probabilities = sum of weight * softmax(logits)")  # fmt: skip


def _add_baseline(p: argparse.ArgumentParser) -> None:
    from segmorph.segmentation.names import BASELINE_METHODS, LEVEL_SET_MODELS

    p.add_argument("scans", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--method", choices=BASELINE_METHODS, default="otsu",
                   help="otsu; region_grow, confidence_connected, level_set (seeded); vessels (vesselness + threshold)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder for masks (and baseline.json, metrics.csv)")
    p.add_argument("--steps", action="append", default=[], metavar="STEP[,STEP...]",
                   help="enhance steps run first, e.g. channel:green,clahe or denoise:anisotropic (see segmorph enhance)")  # fmt: skip
    p.add_argument("--mask", metavar="FILE|DIR|auto",
                   help="region of interest: a mask for every scan, a folder matched by case name, or auto (the "
                        "bright field of view); statistics come from inside it and results are 0 outside it")  # fmt: skip
    p.add_argument("--reference", type=Path, metavar="DIR",
                   help="reference masks matched by case name: write metrics.csv (foreground vs foreground)")  # fmt: skip
    seeds = p.add_argument_group("seeded methods (region_grow, confidence_connected, level_set)")
    seeds.add_argument("--seed-point", dest="seeds", action="append", default=[], metavar="I,J[,K]",
                       help="seed voxel index for every scan (repeatable)")  # fmt: skip
    seeds.add_argument("--seed-masks", type=Path, metavar="FILE|DIR",
                       help="masks matched by case name: each scan's seed is the mask voxel nearest its centre")  # fmt: skip
    seeds.add_argument("--tolerance", type=float, help="region_grow: intensity tolerance around the region mean")
    seeds.add_argument(
        "--multiplier", type=float, help="confidence_connected: window width in standard deviations (2.5)"
    )
    seeds.add_argument(
        "--iterations", type=int, help="confidence_connected: statistics updates (4); level_set: iterations (8)"
    )
    seeds.add_argument("--level-set", dest="level_set", choices=LEVEL_SET_MODELS, help="level_set: model (geodesic)")
    seeds.add_argument("--radius", type=float, metavar="MM", help="level_set: radius of the starting ball (2 mm)")
    vessel = p.add_argument_group("otsu and vessels")
    vessel.add_argument("--classes", type=int, help="otsu: classes (2: one threshold; more: multi-Otsu)")
    vessel.add_argument("--threshold", help="vessels: otsu (default), top:P (strongest P%% of the mask) or a number")
    vessel.add_argument("--sigmas", metavar="S[,S...]", help="vessels: scales in voxels (default 1,2,3)")
    vessel.add_argument("--bright", action="store_true", help="vessels: bright vessels on a dark background")
    vessel.add_argument("--vesselness", choices=("sato", "frangi"), help="vessels: the filter (sato)")
    post = p.add_argument_group("clean-up")
    post.add_argument("--opening", type=float, metavar="MM", help="morphological opening radius in mm")
    post.add_argument("--closing", type=float, metavar="MM", help="morphological closing radius in mm")
    post.add_argument("--fill-holes", action="store_true")
    post.add_argument("--largest-component", action="store_true")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="MSD Task04 hippocampus folder (default ../shared/datasets/...)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--time-budget", type=parse_duration, default=300.0, help="training time (default 5m)")
    p.add_argument("--device", default="cpu")


def _overrides(args: argparse.Namespace) -> tuple:
    from segmorph.segmentation.plan import load_overrides_file, parse_overrides

    values = load_overrides_file(args.config) if args.config else {}
    values.update(parse_overrides(args.overrides))
    return tuple(values.items())


def _request(args: argparse.Namespace, out: Path, **extra):
    from segmorph.segmentation.pipeline import TrainRequest

    return TrainRequest(
        dataset=args.dataset, out=out, time_budget_s=time_budget(args, DEFAULT_TIME_BUDGET_S), max_steps=args.max_steps, device=args.device,
        overrides=_overrides(args), target_spacing=args.spacing, images_dir=args.images, labels_dir=args.labels,
        seed=args.seed, config_file=args.config, network_dims=args.network_dims, **extra,
    )  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from segmorph.configs import parse_overrides
    from segmorph.engine.distributed import launched_as_main
    from segmorph.segmentation.api import train

    if args.folds is not None:
        return _run_cross_validation(args)
    run = train(
        args.dataset, args.out, time_budget=args.time_budget, max_steps=args.max_steps, fold=args.fold,
        num_folds=args.num_folds, val_cases=tuple(args.val_cases), spacing=args.spacing,
        network_dims=args.network_dims, overrides=parse_overrides(args.overrides), config=args.config,
        device=args.device, seed=args.seed, resume=args.resume, validate=not args.no_validate,
        show_progress=not args.quiet, images_dir=args.images, labels_dir=args.labels, cache_dir=args.cache,
        check=not args.no_check, log=args.log, labelled_cases=args.labelled_cases, unlabelled=args.unlabelled,
        init=args.init, freeze_encoder_steps=args.freeze_encoder_steps, synthetic=args.synthetic,
        synthetic_share=args.synthetic_share, synthetic_count=args.synthetic_count, annotate_every=args.annotate_every,
    )  # fmt: skip
    if launched_as_main():  # under torchrun the other processes neither validate nor report
        say(
            f"trained {run.steps} steps in {run.elapsed_s / 60:.1f} min ({run.stopped_because}); "
            f"best validation Dice {run.best_val_dice:.4f} at epoch {run.best_epoch}; run folder {args.out}",
            err=True,
        )
    return 0


def _run_cross_validation(args: argparse.Namespace) -> int:
    from segmorph.configs import parse_overrides
    from segmorph.segmentation.api import cross_validate

    if args.val_cases or args.fold != 0 or args.no_validate:
        raise SegmorphError(
            "--folds: cross-validation validates every fold; drop --fold, --val-cases and --no-validate"
        )
    if (args.labelled_cases or args.unlabelled or args.init is not None or args.freeze_encoder_steps
            or args.synthetic is not None or args.annotate_every):  # fmt: skip
        raise SegmorphError("--folds: --labelled-cases, --unlabelled, --init, --freeze-encoder-steps, --synthetic and "
                            "--annotate-every train a single run; drop --folds (or train each fold with --fold K)")  # fmt: skip
    result = cross_validate(
        args.dataset, args.out, folds=args.folds, num_folds=args.num_folds, time_budget=args.time_budget,
        budget_per_fold=args.budget_per_fold, max_steps=args.max_steps, spacing=args.spacing,
        network_dims=args.network_dims, overrides=parse_overrides(args.overrides), config=args.config,
        device=args.device, seed=args.seed, resume=args.resume, show_progress=not args.quiet, images_dir=args.images,
        labels_dir=args.labels, cache_dir=args.cache, check=not args.no_check, log=args.log,
    )  # fmt: skip
    say(
        f"cross-validation: {len(result.folds)} folds, out-of-fold mean Dice {result.mean_dice:.4f} over "
        f"{result.cases} cases; run folder {args.out}",
        err=True,
    )
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from segmorph.outputs import check_outputs
    from segmorph.segmentation.pipeline import plan_dataset

    check_outputs([args.out], inputs=[args.dataset])  # never over dataset.json
    _, plan = plan_dataset(_request(args, args.out))
    plan.save(args.out)
    print(json.dumps(plan.to_dict(), indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from segmorph.segmentation.predict import DICOM_SUFFIXES, PredictOptions, predict_files

    options = PredictOptions(
        mirror=not args.no_mirror, overlap=args.overlap, batch_size=args.batch_size,
        largest_component=args.largest_component, amp=args.precision == "auto", checkpoint=args.checkpoint, compile=args.compile,
    )  # fmt: skip
    output_format, suffix = (args.suffix, None) if args.suffix in DICOM_SUFFIXES else ("image", args.suffix)
    if args.view and output_format == "rtstruct":
        raise SegmorphError("--view shows label maps: use it with an image format or dicom-seg, not rtstruct")
    if args.view:
        from segmorph.outputs import check_outputs

        check_outputs([args.out / "view.html"], inputs=[args.run, *args.scans])
    # predict_files checks every output before it loads the model, then segments each scan as Segmenter does
    written = predict_files(
        args.run, args.scans, args.out, args.device, options, skip_existing=args.skip_existing,
        overlays=args.overlays, save_probabilities=args.probabilities, suffix=suffix,
        show_progress=not args.quiet, format=output_format, folds=_folds(args), postprocess=args.postprocess,
    )  # fmt: skip
    say(f"wrote {len(written)} masks to {args.out}", err=True)
    if args.view:
        from segmorph.report.view_files import prediction_view

        say(f"wrote {prediction_view(args.run, args.scans, args.out, DICOM_SUFFIXES.get(output_format, suffix))}",
            err=True)  # fmt: skip
    return 0


def _folds(args: argparse.Namespace) -> tuple[int, ...] | None:
    """``--folds`` of predict as fold numbers (checked against the run's split)."""
    if args.folds is None:
        return None
    from segmorph.folds import parse_folds, read_crossval_record
    from segmorph.segmentation.crossval_layout import CROSSVAL_FILE, TASK, is_cross_validation_run

    if not is_cross_validation_run(args.run):
        raise SegmorphError("--folds: applies to a cross-validation run folder (with crossval.json) only", args.run)
    return parse_folds(args.folds, read_crossval_record(args.run / CROSSVAL_FILE, TASK)["num_folds"])


def run_evaluate(args: argparse.Namespace) -> int:
    from segmorph.segmentation.evaluate import evaluate_folders

    if args.scans is not None and not args.view:
        raise SegmorphError("--scans goes with --view")
    if args.view:
        from segmorph.report.view_files import check_evaluation_view, evaluation_view

        view = args.out.parent / "view.html"
        check_evaluation_view(view, args.predictions, args.references, args.scans)
    result = evaluate_folders(args.predictions, args.references, args.out, labels_from=args.labels_from)
    say(f"wrote {args.out} and {args.out.with_suffix('.json')}", err=True)
    if args.view:
        say(f"wrote {evaluation_view(result['rows'], args.predictions, args.references, view, args.scans)}", err=True)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from segmorph.segmentation.export import export_run

    done = export_run(args.run, args.format, args.out, args.checkpoint, args.members)
    networks = f", {done.networks} networks" if done.networks > 1 or args.members else ""
    say(f"wrote {done.path} ({args.format}{networks}, input shape {list(done.input_shape)}, output {done.output})",
        err=True)  # fmt: skip
    return 0


_BASELINE_PARAMS = {  # CLI attribute -> (methods that take it, parameter name)
    "classes": (("otsu",), "classes"),
    "tolerance": (("region_grow",), "tolerance"),
    "multiplier": (("confidence_connected",), "multiplier"),
    "iterations": (("confidence_connected", "level_set"), "iterations"),
    "level_set": (("level_set",), "model"),
    "radius": (("level_set",), "radius_mm"),
    "threshold": (("vessels",), "threshold"),
    "vesselness": (("vessels",), "vesselness"),
    "opening": (None, "opening_mm"),
    "closing": (None, "closing_mm"),
}


def baseline_params(args: argparse.Namespace) -> dict:
    """The method and clean-up parameters given on the command line; one that the method does not take
    is refused naming the option."""
    params: dict = {}
    for attribute, (methods, name) in _BASELINE_PARAMS.items():
        value = getattr(args, attribute)
        if value is None:
            continue
        if methods is not None and args.method not in methods:
            option = "--" + attribute.replace("_", "-")
            raise SegmorphError(f"{option} does not apply to --method {args.method} (it is for {', '.join(methods)})")
        params[name] = value
    if args.sigmas is not None:
        params["sigmas"] = [_number(v, "--sigmas") for v in args.sigmas.split(",")]
    if args.bright:
        params["dark"] = False
    if args.seeds:
        params["seeds"] = [_seed_point(s) for s in args.seeds]
    params.update({k: True for k in ("fill_holes", "largest_component") if getattr(args, k)})
    return params


def run_baseline(args: argparse.Namespace) -> int:
    from segmorph.processing.steps import parse_steps
    from segmorph.segmentation.baseline_files import segment_folder

    steps = [step for text in args.steps for step in parse_steps(text)]
    mask = args.mask if args.mask in (None, "auto") else Path(args.mask)
    written = segment_folder(args.scans, args.out, args.method, steps=steps,
                             mask=mask, seed_masks=args.seed_masks, reference=args.reference,
                             **baseline_params(args))  # fmt: skip
    say(f"wrote {len(written)} masks to {args.out}", err=True)
    if args.reference is not None:
        summary = json.loads((args.out / "metrics.json").read_text())
        dice = summary["classes"]["1"]["dice"]
        say(f"foreground Dice {dice['mean']:.4f} ± {dice['std']:.4f} over {summary['cases']} cases "
            f"({args.out / 'metrics.csv'})")  # fmt: skip
    return 0


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SegmorphError(f"{option}: expected numbers separated by commas, got {text!r}") from None


def _seed_point(text: str) -> tuple[int, ...]:
    try:
        point = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SegmorphError(f"--seed-point {text!r}: expected voxel indices I,J[,K]") from None
    if len(point) not in (2, 3):
        raise SegmorphError(f"--seed-point {text!r}: expected 2 or 3 voxel indices")
    return point


def run_demo(args: argparse.Namespace) -> int:
    from segmorph.segmentation.demo import find_demo_data
    from segmorph.segmentation.demo import run_demo as demo

    demo(find_demo_data(args.data), args.out, args.time_budget, args.device)
    return 0


def _add_find_best(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="two or more cross-validation runs (segmorph train --folds all) of one dataset, e.g. "
                        "configurations trained with different --spacing or --set values")  # fmt: skip
    p.add_argument("--out", type=Path, required=True,
                   help="ensemble folder to write: find_best.json (every run and every pair's ensemble ranked by "
                        "out-of-fold mean Dice), ensemble.json (the chosen run or pair) and postprocessing.json; "
                        "segmorph predict OUT then predicts with the choice")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def run_find_best(args: argparse.Namespace) -> int:
    from segmorph.segmentation.find_best import find_best

    choice = find_best(args.runs, args.out, show=not args.quiet)["choice"]
    say(f"chose {choice['name']} (out-of-fold mean Dice {choice['mean_dice']:.4f}); predict with: "
        f"segmorph predict {args.out} SCANS --out MASKS", err=True)  # fmt: skip
    return 0
