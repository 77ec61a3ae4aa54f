"""A streaming session over any backend: holds the state, validates input, resets streams.

    with open_session("model.onnx") as sess:     # ONNX Runtime CPU; streams = the exported batch
        for frame in frames:                     # frame: [streams, *frame_shape] float32
            logits = sess.step(frame)            # a view of the session's buffer, valid until the next step
        sess.reset(stream=2)                     # one stream back to the initial state (u=0, s=0, b=b_j0, m=0)

Bad input (shape, dtype, NaN/Inf, masked arrays) raises :class:`RuntimeInputError` before
anything runs, so the state is unchanged; a backend failure leaves the previous state in place
too. A finite frame that drives the state to NaN/Inf (e.g. 3e38) is undone: the backend keeps
the previous state set, the session swaps back to it and raises, naming the tensor. A session
is for one thread at a time: a call while another thread is inside it raises instead of
corrupting the state. ``open_session`` verifies the model's checksum first (``verify=False``
for graphs edited on purpose).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..contract import ContractError, StepContract, read_contract, verify_checksum
from ..encoding import Encoding, EncodingError
from .backend import StepBackend
from .errors import BackendUnavailable, RuntimeInputError

BACKENDS = ("ort", "ort-cuda", "ort-trt", "tensorrt")


def validate_frames(x, streams: int, frame_shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as ``[streams, *frame]`` float32 with finite values, else :class:`RuntimeInputError`."""
    if not isinstance(x, np.ndarray):
        raise RuntimeInputError(f"input must be a numpy array, got {type(x).__name__}")
    if isinstance(x, np.ma.MaskedArray):
        raise RuntimeInputError("input is a masked array: pass plain values (e.g. x.filled(0)); state unchanged")
    if x.dtype != np.float32:
        raise RuntimeInputError(f"input dtype must be float32, got {x.dtype} (use x.astype(np.float32))")
    if x.shape == frame_shape and streams == 1:
        x = x[None]
    if x.shape != (streams, *frame_shape):
        raise RuntimeInputError(f"input shape must be {(streams, *frame_shape)} (streams, *frame), got {x.shape}")
    if not np.isfinite(x).all():
        raise RuntimeInputError("input holds NaN or Inf; state unchanged")
    return x


MAX_STREAMS = 1_000_000  # as the CLI: beyond this no device has the memory


