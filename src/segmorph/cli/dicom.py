"""``segmorph anonymize``: DICOM de-identification."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmorph.cli.arguments import verb_parser

EXAMPLES = {
    'anonymize': 'segmorph anonymize dicom_in/ --out dicom_anon/ --shift-dates -30',
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph anonymize``."""
    parser = verb_parser(sub, "anonymize", "De-identify DICOM files (PS3.15 Basic Application Level Confidentiality "
                         "Profile).", EXAMPLES["anonymize"])  # fmt: skip
    _add_anonymize(parser)
    parser.set_defaults(handler=run_anonymize)


def _add_anonymize(parser: argparse.ArgumentParser) -> None:
    """Add the ``anonymize`` verb's arguments to ``parser``."""
    parser.add_argument(
        "dicom_dir", type=Path, metavar="DICOM_DIR", help="folder of DICOM files (searched recursively)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (not inside DICOM_DIR)")
    parser.add_argument("--shift-dates", dest="shift_dates", type=int, metavar="DAYS",
                        help="shift all dates by DAYS (same in every file) instead of emptying them")  # fmt: skip
    parser.add_argument("--uid-salt", dest="uid_salt", metavar="TEXT",
                        help="secret that makes new UIDs repeatable across runs (default: random per run)")  # fmt: skip


def run_anonymize(args: argparse.Namespace) -> int:
    """Run ``segmorph anonymize``: notes and warnings, then a summary line, go to stderr."""
    from segmorph.dicom.anonymize import AnonymizeOptions, anonymize_folder

    options = AnonymizeOptions(shift_dates_days=args.shift_dates, uid_salt=args.uid_salt)
    report = anonymize_folder(args.dicom_dir, args.out, options)
    for note in report.skipped:
        print(f"note: {note}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"anonymized {len(report.written)} files into {args.out}; skipped {len(report.skipped)}; "
        f"{len(report.warnings)} warnings",
        file=sys.stderr,
    )
    return 0
