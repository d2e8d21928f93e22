"""The names of the networks each task trains, without importing torch (command-line choices read them).

The constructors behind the names are in :mod:`segmorph.nn.registry`.
"""

from __future__ import annotations

TASKS: dict[str, tuple[str, ...]] = {"segmentation": ("unet", "fcn"), "classification": ("resnet", "simplecnn")}
"""The networks a task trains (an ensemble of classifiers is made by training several, not by name)."""


def network_names(task: str) -> tuple[str, ...]:
    """Names of the networks ``task`` (``"segmentation"``, ``"classification"``) can train."""
    return TASKS[task]
