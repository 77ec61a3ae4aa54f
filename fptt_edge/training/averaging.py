"""An exponential moving average of the weights a run evaluates, for selection and ``model.pt`` (``--ema-decay``).

Updated once per batch from the weights the epoch's evaluation would use (FPTT: ``Wbar``, or ``W``
with ``--eval-weights current``; BPTT: ``W``)::

    a_1 = w_1,    a_n = d_n a_{n-1} + (1 - d_n) w_n,    d_n = min(decay, (1 + n) / (10 + n))

(the warm-up ``d_n`` of ``tf.train.ExponentialMovingAverage``: early averages do not drag the
initial weights along). The average is evaluated, selected on and saved; training goes on from its
own weights, which the average never touches. Off by default: the spec evaluates ``Wbar``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


class WeightAverage:
    """``update(weights)`` after each batch; ``swapped_in(weights)`` puts the average in their place for a while."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.average: list[torch.Tensor] = []

    def rate(self) -> float:
        """``d_n`` of the next update."""
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, weights: Sequence[torch.Tensor]) -> None:
        if not self.average:
            self.average = [w.detach().clone() for w in weights]
        else:
            torch._foreach_lerp_(self.average, [w.detach() for w in weights], 1.0 - self.rate())
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, weights: Sequence[torch.Tensor]) -> Iterator[None]:
        """The average in ``weights`` inside the block, their own values back after it (also on error)."""
        if not self.average:  # nothing averaged yet (no batch this run): the weights stand for themselves
            yield
            return
        with torch.no_grad():
            kept = [w.detach().clone() for w in weights]
            torch._foreach_copy_([w.detach() for w in weights], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([w.detach() for w in weights], kept)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": [a.clone() for a in self.average]}

    def load_state_dict(self, state: dict, like: Sequence[torch.Tensor]) -> None:
        """Restore a saved average; ``like`` are the weights it averages (shapes, dtype and device to match)."""
        decay, updates, average = state["decay"], state["updates"], state["average"]
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay != self.decay:
            raise ValueError(f"saved with decay {decay!r}, this run has {self.decay!r}")
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError("the update count must be a non-negative integer")
        if not isinstance(average, (list, tuple)) or len(average) != (len(like) if updates else 0):
            raise ValueError(f"expected {len(like) if updates else 0} averaged tensors")
        for a, w in zip(average, like):
            if not isinstance(a, torch.Tensor) or a.shape != w.shape or a.dtype != w.dtype:
                raise ValueError(f"an averaged tensor does not match its weights {list(w.shape)} {w.dtype}")
            if not torch.isfinite(a).all():
                raise ValueError("the average holds NaN or Inf")
        self.updates = updates
        self.average = [a.detach().to(w.device).clone() for a, w in zip(average, like)]
