"""Real input streams for the export checks, built from a labelled sequence data set."""
from __future__ import annotations

import numpy as np

from ..data.dataset import SequenceDataset


def _sequence(ds: SequenceDataset, i: int) -> np.ndarray:
    n = ds.steps if ds.lengths is None else int(ds.lengths[i])
    return ds.x[i, :n].numpy().astype(np.float32)


def make_streams(ds: SequenceDataset, streams: int, min_steps: int) -> np.ndarray:
    """``[streams, T, *frame]``: each stream is real recordings played back to back (no reset
    between them, as a deployed model sees them) until it is ``min_steps`` long.

    Stream 0 takes the recordings in order; every other stream (and every pass over the data
    when it runs out) takes them in its own fixed shuffled order, so streams never repeat
    one another even when the data set is short."""
    if len(ds) == 0:
        raise ValueError("no sequences to build check streams from")
    out = []
    for s in range(streams):
        parts, n, rnd = [], 0, 0
        while n < min_steps:
            order = np.arange(len(ds)) if s == 0 and rnd == 0 else np.random.default_rng((s, rnd)).permutation(len(ds))
            for i in order:
                seq = _sequence(ds, int(i))
                parts.append(seq)
                n += len(seq)
                if n >= min_steps:
                    break
            rnd += 1
        out.append(np.concatenate(parts)[:min_steps])
    return np.stack(out)
