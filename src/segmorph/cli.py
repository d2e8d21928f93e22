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
    return parser


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
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="compile the network (about 7 s once; 1.36x faster per case on a 2-core CPU)")  # fmt: skip
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

    handler: Callable[[argparse.Namespace], int] = getattr(commands, f"run_{args.verb}")
    try:
        return handler(args)
    except SegmorphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
