"""ONNX Runtime backend: one session, state in two preallocated buffer sets swapped each step.

Step ``k`` binds state set ``A`` as inputs and ``B`` as outputs, step ``k+1`` the reverse, so
nothing is allocated or copied per step beyond writing ``x`` into its bound buffer. On the CPU
provider the buffers are numpy arrays bound by pointer; on the CUDA and TensorRT providers they
are device OrtValues and only ``x`` and the logits cross the bus.
"""
from __future__ import annotations

import numpy as np

from ..contract import StepContract
from .errors import BackendUnavailable

PROVIDERS = {
    "ort": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


def provider_options(backend: str, cache_dir: str | None, fp16: bool) -> list:
    """The provider list for ``backend`` (with the CPU provider as the fall-back for unsupported nodes)."""
    if backend == "ort-trt":
        opts = {"trt_fp16_enable": fp16, "trt_cuda_graph_enable": False}
        if cache_dir:
            opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir,
                     "trt_timing_cache_enable": True, "trt_timing_cache_path": cache_dir}
        return [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
    if backend == "ort-cuda":
        return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtBackend:
    """Steps an exported model with ONNX Runtime; ``streams`` is the batch size bound."""

    def __init__(self, model, contract: StepContract, streams: int, backend: str = "ort", threads: int = 1,
                 cache_dir: str | None = None, fp16: bool = False, initializers: dict[str, np.ndarray] | None = None):
        import onnxruntime as ort

        wanted = PROVIDERS.get(backend)
        if wanted is None:
            raise BackendUnavailable(f"unknown ONNX Runtime backend {backend!r}; choose from {sorted(PROVIDERS)}")
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(f"{backend}: ONNX Runtime here has no {wanted} (available: {ort.get_available_providers()}); "
                                     "install onnxruntime-gpu on a CUDA machine")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # User-owned initializers (on-device adaptation): ONNX Runtime reads these arrays in place on
        # the CPU, so new weights need no rebuild; pre-packing would keep a stale packed copy, so it is off.
        self.initializers = {n: np.ascontiguousarray(v, np.float32).copy() for n, v in (initializers or {}).items()}
        self._init_values = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in self.initializers.items()}
        if self.initializers:
            opts.add_session_config_entry("session.disable_prepacking", "1")
            for n, v in self._init_values.items():
                opts.add_initializer(n, v)
        self._opts, self._providers, self._model = opts, provider_options(backend, cache_dir, fp16), model
        self.session = ort.InferenceSession(model, opts, providers=self._providers)
        self.name, self.contract, self.streams = backend, contract, streams
        self.device = "cpu" if backend == "ort" else "cuda"
        shapes = {s.name: (streams, *[int(d) for d in s.shape[1:]]) for s in contract.states}
        self.x = np.zeros((streams, *contract.input.frame_shape), np.float32)
        self.logits = np.zeros((streams, len(contract.class_names)), np.float32)
        if self.device == "cpu":
            self._sets = [{n: np.zeros(shp, np.float32) for n, shp in shapes.items()} for _ in range(2)]
        else:
            self._sets = [{n: ort.OrtValue.ortvalue_from_numpy(np.zeros(shp, np.float32), "cuda", 0) for n, shp in shapes.items()}
                          for _ in range(2)]
            self._x_dev = ort.OrtValue.ortvalue_from_numpy(self.x, "cuda", 0)
        self._bindings = [self._bind(i) for i in range(2)]
        self._current = 0

    def _bind(self, i: int):
        b = self.session.io_binding()
        src, dst = self._sets[i], self._sets[1 - i]
        inp = self.contract.input.name
        if self.device == "cpu":
            b.bind_input(inp, "cpu", 0, np.float32, self.x.shape, self.x.ctypes.data)
            for s in self.contract.states:
                b.bind_input(s.name, "cpu", 0, np.float32, src[s.name].shape, src[s.name].ctypes.data)
                b.bind_output(s.output, "cpu", 0, np.float32, dst[s.name].shape, dst[s.name].ctypes.data)
        else:
            b.bind_ortvalue_input(inp, self._x_dev)
            for s in self.contract.states:
                b.bind_ortvalue_input(s.name, src[s.name])
                b.bind_ortvalue_output(s.output, dst[s.name])
        b.bind_output(self.contract.logits, "cpu", 0, np.float32, self.logits.shape, self.logits.ctypes.data)
        return b

    def set_initializers(self, values: dict[str, np.ndarray]) -> str:
        """New values for user-owned initializers: written in place on the CPU provider (the session
        reads them at the next step), or by rebuilding the session on GPU providers (which copied
        them to the device). Returns ``"inplace"`` or ``"rebuild"``."""
        for n, v in values.items():
            np.copyto(self.initializers[n], v)
        if self.device == "cpu":
            return "inplace"
        import onnxruntime as ort

        state = self.read_state()
        self.session = ort.InferenceSession(self._model, self._opts, providers=self._providers)
        self._bindings = [self._bind(i) for i in range(2)]
        for n, v in state.items():
            self.write_state(n, v)
        return "rebuild"

    def step(self) -> None:
        """Run one step on ``self.x``; logits land in ``self.logits``, the new state in the other set."""
        if self.device != "cpu":
            self._x_dev.update_inplace(self.x)
        self.session.run_with_iobinding(self._bindings[self._current])
        self._current = 1 - self._current

    def state_views(self) -> dict[str, np.ndarray]:
        """The current state set itself (CPU provider only; no copy): valid until the next step."""
        if self.device != "cpu":
            return self.read_state()
        return self._sets[self._current]

    def read_state(self) -> dict[str, np.ndarray]:
        cur = self._sets[self._current]
        return {n: (v.copy() if self.device == "cpu" else v.numpy()) for n, v in cur.items()}

    def write_state(self, name: str, value: np.ndarray, stream: int | None = None) -> None:
        """Overwrite state ``name`` (all streams, or one ``stream`` row) in the current set."""
        cur = self._sets[self._current]
        if self.device == "cpu":
            if stream is None:
                np.copyto(cur[name], value)
            else:
                cur[name][stream] = value
        else:
            full = value if stream is None else _with_row(cur[name].numpy(), stream, value)
            cur[name].update_inplace(np.ascontiguousarray(full, dtype=np.float32))

    def close(self) -> None:
        """Drop the session, its bindings and device buffers (ONNX Runtime frees them with the last reference)."""
        self._bindings = []
        self._sets = []
        self._init_values = {}
        self.session = None


def _with_row(full: np.ndarray, row: int, value: np.ndarray) -> np.ndarray:
    full[row] = value
    return full
