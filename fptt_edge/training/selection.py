"""Which epoch a training run keeps: a rule over the per-epoch validation record.

- ``best``: the highest validation accuracy (ties: the lower validation loss, then the earlier epoch).
- ``one-se``: the one-standard-error rule (Hastie, Tibshirani & Friedman, *The Elements of
  Statistical Learning*, 7.10): the **latest** epoch whose validation accuracy is within one
  standard error of the best, ``acc_e >= a - sqrt(a (1 - a) / n)`` with ``a`` the best validation
  accuracy and ``n`` the validation samples. Epochs whose accuracies differ by less than the
  validation set can resolve count as equal, and the later (longer trained, lower learning rate)
  one is kept: ``best`` on a few hundred validation samples otherwise picks an earlier epoch for
  a difference that is noise (at ``a`` = 0.85 and ``n`` = 400 the standard error is 0.018).
- ``last``: the last epoch.

Every rule's choice either stays where it was or moves to the newest epoch when an epoch is
appended (for ``one-se``: a new epoch outside the band of the new best cannot be the best, so the
band and the choice stay), so a trainer keeps the selected weights by saving them whenever the
newest epoch is selected.
"""
from __future__ import annotations

import math

SELECTIONS = ("best", "one-se", "last")

DESCRIPTIONS = {
    "best": "best validation accuracy (ties: lower validation loss, then the earlier epoch)",
    "one-se": "the latest epoch whose validation accuracy is within one standard error, sqrt(a(1-a)/n), of the best a",
    "last": "the last epoch",
}


def standard_error(accuracy: float, samples: int) -> float:
    """The binomial standard error ``sqrt(a (1 - a) / n)`` of an accuracy measured on ``n`` samples."""
    if samples < 1:
        raise ValueError("the standard error needs at least one validation sample")
    a = min(max(float(accuracy), 0.0), 1.0)
    return math.sqrt(a * (1.0 - a) / samples)


def selected_index(history: list[dict], rule: str, val_samples: int) -> int:
    """The index in ``history`` (per-epoch records with ``val_accuracy`` and ``val_loss``) that ``rule`` keeps."""
    if rule not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}")
    if not history:
        raise ValueError("no epochs to select from")
    if rule == "last":
        return len(history) - 1
    best = min(range(len(history)), key=lambda i: (-history[i]["val_accuracy"], history[i]["val_loss"], i))
    if rule == "best":
        return best
    a = history[best]["val_accuracy"]
    floor = a - standard_error(a, val_samples) - 1e-12  # accuracies are ratios of counts: no rounding may exclude an equal one
    return max(i for i, record in enumerate(history) if record["val_accuracy"] >= floor)
