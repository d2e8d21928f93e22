"""``segmorph pretrain``: self-supervised pretraining on unlabelled scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import (
    non_negative_int,
    parse_duration,
    parse_seed,
    parse_size,
    parse_spacing,
    say,
    time_budget,
    verb_parser,
)
from segmorph.cli.segmentation import DEFAULT_TIME_BUDGET_S

EXAMPLE = "segmorph pretrain ../shared/datasets/msd_hippocampus --out runs/pre --time-budget 20m"


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """The pretraining verb: pretrain."""
    parser = verb_parser(sub, "pretrain", "Self-supervised pretraining (masked or denoising autoencoder) on "
                                          "unlabelled scans, for train --init or classify train --init.", EXAMPLE)  # fmt: skip
    _add_pretrain(parser)
    parser.set_defaults(handler=run_pretrain)


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path,
                   help="image files, folders of images, DICOM series folders or dataset folders (labels unused)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--time-budget", type=parse_duration,
                   help="training time, e.g. 20m (default 20m; none when only --max-steps is given)")  # fmt: skip
    p.add_argument("--max-steps", type=non_negative_int, default=0, help="stop after this many steps")
    p.add_argument("--objective", choices=("mask", "denoise"), default="mask",
                   help="mask (default): reconstruct hidden blocks; denoise: remove noise and local shuffling")  # fmt: skip
    p.add_argument("--network", choices=("unet", "resnet", "simplecnn"), default="unet",
                   help="unet (default): the U-Net segmorph train builds for these images and budget, for train "
                        "--init; resnet or simplecnn: a classifier's body, for classify train --init")  # fmt: skip
    p.add_argument("--spacing", type=parse_spacing, metavar="MM",
                   help="unet: plan for this voxel size in mm (as segmorph train --spacing)")  # fmt: skip
    p.add_argument("--network-dims", type=int, choices=(2, 3), metavar="2|3",
                   help="unet: 2 for a 2D network on slices of 3D scans (as segmorph train --network-dims)")  # fmt: skip
    p.add_argument("--width", type=int, default=16, help="resnet/simplecnn: first-stage channels (default 16)")
    p.add_argument("--size", type=parse_size, metavar="N[,N...]",
                   help="resnet/simplecnn: input size in voxels (default: chosen from the images as classify train "
                        "chooses it)")  # fmt: skip
    p.add_argument("--block", type=int, metavar="VOXELS",
                   help="side of the masked (denoise: shuffled) blocks (default 8 in 3D, 4 in 2D; classifiers an "
                        "eighth of the input's shortest side; at most the patch's shortest side)")  # fmt: skip
    p.add_argument("--mask-ratio", type=float, default=0.6, help="share of the blocks hidden (default 0.6)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--seed", type=parse_seed, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_pretrain(args: argparse.Namespace) -> int:
    from segmorph.pretraining.api import pretrain

    result = pretrain(
        args.images, args.out, time_budget=time_budget(args, DEFAULT_TIME_BUDGET_S), max_steps=args.max_steps,
        objective=args.objective, network=args.network, spacing=args.spacing, network_dims=args.network_dims,
        width=args.width, size=args.size, block=args.block, mask_ratio=args.mask_ratio, device=args.device,
        seed=args.seed, resume=args.resume, show_progress=not args.quiet,
    )  # fmt: skip
    say(f"pretrained {result.steps} steps in {result.elapsed_s / 60:.1f} min ({result.stopped_because}); best "
        f"validation reconstruction 1 - NMSE {result.best_score:.4f} at epoch {result.best_epoch}; run folder "
        f"{args.out}", err=True)  # fmt: skip
    return 0
