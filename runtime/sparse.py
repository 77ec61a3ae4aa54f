"""Event-driven input projection: the first layer's input current from the active inputs only.

Event frames are sparse. For a dense first layer the input current is ``W_x x + c_x``; with
``k`` active inputs it is ``sum_{i active} x_i W_x[:, i] + c_x``, a gather-sum of ``k`` weight
columns: cost proportional to the events, not to the frame size. The ONNX graph is split at
load time: the first layer's ``Gemm`` (and the ``Flatten`` before it) is cut off, its output
becomes a graph input, and the runtime computes it here from ``W_x`` (read from the model's
initializers through the parameter map). Needs the ``onnx`` package.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import TypeVar

import numpy as np

from ..contract import ContractError, InputSpec, StepContract, read_contract, verify_checksum
from .errors import RuntimeInputError
from .session import MAX_STREAMS, StreamSession, check_count, ort_backend, validate_frames

WEIGHT, BIAS = "layers.0.fc_x.weight", "layers.0.fc_x.bias"


def split_input_projection(model_path) -> tuple[bytes, np.ndarray, np.ndarray, str, StepContract]:
    """The graph without the input projection, ``W_x^T`` ``[D, H]`` (rows contiguous), ``c_x``, the new input name, contract."""
    import onnx
    from onnx import numpy_helper

    contract = read_contract(model_path)
    if contract.model_config.get("conv_channels"):
        raise RuntimeInputError("the sparse input projection needs a dense first layer; this model starts with a conv layer")
    w_name, b_name = (contract.parameter_map.get(k, {}).get("initializer") for k in (WEIGHT, BIAS))
    model = onnx.load(str(model_path))  # read_contract refused external data outside the model's folder
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    gemm = next((n for n in g.node if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] == w_name), None)
    if gemm is None or w_name not in inits or (len(gemm.input) > 2 and b_name not in inits):
        raise ContractError(f"{model_path}: no Gemm reads the initializers of {WEIGHT} and {BIAS}; cannot split the input projection")
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
    wt = np.ascontiguousarray(w.T if trans_b else w)  # [D, H]
    bias = numpy_helper.to_array(inits[b_name]).astype(np.float32) if len(gemm.input) > 2 else np.zeros(wt.shape[1], np.float32)
    current = gemm.output[0]
    g.node.remove(gemm)
    _prune(g)
    del g.input[[i.name for i in g.input].index(contract.input.name)]
    batch = contract.input.shape[0]
    g.input.insert(0, onnx.helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, [batch, wt.shape[1]]))
    for name in (w_name, b_name):
        if not any(name in n.input for n in g.node):
            g.initializer.remove(inits[name])
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ContractError(f"{model_path}: the graph without its input projection is not valid ({str(exc).splitlines()[0][:200]})") from None
    split = dataclasses.replace(contract, input=InputSpec(current, (batch, wt.shape[1]), source=contract.input.source))
    return model.SerializeToString(), wt, bias, current, split


def _prune(g) -> None:
    """Drop nodes whose outputs nothing uses (the Flatten that fed the removed Gemm)."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)



