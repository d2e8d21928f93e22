"""``segmorph mesh``: closed surface meshes of a label map, one file per label, with their volumes and areas."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import non_negative_int, say, verb_parser
from segmorph.segmentation.names import DEFAULT_SMOOTH, FORMATS

EXAMPLES = {
    "mesh": "segmorph mesh hippocampus_001.nii.gz --out meshes/ --format stl --labels-from runs/hippo --preview",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph mesh``."""
    parser = verb_parser(sub, "mesh", "Write one closed triangle mesh per label of a 3D label map, in world "
                         "millimetres (LPS: x to the patient's Left, y Posterior, z Superior; --ras for RAS), "
                         "stated in each file, with DIR/<case>_meshes.json giving per label the volume (mm^3), "
                         "surface area (mm^2), whether it is watertight and the voxel volume to compare.",
                         EXAMPLES["mesh"])  # fmt: skip
    parser.add_argument("mask", type=Path, help="a label map file (or DICOM folder); every foreground value is meshed")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder: DIR/<case>_<label name>.<format> per label, DIR/<case>_meshes.json")  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="stl",
                        help="stl (binary), obj, ply (binary) or vtk (legacy ASCII POLYDATA); default stl")  # fmt: skip
    parser.add_argument("--smooth", type=non_negative_int, default=DEFAULT_SMOOTH, metavar="N",
                        help=f"Taubin smoothing iterations, which keep the volume (default {DEFAULT_SMOOTH}); 0 "
                             "keeps the voxel terraces, whose area over-states a curved surface's by up to 10%%")  # fmt: skip
    parser.add_argument("--labels-from", type=Path, metavar="RUN_OR_DATASET",
                        help="name the labels: a run folder (plan.json), a dataset folder (dataset.json) or either "
                             "file (default label_<value>)")  # fmt: skip
    parser.add_argument("--preview", action="store_true",
                        help="also draw the meshes, shaded, with a legend and axes in mm: DIR/<case>_meshes.png")  # fmt: skip
    parser.add_argument("--ras", action="store_true",
                        help="write RAS coordinates (x Right, y Anterior, z Superior) instead of LPS")  # fmt: skip
    parser.set_defaults(handler=run_mesh)


def run_mesh(args: argparse.Namespace) -> int:
    """``segmorph mesh``: write the meshes and print one line per label."""
    from segmorph.segmentation.mesh import mesh_files

    frame = "RAS" if args.ras else "LPS"
    result = mesh_files(args.mask, args.out, format=args.format, smooth=args.smooth, labels_from=args.labels_from,
                        preview=args.preview, frame=frame)  # fmt: skip
    for item, path in zip(result.meshes, result.files):
        closed = "watertight" if item.watertight else "NOT watertight"
        repaired = f" ({', '.join(item.repairs)})" if item.repairs else ""
        say(f"{item.name} ({item.value}): {item.volume_mm3:.1f} mm3 (voxels {item.voxel_volume_mm3:.1f} mm3), "
            f"{item.surface_area_mm2:.1f} mm2, {len(item.faces)} faces, {closed}{repaired} -> {path}")  # fmt: skip
        if item.repairs:
            say(f"warning: the surface of {item.name} was not closed by marching cubes: {', '.join(item.repairs)}",
                err=True)  # fmt: skip
    say(f"measures written to {result.record} ({frame} mm)")
    if result.preview is not None:
        say(f"preview written to {result.preview}")
    return 0
