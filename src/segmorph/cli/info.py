"""``segmorph info``: an image's geometry and values."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    'info': 'segmorph info scan.nii.gz',
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph info``."""
    parser = verb_parser(sub, "info", "Print an image's shape, spacing, origin, direction, dtype and value range.",
                         EXAMPLES["info"])  # fmt: skip
    parser.add_argument("files", nargs="+", type=Path, help="image files or DICOM series folders")
    parser.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    from segmorph.io import read_image

    for path in args.files:
        image = read_image(path, check_finite=False)
        values = image.numpy()
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"),) * 2
        fmt = lambda a: "(" + ", ".join(f"{v:.6g}" for v in np.ravel(a)) + ")"  # noqa: E731
        say(f"{path}")
        say(f"  shape      {image.spatial_shape} x {image.num_channels} channel(s)  (axes I, J[, K])")
        say(f"  spacing    {fmt(image.affine.spacing)} mm")
        say(f"  origin     {fmt(image.affine.origin)} mm (LPS)")
        say(f"  direction  {fmt(image.affine.direction)}")
        say(f"  dtype      {values.dtype}  range [{low:.6g}, {high:.6g}]  non-finite voxels {values.size - finite.size}")
    return 0
