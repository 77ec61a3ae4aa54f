"""Runs ``model.train.onnx`` with ONNX Runtime: every buffer preallocated, two sets swapped per update.

Update ``k`` binds set ``A`` (state, flat weights, ``Wbar``, ``lam``, Adamax moments, step) as
inputs and set ``B`` as outputs; update ``k+1`` the reverse (outputs never alias inputs, as
TensorRT requires too). Each trainable weight input is a view into the flat weight buffer of
its set at the tensor's offset, so ``fptt.weights_out`` of one update is the weights of the
next with no copy. Nothing is allocated per update on the Python side.
"""
from __future__ import annotations

import numpy as np

from ..train_contract import FLAT_IO, LR, MASK, STEP, WEIGHTS_OUT, TrainContract, W, X, Y
from .errors import AdaptationError, BackendUnavailable

FLAT = ("weights", "wbar", "lam", "m", "u")
OUT = "_out"


class TrainStepBackend:
    """``step()`` runs one update on ``x``, ``y``, ``w`` (set them first); ``buffers()`` are the current values."""

    def __init__(self, path, contract: TrainContract, threads: int = 1, backend: str = "ort"):
        import onnxruntime as ort

        from .ort_backend import PROVIDERS, provider_options, session_options, session_providers

        if backend not in ("ort", "ort-cuda"):
            raise BackendUnavailable(f"the train step runs on 'ort' or 'ort-cuda', not {backend!r}")
        if PROVIDERS[backend] not in ort.get_available_providers():
            raise BackendUnavailable(f"{backend}: ONNX Runtime here has no {PROVIDERS[backend]}")
        opts = session_options(ort, threads)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=provider_options(backend, None, False))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types (InvalidGraph, Fail, InvalidProtobuf, ...)
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise AdaptationError(f"{path}: ONNX Runtime cannot load this train-step graph, damaged or foreign "
                                  f"({type(exc).__name__}{': ' + first if first else ''}); export it again with --adapt") from None
        session_providers(self.session, backend)  # refuse a silent fall-back to the CPU
        self.contract, self.path = contract, path
        b, n = contract.batch, contract.size
        self._check_io()  # before anything is allocated: metadata sizes the graph does not have are refused as such
        self.x = np.zeros(contract.x_shape, np.float32)  # [B, *frame], or [B, L, *frame] for chunks of L steps
        self.y = np.zeros((b, contract.num_classes), np.float32)
        self.w = np.zeros(contract.w_shape, np.float32)
        self.mask = np.ones((1, n), np.float32)
        self.lr = np.full(1, contract.hyper.lr, np.float32)
        self.logits = np.zeros(contract.logits_shape, np.float32)
        self._state = [{name: np.zeros((b, *shape), np.float32) for name, shape in contract.states} for _ in range(2)]
        self._flat = [{k: np.zeros((1, n), np.float32) for k in FLAT} for _ in range(2)]
        self._step = [np.zeros(1, np.float32) for _ in range(2)]
        self._bindings = [self._bind(i) for i in range(2)]
        self._current = 0

    def _check_io(self) -> None:
        names = {i.name: [d if isinstance(d, int) else None for d in i.shape] for i in self.session.get_inputs()}
        c, flat = self.contract, [1, self.contract.size]
        want = {X: list(c.x_shape), Y: [c.batch, c.num_classes], W: list(c.w_shape), MASK: flat, STEP: [1], LR: [1],
                **{name: [c.batch, *shape] for name, shape in c.states},
                **{t.name: list(t.shape) for t in c.tensors}, **{FLAT_IO[k]: flat for k in FLAT_IO}}
        # the graph concatenates the weights into fptt.weights_out in its input order: the metadata's offsets must follow it
        # (metadata is outside the checksum; two tensors of one shape swapped there would train each with the other's values)
        order = [name for name in names if name in {t.name for t in self.contract.tensors}]
        if names != want or order != [t.name for t in self.contract.tensors]:
            from ..contract import ContractError

            raise ContractError(f"the train graph's inputs disagree with its metadata: graph {sorted(names.items())[:6]}..., "
                                f"metadata {sorted(want.items())[:6]}...; trainable tensors in graph order {order[:4]}..., "
                                f"in the metadata {[t.name for t in self.contract.tensors][:4]}...")

    def _bind(self, i: int):
        b = self.session.io_binding()
        src, dst = self._flat[i], self._flat[1 - i]

        def bind_in(name: str, arr: np.ndarray, ptr: int | None = None) -> None:
            b.bind_input(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data if ptr is None else ptr)

        def bind_out(name: str, arr: np.ndarray) -> None:
            b.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)

        for name, arr in ((X, self.x), (Y, self.y), (W, self.w), (MASK, self.mask), (LR, self.lr)):
            bind_in(name, arr)
        for name in self._state[i]:
            bind_in(name, self._state[i][name])
            bind_out(name + OUT, self._state[1 - i][name])
        base = src["weights"].ctypes.data
        for t in self.contract.tensors:
            b.bind_input(t.name, "cpu", 0, np.float32, list(t.shape), base + 4 * t.offset)
        bind_out(WEIGHTS_OUT, dst["weights"])
        for k, name in FLAT_IO.items():
            bind_in(name, src[k])
            bind_out(name + OUT, dst[k])
        bind_in(STEP, self._step[i])
        bind_out(STEP + OUT, self._step[1 - i])
        bind_out("logits", self.logits)
        return b

    def step(self) -> None:
        """One FPTT update; the new values land in the other set, which becomes current (a graph ONNX Runtime cannot run
        is one :class:`StepFailed` line, the current set unchanged)."""
        from .ort_backend import run_bound

        run_bound(self.session, self._bindings[self._current], self.path)
        self._current = 1 - self._current

    def buffers(self) -> dict[str, np.ndarray]:
        """The current flat buffers (``weights``, ``wbar``, ``lam``, ``m``, ``u``: ``[1, N]``) and ``step`` ``[1]``: views, not copies."""
        return {**self._flat[self._current], "step": self._step[self._current]}

    def state(self) -> dict[str, np.ndarray]:
        """The current network state (views)."""
        return self._state[self._current]

    def load(self, values: dict[str, np.ndarray]) -> None:
        """Copy ``values`` (any of the buffer names and ``step``) into the current set."""
        cur = self.buffers()
        for k, v in values.items():
            np.copyto(cur[k], v)

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Each trainable tensor as a view of a flat ``[1, N]`` buffer."""
        row = flat.reshape(-1)
        return {t.name: row[t.offset:t.offset + t.size].reshape(t.shape) for t in self.contract.tensors}

    def close(self) -> None:
        self._bindings = []
        self.session = None
