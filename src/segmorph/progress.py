"""Progress bars for long steps (rich), silent when disabled or not on a terminal-like stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)


class TrainingProgress:
    """A bar over training progress (0..1) showing step, loss, validation Dice and time left."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, disable=not enabled,
        )  # fmt: skip
        self._task = None

    def __enter__(self) -> TrainingProgress:
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=1.0, info="starting")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, fraction: float, step: int, loss: float, val_score: float, seconds_left: float) -> None:
        info = f"step {step}  loss {loss:.4f}  val {val_score:.4f}  left {seconds_left / 60:.1f} min"
        self._progress.update(self._task, completed=min(fraction, 1.0), info=info)
        if not self.enabled:
            return
        if not console.is_terminal:
            console.print(f"train {min(fraction, 1.0) * 100:5.1f}%  {info}", highlight=False)


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar (a thin wrapper so every long loop looks the same).

    Drawn on terminals only: in logs and pipes a bar is noise, and an error stays a single line.
    """
    progress = Progress(
        TextColumn(f"[bold]{description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled or not console.is_terminal,
    )  # fmt: skip
    with progress:
        yield from progress.track(items, total=total)
