"""ONNX Runtime backend: one session, state in two preallocated buffer sets swapped each step.

Step ``k`` binds state set ``A`` as inputs and ``B`` as outputs, step ``k+1`` the reverse, so
nothing is allocated or copied per step beyond writing ``x`` into its bound buffer. On the CPU
provider the buffers are numpy arrays bound by pointer; on the CUDA and TensorRT providers they
are device OrtValues and only ``x`` and the logits cross the bus.

GPU providers are checked on the session itself: ONNX Runtime lists CUDA and TensorRT among its
available providers whenever onnxruntime-gpu is installed, but falls back to the CPU, with only
a logged warning, when their libraries (CUDA, cuDNN, TensorRT) fail to load; such a session is
refused here (:class:`BackendUnavailable`), so a ``ort-cuda`` row never measures the CPU.
TF32 is off unless asked for (``tf32=True``): FP32 results then match PyTorch and the CPU to
~1e-6 instead of ~1e-3 on Ampere and newer GPUs.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..contract import StepContract
from .errors import BackendUnavailable, StepFailed

PROVIDERS = {
    "ort": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
TF32_ENV = "NVIDIA_TF32_OVERRIDE"
LOG_ERRORS_ONLY = 3
"""ONNX Runtime's ``log_severity_level`` for every session made here: its own warnings (shape-merge notes, provider
hints) are not the user's to act on and broke the one-line errors; what matters is checked (providers) or raised."""


def session_options(ort, threads: int):
    """``SessionOptions`` for one sequential stream: ``threads`` intra-op threads, ONNX Runtime's log at errors only."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = LOG_ERRORS_ONLY
    return opts


def _ort_version() -> tuple[int, int]:
    try:
        import onnxruntime as ort

        return tuple(int(p) for p in ort.__version__.split(".")[:2])  # type: ignore[return-value]
    except (ImportError, ValueError):
        return (0, 0)


def cuda_options(tf32: bool = False) -> dict[str, str]:
    """CUDA provider options: ``use_tf32`` (ONNX Runtime >= 1.18) explicit, off unless asked for."""
    opts = {"cudnn_conv_algo_search": "HEURISTIC"}
    if _ort_version() >= (1, 18):
        opts["use_tf32"] = "1" if tf32 else "0"
    return opts


def provider_options(backend: str, cache_dir: str | None, fp16: bool, tf32: bool = False) -> list:
    """The provider list for ``backend`` (with the CPU provider as the fall-back for unsupported nodes)."""
    if backend == "ort-trt":
        opts: dict[str, object] = {"trt_fp16_enable": fp16, "trt_cuda_graph_enable": False}
        if cache_dir:
            opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir,
                     "trt_timing_cache_enable": True, "trt_timing_cache_path": cache_dir}
        return [("TensorrtExecutionProvider", opts), ("CUDAExecutionProvider", cuda_options(tf32)), "CPUExecutionProvider"]
    if backend == "ort-cuda":
        return [("CUDAExecutionProvider", cuda_options(tf32)), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def tf32_in_effect(backend: str, tf32: bool) -> bool | None:
    """Whether FP32 math on ``backend`` may use TF32 (None: cannot say). The TensorRT provider has no
    TF32 option: only ``NVIDIA_TF32_OVERRIDE=0``, read when the CUDA libraries start, turns it off."""
    if backend == "ort":
        return False
    if backend == "ort-trt":
        return os.environ.get(TF32_ENV) != "0"
    return tf32 if _ort_version() >= (1, 18) else (None if os.environ.get(TF32_ENV) != "0" else False)


def session_providers(session, backend: str) -> list[str]:
    """The providers ``session`` really got; :class:`BackendUnavailable` where ONNX Runtime fell back from ``backend``'s."""
    got = list(session.get_providers())
    wanted = PROVIDERS[backend]
    if wanted not in got:
        raise BackendUnavailable(f"{backend}: ONNX Runtime could not start {wanted} and fell back to {got} (its CUDA, cuDNN or "
                                 "TensorRT libraries failed to load: see ONNX Runtime's warnings; `fptt-edge doctor` checks the install)")
    return got


