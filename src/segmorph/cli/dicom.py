"""``segmorph anonymize``: DICOM de-identification."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    "anonymize": "segmorph anonymize dicom_in/ --out dicom_anon/ --shift-dates -30 --rename",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph anonymize``."""
    parser = verb_parser(sub, "anonymize", "De-identify DICOM files (PS3.15 Basic Application Level Confidentiality "
                         "Profile).", EXAMPLES["anonymize"])  # fmt: skip
    parser.description = f"{parser.description}\n\n{WHAT_IS_REMOVED}"
    _add_anonymize(parser)
    parser.set_defaults(handler=run_anonymize)


WHAT_IS_REMOVED = """\
Removed or replaced, at every depth of every sequence: the attributes of the profile table (names, IDs, dates,
institutions, UIDs, comments...); every other person name (PN); private elements, curves and overlays; public
elements unknown to the DICOM dictionary (e.g. unknown (0010,xxxx) patient elements); the 128-byte preamble.
NOT removed: text burned into the pixels (pixels are never changed; a warning names files likely to carry it),
identifying text in free-text attributes outside the profile table, and file and folder names unless --rename
is given. Refused with one error line: sequences nested deeper than 64 levels, more than 1,000,000 elements."""


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
    parser.add_argument("--rename", action="store_true",
                        help="write pseudonymous paths study_<hash>/series_<hash>/0001.dcm instead of the input's "
                             "file and folder names (same names for the same series within a run, and across "
                             "runs with the same --uid-salt; no table of original names is written)")  # fmt: skip


def run_anonymize(args: argparse.Namespace) -> int:
    """Run ``segmorph anonymize``: notes and warnings, then a summary line, go to stderr."""
    from segmorph.dicom.anonymize import AnonymizeOptions, anonymize_folder

    options = AnonymizeOptions(shift_dates_days=args.shift_dates, uid_salt=args.uid_salt, rename=args.rename)
    report = anonymize_folder(args.dicom_dir, args.out, options)
    for note in report.skipped:
        say(f"note: {note}", err=True)
    for warning in report.warnings:
        say(f"warning: {warning}", err=True)
    say(
        f"anonymized {len(report.written)} files into {args.out}; skipped {len(report.skipped)}; "
        f"{len(report.warnings)} warnings",
        err=True,
    )
    return 0
