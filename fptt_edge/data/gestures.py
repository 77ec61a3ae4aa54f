"""A small synthetic accelerometer-like gesture set: one analog channel, variable lengths.

Stands in for the univariate IMU / accelerometer gestures users record (what an event camera
is not): every sequence is gravity on the axis (about 9.8, slightly tilted per sequence) plus
sensor noise plus one of ``classes`` movement templates - a positive or negative bump, two
bumps, a bump and its rebound, slow or fast oscillation bursts, a ramp - each at a random
onset, amplitude and speed. Lengths vary between 70 % and 100 % of ``steps`` (zero padded).
Deterministic for a seed. The signal sits far from zero with a small variance, the case that
defeats spiking networks fed raw values (see :mod:`fptt_edge.encoding`).
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import SequenceDataset

TEMPLATES = ("bump", "dip", "double-bump", "bump-rebound", "slow-wave", "fast-wave", "ramp-up", "ramp-down")


def _template(kind: str, u: np.ndarray) -> np.ndarray:
    """Movement shape over the gesture's own time ``u`` in [0, 1] (0 outside)."""
    inside = (u >= 0) & (u <= 1)
    g = lambda c, w: np.exp(-0.5 * ((u - c) / w) ** 2)  # noqa: E731
    window = np.sin(np.pi * np.clip(u, 0, 1)) ** 2
    shapes = {
        "bump": g(0.5, 0.15),
        "dip": -g(0.5, 0.15),
        "double-bump": g(0.3, 0.08) + g(0.7, 0.08),
        "bump-rebound": g(0.35, 0.1) - g(0.65, 0.1),
        "slow-wave": np.sin(2 * np.pi * 2 * u) * window,
        "fast-wave": np.sin(2 * np.pi * 6 * u) * window,
        "ramp-up": np.clip(u, 0, 1) * window * 1.5,
        "ramp-down": -np.clip(u, 0, 1) * window * 1.5,
    }
    return np.where(inside, shapes[kind], 0.0)


def _movement(rng: np.random.Generator, kind: str, steps: int) -> np.ndarray:
    """One gesture's movement (no gravity, no noise) in a window of ``steps``: a random duration
    (45-75 % of the window), onset and amplitude (1.5-3)."""
    span = rng.uniform(0.45, 0.75) * steps
    onset = rng.uniform(0.05, 0.95) * (steps - span)
    return rng.uniform(1.5, 3.0) * _template(kind, (np.arange(steps, dtype=np.float64) - onset) / span)


def synthetic_gestures(n: int, steps: int = 120, classes: int = 6, seed: int = 0, noise: float = 0.25,
                       split: str = "train") -> SequenceDataset:
    """``n`` sequences ``[n, steps, 1]`` (balanced classes), ``lengths`` in ``[0.7 steps, steps]``."""
    if not 2 <= classes <= len(TEMPLATES):
        raise ValueError(f"classes must be in [2, {len(TEMPLATES)}]")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    y = np.arange(n) % classes
    rng.shuffle(y)
    lengths = rng.integers(int(0.7 * steps), steps + 1, n)
    x = np.zeros((n, steps, 1), np.float32)
    for i in range(n):
        L = int(lengths[i])
        x[i, :L, 0] = _movement(rng, TEMPLATES[y[i]], L) + 9.81 * np.cos(rng.uniform(-0.3, 0.3)) + noise * rng.standard_normal(steps)[:L]
    spec = {"task": "npz", "generator": "synthetic_gestures", "steps": steps, "shape": [1], "classes": classes, "seed": seed,
            "split": split, "normalisation": "as generated (m/s^2 on one axis)"}
    return SequenceDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), [TEMPLATES[k] for k in range(classes)], spec,
                           torch.from_numpy(lengths.astype(np.int64)))


def write_npz(path, ds: SequenceDataset, period_us: int | None = None) -> None:
    """The data set as an ``.npz`` (``x``, ``y``, ``lengths``; ``period_us``, the sample period, where given) for
    ``fptt-edge train --task npz``."""
    np.savez(path, x=ds.x.numpy(), y=ds.y.numpy(), lengths=ds.lengths.numpy() if ds.lengths is not None else np.full(len(ds), ds.steps),
             **({} if period_us is None else {"period_us": np.int64(period_us)}))


def synthetic_gesture_stream(gestures: int, steps: int = 40, classes: int = 4, seed: int = 0, noise: float = 0.25,
                             period_us: int = 10_000, rest: tuple[int, int] = (10, 40)) -> dict[str, np.ndarray]:
    """One continuous recording of ``gestures`` movements (classes in turn, shuffled) with ``rest`` steps of
    stillness before each, for ``fptt-edge run --npz REC --continuous``: ``x`` ``[T, 1]``, sample times ``t``
    (µs, ``period_us`` apart with a little jitter) and ``segments`` ``[gestures, 3]`` (class, start_us, end_us):
    each gesture's window, drawn as a :func:`synthetic_gestures` sequence is (70-100 % of ``steps``). One tilt
    of gravity for the whole recording. Deterministic for a seed; draws differ from the training sets'."""
    if not 2 <= classes <= len(TEMPLATES):
        raise ValueError(f"classes must be in [2, {len(TEMPLATES)}]")
    rng = np.random.default_rng([seed, 2])
    labels = np.arange(gestures) % classes
    rng.shuffle(labels)
    parts, windows, at = [], [], 0
    for label in labels:
        quiet, L = int(rng.integers(rest[0], rest[1] + 1)), int(rng.integers(int(0.7 * steps), steps + 1))
        parts += [np.zeros(quiet), _movement(rng, TEMPLATES[label], L)]
        windows.append((at + quiet, at + quiet + L))
        at += quiet + L
    parts.append(np.zeros(int(rng.integers(rest[0], rest[1] + 1))))
    movement = np.concatenate(parts)
    x = 9.81 * np.cos(rng.uniform(-0.3, 0.3)) + movement + noise * rng.standard_normal(len(movement))
    t = np.arange(len(x), dtype=np.int64) * period_us + rng.integers(0, max(1, period_us // 10), len(x))
    t[0] = 0
    segments = np.array([(label, t[a], t[b] if b < len(t) else t[-1] + period_us) for label, (a, b) in zip(labels, windows)], np.int64)
    return {"x": x[:, None].astype(np.float32), "t": t, "segments": segments}
