"""``segmorph enhance``: classical processing steps on images, files and folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    "enhance": "segmorph enhance fundus/ --out enhanced/ --steps channel:green,clahe,frangi:dark --preview",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """The processing verb: enhance."""
    help_text = "Apply classical processing steps (N4, denoising, CLAHE, CT windows, edges, vesselness, morphology)."
    parser = verb_parser(sub, "enhance", help_text, EXAMPLES["enhance"])
    parser.add_argument("images", nargs="+", type=Path, help="image files, folders of images or DICOM series folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one image per input, same name)")
    parser.add_argument("--steps", required=True, action="append", metavar="STEP[,STEP...]",
                        help="steps in order, e.g. n4,denoise:median,window:40,400,clip:p0.5,p99.5,clahe,"
                             "frangi:dark,open:2 (repeatable; see segmorph.processing.steps)")  # fmt: skip
    parser.add_argument("--preview", action="store_true", help="also write a before/after PNG per image")
    parser.add_argument("--labels", action="store_true", help="read the inputs as label maps (morphology on masks)")
    parser.add_argument("--format", dest="suffix", help="output suffix, e.g. .nii.gz (default: the input's)")
    parser.set_defaults(handler=run_enhance)


def run_enhance(args: argparse.Namespace) -> int:
    from segmorph.processing.files import enhance_files
    from segmorph.processing.steps import parse_steps

    steps = [step for text in args.steps for step in parse_steps(text)]
    written = enhance_files(args.images, args.out, steps, preview=args.preview, suffix=args.suffix,
                            is_label=args.labels)  # fmt: skip
    say(f"wrote {len(written)} enhanced images to {args.out} ({' > '.join(s.text for s in steps)})", err=True)
    return 0
