"""A streaming session over any backend: holds the state, validates input, resets streams.

    sess = open_session("model.onnx")            # ONNX Runtime CPU; streams = the exported batch
    for frame in frames:                         # frame: [streams, *frame_shape] float32
        logits = sess.step(frame)                # a view of the session's buffer, valid until the next step
    sess.reset(stream=2)                         # one stream back to the initial state (u=0, s=0, b=b_j0, m=0)

Bad input (shape, dtype, NaN/Inf) raises :class:`RuntimeInputError` before anything runs,
so the state is unchanged; a backend failure leaves the previous state in place too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import StepContract, read_contract
from .errors import BackendUnavailable, RuntimeInputError

BACKENDS = ("ort", "ort-cuda", "ort-trt", "tensorrt")


def validate_frames(x, streams: int, frame_shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as ``[streams, *frame]`` float32 with finite values, else :class:`RuntimeInputError`."""
    if not isinstance(x, np.ndarray):
        raise RuntimeInputError(f"input must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise RuntimeInputError(f"input dtype must be float32, got {x.dtype} (use x.astype(np.float32))")
    if x.shape == frame_shape and streams == 1:
        x = x[None]
    if x.shape != (streams, *frame_shape):
        raise RuntimeInputError(f"input shape must be {(streams, *frame_shape)} (streams, *frame), got {x.shape}")
    if not np.isfinite(x).all():
        raise RuntimeInputError("input holds NaN or Inf; state unchanged")
    return x


class StreamSession:
    """``streams`` independent streams stepped together as one batch."""

    def __init__(self, backend, contract: StepContract):
        self.backend, self.contract = backend, contract
        self.streams = backend.streams
        self.frame_shape = contract.input.frame_shape
        self._initial = {s.name: s.initial(1)[0] for s in contract.states}
        self.steps = 0
        self.reset()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    def step(self, x: np.ndarray) -> np.ndarray:
        """One time step for every stream; returns logits ``[streams, classes]`` (the session's buffer)."""
        x = validate_frames(x, self.streams, self.frame_shape)
        np.copyto(self.backend.x, x)
        self.backend.step()
        self.steps += 1
        return self.backend.logits

    def reset(self, stream: int | None = None) -> None:
        """All streams (or one) back to the deterministic initial state from the model's metadata."""
        if stream is not None and not 0 <= stream < self.streams:
            raise RuntimeInputError(f"stream {stream} out of range 0..{self.streams - 1}")
        for name, init in self._initial.items():
            value = np.broadcast_to(init, (self.streams, *init.shape)) if stream is None else init
            self.backend.write_state(name, value, stream)

    def get_state(self) -> dict[str, np.ndarray]:
        """A copy of the current state, by state name."""
        return self.backend.read_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the whole state (validated first: names, shapes, dtype, finite values)."""
        expected = {s.name: (self.streams, *[int(d) for d in s.shape[1:]]) for s in self.contract.states}
        if set(state) != set(expected):
            raise RuntimeInputError(f"state names must be {sorted(expected)}, got {sorted(state)}")
        for name, value in state.items():
            value = np.asarray(value)
            if value.shape != expected[name] or value.dtype != np.float32 or not np.isfinite(value).all():
                raise RuntimeInputError(f"state '{name}' must be finite float32 {expected[name]}, got {value.dtype} {value.shape}")
        for name, value in state.items():
            self.backend.write_state(name, value)

    def predict(self) -> list[str]:
        """The current class name per stream (argmax of the last logits)."""
        return [self.class_names[i] for i in self.backend.logits.argmax(1)]


def open_session(model, backend: str = "ort", streams: int | None = None, contract=None, threads: int = 1,
                 cache_dir: str | None = None, fp16: bool = False, cuda_graph: bool = False) -> StreamSession:
    """A session on ``model`` (``.onnx``; ``.engine`` for ``tensorrt``, with its contract beside it)."""
    model = Path(model)
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if contract is None:
        contract = contract_for(model)
    elif not isinstance(contract, StepContract):
        contract = read_contract(contract)
    fixed = contract.batch if isinstance(contract.batch, int) else None
    if streams is None:
        streams = fixed or 1
    if fixed is not None and streams != fixed:
        raise RuntimeInputError(f"{model} was exported for batch {fixed}; re-export with --batch {streams} or --batch dynamic")
    if streams < 1:
        raise RuntimeInputError("streams must be >= 1")
    if backend == "tensorrt":
        from .trt_backend import TensorRTBackend

        engine = model if model.suffix == ".engine" else model.with_suffix(".engine")
        return StreamSession(TensorRTBackend(engine, contract, streams, cuda_graph=cuda_graph), contract)
    from .ort_backend import OrtBackend

    return StreamSession(OrtBackend(str(model), contract, streams, backend, threads, cache_dir, fp16), contract)


def contract_for(model: Path) -> StepContract:
    """The contract of an ``.onnx`` model, or of an ``.engine`` (from the JSON written beside it)."""
    if model.suffix == ".engine":
        from .trt_build import load_engine_contract

        return load_engine_contract(model)
    return read_contract(model)
