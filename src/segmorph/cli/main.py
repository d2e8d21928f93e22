"""``segmorph``: the command line. Each capability's module adds its verbs and attaches their handlers.

Exit codes: 0 success; 1 bad input or a failed step (one line ``error: <file>: <problem>``, control
characters in it escaped by :func:`segmorph.cli.arguments.printable`; a
:class:`~segmorph.errors.SegmorphWarning` is printed as one line ``warning: <file>: <problem>`` and the work goes
on); 2 usage errors (argparse); 130
interrupted (Ctrl-C); 141 (128 + SIGPIPE, what ``cat`` and ``ls`` give) when the program reading the output
stopped reading early (``segmorph info scan.nii.gz | head -3``): the rest of the output is dropped quietly,
without a traceback.

Every verb takes ``--threads N``: torch's CPU threads for the work (default: the physical cores this process
may use, see :mod:`segmorph.threads`), set before the verb starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from segmorph.cli import classification, dicom, info, interpret, processing, quality, registration, report, segmentation
from segmorph.cli import mesh as mesh_verb
from segmorph.cli import pacs as pacs_verbs
from segmorph.cli import pretraining as pretraining_verb
from segmorph.cli import synthesis as synthesis_verbs
from segmorph.cli import view as view_verb
from segmorph.cli.arguments import printable
from segmorph.errors import SegmorphError, SegmorphWarning
from segmorph.threads import set_threads

CAPABILITIES = (segmentation, info, registration, dicom, classification, report, interpret, quality, processing,
                view_verb, mesh_verb, pacs_verbs, pretraining_verb, synthesis_verbs)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``segmorph`` parser with every capability's verbs."""
    parser = argparse.ArgumentParser(prog="segmorph", description="Medical image segmentation and registration.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="verb")
    for capability in CAPABILITIES:
        capability.add_verbs(sub)
    for verb in leaf_parsers(parser):
        verb.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            metavar="N",
            help="CPU threads for torch (default: the physical cores this process may use)",
        )
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the verbs themselves (``classify train``, not ``classify``), each once."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    found: dict[int, argparse.ArgumentParser] = {}
    for action in subs:
        for child in action.choices.values():  # aliases map to the same parser
            for leaf in leaf_parsers(child):
                found.setdefault(id(leaf), leaf)
    return list(found.values())


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


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
        set_threads(args.threads)
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(warnings.showwarning)
            code = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is met inside this try and not at exit
        return code
    except SegmorphError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        discard_stdout()
        return 141


def one_line_warnings(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints a :class:`SegmorphWarning` as one ``warning:`` line on stderr and
    hands every other warning to ``fallback``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, SegmorphWarning):
            print(f"warning: {printable(str(message))}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def discard_stdout() -> None:
    """Point stdout at the null device, so that the output still buffered is dropped, not flushed at exit
    into the closed pipe (which prints ``Exception ignored ... BrokenPipeError``)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in a test): nothing is flushed
        pass


if __name__ == "__main__":
    sys.exit(main())
