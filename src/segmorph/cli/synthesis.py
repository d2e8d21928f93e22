"""``segmorph synthesize train|sample``: train a label-to-image GAN; write synthetic image/label pairs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from segmorph.cli.arguments import (
    non_negative_int,
    parse_duration,
    parse_seed,
    parse_spacing,
    say,
    time_budget,
    verb_parser,
)
from segmorph.cli.segmentation import DEFAULT_TIME_BUDGET_S
from segmorph.errors import SegmorphError

EXAMPLES = {
    "train": (
        "segmorph synthesize train ../shared/datasets/msd_hippocampus --out runs/gan_h --time-budget 20m\n"
        "  segmorph synthesize train ../shared/datasets/drive_retina/training --images images --labels vessel_1st "
        "--out runs/gan_drive --time-budget 20m"
    ),
    "sample": "segmorph synthesize sample runs/gan_h --labels ../shared/datasets/msd_hippocampus/labelsTr "
    "--out synthetic_h --count 100",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph synthesize train | sample``."""
    text = "Train a GAN that turns label maps into images, and write synthetic image/label pairs with it."
    parser = verb_parser(sub, "synthesize", text, f"{EXAMPLES['train'].splitlines()[0]}\n  {EXAMPLES['sample']}")
    verbs = parser.add_subparsers(dest="synthesize_verb", required=True, metavar="{train,sample}")
    _add_train(
        verb_parser(
            verbs,
            "train",
            "Train a label-conditioned GAN (SPADE generator, PatchGAN discriminator, adversarial + L1 loss) in the "
            "space segmorph train would preprocess the dataset into; writes a run folder with samples.png.",
            EXAMPLES["train"],
        )
    )
    _add_sample(
        verb_parser(
            verbs,
            "sample",
            "Deform label maps at random and generate their images with a trained GAN; writes a dataset folder "
            "(imagesTr, labelsTr, dataset.json) that segmorph train reads.",
            EXAMPLES["sample"],
        )
    )
    parser.set_defaults(handler=run_synthesize)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset", type=Path, help="labelled dataset folder (MSD layout with dataset.json, or paired folders)"
    )
    p.add_argument("--images", type=Path, help="image folder of a paired-folder dataset (relative to DATASET)")
    p.add_argument("--labels", type=Path, help="label folder of a paired-folder dataset (relative to DATASET)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument(
        "--time-budget",
        type=parse_duration,
        help="training time, e.g. 20m (default 20m; none when only --max-steps is given)",
    )
    p.add_argument("--max-steps", type=non_negative_int, default=0, help="stop after this many steps")
    p.add_argument("--spacing", type=parse_spacing, metavar="MM", help="plan for this voxel size in mm, as train")
    p.add_argument(
        "--network-dims",
        type=int,
        choices=(2, 3),
        metavar="2|3",
        help="2 for 3D scans: a 2D generator on slices across the through-plane axis (as train)",
    )
    p.add_argument("--fold", type=int, default=0, help="validation fold of train's split (default 0; -1: none)")
    p.add_argument("--num-folds", type=int, default=5, help="folds of the split (default 5)")
    p.add_argument(
        "--train-cases",
        nargs="+",
        default=(),
        metavar="ID",
        help="train only on these case ids of the training part (e.g. the few labelled ones)",
    )
    p.add_argument(
        "--labelled-cases",
        type=int,
        default=0,
        metavar="N",
        help="train only on the N training cases segmorph train --labelled-cases N keeps labelled (same --seed)",
    )
    p.add_argument(
        "--l1-weight", type=float, help="weight of the L1 distance to the real image (default 100, as pix2pix)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--cache", type=Path, help="preprocessing cache folder (default OUT/preprocessed)")
    p.add_argument("--seed", type=parse_seed, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("gan", type=Path, help="run folder of segmorph synthesize train")
    p.add_argument(
        "--labels",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE_OR_DIR",
        help="label maps: files, folders of them, or dataset folders (their label maps)",
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create (missing or empty)")
    p.add_argument("--count", type=int, default=20, help="synthetic pairs to write (1 to 100,000; default 20)")
    p.add_argument("--seed", type=parse_seed, default=0)
    p.add_argument(
        "--magnitude",
        type=float,
        metavar="MM",
        help="deformation: root mean square displacement per axis in mm (default: 5%% of the smallest extent of each label map)",
    )
    p.add_argument(
        "--smoothness",
        type=float,
        metavar="MM",
        help="deformation: smoothing length in mm (default: 20%% of the smallest extent)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_synthesize(args: argparse.Namespace) -> int:
    """Run ``synthesize train`` or ``synthesize sample``; 0 on success (SegmorphError on bad input)."""
    if args.synthesize_verb == "train":
        return _run_train(args)
    return _run_sample(args)


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from segmorph.synthesis.api import train_gan
    from segmorph.synthesis.task import GanSettings

    settings = GanSettings()
    if args.l1_weight is not None:
        try:
            settings = replace(settings, l1_weight=args.l1_weight)
        except ValueError as err:
            raise SegmorphError(f"--l1-weight: {err}") from None
    run = train_gan(
        args.dataset,
        args.out,
        time_budget=time_budget(args, DEFAULT_TIME_BUDGET_S),
        max_steps=args.max_steps,
        images_dir=args.images,
        labels_dir=args.labels,
        spacing=args.spacing,
        network_dims=args.network_dims,
        fold=args.fold,
        num_folds=args.num_folds,
        train_cases=tuple(args.train_cases),
        labelled_cases=args.labelled_cases,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        cache_dir=args.cache,
        show_progress=not args.quiet,
        settings=settings,
    )
    score = run.best_val_correlation
    scored = "no validation cases" if math.isnan(score) else f"best validation correlation {score:.4f}"
    say(
        f"trained the GAN {run.steps} steps in {run.elapsed_s / 60:.1f} min ({run.stopped_because}); {scored}; "
        f"run folder {args.out} (samples.png: real vs synthetic)",
        err=True,
    )
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from segmorph.synthesis.api import sample

    ids = sample(
        args.gan,
        args.labels,
        args.out,
        count=args.count,
        seed=args.seed,
        magnitude_mm=args.magnitude,
        smoothness_mm=args.smoothness,
        device=args.device,
        show_progress=not args.quiet,
    )
    say(f"wrote {len(ids)} synthetic pairs to {args.out} (a dataset folder: segmorph train {args.out})", err=True)
    return 0
