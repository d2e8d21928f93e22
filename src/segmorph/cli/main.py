"""``segmorph``: the command line. Each capability's module adds its verbs and attaches their handlers.

Exit codes: 0 success; 1 bad input or a failed step (one line ``error: <file>: <problem>``);
2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from segmorph.cli import classification, dicom, info, interpret, registration, report, segmentation
from segmorph.cli.arguments import printable
from segmorph.errors import SegmorphError

CAPABILITIES = (segmentation, info, registration, dicom, classification, report, interpret)


def build_parser() -> argparse.ArgumentParser:
    """The ``segmorph`` parser with every capability's verbs."""
    parser = argparse.ArgumentParser(prog="segmorph", description="Medical image segmentation and registration.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="verb")
    for capability in CAPABILITIES:
        capability.add_verbs(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from segmorph import __version__

        print(__version__)
        return 0
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except SegmorphError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
