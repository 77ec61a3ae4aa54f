"""Real input streams for the export checks, built from a labelled sequence data set."""
from __future__ import annotations

import numpy as np

from ..data.dataset import SequenceDataset


def _sequence(ds: SequenceDataset, i: int) -> np.ndarray:
    n = ds.steps if ds.lengths is None else int(ds.lengths[i])
    return ds.x[i, :n].numpy().astype(np.float32)


def make_streams(ds: SequenceDataset, streams: int, min_steps: int) -> np.ndarray:
    """``[streams, T, *frame]``: each stream is consecutive real recordings played back to back
    (no reset between them, as a deployed model sees them) until it is ``min_steps`` long."""
    if len(ds) == 0:
        raise ValueError("no sequences to build check streams from")
    out, k = [], 0
    for _ in range(streams):
        parts, n = [], 0
        while n < min_steps:
            seq = _sequence(ds, k % len(ds))
            parts.append(seq)
            n += len(seq)
            k += 1
        out.append(np.concatenate(parts)[:min_steps])
    return np.stack(out)
