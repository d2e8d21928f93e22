"""``segmorph info``: an image's geometry and values."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmorph.cli.arguments import say, verb_parser

if TYPE_CHECKING:
    from segmorph.geometry import Affine
    from segmorph.image import Image

EXAMPLES = {
    "info": "segmorph info scan.nii.gz",
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
    from segmorph.io import image_suffix, read_image
    from segmorph.readchecks import qform_sform_disagreement

    for path in args.files:
        problem = qform_sform_disagreement(path) if image_suffix(path) in (".nii", ".nii.gz") else None
        if problem:  # read_image refuses such a file: describe its header as SimpleITK reads it (the sform)
            _describe_header(path, problem)
        else:
            _describe(path, read_image(path, is_label=args.labels, check_finite=False), args.labels)
    return 0


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in np.ravel(values)) + ")"


def _say_geometry(path: Path, shape: tuple[int, ...], channels: int, affine: Affine) -> None:
    """The lines naming the file, its shape ``(I, J[, K])`` and channels, spacing, origin and direction."""
    from segmorph.io import distance_unit
    from segmorph.qc.quality import orientation_code

    unit = distance_unit(path)
    say(f"{path}")
    say(f"  shape      {shape} x {channels} channel(s)  (axes I, J[, K])")
    if unit == "mm":
        say(f"  spacing    {_fmt(affine.spacing)} mm")
        say(f"  origin     {_fmt(affine.origin)} mm (LPS)")
        say(f"  direction  {_fmt(affine.direction)}  orientation {orientation_code(affine)} "
            "(the sides axes I, J[, K] point to)")  # fmt: skip
    else:
        say(f"  spacing    {_fmt(affine.spacing)} as read; a picture has no physical pixel size: "
            "segmorph measures its distances in px")  # fmt: skip
        say(f"  origin     {_fmt(affine.origin)} px")
        say(f"  direction  {_fmt(affine.direction)}")


def _describe(path: Path, image: Image, labels: bool) -> None:
    """Print a loaded image's geometry, types, value range and, for label maps, the voxels per label."""
    from segmorph.io import stored_pixel_type

    stored = stored_pixel_type(path)
    values = image.numpy()
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (float("nan"),) * 2
    _say_geometry(path, image.spatial_shape, image.num_channels, image.affine)
    say(f"  dtype      {stored} on disk, {values.dtype} as loaded  range [{low:.6g}, {high:.6g}]  "
        f"non-finite voxels {values.size - finite.size}")  # fmt: skip
    counts = label_counts(values, stored, labels)
    if counts is not None:
        shown = ", ".join(f"{value}: {count}" for value, count in counts.items())
        say(f"  labels     {len(counts)} value(s), voxels per value: {shown}")


def _describe_header(path: Path, problem: str) -> None:
    """Print what the header of a NIfTI file that segmorph refuses to load tells, then ``warning: problem``."""
    from segmorph.io import read_image_information, stored_pixel_type

    shape, channels, affine = read_image_information(path)
    _say_geometry(path, shape, channels, affine)
    say(f"  dtype      {stored_pixel_type(path)} on disk  (voxels not loaded: other commands refuse this file)")
    say(f"warning: {problem} ({path})", err=True)