class OrtBackend:
    """Steps an exported model with ONNX Runtime; ``streams`` is the batch size bound."""

    def __init__(self, model, contract: StepContract, streams: int, backend: str = "ort", threads: int = 1,
                 cache_dir: str | None = None, fp16: bool = False, initializers: dict[str, np.ndarray] | None = None, *,
                 tf32: bool = False):
        import onnxruntime as ort

        wanted = PROVIDERS.get(backend)
        if wanted is None:
            raise BackendUnavailable(f"unknown ONNX Runtime backend {backend!r}; choose from {sorted(PROVIDERS)}")
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(f"{backend}: ONNX Runtime here has no {wanted} (available: {ort.get_available_providers()}); "
                                     "install onnxruntime-gpu on a CUDA machine (on a Jetson: NVIDIA's wheel, see the README)")
        if backend == "ort-trt" and not tf32:
            os.environ.setdefault(TF32_ENV, "0")  # the TensorRT provider's only TF32 switch; a user's own setting wins
        opts = session_options(ort, threads)
        # User-owned initializers (on-device adaptation): ONNX Runtime reads these arrays in place on
        # the CPU, so new weights need no rebuild; pre-packing would keep a stale packed copy, so it is off.
        self.initializers = {n: np.ascontiguousarray(v, np.float32).copy() for n, v in (initializers or {}).items()}
        self._init_values = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in self.initializers.items()}
        if self.initializers:
            opts.add_session_config_entry("session.disable_prepacking", "1")
            for n, v in self._init_values.items():
                opts.add_initializer(n, v)
        self._opts, self._providers, self._model = opts, provider_options(backend, cache_dir, fp16, tf32), model
        self.session = ort.InferenceSession(model, opts, providers=self._providers)
        self.providers = session_providers(self.session, backend)
        self.tf32 = tf32_in_effect(backend, tf32)
        self.name, self.contract, self.streams = backend, contract, streams
        self.device = "cpu" if backend == "ort" else "cuda"
        shapes = {s.name: (streams, *[int(d) for d in s.shape[1:]]) for s in contract.states}
        self.x = np.zeros((streams, *contract.input.frame_shape), np.float32)
        self.logits = np.zeros((streams, len(contract.class_names)), np.float32)
        if self.device == "cpu":
            self._sets: list[dict[str, Any]] = [{n: np.zeros(shp, np.float32) for n, shp in shapes.items()} for _ in range(2)]
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
        self.providers = session_providers(self.session, self.name)
        self._bindings = [self._bind(i) for i in range(2)]
        for n, v in state.items():
            self.write_state(n, v)
        return "rebuild"

    def step(self) -> None:
        """Run one step on ``self.x``; logits land in ``self.logits``, the new state in the other set."""
        if self.device != "cpu":
            self._x_dev.update_inplace(self.x)
        run_bound(self.session, self._bindings[self._current], self._model)
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


def run_bound(session, binding, model) -> None:
    """``session.run_with_iobinding(binding)``; ONNX Runtime's failure to execute becomes one :class:`StepFailed` line
    (the outputs are bound to the other state set, so the current state is unchanged)."""
    try:
        session.run_with_iobinding(binding)
    except Exception as exc:
        if not isinstance(exc, RuntimeError) and not type(exc).__module__.startswith("onnxruntime"):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[0] if lines else type(exc).__name__)[:400]
        raise StepFailed(f"{model}: ONNX Runtime could not run the step ({detail}); does the graph compute what its metadata declares? "
                         "State unchanged") from None


def _with_row(full: np.ndarray, row: int, value: np.ndarray) -> np.ndarray:
    full[row] = value
    return full
