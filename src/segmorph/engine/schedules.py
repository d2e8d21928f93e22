"""Learning-rate schedules as functions of training progress in [0, 1].

Progress is the larger of step/max_steps and elapsed/time_budget, so a schedule planned
for a time budget always ends inside it, whatever the machine's speed.
"""

from __future__ import annotations

import math


def learning_rate(base_lr: float, progress: float, schedule: str = "poly", warmup: float = 0.02) -> float:
    """Learning rate at ``progress`` (0 = start, 1 = end).

    Args:
        base_lr: Peak learning rate.
        progress: Fraction of training done, clipped to [0, 1].
        schedule: ``"poly"`` (nnU-Net: ``(1 - p) ** 0.9``) or ``"cosine"``.
        warmup: Fraction of training with a linear warm-up from ``base_lr / 20``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return base_lr * (0.05 + 0.95 * progress / warmup)
    rest = (progress - warmup) / max(1.0 - warmup, 1e-8)
    if schedule == "poly":
        return base_lr * (1.0 - rest) ** 0.9
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * rest))
    raise ValueError(f"schedule: expected 'poly' or 'cosine', got {schedule!r}")
