"""Learning-rate schedules from the optim section: constant, or linear decay to 0 from decay_start."""
from __future__ import annotations

import torch

from gensynth.train.stable_start import warmup_factor


def lr_factor(schedule: str, step: int, total: int, decay_start: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total`` steps.

    linear-decay: 1 until ``decay_start * total``, then linearly to 0 at ``total`` (SPADE recipes).
    """
    if schedule == "constant":
        return 1.0
    start = int(decay_start * total)
    if step < start or total <= start:
        return 1.0
    return max(0.0, (total - step) / float(total - start))


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total: int, decay_start: float,
                   warmup: int = 0):
    """The schedule as a LambdaLR, times a linear warm-up over the first ``warmup`` steps (0: none)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(schedule, s, total, decay_start) * warmup_factor(s, warmup))
