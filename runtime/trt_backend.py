"""Native TensorRT backend (TensorRT 10 and 11, name-based API), state kept on the GPU between steps.

Two device buffer sets hold the state; each step binds one as input and the other as output
(``set_tensor_address``) and swaps. Per step only ``x`` goes up and the logits come down.

CUDA graphs (``cuda_graph=True``): one graph per buffer parity, captured on the first step and
again after every refit (a graph holds the old launch). TensorRT needs one enqueue outside a
capture to flush deferred work first; that warm-up writes into a scratch state set, never
into the live one, so capturing leaves the state exactly as it was. Graphs and their
executables are destroyed when replaced and on :meth:`close` (as are the stream and buffers).

Refit (engine built with REFIT) is by ONNX initializer name and all or nothing: unknown names,
wrong sizes or a refused value change nothing; weights TensorRT reports missing alongside
(``get_missing_weights``, e.g. the other half of a fused Gemm, TensorRT#4299) are supplied
from the current values; a ``refit_cuda_engine`` that fails (which can leave a subset of the
weights applied) is rolled back to the previous values. After a refit the engine is checked
on a probe step against ONNX Runtime on the CPU with the same weights, where the model is at
hand, and rolled back if it disagrees. Every TensorRT and CUDA return value is checked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import StepContract
from ..errors import FpttEdgeError
from .cuda import DeviceBuffer, check, cudart
from .errors import BackendUnavailable, RuntimeInputError

SUPPORTED_MAJORS = (10, 11)


class RefitError(FpttEdgeError, RuntimeError):
    """A refit that was refused or failed; the engine keeps its previous weights (or, where even the
    rollback failed, the backend refuses further steps)."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install 'fptt-edge[gpu]' on a CUDA machine; on a Jetson use "
                                 "JetPack's, see `fptt-edge doctor`)") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__}: the native backend needs TensorRT 10 or 11 (name-based API); use --backend ort-trt")
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailable(f"TensorRT {trt.__version__}: fptt-edge supports TensorRT 10.x and 11.x; pip install 'tensorrt>=10,<12'")
    return trt


