"""PyTorch eager stepping of a checkpoint, timed like the runtime's backends (``fptt-edge bench``).

Kept outside :mod:`fptt_edge.runtime`, which never imports torch; the CLI imports this module
only when it has a checkpoint to compare against.
"""
from __future__ import annotations

from .runtime.benchmark import latency, random_frames
from .runtime.errors import BackendUnavailable


def bench_torch(checkpoint, streams: int, steps: int) -> dict:
    """:func:`~fptt_edge.runtime.benchmark.latency` of the checkpoint's network step (one thread, no grad);
    :class:`BackendUnavailable` without torch."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("torch is not installed") from None
    from .checkpoint import load_model

    torch.set_num_threads(1)
    net, _ = load_model(checkpoint)
    xs = torch.from_numpy(random_frames((streams, *net.config.input_shape)))
    state = [net.initial_state(streams)]
    i = [0]

    @torch.no_grad()
    def step():
        _, state[0] = net.step(xs[i[0] % len(xs)], state[0])
        i[0] += 1

    return latency(step, steps)
