"""``segmorph check``: a dataset's quality check (geometry, intensities, labels, duplicates, outliers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    "check": "segmorph check ../shared/datasets/busi_ultrasound --labels labels.csv --out qc.csv",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph check``."""
    parser = verb_parser(
        sub,
        "check",
        "Check a dataset: geometry, intensities, label volumes, exact and near "
        "duplicates, outliers by robust z-score; prints the flagged cases and the groups of cases that differ from "
        "the rest.",
        EXAMPLES["check"],
    )
    parser.add_argument("dataset", type=Path,
                        help="dataset folder: MSD (dataset.json), paired image/label folders, class folders, "
                             "or a folder of images")  # fmt: skip
    parser.add_argument("--labels", type=Path,
                        help="labels CSV of a classification dataset (in DATASET or as given); a folder: the label "
                             "maps of a paired-folder dataset")  # fmt: skip
    parser.add_argument("--images", type=Path, help="image folder of a paired-folder dataset (relative to DATASET)")
    parser.add_argument("--target", help="class column of the labels CSV (default: label, class, target or diagnosis)")
    parser.add_argument("--file-column", default="file", help="image path column of the labels CSV (default: file)")
    parser.add_argument(
        "--out",
        type=Path,
        help="write one CSV row per case here, and a PNG of the flagged cases beside it (same name, .png)",
    )
    parser.add_argument(
        "--z-limit", type=float, default=None, help="robust z-score beyond which a case is an outlier (default 3.5)"
    )
    parser.add_argument(
        "--near-bits",
        type=int,
        default=None,
        help="near-duplicate candidates differ in at most this many of the 256 difference-hash bits (default 64)",
    )
    parser.add_argument(
        "--near-correlation",
        type=float,
        default=None,
        help="a candidate is a near-duplicate when the "
        "two thumbnails, less what every case shares, correlate at least this much (default 0.9)",
    )
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from segmorph.outputs import check_outputs
    from segmorph.qc.quality import NEAR_BITS, NEAR_CORRELATION, Z_LIMIT, check_dataset, flagged_table, plot_flagged

    labels_csv, labels_dir = args.labels, None
    if args.labels is not None and ((args.dataset / args.labels).is_dir() or args.labels.is_dir()):
        labels_csv, labels_dir = None, args.labels
    png = None
    if args.out is not None:
        png = args.out.with_suffix(".png")
        labels_file = None if labels_csv is None else args.dataset / labels_csv
        check_outputs([args.out, png], inputs=[args.dataset, labels_file, labels_csv])
    report = check_dataset(
        args.dataset, labels=labels_csv, target=args.target, file_column=args.file_column,
        images_dir=args.images, labels_dir=labels_dir,
        z_limit=Z_LIMIT if args.z_limit is None else args.z_limit,
        near_bits=NEAR_BITS if args.near_bits is None else args.near_bits,
        near_correlation=NEAR_CORRELATION if args.near_correlation is None else args.near_correlation,
    )  # fmt: skip
    _print_table(report, flagged_table(report))
    if args.out is not None:
        from segmorph.io import atomic_write_text

        atomic_write_text(args.out, report.csv_text())
        say(f"wrote {args.out}")
        if plot_flagged(report, png) is not None:
            say(f"wrote {png}")
    return 0


def _print_table(report, rows: list[tuple[str, str]]) -> None:
    say(
        f"{report.root}: {len(report.cases)} case(s) ({report.layout}), {len(rows)} flagged; "
        f"{len(report.exact_groups)} exact-duplicate group(s), {len(report.near_pairs)} near-duplicate pair(s), "
        f"{len(report.groups)} group(s) of cases"
    )
    if rows:
        width = max(len("case"), *(len(case_id) for case_id, _ in rows))
        say(f"{'case':<{width}}  reasons")
        for case_id, reasons in rows:
            say(f"{case_id:<{width}}  {reasons}")
    for group in report.groups:
        say(f"group: {group.sentence()}: {', '.join(group.case_ids)}")