def read_build_info(engine_path) -> dict:
    try:
        data = json.loads(Path(str(engine_path) + ".json").read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    build = data.get("build") if isinstance(data, dict) else None
    return build if isinstance(build, dict) else {}


class TensorRTBackend:
    name, device = "tensorrt", "cuda"
    x: np.ndarray
    logits: np.ndarray
    _shapes: dict[str, tuple[int, ...]]
    _current: int

    def __init__(self, engine_path, contract: StepContract, streams: int, cuda_graph: bool = False, build_info: dict | None = None):
        self._closed, self._broken = False, None  # type: bool, str | None
        self._graphs: list | None = None
        self._sets: list[dict[str, DeviceBuffer]] = []
        self._spare: list[dict[str, DeviceBuffer]] = []
        self._x_dev: Any = None
        self._logits_dev: Any = None
        self.stream: Any = None
        self.context: Any = None
        self.engine: Any = None
        self.runtime: Any = None
        trt = import_tensorrt()
        self.trt, self.rt = trt, cudart()
        self.contract, self.streams = contract, streams
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise BackendUnavailable(f"{self.engine_path}: no engine; build one with `fptt-edge build MODEL.onnx --device PROFILE`")
        self.build = dict(build_info if build_info is not None else read_build_info(self.engine_path))
        if cuda_graph and self.build.get("dla"):
            raise RuntimeInputError("CUDA graphs cannot capture DLA work (trtexec turns them off too); open this engine without cuda_graph")
        self.cuda_graph = cuda_graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        try:
            self.runtime = trt.Runtime(self.logger)
        except (RuntimeError, TypeError) as exc:
            raise BackendUnavailable(f"TensorRT cannot start here (no usable GPU?): {exc}") from None
        if self.runtime is None:
            raise BackendUnavailable("TensorRT cannot start here (no usable GPU)")
        try:
            self._open(trt)
        except BaseException:
            self.close()
            raise

    def _open(self, trt) -> None:
        contract, streams = self.contract, self.streams
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            built = self.build.get("built_on") or {}
            raise BackendUnavailable(f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine; it was built with TensorRT "
                                     f"{self.build.get('tensorrt', '?')} on {built.get('name') or built.get('device') or 'another machine'}"
                                     f" (compute capability {built.get('compute_capability', '?')}). Engines are not portable: rebuild "
                                     "it here with `fptt-edge build`")
        io_names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        wanted = {contract.input.name, contract.logits, *[s.name for s in contract.states], *[s.output for s in contract.states]}
        if not wanted <= io_names:
            raise BackendUnavailable(f"{self.engine_path}: the engine has no tensors {sorted(wanted - io_names)[:6]}: it was built from "
                                     "another model than its contract describes; rebuild it")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailable(f"{self.engine_path}: TensorRT cannot create an execution context (out of GPU memory?)")
        self.stream = check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.x = np.zeros((streams, *contract.input.frame_shape), np.float32)
        self.logits = np.zeros((streams, len(contract.class_names)), np.float32)
        self._shapes = {s.name: (streams, *[int(d) for d in s.shape[1:]]) for s in contract.states}
        for name, shape in [(contract.input.name, self.x.shape), *self._shapes.items()]:
            built = tuple(self.engine.get_tensor_shape(name))
            if -1 in built:
                if not self.context.set_input_shape(name, shape):
                    raise RuntimeInputError(f"{self.engine_path}: {streams} stream(s) is outside the engine's optimisation profile for "
                                            f"'{name}' (rebuild with `fptt-edge build` for this many streams)")
            elif built != tuple(shape):
                raise RuntimeInputError(f"{self.engine_path}: '{name}' is {list(built)} in the engine, {list(shape)} for {streams} stream(s)")
        self._x_dev, self._logits_dev = DeviceBuffer(self.x.shape), DeviceBuffer(self.logits.shape)
        self._sets = [self._new_set() for _ in range(2)]
        self._current = 0
        self._weights: dict[str, np.ndarray] = {}  # current values of refitted (and looked-up) weights
        self._onnx_values: dict[str, np.ndarray] | None = None
        self.last_refit: dict = {}

    def _new_set(self) -> dict[str, DeviceBuffer]:
        return {n: DeviceBuffer(shp) for n, shp in self._shapes.items()}

    def _spare_sets(self) -> list[dict[str, DeviceBuffer]]:
        """Two scratch state sets (capture warm-up, refit probe), allocated on first use."""
        while len(self._spare) < 2:
            self._spare.append(self._new_set())
        return self._spare

    # -- running -------------------------------------------------------------------------------

    def _bind(self, src: dict[str, DeviceBuffer], dst: dict[str, DeviceBuffer]) -> None:
        ctx = self.context
        pairs = [(self.contract.input.name, self._x_dev), (self.contract.logits, self._logits_dev)]
        pairs += [(s.name, src[s.name]) for s in self.contract.states] + [(s.output, dst[s.name]) for s in self.contract.states]
        for name, buf in pairs:
            if not ctx.set_tensor_address(name, int(buf.ptr)):
                raise RuntimeError(f"TensorRT refused the address of '{name}'")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _sync(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def _capture(self) -> list:
        """One graph executable per buffer parity. The live state is never written: the warm-up
        enqueue before each capture (it flushes TensorRT's deferred work, which a capture must not
        contain) reads parity ``i``'s input set and writes a scratch set."""
        scratch = self._spare_sets()[0]
        rt, execs = self.rt, []
        try:
            for i in range(2):
                src, dst = self._sets[i], self._sets[1 - i]
                self._bind(src, scratch)
                self._enqueue()
                self._sync()
                self._bind(src, dst)
                check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
                try:
                    ok = self.context.execute_async_v3(int(self.stream))
                finally:
                    graph = check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")  # always end the capture
                try:
                    if not ok:
                        raise RuntimeError("TensorRT execute_async_v3 failed while capturing a CUDA graph (see the TensorRT log)")
                    execs.append(check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
                finally:
                    if graph is not None:
                        check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable keeps what it needs
        except BaseException:
            for e in execs:
                rt.cudaGraphExecDestroy(e)
            raise
        return execs

    def _destroy_graphs(self) -> None:
        graphs, self._graphs = self._graphs, None
        for e in graphs or ():
            check(self.rt.cudaGraphExecDestroy(e), "cudaGraphExecDestroy")

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeInputError("the TensorRT backend is closed")
        if self._broken:
            raise RuntimeError(self._broken)

    def step(self) -> None:
        self._check_usable()
        self._x_dev.upload(self.x, self.stream)
        if self.cuda_graph:
            if self._graphs is None:
                self._graphs = self._capture()
            check(self.rt.cudaGraphLaunch(self._graphs[self._current], self.stream), "cudaGraphLaunch")
        else:
            self._bind(self._sets[self._current], self._sets[1 - self._current])
            self._enqueue()
        self._logits_dev.download(self.logits, self.stream)
        self._sync()
        self._current = 1 - self._current

    def read_state(self) -> dict[str, np.ndarray]:
        self._check_usable()
        return {n: buf.download() for n, buf in self._sets[self._current].items()}

    def write_state(self, name: str, value: np.ndarray, stream: int | None = None) -> None:
        self._check_usable()
        buf = self._sets[self._current][name]
        if stream is None:
            buf.upload(np.broadcast_to(value, buf.shape))
        else:
            row = int(np.prod(buf.shape[1:])) * 4
            buf.upload(np.asarray(value, np.float32).reshape(buf.shape[1:]), offset=stream * row)

    # -- refit ---------------------------------------------------------------------------------

    def refit(self, weights: dict[str, np.ndarray], verify: bool = True) -> list[str]:
        """Push new values of model parameters (names as in the checkpoint) into the engine; returns
        the initializer names refitted. Call between steps, never while work is enqueued."""
        values = {}
        for param, value in weights.items():
            entry = self.contract.parameter_map.get(param)
            if entry is None or entry["initializer"] is None:
                raise KeyError(f"parameter {param!r} has no initializer in this engine (folded or unknown)")
            value = np.asarray(value, np.float32)
            if entry["transform"] == "bn_fold_weight":
                value = value * np.asarray(entry["scale"], np.float32).reshape(-1, *([1] * (value.ndim - 1)))
            elif entry["transform"] == "bn_fold_bias":
                value = value * np.asarray(entry["scale"], np.float32) + np.asarray(entry["shift"], np.float32)
            values[entry["initializer"]] = value
        return self.refit_initializers(values, verify=verify)

    def set_initializers(self, values: dict[str, np.ndarray]) -> str:
        """New values by initializer name (what the on-device learner trains, BN already folded): a refit."""
        self.refit_initializers(values)
        return "refit"

    def _prototype(self, refitter, name: str) -> tuple[type, int] | None:
        """(numpy dtype, element count) TensorRT expects for weights ``name`` (None: not available)."""
        get = getattr(refitter, "get_weights_prototype", None)
        if get is None:
            return None
        proto = get(name)
        if proto is None or int(proto.size) < 0:
            return None
        try:
            dtype = np.dtype(self.trt.nptype(proto.dtype))
        except (TypeError, AttributeError):
            dtype = np.dtype(np.float32)
        return dtype, int(proto.size)

    def _staged(self, refitter, name: str, value) -> np.ndarray:
        """``value`` as the contiguous array TensorRT takes for ``name``, or ValueError (nothing is applied yet)."""
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            raise ValueError(f"new values of {name} must be finite floats")
        proto = self._prototype(refitter, name)
        dtype, count = proto if proto else (np.dtype(np.float32), value.size)
        if value.size != count:
            raise ValueError(f"{name}: {value.size} values given, the engine holds {count}")
        return np.ascontiguousarray(value, dtype=dtype)

    def _onnx_initializers(self) -> dict[str, np.ndarray]:
        """The initializers of the ONNX graph the engine was built from (its contract names it and its hash), for weights a
        refit needs but was not given and for rollbacks; empty where that graph is not at hand."""
        if self._onnx_values is None:
            self._onnx_values = {}
            name, sha = self.build.get("onnx"), self.build.get("onnx_sha256")
            path = self.engine_path.parent / name if name else None
            if path is not None and path.is_file():
                try:
                    import onnx
                    from onnx import numpy_helper

                    from ..io import file_sha256

                    if sha is None or file_sha256(path) == sha:
                        model = onnx.load(str(path))
                        self._onnx_values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
                except ImportError:
                    pass
        return self._onnx_values

    def _current_value(self, name: str) -> np.ndarray | None:
        if name in self._weights:
            return self._weights[name]
        return self._onnx_initializers().get(name)

    def _refitter(self):
        """A refitter on the engine (TensorRT refuses one for an engine built without REFIT)."""
        try:
            refitter = self.trt.Refitter(self.engine, self.logger)
        except (RuntimeError, TypeError):
            refitter = None
        if refitter is None:
            raise RefitError(f"{self.engine_path} is not refittable: build it with `fptt-edge build --refit`")
        return refitter

    def _apply(self, values: dict[str, np.ndarray]) -> tuple[bool, dict[str, np.ndarray], list[str]]:
        """One refitter pass: set ``values``, supply the weights TensorRT reports missing alongside from
        their current values, refit. Returns (refit ok, the companions supplied, names still missing)."""
        trt = self.trt
        refitter = self._refitter()
        keep, companions = [], {}
        for name, value in values.items():
            keep.append(value)
            if not refitter.set_named_weights(name, trt.Weights(value)):
                raise RefitError(f"TensorRT refused the new values of {name} (type or size differ from the build); nothing was changed")
        for name in list(refitter.get_missing_weights()):
            current = self._current_value(name)
            if current is None:
                continue
            staged = self._staged(refitter, name, current)
            keep.append(staged)
            if not refitter.set_named_weights(name, trt.Weights(staged)):
                raise RefitError(f"TensorRT refused the current values of {name}; nothing was changed")
            companions[name] = staged
        missing = list(refitter.get_missing_weights())
        if missing:
            return False, companions, missing
        ok = bool(refitter.refit_cuda_engine())
        del keep  # TensorRT read the values during refit_cuda_engine
        return ok, companions, []

    def refit_initializers(self, values: dict[str, np.ndarray], verify: bool = True) -> list[str]:
        """Refit the engine's weights by ONNX initializer name, all or nothing; returns the names refitted.

        ``verify``: afterwards compare a probe step with ONNX Runtime (CPU) on the same weights, and
        roll back if they disagree (skipped, and said so in :attr:`last_refit`, where the model or
        onnxruntime is not at hand)."""
        self._check_usable()
        self._sync()
        refitter = self._refitter()
        refittable = set(refitter.get_all_weights())
        if not refittable:
            raise RefitError(f"{self.engine_path} is not refittable: build it with `fptt-edge build --refit`")
        unknown = sorted(set(values) - refittable)
        if unknown:
            raise KeyError(f"not refittable weights of this engine: {unknown[:6]} (unknown names, or folded into other weights by TensorRT)")
        staged = {name: self._staged(refitter, name, value) for name, value in values.items()}
        del refitter
        previous = {name: self._current_value(name) for name in staged}
        before = dict(self._weights)
        ok, companions, missing = self._apply(staged)
        if missing:
            raise RefitError(f"refit refused: TensorRT also needs {missing[:6]} and their current values are not known "
                             f"(the ONNX model {self.build.get('onnx', '?')} is not beside the engine); nothing was changed")
        if not ok:
            self._rollback(previous, before, "TensorRT refit_cuda_engine failed")
        self._weights.update(staged)
        self._weights.update(companions)
        self._destroy_graphs()  # the graphs hold the old launch: re-captured on the next step
        self.last_refit = {"refitted": sorted(staged), "companions": sorted(companions), "verified": None}
        if verify:
            problem = self._verify_refit()
            if problem:
                self._rollback(previous, before, f"the refitted engine disagrees with ONNX Runtime ({problem})")
        return list(staged)

    def _rollback(self, previous: dict[str, np.ndarray | None], before: dict[str, np.ndarray], reason: str) -> None:
        """Restore ``previous`` values after a failed refit (weights known before it: ``before``), then raise :class:`RefitError`."""
        self._weights = dict(before)
        unknown = [n for n, v in previous.items() if v is None]
        restored = False
        if not unknown:
            refitter = self._refitter()
            restore = {n: self._staged(refitter, n, v) for n, v in previous.items()}
            del refitter
            try:
                restored, _, missing = self._apply(restore)
                restored = restored and not missing
            except RefitError:
                restored = False
        self._destroy_graphs()
        if restored:
            raise RefitError(f"{reason}; the previous weights were restored")
        self._broken = (f"{reason}, and the previous weights could not be restored"
                        f"{' (their values are not known: ' + ', '.join(unknown[:4]) + ')' if unknown else ''}: the engine's "
                        "weights are inconsistent; reopen the session")
        raise RefitError(self._broken)

    def _probe_frames(self) -> np.ndarray:
        """Row 0 zeros (biases alone), the others sparse random events."""
        frames = (np.random.default_rng(0).random(self.x.shape) < 0.2).astype(np.float32)
        frames[0] = 0.0
        return frames

    def probe(self, x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """The logits of one step from ``state`` on ``x``, in scratch buffers: the live state, the
        logits buffer and ``self.x`` are left as they were."""
        self._check_usable()
        src, dst = self._spare_sets()
        for name, buf in src.items():
            buf.upload(np.broadcast_to(state[name], buf.shape))
        self._x_dev.upload(np.asarray(x, np.float32), self.stream)  # step() uploads self.x again
        self._bind(src, dst)
        self._enqueue()
        out = self._logits_dev.download(np.empty_like(self.logits), self.stream)
        self._sync()
        return out

    def _verify_refit(self) -> str | None:
        """None if a probe step agrees with ONNX Runtime (CPU) on the engine's current weights, else the difference."""
        name = self.build.get("model") or self.build.get("onnx")
        model = self.engine_path.parent / name if name else None
        if model is None or not model.is_file():
            self.last_refit["verified"] = "skipped: the ONNX model is not beside the engine"
            return None
        try:
            import onnx

            from .ort_backend import OrtBackend
        except ImportError:
            self.last_refit["verified"] = "skipped: onnxruntime or onnx is not installed"
            return None
        names = {i.name for i in onnx.load(str(model), load_external_data=False).graph.initializer}
        inits = {n: np.asarray(v, np.float32) for n, v in self._weights.items() if n in names}
        ref = OrtBackend(str(model), self.contract, self.streams, "ort", initializers=inits)
        state = {s.name: s.initial(self.streams) for s in self.contract.states}
        frames = self._probe_frames()
        for n, v in state.items():
            ref.write_state(n, v)
        np.copyto(ref.x, frames)
        ref.step()
        got = self.probe(frames, state)
        want = ref.logits
        fp16 = self.build.get("precision") == "fp16"
        tol = (0.1 if fp16 else 1e-3) * max(1.0, float(np.abs(want).max()))
        diff = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
        self.last_refit["verified"] = {"max_abs_logits": diff, "tolerance": tol}
        return None if diff <= tol else f"max |delta logits| {diff:.3g} > {tol:.3g} on a probe step"

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy the CUDA graphs, free the buffers and the stream, release the context, engine and runtime (in that order)."""
        if self._closed:
            return
        self._closed = True
        rt = getattr(self, "rt", None)
        try:
            if self._graphs and rt is not None:
                for e in self._graphs:
                    rt.cudaGraphExecDestroy(e)
            self._graphs = None
            for buf in [self._x_dev, self._logits_dev, *[b for s in [*self._sets, *self._spare] for b in s.values()]]:
                if buf is not None:
                    buf.free()
            self._sets, self._spare = [], []
            if self.stream is not None and rt is not None:
                rt.cudaStreamDestroy(self.stream)
        finally:
            self.stream = None
            self.context = None  # the context before the engine, the engine before the runtime
            self.engine = None
            self.runtime = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
