"""The one exception type that the command line turns into ``error: <file>: <problem>``."""

from __future__ import annotations

from pathlib import Path


class SegmorphError(Exception):
    """Bad input or a failed step, reported to the user as one line.

    Args:
        problem: What is wrong, in words a user understands.
        path: The file or folder concerned, when there is one.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