def check_count(value, what: str, most: int | None = None) -> int:
    """A positive integer (up to ``most`` where given; not a bool, float or text), else :class:`RuntimeInputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RuntimeInputError(f"{what} must be a positive integer, got {type(value).__name__} {str(value)[:20]}")
    if most is not None and value > most:
        raise RuntimeInputError(f"{what} must be at most {most:,}, got {value}")
    return int(value)


def _nonfinite_state(backend) -> str | None:
    """The name of a state tensor of the backend's current set holding NaN or Inf, if any.

    Read in place where the backend offers ``state_views`` (a finite sum proves every element finite)."""
    views = getattr(backend, "state_views", None)
    state = views() if views is not None else backend.read_state()
    for name, value in state.items():
        if not np.isfinite(value.sum()) and not np.isfinite(value).all():
            return name
    return None


def _undo_step(backend) -> None:
    """Back to the state before the last step: backends keep two state sets and swap ``_current``."""
    undo = getattr(backend, "undo_step", None)
    if undo is not None:
        undo()
    else:
        backend._current = 1 - backend._current


class StreamSession:
    """``streams`` independent streams stepped together as one batch, on any :class:`StepBackend`."""

    def __init__(self, backend: StepBackend, contract: StepContract):
        self.backend, self.contract = backend, contract
        self.streams = backend.streams
        self.frame_shape = contract.input.frame_shape
        self.encoding = Encoding.from_dict(contract.input.encoding)  # validated with the contract
        self.raw_shape = self.frame_shape if self.encoding.kind == "none" else (self.encoding.channels,)
        self._encoder = self.encoding.stream()  # per-stream state of step_raw (the delta encoding's levels)
        self._initial = {s.name: s.initial(1)[0] for s in contract.states}
        self._lock, self._closed = threading.Lock(), False
        self.steps = 0
        self.reset()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    def _enter(self) -> None:
        """Take the session for this call, or refuse (another thread is inside it, or it is closed)."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeInputError("the session is in use by another thread; use one session per thread")
        if self._closed:
            self._lock.release()
            raise RuntimeInputError("the session is closed")

    def step(self, x: np.ndarray) -> np.ndarray:
        """One time step for every stream; returns logits ``[streams, classes]`` (the session's buffer)."""
        x = validate_frames(x, self.streams, self.frame_shape)
        self._enter()
        try:
            np.copyto(self.backend.x, x)
            return self._step_checked()
        finally:
            self._lock.release()

    def step_raw(self, x: np.ndarray) -> np.ndarray:
        """One time step of raw samples ``[streams, *raw_shape]`` for a model trained with an input encoding (``--encoding``:
        an IMU's or any analog sensor's channels), encoded here with the code training used, per stream (the delta
        encoding's reference levels are state: a stream's first step, and its first after :meth:`reset`, sets them);
        returns logits as :meth:`step`. A model without an encoding takes its frames as given. The encoder and the model
        step together or not at all (a refused sample or step, a backend failure, a call from another thread).
        :meth:`step` does not move the encoder, and :meth:`get_state`/:meth:`set_state` do not hold its levels."""
        return self._step_raw(x)[0]

    def _step_raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step_raw`, returning the logits and the encoded frames; one hold of the session from encoding to step."""
        x = validate_frames(x, self.streams, self.raw_shape)
        self._enter()
        try:
            before = self._encoder.snapshot()
            try:
                frames = self._encoder.step(x)
            except EncodingError as exc:
                raise RuntimeInputError(str(exc)) from None
            try:
                np.copyto(self.backend.x, frames)
                return self._step_checked(), frames
            except BaseException:  # refused, or failed in the backend (StepFailed, Ctrl-C): the state is unchanged
                self._encoder.restore(before)
                raise
        finally:
            self._lock.release()

    def step_buffered(self) -> np.ndarray:
        """:meth:`step` on the input already in the backend's input buffer (a front end filled it in place)."""
        self._enter()
        try:
            return self._step_checked()
        finally:
            self._lock.release()

    def _step_checked(self) -> np.ndarray:
        """Step the backend; undo the step and refuse when the state turns non-finite."""
        self.backend.step()
        bad = _nonfinite_state(self.backend)
        if bad is not None:
            _undo_step(self.backend)
            raise RuntimeInputError(f"this input drives state '{bad}' to NaN or Inf (values too large?); step undone, state unchanged")
        self.steps += 1
        return self.backend.logits

    def reset(self, stream: int | None = None) -> None:
        """All streams (or one) back to the deterministic initial state from the model's metadata."""
        if stream is not None:
            if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)):
                raise RuntimeInputError(f"stream must be an integer index, got {type(stream).__name__} {str(stream)[:20]}")
            if not 0 <= stream < self.streams:
                raise RuntimeInputError(f"stream {stream} out of range 0..{self.streams - 1}")
            stream = int(stream)
        self._enter()
        try:
            for name, init in self._initial.items():
                value = np.broadcast_to(init, (self.streams, *init.shape)) if stream is None else init
                self.backend.write_state(name, value, stream)
            self._encoder.reset(stream)  # step_raw: the stream's next sample starts a recording
        finally:
            self._lock.release()

    def get_state(self) -> dict[str, np.ndarray]:
        """A copy of the current state, by state name."""
        self._enter()
        try:
            return self.backend.read_state()
        finally:
            self._lock.release()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the whole state, validated first; the message says which check failed (name, shape, dtype, finite)."""
        if not isinstance(state, dict):
            raise RuntimeInputError(f"state must be a dict of name -> array, got {type(state).__name__}")
        expected = {s.name: (self.streams, *[int(d) for d in s.shape[1:]]) for s in self.contract.states}
        if set(state) != set(expected):
            raise RuntimeInputError(f"state names must be {sorted(expected)}, got {sorted(str(k)[:40] for k in state)}")
        values = {name: _checked_state(name, value, expected[name]) for name, value in state.items()}
        self._enter()
        try:
            for name, value in values.items():
                self.backend.write_state(name, value)
        finally:
            self._lock.release()

    def predict(self) -> list[str]:
        """The current class name per stream (argmax of the last logits)."""
        self._enter()
        try:
            return [self.class_names[i] for i in self.backend.logits.argmax(1)]
        finally:
            self._lock.release()

    def close(self) -> None:
        """Free the backend (``backend.close()`` where it has one); the session refuses further calls."""
        if self._closed:
            return
        self._enter()
        try:
            self._closed = True
            close = getattr(self.backend, "close", None)
            if close is not None:
                close()
            del self.backend  # the runtime's session and buffers go with it
        finally:
            self._lock.release()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _checked_state(name: str, value, shape: tuple) -> np.ndarray:
    """``value`` for state ``name`` if it is a finite float32 array of ``shape``, else which check failed."""
    problem = None
    if isinstance(value, np.ma.MaskedArray):
        problem = "is a masked array"
    else:
        value = np.asarray(value)
        if value.dtype != np.float32:
            problem = f"has dtype {value.dtype}"
        elif value.shape != shape:
            problem = f"has shape {value.shape}"
        elif not np.isfinite(value).all():
            problem = "holds NaN or Inf"
    if problem is not None:
        raise RuntimeInputError(f"state '{name}' {problem}: it must be finite float32 {shape}")
    return value


def ort_backend(model, contract: StepContract, streams: int, backend: str = "ort", threads: int = 1, cache_dir: str | None = None,
                fp16: bool = False, initializers: dict | None = None):
    """An :class:`OrtBackend`; ONNX Runtime's refusals of the model become :class:`ContractError`."""
    from .ort_backend import OrtBackend

    try:
        return OrtBackend(model, contract, streams, backend, threads, cache_dir, fp16, initializers)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        lines = str(exc).strip().splitlines()
        source = model if isinstance(model, (str, Path)) else "the model"
        raise ContractError(f"{source}: ONNX Runtime cannot load it ({lines[0][:300] if lines else type(exc).__name__})") from None


def open_session(model, backend: str = "ort", streams: int | None = None, contract=None, threads: int = 1,
                 cache_dir: str | None = None, fp16: bool = False, cuda_graph: bool = False, verify: bool = True,
                 initializers: dict | None = None) -> StreamSession:
    """A session on ``model`` (``.onnx``; ``.engine`` for ``tensorrt``, with its contract beside it).

    ``verify``: refuse an ``.onnx`` whose graph or weights differ from the exported checksum.
    ``initializers``: values that replace the graph's by initializer name (adapted weights;
    ONNX Runtime: user-owned and updatable in place, TensorRT: a refit after loading)."""
    model = Path(model)
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {str(backend)[:40]!r}; choose from {BACKENDS}")
    threads = check_count(threads, "threads", MAX_THREADS)
    if contract is None:
        contract = contract_for(model)
    else:
        if not isinstance(contract, (StepContract, str, os.PathLike)):
            raise RuntimeInputError(f"contract must be a StepContract or the path of a model, got {type(contract).__name__}")
        contract = contract if isinstance(contract, StepContract) else read_contract(contract)
        if model.suffix == ".onnx" and contract != read_contract(model):
            raise RuntimeInputError(f"the contract given is not the one {model.name} was exported with")
    if initializers is not None and model.suffix == ".onnx":
        initializers = checked_initializers(model, initializers)
    fixed = contract.batch if isinstance(contract.batch, int) else None
    streams = check_count((fixed or 1) if streams is None else streams, "streams", MAX_STREAMS)
    if fixed is not None and streams != fixed:
        raise RuntimeInputError(f"{model} was exported for batch {fixed}; re-export with --batch {streams} or --batch dynamic")
    if backend == "tensorrt":
        from .trt_backend import TensorRTBackend

        engine = model if model.suffix == ".engine" else model.with_suffix(".engine")
        trt = TensorRTBackend(engine, contract, streams, cuda_graph=cuda_graph)
        if initializers:
            try:
                trt.refit_initializers(initializers)
            except BaseException:
                trt.close()
                raise
        return StreamSession(trt, contract)
    if verify:
        verify_checksum(model)
    return StreamSession(ort_backend(str(model), contract, streams, backend, threads, cache_dir, fp16, initializers), contract)


MAX_THREADS = 1024


def checked_initializers(model: Path, values) -> dict[str, np.ndarray]:
    """``values`` (initializer name -> array) checked against the graph's own initializers: known names, the same
    shapes, finite float32 values; else :class:`RuntimeInputError`."""
    import onnx

    if not isinstance(values, dict):
        raise RuntimeInputError(f"initializers must map initializer names to arrays, got {type(values).__name__}")
    shapes = {t.name: tuple(t.dims) for t in onnx.load(str(model), load_external_data=False).graph.initializer}
    out = {}
    for name, value in values.items():
        if not isinstance(name, str) or name not in shapes:
            raise RuntimeInputError(f"initializers: {str(name)[:60]!r} is not an initializer of {model.name}")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise RuntimeInputError(f"initializers: {name!r} is not an array of numbers") from None
        if array.shape != shapes[name]:
            raise RuntimeInputError(f"initializers: {name!r} has shape {list(array.shape)}, the graph's is {list(shapes[name])}")
        if not np.isfinite(array).all():
            raise RuntimeInputError(f"initializers: {name!r} holds NaN or Inf (as float32)")
        out[name] = array
    return out


def contract_for(model: Path) -> StepContract:
    """The contract of an ``.onnx`` model, or of an ``.engine`` (from the JSON written beside it)."""
    if model.suffix == ".engine":
        from .trt_build import load_engine_contract

        return load_engine_contract(model)
    return read_contract(model)
