"""``segmorph explain``: Grad-CAM and test-time-augmentation uncertainty for segmentation runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import parse_seed, say, verb_parser

EXAMPLES = {
    "explain": "segmorph explain runs/hippo scans/case_004.nii.gz --out explain/ --classes 1 2 --tta 8",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph explain``."""
    parser = verb_parser(sub, "explain", "Grad-CAM per class and a test-time-augmentation uncertainty map for each "
                         "scan, on the scan's own grid.", EXAMPLES["explain"])  # fmt: skip
    _add_explain(parser)
    parser.set_defaults(handler=run_explain)


def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path,
                   help="trained segmentation run folder (segmorph train), or a cross-validation run or find-best "
                        "folder: an ensemble, explained over all its networks (uncertainty over every network's "
                        "variants together, Grad-CAM maps averaged)")  # fmt: skip
    p.add_argument("scans", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    p.add_argument("--out", type=Path, required=True, help="output folder: one sub-folder per scan")
    p.add_argument("--classes", nargs="+", default=(), metavar="CLASS",
                   help="classes to explain, label values or names (default: every foreground class)")  # fmt: skip
    p.add_argument("--tta", type=int, default=8, help="test-time-augmentation variants (default 8, at least 2)")
    p.add_argument("--seed", type=parse_seed, default=0, help="seed of the intensity jitter (default 0)")
    p.add_argument("--no-cam", action="store_true", help="uncertainty and prediction only, no Grad-CAM")
    p.add_argument("--layer", choices=("decoder", "bottleneck"), default="decoder",
                   help="layer Grad-CAM explains: the coarsest decoder block (default) or the bottleneck")  # fmt: skip
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_explain(args: argparse.Namespace) -> int:
    """``segmorph explain``: Grad-CAM and TTA uncertainty maps per scan."""
    from segmorph.interpret.explain import ExplainOptions, explain_files

    options = ExplainOptions(tuple(args.classes), args.tta, args.seed, not args.no_cam, args.layer, args.checkpoint)
    written = explain_files(args.run, args.scans, args.out, options, args.device, show_progress=not args.quiet)
    say(f"explained {len(written)} scan(s) in {args.out}", err=True)
    return 0
