"""Argument types and helpers shared by the verbs: durations, spacings, sizes, the verb parser, time budgets."""

from __future__ import annotations

import argparse
import re
import sys

from segmorph.configs import parse_duration as duration_seconds
from segmorph.errors import SegmorphError


def parse_duration(text: str) -> float:
    """``"20m"``, ``"1h30m"``, ``"90s"`` or plain seconds -> seconds (argparse's error for anything else)."""
    try:
        return duration_seconds(text)
    except SegmorphError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_spacing(text: str) -> tuple[float, ...]:
    """``"2"`` or ``"1,1,2.5"`` (mm, x,y,z) -> positive floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"invalid spacing {text!r} (examples: 2, 1,1,2.5)")
    return values


def parse_size(text: str) -> tuple[int, ...]:
    """``"128"`` or ``"160,128"`` (voxels, at least 8 a side) -> ints."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 128, 160,128)") from None
    if not values or min(values) < 8:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: every side must be at least 8 voxels")
    return values


MAX_SEED = 2**32 - 1
"""The largest seed (numpy's and torch's generators take every whole number from 0 up to it)."""


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def parse_seed(text: str) -> int:
    """argparse type: a seed, a whole number from 0 to :data:`MAX_SEED`."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def verb_parser(sub: argparse._SubParsersAction, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    """A verb's parser whose ``--help`` ends with an example command."""
    return sub.add_parser(
        name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def time_budget(args: argparse.Namespace, default_s: float) -> float:
    """--time-budget, else ``default_s``, else none (0) when --max-steps alone limits training.

    The learning-rate schedule follows the larger of the step and time fractions, so only a run limited by
    steps alone is repeatable bit for bit.
    """
    if args.time_budget is not None:
        return args.time_budget
    return 0.0 if args.max_steps > 0 else default_s


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    """Config keys set by the flags that were given: ``{"batch_size": "train.batch_size"}`` -> ``{"train.batch_size": 4}``.

    Flags that map onto config keys default to None, so that a flag left out keeps the value of ``--config``.
    """
    return {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag) is not None}


# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators, and the bidirectional-text
# controls that reorder what a terminal shows
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """``text`` made safe to print as (part of) one line: what a file name may hold that a terminal must not see.

    Control characters (newline, carriage return, tab, ESC and the other C0 controls, DEL, the C1 controls,
    the Unicode line separators and bidirectional controls) are shown escaped (``\\n``, ``\\x1b``, ``\\u2028``),
    and the undecodable bytes of file names (Linux names need not be UTF-8) as ``\\xff``; other text,
    non-ASCII letters included, is kept. Every line the command line prints goes through it (:func:`say`,
    and the ``error:`` line of :mod:`segmorph.cli.main`).

    Example:
        >>> printable("scan\\n\\x1b[2J.nii.gz")
        'scan\\\\n\\\\x1b[2J.nii.gz'
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return CONTROL_CHARACTERS.sub(_escape, text)


def say(line: str, err: bool = False) -> None:
    """Print one line of a verb's output (stdout; stderr with ``err``), escaped by :func:`printable`."""
    print(printable(line), file=sys.stderr if err else sys.stdout)
