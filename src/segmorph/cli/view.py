"""``segmorph view``: one self-contained HTML page showing scans with their masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    "view": "segmorph view scan.nii.gz prediction.nii.gz reference.nii.gz --labels-from runs/hippo --out view.html",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph view``."""
    parser = verb_parser(sub, "view", "Write one self-contained HTML page to look at a scan (or a folder of scans) "
                         "with its masks: three planes with slice sliders, window presets, masks as fill or outline "
                         "with a legend, position in mm and label name under the pointer.",
                         EXAMPLES["view"])  # fmt: skip
    _add_view(parser)
    parser.set_defaults(handler=run_view)


def _add_view(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="a scan (file or DICOM series folder) or a folder of scans")
    p.add_argument("mask", nargs="*", type=Path,
                   help="masks on the scan's grid: files for one scan, or folders of masks named like the scans; "
                        "with two, the first is the prediction and the second the reference (differences shown)")  # fmt: skip
    p.add_argument("--masks", dest="more_masks", action="append", default=[], type=Path, metavar="FILE|DIR",
                   help="one more mask layer, after the positional ones (repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("view.html"), help="HTML file to write (default view.html)")
    p.add_argument("--labels-from", type=Path, metavar="RUN_OR_DATASET",
                   help="name the label values: a run folder (plan.json), a dataset folder (dataset.json) or either "
                        "file")  # fmt: skip


def run_view(args: argparse.Namespace) -> int:
    """``segmorph view``: build the page and print where it is."""
    from segmorph.report.view_files import write_view

    path = write_view(args.image, [*args.mask, *args.more_masks], args.out, args.labels_from)
    say(f"view written to {path}")
    return 0
