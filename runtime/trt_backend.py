"""Native TensorRT backend (TensorRT 10 name-based API), state kept on the GPU between steps.

Two device buffer sets hold the state; each step binds one as input and the other as output
(``set_tensor_address``) and swaps. Per step only ``x`` goes up and the logits come down.
With ``cuda_graph=True`` one CUDA graph per buffer parity is captured and replayed (and
re-captured after a refit). ``refit`` pushes new weights, named by model parameter, into
the engine through the parameter -> initializer map of the contract (engine built with REFIT).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import StepContract
from .cuda import DeviceBuffer, check, cudart
from .errors import BackendUnavailable


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install 'fptt-edge[gpu]' on a CUDA machine, or use JetPack's)") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__}: the native backend needs TensorRT >= 10 (name-based API); use --backend ort-trt")
    return trt


class TensorRTBackend:
    def __init__(self, engine_path, contract: StepContract, streams: int, cuda_graph: bool = False):
        trt = import_tensorrt()
        self.trt, self.rt = trt, cudart()
        self.name, self.device, self.contract, self.streams = "tensorrt", "cuda", contract, streams
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise BackendUnavailable(f"{engine_path}: no engine; build one with `fptt-edge build MODEL.onnx --device PROFILE`")
        self.logger = trt.Logger(trt.Logger.WARNING)
        try:
            self.runtime = trt.Runtime(self.logger)
        except (RuntimeError, TypeError) as exc:
            raise BackendUnavailable(f"TensorRT cannot start here (no usable GPU?): {exc}") from None
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{engine_path}: TensorRT {trt.__version__} cannot load this engine (built for another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = check(self.rt.cudaStreamCreate())
        inp = contract.input.name
        self.x = np.zeros((streams, *contract.input.frame_shape), np.float32)
        self.logits = np.zeros((streams, len(contract.class_names)), np.float32)
        shapes = {s.name: (streams, *[int(d) for d in s.shape[1:]]) for s in contract.states}
        for name, shape in [(inp, self.x.shape), *shapes.items()]:
            if -1 in tuple(self.engine.get_tensor_shape(name)):
                self.context.set_input_shape(name, shape)
        self._x_dev, self._logits_dev = DeviceBuffer(self.x.shape), DeviceBuffer(self.logits.shape)
        self._sets = [{n: DeviceBuffer(shp) for n, shp in shapes.items()} for _ in range(2)]
        self._current = 0
        self.cuda_graph = cuda_graph
        self._graphs: list | None = None

    def _bind(self, i: int) -> None:
        ctx, src, dst = self.context, self._sets[i], self._sets[1 - i]
        ctx.set_tensor_address(self.contract.input.name, int(self._x_dev.ptr))
        ctx.set_tensor_address(self.contract.logits, int(self._logits_dev.ptr))
        for s in self.contract.states:
            ctx.set_tensor_address(s.name, int(src[s.name].ptr))
            ctx.set_tensor_address(s.output, int(dst[s.name].ptr))

    def _capture(self) -> list:
        graphs = []
        for i in range(2):
            self._bind(i)
            self.context.execute_async_v3(int(self.stream))  # flush deferred updates before capture
            check(self.rt.cudaStreamSynchronize(self.stream))
            check(self.rt.cudaStreamBeginCapture(self.stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self.context.execute_async_v3(int(self.stream))
            graph = check(self.rt.cudaStreamEndCapture(self.stream))
            graphs.append(check(self.rt.cudaGraphInstantiate(graph, 0)))
        return graphs

    def step(self) -> None:
        self._x_dev.upload(self.x, self.stream)
        if self.cuda_graph:
            if self._graphs is None:
                self._graphs = self._capture()
            check(self.rt.cudaGraphLaunch(self._graphs[self._current], self.stream))
        else:
            self._bind(self._current)
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self._logits_dev.download(self.logits, self.stream)
        check(self.rt.cudaStreamSynchronize(self.stream))
        self._current = 1 - self._current

    def read_state(self) -> dict[str, np.ndarray]:
        return {n: buf.download() for n, buf in self._sets[self._current].items()}

    def write_state(self, name: str, value: np.ndarray, stream: int | None = None) -> None:
        buf = self._sets[self._current][name]
        if stream is None:
            buf.upload(np.broadcast_to(value, buf.shape))
        else:
            row = int(np.prod(buf.shape[1:])) * 4
            buf.upload(np.asarray(value, np.float32).reshape(buf.shape[1:]), offset=stream * row)

    def refit(self, weights: dict[str, np.ndarray]) -> list[str]:
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
        return self.refit_initializers(values)

    def set_initializers(self, values: dict[str, np.ndarray]) -> str:
        """New values by initializer name (what the on-device learner trains, BN already folded): a refit."""
        self.refit_initializers(values)
        return "refit"

    def refit_initializers(self, values: dict[str, np.ndarray]) -> list[str]:
        """Refit the engine's weights by ONNX initializer name; returns the names refitted."""
        trt = self.trt
        check(self.rt.cudaStreamSynchronize(self.stream))
        refitter = trt.Refitter(self.engine, self.logger)
        keep_alive, done = [], []
        for name, value in values.items():
            value = np.ascontiguousarray(value, np.float32)
            keep_alive.append(value)
            if not refitter.set_named_weights(name, trt.Weights(value)):
                raise RuntimeError(f"TensorRT refused weights for {name} (engine built without --refit?)")
            done.append(name)
        missing = refitter.get_missing_weights()
        if missing:
            raise RuntimeError(f"refit incomplete, TensorRT also needs: {missing}")
        if not refitter.refit_cuda_engine():
            raise RuntimeError("TensorRT refit_cuda_engine failed")
        self._graphs = None  # CUDA graphs hold the old launch: re-capture on the next step
        return done

    def __del__(self):
        for buf in [getattr(self, "_x_dev", None), getattr(self, "_logits_dev", None),
                    *[b for s in getattr(self, "_sets", []) for b in s.values()]]:
            if buf is not None:
                buf.free()