def check_active(active, values, streams: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per stream: 1-D integer indices in ``[0, size)`` and, if given, as many finite values
    (float32), else :class:`RuntimeInputError`. Shared by the sparse dense-input and conv sessions."""
    if not isinstance(active, (list, tuple)) or len(active) != streams:
        raise RuntimeInputError(f"need a list of active-input index arrays, one per stream ({streams}), got {type(active).__name__}")
    if values is not None and (not isinstance(values, (list, tuple)) or len(values) != streams):
        raise RuntimeInputError(f"need a list of value arrays, one per stream ({streams}), got {type(values).__name__}")
    out_idx, out_val = [], []
    for s, idx in enumerate(active):
        idx = np.asarray(idx)
        idx = idx.astype(np.intp) if idx.size == 0 else idx
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise RuntimeInputError(f"stream {s}: active inputs must be a 1-D integer index array, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise RuntimeInputError(f"stream {s}: active input indices must lie in [0, {size}), got {idx.min()}..{idx.max()}")
        out_idx.append(idx.astype(np.intp, copy=False))
        if values is not None:
            v = values[s]
            v = None if isinstance(v, np.ma.MaskedArray) else np.asarray(v)
            if v is None or v.shape != idx.shape or v.dtype.kind not in "fiu" or not np.isfinite(v).all():
                raise RuntimeInputError(f"stream {s}: values must be finite numbers, one per active index ({idx.size})")
            out_val.append(v.astype(np.float32, copy=False))
    return out_idx, (out_val if values is not None else None)

_S = TypeVar("_S", bound="FrontEndSession")


class FrontEndSession:
    """What the sessions whose first layer is computed outside the graph share: the rest of the graph
    in a :class:`StreamSession` (``self.session``), one caller at a time (``self._lock``), and state,
    reset and close passed through to that session."""

    session: StreamSession
    contract: StepContract
    _lock: threading.Lock

    def _enter(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise RuntimeInputError("the session is in use by another thread; use one session per thread")

    def reset(self, stream: int | None = None) -> None:
        """The network state back to its initial values."""
        self.session.reset(stream)

    def get_state(self) -> dict[str, np.ndarray]:
        return self.session.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.session.set_state(state)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    def close(self) -> None:
        self.session.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SparseInputSession(FrontEndSession):
    """A :class:`StreamSession` whose first-layer input current is a gather-sum over active inputs."""

    def __init__(self, model_path, streams: int | None = None, threads: int = 1, crossover: float = 0.12, verify: bool = True):
        """``crossover``: above this fraction of active inputs a frame is projected densely (one
        gemv over all of ``W_x``), which is faster there (measured break-even: 15-20 %).
        ``verify``: refuse a model whose graph or weights differ from the exported checksum."""
        if verify:
            verify_checksum(model_path)
        graph, self.wt, self.bias, _, split = split_input_projection(model_path)
        self.frame_shape = read_contract(model_path).input.frame_shape
        fixed = split.batch if isinstance(split.batch, int) else None
        streams = check_count((fixed or 1) if streams is None else streams, "streams", MAX_STREAMS)
        if fixed is not None and streams != fixed:
            raise RuntimeInputError(f"{model_path} was exported for batch {fixed}; re-export with --batch {streams} or --batch dynamic")
        self.session = StreamSession(ort_backend(graph, split, streams, "ort", threads), split)
        self.streams, self.contract = streams, split
        self._current = np.zeros((streams, self.wt.shape[1]), np.float32)
        self._ones = np.ones(self.wt.shape[0], np.float32)
        self.crossover = crossover
        self._lock = threading.Lock()

    def project(self, active: list[np.ndarray], values: list[np.ndarray] | None = None) -> np.ndarray:
        """Input current per stream from flat indices of its active inputs (and their values; 1 if None)."""
        return self._project(*check_active(active, values, self.streams, self.wt.shape[0]))

    def _project(self, active: list[np.ndarray], values: list[np.ndarray] | None) -> np.ndarray:
        out = self._current
        for s, idx in enumerate(active):
            rows = self.wt[idx]  # the gather: k rows of W_x^T, cost proportional to the events
            weights = self._ones[: len(idx)] if values is None else values[s]
            np.dot(weights, rows, out=out[s])  # one BLAS gemv over the gathered rows
            out[s] += self.bias
        return out

    def step_active(self, active: list[np.ndarray], values: list[np.ndarray] | None = None) -> np.ndarray:
        """One step from the active inputs of each stream (checked: indices in range, finite values)."""
        active, values = check_active(active, values, self.streams, self.wt.shape[0])
        self._enter()
        try:
            return self.session.step(self._project(active, values))
        finally:
            self._lock.release()

    def step(self, x: np.ndarray) -> np.ndarray:
        """Same contract as a dense session's ``step``: frames ``[streams, *frame]``."""
        x = validate_frames(x, self.streams, self.frame_shape)
        self._enter()
        try:
            flat = x.reshape(self.streams, -1)
            active = [np.flatnonzero(row) for row in flat]
            if max(len(a) for a in active) > self.crossover * flat.shape[1]:
                np.matmul(flat, self.wt, out=self._current)
                self._current += self.bias
                return self.session.step(self._current)
            return self.session.step(self._project(active, [row[a] for row, a in zip(flat, active)]))
        finally:
            self._lock.release()
