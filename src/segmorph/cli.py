"""Command line: thin verbs, each calling one public function.

Exit codes: 0 success; 1 bad input or a failed step (one line ``error: <file>: <problem>``);
2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from segmorph.errors import SegmorphError

EXAMPLES = {
    "train": "segmorph train ../shared/datasets/msd_hippocampus --out runs/hippo --time-budget 20m",
    "predict": "segmorph predict runs/hippo scans/ --out masks/ --overlays",
    "evaluate": "segmorph evaluate masks/ labels/ --out metrics.csv",
    "plan": "segmorph plan ../shared/datasets/msd_hippocampus --out plan.json --time-budget 20m",
    "info": "segmorph info scan.nii.gz",
    "export": "segmorph export runs/hippo --format onnx --out model.onnx",
    "baseline": "segmorph baseline scans/ --method region_grow --seed-point 20,25,18 --out masks/",
    "demo": "segmorph demo --time-budget 5m",
    "register": "segmorph register fixed.nii.gz moving.nii.gz --out reg/ --moving-labels moving_labels.nii.gz",
    "train-registration": "segmorph train-registration ../shared/datasets/msd_hippocampus --out runs/reg --time-budget 20m",
    "warp": "segmorph warp moving_labels.nii.gz --transform reg/ --out warped_labels.nii.gz --labels",
    "evaluate-registration": "segmorph evaluate-registration reg/ --fixed-labels fixed_labels.nii.gz",
    "atlas-segment": "segmorph atlas-segment scan.nii.gz --atlases a1.nii.gz:a1_labels.nii.gz --out seg.nii.gz",
    "anonymize": "segmorph anonymize dicom_in/ --out dicom_anon/ --shift-dates -30",
    "report": "segmorph report runs/hippo --out hippo_report.html --cases 12",
    "explain": "segmorph explain runs/hippo scans/case_004.nii.gz --out explain/ --classes 1 2 --tta 8",
}


def parse_duration(text: str) -> float:
    """``"20m"``, ``"1h30m"``, ``"90s"`` or plain seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 20m, 1h30m, 90s)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse_spacing(text: str) -> tuple[float, ...]:
    """``"2"`` or ``"1,1,2.5"`` (mm, x,y,z) -> positive floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"invalid spacing {text!r} (examples: 2, 1,1,2.5)")
    return values


def _parser(name: str, sub: argparse._SubParsersAction, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmorph", description="Medical image segmentation and registration.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="verb")
    _add_train(_parser("train", sub, "Plan, preprocess, train and validate a segmentation model."))
    _add_plan(_parser("plan", sub, "Write the plan that train would use, without training."))
    _add_predict(_parser("predict", sub, "Segment scans with a trained run; masks keep each scan's geometry."))
    _add_evaluate(_parser("evaluate", sub, "Score predicted masks against reference masks."))
    info = _parser("info", sub, "Print an image's shape, spacing, origin, direction, dtype and value range.")
    info.add_argument("files", nargs="+", type=Path, help="image files or DICOM series folders")
    _add_export(_parser("export", sub, "Export a trained run's network to ONNX or TorchScript."))
    _add_baseline(_parser("baseline", sub, "Classical segmentation (Otsu, region growing) for comparison."))
    _add_demo(_parser("demo", sub, "Train briefly, predict and evaluate on the hippocampus data."))
    _add_register(_parser("register", sub, "Align a moving scan to a fixed scan (rigid, affine, deformable, learned)."))
    _add_train_registration(_parser("train-registration", sub, "Train a learned registration network on a dataset."))
    _add_warp(_parser("warp", sub, "Resample an image or label map with a saved transform."))
    _add_evaluate_registration(
        _parser("evaluate-registration", sub, "Score a registration: Dice, HD95, folding, TRE.")
    )
    _add_atlas(_parser("atlas-segment", sub, "Segment a scan by registering labelled atlases and fusing labels."))
    _add_anonymize(_parser("anonymize", sub, "De-identify DICOM files (PS3.15 Basic Application Level Confidentiality Profile)."))
    from segmorph.classify.cli import add_classify_arguments

    add_classify_arguments(sub)
    _add_report(_parser("report", sub, "Write one self-contained HTML page about a run folder (segmentation, "
                        "registration or classification): metrics, curves, worst cases with a slice slider."))
    _add_explain(_parser("explain", sub, "Grad-CAM per class and a test-time-augmentation uncertainty map for each "
                         "scan, on the scan's own grid."))
    return parser


def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained segmentation run folder (segmorph train)")
    p.add_argument("scans", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--out", type=Path, required=True, help="output folder: one sub-folder per scan")
    p.add_argument("--classes", nargs="+", default=(), metavar="CLASS",
                   help="classes to explain, label values or names (default: every foreground class)")  # fmt: skip
    p.add_argument("--tta", type=int, default=8, help="test-time-augmentation variants (default 8, at least 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the intensity jitter (default 0)")
    p.add_argument("--no-cam", action="store_true", help="uncertainty and prediction only, no Grad-CAM")
    p.add_argument("--layer", choices=("decoder", "bottleneck"), default="decoder",
                   help="layer Grad-CAM explains: the coarsest decoder block (default) or the bottleneck")  # fmt: skip
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path,
                   help="folder from segmorph train, register, train-registration or classify train")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--cases", type=int, default=12, help="worst cases, pairs or images to draw (default 12)")


def _add_register(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", type=Path, nargs="?", help="fixed image (its grid is the output grid)")
    p.add_argument("moving", type=Path, nargs="?", help="moving image")
    p.add_argument("--pairs", type=Path, help="CSV with columns fixed,moving[,fixed_labels,moving_labels]")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per pair with --pairs)")
    p.add_argument("--moving-labels", type=Path, help="label map of the moving image, warped label-wise (each label interpolated, largest weight wins)")
    p.add_argument("--fixed-labels", type=Path, help="label map of the fixed image: writes metrics.json")
    p.add_argument("--method", choices=("rigid", "affine", "deformable", "learned", "structures"), default="deformable",
                   help="structures: align by segmentations only (needs --fixed/--moving-structures)")  # fmt: skip
    p.add_argument("--fixed-structures", type=Path,
                   help="segmentation of the fixed image (e.g. from segmorph predict) to align by label centroids and "
                        "overlap; with another method it is the initialisation")  # fmt: skip
    p.add_argument("--moving-structures", type=Path, help="segmentation of the moving image (same labels)")
    p.add_argument("--model", type=Path, help="train-registration run folder (for --method learned)")
    p.add_argument("--refine", type=int, default=0,
                   help="learned: instance-optimisation steps polishing one network pass's field")  # fmt: skip
    p.add_argument("--passes", type=int,
                   help="learned: network passes, each registering the fixed image to the moving one warped so far "
                        "(default: the model's, 2)")  # fmt: skip
    p.add_argument("--prealign", choices=("auto", "prior", "affine", "com", "none"),
                   help="learned: alignment before the network: prior (match the centres of the segmentation "
                        "prior's structures), affine, com, none (default: the model's; auto = prior for models "
                        "with a prior, else none)")  # fmt: skip
    p.add_argument("--similarity", choices=("ncc", "mse", "mi", "mind"), default="ncc",
                   help="classical image similarity: ncc (default, same modality); mi or mind for multi-modal")  # fmt: skip
    p.add_argument("--overlays", action="store_true", help="write checkerboard, grid and Jacobian pictures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train_registration(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (MSD layout); labels, when present, add a Dice term")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--time-budget", type=parse_duration, help="training time, e.g. 20m (default 20m)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--dice-weight", type=float, help="weight of the label Dice term (default 2; 0: unsupervised)")
    p.add_argument("--similarity", choices=("ncc", "mse", "mi", "mind"), help="image similarity (default ncc)")
    p.add_argument("--segmentation-model", type=Path,
                   help="segmorph segmentation run whose label probabilities the network also sees (copied into "
                        "the run; train it on the same split first; one trained with --spacing 2 is several times cheaper)")  # fmt: skip
    p.add_argument("--label-guidance", type=float,
                   help="share of training pairs (0..1) whose moving prior is the moving labels; such a model then "
                        "takes --moving-labels (and atlas labels) as guidance at inference (default 0.5 with "
                        "--segmentation-model on a labelled dataset, else 0)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
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
    p.add_argument("--fixed-image", type=Path, help="fixed image whose grid is scored (default: the --fixed-labels grid, else the warped image's)")
    p.add_argument("--landmarks", type=Path, nargs=2, metavar=("FIXED_CSV", "MOVING_CSV"),
                   help="corresponding points x,y,z in mm (LPS) for the target registration error")  # fmt: skip


def _add_atlas(p: argparse.ArgumentParser) -> None:
    from segmorph.registration.atlas import add_atlas_arguments

    add_atlas_arguments(p)


def _add_anonymize(p: argparse.ArgumentParser) -> None:
    from segmorph.anonymize import add_anonymize_arguments

    add_anonymize_arguments(p)


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder (MSD layout with dataset.json, or paired folders)")
    p.add_argument("--images", type=Path, help="image folder of a paired-folder dataset (relative to DATASET)")
    p.add_argument("--labels", type=Path, help="label folder of a paired-folder dataset (relative to DATASET)")
    p.add_argument("--time-budget", type=parse_duration,
                   help="training time, e.g. 20m (default 20m; none when only --max-steps is given)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many steps; alone, it makes training time-independent and repeatable")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--config", type=Path, help="JSON/YAML file overriding plan values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one plan value, e.g. train.batch_size=4 (repeatable)")  # fmt: skip
    p.add_argument("--spacing", type=parse_spacing, metavar="MM",
                   help="plan for this voxel size in mm (one value, or x,y,z) instead of the median spacing; "
                        "e.g. --spacing 2 for a fast low-resolution model (a registration prior)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--fold", type=int, default=0, help="validation fold (default 0; -1: no validation)")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default 5)")
    p.add_argument("--val-cases", nargs="+", default=(), help="explicit validation case ids")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--cache", type=Path, help="preprocessing cache folder (default OUT/preprocessed)")
    p.add_argument("--no-validate", action="store_true", help="skip the final full-resolution validation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_plan(p: argparse.ArgumentParser) -> None:
    _add_dataset_args(p)
    p.add_argument("--out", type=Path, required=True, help="plan.json to write")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained run folder")
    p.add_argument("scans", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--out", type=Path, required=True, help="output folder for masks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-mirror", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--largest-component", action="store_true", help="keep the largest component of each class")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--overlays", action="store_true", help="also write PNG overlays of a few slices")
    p.add_argument("--continue", dest="skip_existing", action="store_true", help="skip cases already written")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--format", dest="suffix", help="output suffix, e.g. .nii.gz (default), .nrrd, .mha")
    p.add_argument("--amp", action="store_true",
                   help="half-precision autocast where the device runs it fast (CUDA; CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--compile", action="store_true",
                   help="compile the network (about 7 s once; about 1.1x faster per case on a 2-core CPU)")  # fmt: skip
    p.add_argument("--quiet", action="store_true")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", type=Path, help="folder of predicted masks")
    p.add_argument("references", type=Path, help="folder of reference masks (same case names)")
    p.add_argument("--out", type=Path, default=Path("metrics.csv"), help="CSV to write (a JSON summary goes beside)")


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained run folder")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")


def _add_baseline(p: argparse.ArgumentParser) -> None:
    p.add_argument("scans", nargs="+", type=Path)
    p.add_argument("--method", choices=("otsu", "region_grow"), default="otsu")
    p.add_argument("--out", type=Path, required=True, help="output folder for masks")
    p.add_argument("--classes", type=int, default=2, help="Otsu classes (2: one threshold; more: multi-Otsu)")
    p.add_argument("--seed-point", dest="seeds", action="append", default=[], metavar="I,J[,K]",
                   help="region-growing seed voxel index (repeatable)")  # fmt: skip
    p.add_argument("--tolerance", type=float, help="region growing: intensity tolerance around the seed mean")
    p.add_argument("--fill-holes", action="store_true")
    p.add_argument("--largest-component", action="store_true")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="MSD Task04 hippocampus folder (default ../shared/datasets/...)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--time-budget", type=parse_duration, default=300.0, help="training time (default 5m)")
    p.add_argument("--device", default="cpu")


def _printable(text: str) -> str:
    """``text`` with the undecodable bytes of file names (Linux names need not be UTF-8) shown as ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from segmorph import __version__

        print(__version__)
        return 0
    if not args.verb:
        parser.print_help()
        return 2
    from segmorph import commands

    handler: Callable[[argparse.Namespace], int] = getattr(commands, "run_" + args.verb.replace("-", "_"))
    try:
        return handler(args)
    except SegmorphError as err:
        print(f"error: {_printable(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
