"""Learning-rate schedules: a pure function of the position in training, so a resumed run sets
exactly the rate the uninterrupted one did (nothing to save beyond the training config).

The position is ``epoch + batch / batches`` (fractional epochs, 0-based) at the start of a batch;
the rate is set once per batch (every FPTT update of that batch uses it).

- ``constant``: ``lr``.
- ``cosine``: ``lr * 0.5 * (1 + cos(pi * p))`` with ``p`` the fraction of the post-warm-up
  training done, falling to ``lr * min_lr_ratio`` at the end of the last epoch.
- ``step``: ``lr * gamma ** k`` with ``k`` the number of milestones (1-based epoch numbers) already
  completed; the authors' code multiplies by 0.1 after epochs 10, 30, 50, 75 and 90. Without
  milestones: after 50 % and 75 % of the epochs.

Warm-up (any schedule): the rate rises linearly over the first ``warmup`` epochs, from
``lr / (warmup batches)`` at the first batch to the schedule's value.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "step")


def default_milestones(epochs: int) -> tuple[int, ...]:
    """Half and three quarters of the run (distinct, at least epoch 1, before the last epoch when possible)."""
    return tuple(sorted({max(1, round(epochs * f)) for f in (0.5, 0.75)} - {epochs})) or ((1,) if epochs > 1 else ())


def lr_at(lr: float, schedule: str, epochs: int, epoch: int, batch: int, batches: int, *, warmup: float = 0.0,
          milestones: tuple[int, ...] = (), gamma: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """The learning rate for batch ``batch`` (0-based) of epoch ``epoch`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}")
    pos = epoch + batch / max(batches, 1)
    factor = 1.0
    if schedule == "cosine":
        span = max(epochs - warmup, 1e-12)
        p = min(max((pos - warmup) / span, 0.0), 1.0)
        factor = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "step":
        marks = milestones or default_milestones(epochs)
        factor = gamma ** sum(1 for m in marks if epoch >= m)
    if warmup > 0 and pos < warmup:
        factor *= min(1.0, (pos + 1.0 / max(batches, 1)) / warmup)
    return lr * factor
