"""``segmorph info``: an image's geometry and values."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    'info': 'segmorph info scan.nii.gz',
}
MAX_LABEL_VALUES = 32  # an integer image with at most this many values in 0..255 is shown as a label map


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph info``."""
    parser = verb_parser(sub, "info", "Print an image's shape, spacing, origin, direction, orientation, stored and "
                                      "loaded types, value range, and for label maps the voxels per label.",
                         EXAMPLES["info"])  # fmt: skip
    parser.add_argument("files", nargs="+", type=Path, help="image files or DICOM series folders")
    parser.add_argument("--labels", action="store_true",
                        help="read as a label map (whole numbers >= 0) and count the voxels of every value; "
                             "without it, integer images holding few values in 0..255 are counted too")  # fmt: skip
    parser.set_defaults(handler=run_info)


def label_counts(values: np.ndarray, stored: str, force: bool) -> dict[int, int] | None:
    """Voxels per value of a label map ``(1, I, J[, K])``, or None when the image does not look like one.

    With ``force`` every value is counted. Otherwise only one-channel images stored as integers whose values lie in
    0..255 and number at most :data:`MAX_LABEL_VALUES` count as label maps.
    """
    if force:
        found, counts = np.unique(values, return_counts=True)
        return {int(v): int(n) for v, n in zip(found, counts)}
    if values.shape[0] != 1 or not stored.startswith(("uint", "int")) or values.size == 0:
        return None
    if values.min() < 0 or values.max() > 255:
        return None
    counts = np.bincount(values.ravel().astype(np.intp), minlength=1)
    present = np.flatnonzero(counts)
    return {int(v): int(counts[v]) for v in present} if len(present) <= MAX_LABEL_VALUES else None


def run_info(args: argparse.Namespace) -> int:
    from segmorph.io import distance_unit, read_image, stored_pixel_type
    from segmorph.qc.quality import orientation_code

    for path in args.files:
        image = read_image(path, is_label=args.labels, check_finite=False)
        stored = stored_pixel_type(path)
        values = image.numpy()
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"),) * 2
        fmt = lambda a: "(" + ", ".join(f"{v:.6g}" for v in np.ravel(a)) + ")"  # noqa: E731
        unit = distance_unit(path)
        say(f"{path}")
        say(f"  shape      {image.spatial_shape} x {image.num_channels} channel(s)  (axes I, J[, K])")
        if unit == "mm":
            say(f"  spacing    {fmt(image.affine.spacing)} mm")
        else:
            say(f"  spacing    {fmt(image.affine.spacing)} as read; a picture has no physical pixel size: "
                "segmorph measures its distances in px")  # fmt: skip
        if unit == "mm":
            say(f"  origin     {fmt(image.affine.origin)} mm (LPS)")
            say(f"  direction  {fmt(image.affine.direction)}  orientation {orientation_code(image.affine)} "
                "(the sides axes I, J[, K] point to)")  # fmt: skip
        else:
            say(f"  origin     {fmt(image.affine.origin)} px")
            say(f"  direction  {fmt(image.affine.direction)}")
        say(f"  dtype      {stored} on disk, {values.dtype} as loaded  range [{low:.6g}, {high:.6g}]  "
            f"non-finite voxels {values.size - finite.size}")  # fmt: skip
        counts = label_counts(values, stored, args.labels)
        if counts is not None:
            shown = ", ".join(f"{value}: {count}" for value, count in counts.items())
            say(f"  labels     {len(counts)} value(s), voxels per value: {shown}")
    return 0
