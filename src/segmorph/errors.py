"""The exception the command line turns into ``error: <file>: <problem>``, and the warning it prints as
``warning: <file>: <problem>``."""

from __future__ import annotations

from pathlib import Path


class _Located:
    """A problem and the file or folder it concerns, shown as ``<path>: <problem>`` (the problem alone without one)."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class SegmorphError(_Located, Exception):
    """Bad input or a failed step, reported to the user as one line.

    Args:
        problem: What is wrong, in words a user understands.
        path: The file or folder concerned, when there is one.
    """


class SegmorphWarning(_Located, UserWarning):
    """Something odd in the input that does not stop the work (the command line prints it as one line).

    Args:
        problem: What is odd, in words a user understands.
        path: The file or folder concerned, when there is one.
    """
