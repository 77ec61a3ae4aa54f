"""Compiled scatter kernels for the event-driven conv front end (numba; ``pip install fptt-edge[events]``).

Same arithmetic as :class:`~fptt_edge.runtime.sparse_conv.ConvScatter` (numpy), one pass in
machine code instead of index tables and ``np.add.at``. For each changed input ``(c, y, x)``
with change ``d``, every output channel ``o`` and offset ``(dy, dx)`` inside the frame::

    acc[o, y + dy, x + dx] += d * W[o, c, p - dy, p - dx]        (p = k // 2)

``acc`` is the conv output in the graph's own layout (flat ``[Co * H * W]``, NCHW), so the split
graph reads it in place. 3x3 kernels away from the border take an unrolled path; other odd
kernels and border pixels a generic one. Importing this module needs numba; nothing else in the
runtime does (the numpy scatter is the fall-back). Compiled on first use, cached on disk where
numba may write (``NUMBA_CACHE_DIR``).
"""
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")


@_jit
def _scatter_one(acc, q, d, stamps, k, h, wd):  # pragma: no cover - compiled
    """``acc += d * stamp(q)``; ``stamps`` ``[Ci, Co, k*k]`` are the flipped kernels: ``stamps[c, o, (dy+p)*k + dx+p] = W[o, c, p-dy, p-dx]``."""
    co = stamps.shape[1]
    hw = h * wd
    p = k // 2
    c = q // hw
    r = q - c * hw
    y = r // wd
    x = r - y * wd
    if k == 3 and y >= 1 and y < h - 1 and x >= 1 and x < wd - 1:
        base = r - wd - 1
        for o in range(co):
            w = stamps[c, o]
            t = base + o * hw
            acc[t] += d * w[0]
            acc[t + 1] += d * w[1]
            acc[t + 2] += d * w[2]
            t += wd
            acc[t] += d * w[3]
            acc[t + 1] += d * w[4]
            acc[t + 2] += d * w[5]
            t += wd
            acc[t] += d * w[6]
            acc[t + 1] += d * w[7]
            acc[t + 2] += d * w[8]
        return
    y0, y1 = max(y - p, 0), min(y + p + 1, h)
    x0, x1 = max(x - p, 0), min(x + p + 1, wd)
    for o in range(co):
        for oy in range(y0, y1):
            row = o * hw + oy * wd
            kr = (oy - y + p) * k - x + p
            for ox in range(x0, x1):
                acc[row + ox] += d * stamps[c, o, kr + ox]


@_jit
def scatter(acc, q, v, stamps, k, h, wd):  # pragma: no cover - compiled
    """``acc += sum_i v[i] * stamp(q[i])`` for flat input indices ``q`` into ``[Ci, H, W]``."""
    for i in range(q.size):
        _scatter_one(acc, q[i], v[i], stamps, k, h, wd)


@_jit
def _update_range(acc, prev, frame, b, e, n, stamps, k, h, wd, limit, max_value):  # pragma: no cover - compiled
    """:func:`update_from_frame` on inputs ``b:e``, ``n`` changes so far: the new count, or -1."""
    for q in range(b, e):
        new = frame[q]
        old = prev[q]
        if new != old:
            d = new - old
            n += 1
            if n > limit or abs(new) > max_value or abs(d) > max_value:
                return -1
            _scatter_one(acc, q, d, stamps, k, h, wd)
            prev[q] = new
    return n


@_jit
def update_from_frame(acc, prev, frame, stamps, k, h, wd, limit, max_value):  # pragma: no cover - compiled
    """Bring ``acc`` (the conv output of ``prev``) to the conv output of ``frame`` by scattering the
    inputs that differ, and ``prev`` to ``frame``. Returns the number of changed inputs, or -1 as soon
    as more than ``limit`` change or a changed value (or the change) exceeds ``max_value`` in magnitude:
    ``acc`` and ``prev`` are then partly updated and the caller recomputes them densely.

    The frame is scanned in blocks of 64 by their bits (a vectorised OR of ``frame ^ prev``; the
    fixed trip count is what lets LLVM vectorise it); only blocks with a difference are looked at
    value by value (-0.0 and 0.0 differ in bits, not in value)."""
    bits_new = frame.view(np.int32)
    bits_old = prev.view(np.int32)
    size = frame.size
    whole = size - size % 64
    n = 0
    for b in range(0, whole, 64):
        diff = 0
        for i in range(64):
            diff |= bits_new[b + i] ^ bits_old[b + i]
        if diff != 0:
            n = _update_range(acc, prev, frame, b, b + 64, n, stamps, k, h, wd, limit, max_value)
            if n < 0:
                return -1
    return _update_range(acc, prev, frame, whole, size, n, stamps, k, h, wd, limit, max_value)


@_jit
def count_changed_and_active(prev, frame):  # pragma: no cover - compiled
    """``(changed, active)``: how many inputs differ from ``prev``, and how many are non-zero."""
    changed = 0
    active = 0
    for i in range(frame.size):
        changed += frame[i] != prev[i]
        active += frame[i] != 0
    return changed, active


@_jit
def rebuild_from_frame(acc, prev, frame, stamps, bias, k, h, wd):  # pragma: no cover - compiled
    """``acc`` = the conv of ``frame`` from scratch (the bias, then each non-zero input's stamp), ``prev`` = ``frame``.
    Cheaper than :func:`update_from_frame` when fewer inputs are active than changed (event frames
    whose pixels do not persist from one bin to the next); no drift carried over. Blocks of 64
    inputs that are all +0.0 (by their bits) are skipped."""
    hw = h * wd
    for o in range(bias.size):
        acc[o * hw:(o + 1) * hw] = bias[o]
    prev[:] = frame
    bits = frame.view(np.int32)
    size = frame.size
    whole = size - size % 64
    for b in range(0, whole, 64):
        any_set = 0
        for i in range(64):  # a fixed trip count: vectorised
            any_set |= bits[b + i]
        if any_set != 0:
            _scatter_active(acc, frame, b, b + 64, stamps, k, h, wd)
    _scatter_active(acc, frame, whole, size, stamps, k, h, wd)


@_jit
def _scatter_active(acc, frame, b, e, stamps, k, h, wd):  # pragma: no cover - compiled
    """Scatter the non-zero inputs among ``frame[b:e]``."""
    for q in range(b, e):
        v = frame[q]
        if v != 0:
            _scatter_one(acc, q, v, stamps, k, h, wd)


@_jit
def front_update(acc, prev, frame, stamps, bias, k, h, wd, limit, rebuild_cost, max_value):  # pragma: no cover - compiled
    """One stream's front end in one call: count the changed and the active inputs, then scatter the
    changes (returns 0) or rebuild from the active inputs (returns 1), whichever scatters fewer, or
    return -1 when that is more than ``limit`` inputs or a large value changed (``acc``/``prev`` may
    then be partly updated: the caller takes the dense conv)."""
    changed, active = count_changed_and_active(prev, frame)
    if active + rebuild_cost < changed:
        if active + rebuild_cost > limit:
            return -1
        rebuild_from_frame(acc, prev, frame, stamps, bias, k, h, wd)
        return 1
    if changed > limit:
        return -1
    return 0 if update_from_frame(acc, prev, frame, stamps, k, h, wd, changed, max_value) >= 0 else -1


def flipped_stamps(weight: np.ndarray) -> np.ndarray:
    """``[Co, Ci, k, k]`` conv weights as the kernels' stamps ``[Ci, Co, k*k]`` (flipped: see :func:`_scatter_one`)."""
    co, ci, k, _ = weight.shape
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(ci, co, k * k), np.float32)
