"""What a :class:`~fptt_edge.runtime.session.StreamSession` needs from a step backend.

:class:`~fptt_edge.runtime.ort_backend.OrtBackend` (also inside the sparse-input session, on
the graph without its input projection) and
:class:`~fptt_edge.runtime.trt_backend.TensorRTBackend` implement it. A backend owns
preallocated buffers: the session writes a frame into ``x``, calls ``step()`` and reads
``logits``; the state stays inside the backend between steps.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class StepBackend(Protocol):
    """One stateful network step over ``streams`` streams, batched."""

    streams: int
    x: np.ndarray  # [streams, *frame] float32: the next step's input, written in place
    logits: np.ndarray  # [streams, classes] float32: the last step's output, overwritten by each step

    def step(self) -> None:
        """Run one step on ``x``: new logits in ``logits``, the new state becomes current."""

    def read_state(self) -> dict[str, np.ndarray]:
        """A copy of the current state, by state input name."""

    def write_state(self, name: str, value: np.ndarray, stream: int | None = None) -> None:
        """Overwrite state ``name`` for all streams, or the row of one ``stream``."""

    def close(self) -> None:
        """Free the backend's runtime resources; it is not used afterwards."""


@runtime_checkable
class AdaptableBackend(StepBackend, Protocol):
    """A backend whose weights can change between steps (on-device adaptation)."""

    def set_initializers(self, values: dict[str, np.ndarray]) -> str:
        """New values by ONNX initializer name; returns how they were applied (``"inplace"``, ``"rebuild"``, ``"refit"``)."""
