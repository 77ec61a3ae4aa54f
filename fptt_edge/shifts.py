"""Deterministic domain shifts of sequence data, for adaptation demos, benchmarks and tests (numpy only).

Each shift maps frames ``x`` ``[N, T, *frame]`` to what a drifted sensor would deliver:

* ``none``          the data as they are (the original domain, for comparison)
* ``gain:G``        sensor gain drift: ``x * G`` (analog input, e.g. S-MNIST pixels)
* ``columns:K``     spatial shift by ``K`` columns along the last axis (wrapping)
* ``polarity-swap`` ON and OFF event channels exchanged (event frames ``[..., 2, H, W]``)
* ``dropout:P``     each active event pixel dropped with probability ``P`` (seeded)
* ``hot-pixels:P``  a fixed random fraction ``P`` of pixels always on (seeded)
"""
from __future__ import annotations

import numpy as np

from .errors import FpttEdgeError

KINDS = ("none", "gain", "columns", "polarity-swap", "dropout", "hot-pixels")


class ShiftError(FpttEdgeError, ValueError):
    """An unknown or malformed shift specification."""


def parse(spec: str) -> tuple[str, float | None]:
    """``"gain:0.4"`` -> ``("gain", 0.4)``; ``"polarity-swap"`` -> ``("polarity-swap", None)``."""
    kind, _, value = str(spec).partition(":")
    if kind not in KINDS:
        raise ShiftError(f"unknown shift {kind!r}; choose from {', '.join(KINDS)} (e.g. gain:0.4, columns:3, dropout:0.5)")
    if kind in ("none", "polarity-swap"):
        if value:
            raise ShiftError(f"{kind} takes no value")
        return kind, None
    try:
        amount = float(value)
    except ValueError:
        raise ShiftError(f"shift {kind} needs a number, e.g. {kind}:{'0.4' if kind != 'columns' else '3'}") from None
    if not np.isfinite(amount) or (kind in ("dropout", "hot-pixels") and not 0 <= amount <= 1) or (kind == "columns" and amount != int(amount)):
        raise ShiftError(f"shift {kind}:{value} is out of range")
    return kind, amount


def apply(x: np.ndarray, spec: str, seed: int = 0) -> np.ndarray:
    """The shifted copy of ``x`` ``[N, T, *frame]`` (float32)."""
    kind, value = parse(spec)
    amount = 0.0 if value is None else value
    x = np.asarray(x, np.float32)
    if kind == "none":
        return x.copy()
    if kind == "gain":
        with np.errstate(over="ignore", invalid="ignore"):
            out = x * np.float32(amount)  # a gain beyond float32 is Inf here
        if not np.isfinite(out).all():
            raise ShiftError(f"gain:{value:g} takes these data beyond float32's range (NaN or Inf)")
        return out
    if kind == "columns":
        if x.ndim < 3 or x.shape[-1] < 2:
            raise ShiftError(f"columns:K shifts along the last axis of each frame, which is {x.shape[-1] if x.ndim >= 3 else 'missing'} wide "
                             f"here (x {list(x.shape)}; for S-MNIST use --mode row)")
        return np.roll(x, int(amount), axis=-1)
    if x.ndim != 5 or x.shape[2] != 2:
        raise ShiftError(f"{kind} needs event frames [N, T, 2, H, W], got {list(x.shape)}")
    rng = np.random.default_rng(seed)
    if kind == "polarity-swap":
        return x[:, :, ::-1].copy()
    if kind == "dropout":
        return np.where(rng.random(x.shape) < amount, np.float32(0), x).astype(np.float32)
    hot = rng.random(x.shape[2:]) < amount  # the same pixels in every frame of every recording
    return np.where(hot, np.maximum(x, np.float32(1)), x).astype(np.float32)
