"""A fake ``tensorrt`` module (10.x or 11.x API surface) over a fake CUDA runtime.

The builder parses the ONNX file with ``onnx`` into one layer per node, named after the node
(as the ONNX parser does), with the node's output types (the threshold compare's is BOOL), plus
one CONSTANT layer per initializer. The build checks what TensorRT checks: precision constraints
on a non-float output or a Cast fail under OBEY, PREFER and OBEY together fail (as with
trtexec's ``--useDLACore``), a DLA build without FP16 puts every layer on the GPU, TensorRT 11
has no FP16 flag and no layer precision. The engine runs the ONNX graph with ONNX Runtime on
the CPU, reading its inputs from and writing its outputs to fake device memory at the bound
addresses; an enqueue on a capturing stream is recorded with the addresses and weights of that
moment, like a kernel launch in a CUDA graph (so a graph captured before a refit keeps the old
weights). Refits check names, types and sizes against the weights' prototypes, report
companion weights as missing (the bias of a Gemm whose weight is set: TensorRT#4299), and can
be told to fail after applying part of the weights (``knobs['fail_refit']``), as
``refit_cuda_engine`` may."""
from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import numpy as np


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL}
NP_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
            DataType.INT64: np.int64, DataType.BOOL: np.bool_}


def make_tensorrt(version: str, cuda, *, builder_fails: bool = False, dla_cores: int = 0, fail_refit: int = 0,
                  companions: bool = True, bad_parse: bool = False, log: list | None = None) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module. ``cuda``: the fake CUDA runtime whose memory the engines use."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (what, details) of every builder/config/refit call of note
    trt.knobs = {"fail_refit": fail_refit, "companions": companions}
    trt.log = log if log is not None else []
    trt.DataType = DataType
    trt.float32, trt.float16, trt.int8, trt.int32, trt.int64, trt.bool = (DataType.FLOAT, DataType.HALF, DataType.INT8,
                                                                           DataType.INT32, DataType.INT64, DataType.BOOL)
    trt.nptype = lambda t: NP_TYPES[t]

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity=2):
            self.severity = severity

    flag_names = ["TF32", "REFIT", "GPU_FALLBACK", "DEBUG", "REFIT_IDENTICAL", "STRIP_PLAN"]
    if major < 11:
        flag_names += ["FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"]
    BuilderFlag = enum.Enum("BuilderFlag", flag_names)
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                 {"STRONGLY_TYPED": 0} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})

    class DeviceType(enum.Enum):
        GPU = 0
        DLA = 1

    class Weights:
        def __init__(self, a):
            self.array = np.ascontiguousarray(a)
            self.dtype = {v: k for k, v in NP_TYPES.items()}[self.array.dtype.type]
            self.size = self.array.size

    class Tensor:
        def __init__(self, name, dtype):
            self.name, self.dtype = name, dtype

    class Layer:
        def __init__(self, name, op, outputs):
            self.name, self.type, self._outputs = name, op, outputs
            self.output_types: dict[int, DataType] = {}
            self._precision = None

        num_outputs = property(lambda self: len(self._outputs))

        def get_output(self, j):
            return self._outputs[j]

        if major < 11:
            @property
            def precision(self):
                return self._precision or DataType.FLOAT

            @precision.setter
            def precision(self, dt):
                self._precision = dt
                trt.calls.append(("precision", self.name))

            def set_output_type(self, j, dt):
                self.output_types[j] = dt
                trt.calls.append(("output_type", self.name))

    class Network:
        def __init__(self, flags):
            self.flags, self.layers, self.onnx = flags, [], None

        num_layers = property(lambda self: len(self.layers))

        def get_layer(self, i):
            return self.layers[i]

        def __iter__(self):
            return iter(self.layers)

    class ParserError:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

        def __str__(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            trt.calls.append(("parse", Path(path).name))
            model = onnx.load(str(path))
            if bad_parse:
                self.errors.append(ParserError("In node 0 (importFake): UNSUPPORTED_NODE: fake parser refuses this graph"))
                return False
            inferred = onnx.shape_inference.infer_shapes(model)
            types_ = {i.name: i.data_type for i in inferred.graph.initializer}
            for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
                types_[vi.name] = vi.type.tensor_type.elem_type
            for init in model.graph.initializer:
                self.network.layers.append(Layer(init.name, "CONSTANT", [Tensor(init.name, ONNX_TYPES[init.data_type])]))
            for node in model.graph.node:
                self.network.layers.append(Layer(node.name, node.op_type, [Tensor(o, ONNX_TYPES.get(types_.get(o), DataType.FLOAT))
                                                                           for o in node.output]))
            self.network.onnx = str(path)
            return True

        parse = None  # build_engine must parse from the file (external data beside it)

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob) or b"FAKECACHE:fresh"

        def serialize(self):
            return memoryview(self.blob + b"+used")

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, mid, hi):
            self.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))

    class Config:
        def __init__(self):
            self.flags = {BuilderFlag.TF32}  # TensorRT enables TF32 by default
            self.cache, self.profiles, self.device_types = None, [], {}
            self.default_device_type, self.DLA_core = DeviceType.GPU, -1

        def set_flag(self, f):
            self.flags.add(f)
            trt.calls.append(("set_flag", f.name))

        def clear_flag(self, f):
            self.flags.discard(f)
            trt.calls.append(("clear_flag", f.name))

        def get_flag(self, f):
            return f in self.flags

        def create_timing_cache(self, blob):
            blob = bytes(blob)
            if blob and not blob.startswith(b"FAKECACHE"):
                return None  # corrupt
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            trt.calls.append(("set_timing_cache", bytes(cache.blob[:20])))
            if b"STALE" in cache.blob and not ignore_mismatch:
                return False  # built by another TensorRT/GPU: refused, and the config keeps no cache
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def set_device_type(self, layer, dt):
            self.device_types[layer.name] = dt

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            if builder_fails or not cuda.devices:
                raise TypeError("pybind11::init(): factory function returned nullptr")  # what TensorRT does without a GPU
            self.num_DLA_cores = dla_cores
            self.platform_has_tf32 = True

        def create_network(self, flags=0):
            if major < 11 and flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)):
                trt.calls.append(("strongly_typed", True))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            fp16 = getattr(BuilderFlag, "FP16", None) in config.flags
            obey = getattr(BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) in config.flags
            prefer = getattr(BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", None) in config.flags
            if obey and prefer:
                trt.log.append("Error: PREFER_PRECISION_CONSTRAINTS cannot be set if OBEY_PRECISION_CONSTRAINTS is set")
                return None
            constrained = []
            for layer in network.layers:
                if layer._precision is None and not layer.output_types:
                    continue
                bad = [j for j, dt in layer.output_types.items() if layer.get_output(j).dtype not in (DataType.FLOAT, DataType.HALF)]
                if layer.type in ("Cast", "CONSTANT") or bad:
                    if obey:
                        trt.log.append(f"Error: {layer.name}: precision constraint on a {layer.type} layer cannot be obeyed")
                        return None
                    continue
                constrained.append(layer.name)
            dla = config.default_device_type == DeviceType.DLA
            dla_layers = [] if not dla or not fp16 else [ly.name for ly in network.layers if ly.type in ("Add", "Mul", "Sub", "Sigmoid", "Gemm")
                                                         and config.device_types.get(ly.name) != DeviceType.GPU]
            spec = {"onnx": network.onnx, "version": version, "fp16": fp16, "tf32": BuilderFlag.TF32 in config.flags,
                    "refit": BuilderFlag.REFIT in config.flags, "constrained": constrained, "dla_layers": dla_layers,
                    "profiles": [p.shapes for p in config.profiles]}
            trt.calls.append(("build", spec))
            return memoryview(b"FAKEENGINE" + json.dumps(spec).encode())

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.addresses, self.shapes, self.dirty = engine, {}, {}, True

        def set_input_shape(self, name, shape):
            built = self.engine.shapes.get(name)
            if built is None or len(built) != len(shape):
                return False
            for (lo, hi), want, got in zip(self.engine.ranges(name), built, shape):
                if want != -1 and want != got or not lo <= got <= hi:
                    return False
            self.shapes[name], self.dirty = tuple(shape), True
            return True

        def set_tensor_address(self, name, ptr):
            if name not in self.engine.shapes:
                return False
            self.addresses[name] = int(ptr)
            return True

        def _shape(self, name):
            s = self.shapes.get(name, self.engine.shapes[name])
            return None if -1 in s else s

        def execute_async_v3(self, stream_handle):
            eng = self.engine
            if any(n not in self.addresses for n in eng.shapes):
                return False
            inputs = {n: self._shape(n) for n in eng.inputs}
            if any(s is None for s in inputs.values()):
                return False
            s = cuda.streams.get(int(stream_handle))
            capturing = s is not None and s["capture"] is not None
            if capturing and self.dirty:
                trt.log.append("Error: enqueueV3 during capture with pending shape updates (call it once before capturing)")
                return False
            batch = next(iter(inputs.values()))[0]
            addresses, weights = dict(self.addresses), dict(eng.weights)

            def run():
                feeds = {n: cuda.array(addresses[n], shp, eng.dtypes[n]).copy() for n, shp in inputs.items()}
                outs = eng.run(feeds, weights)
                for n, value in outs.items():
                    cuda.array(addresses[n], value.shape, eng.dtypes[n])[...] = value
                eng.runs += 1

            del batch
            err = cuda.submit(stream_handle, run, "trt")
            if not capturing:
                self.dirty = False
            return int(err) == 0

    class Engine:
        def __init__(self, spec):
            import onnx
            from onnx import numpy_helper

            self.spec, self.runs, self.sessions = spec, 0, {}
            model = onnx.load(spec["onnx"])
            self.model_bytes = model.SerializeToString()
            inits = {i.name for i in model.graph.initializer}
            self.inputs = [v.name for v in model.graph.input if v.name not in inits]
            self.outputs = [v.name for v in model.graph.output]
            dims = lambda v: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)  # noqa: E731
            self.shapes = {v.name: dims(v) for v in [*model.graph.input, *model.graph.output] if v.name not in inits}
            self.dtypes = {v.name: NP_TYPES[ONNX_TYPES[v.type.tensor_type.elem_type]] for v in [*model.graph.input, *model.graph.output]}
            self.weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
                            if i.data_type in (1, 10) and numpy_helper.to_array(i).ndim >= 1}
            self.refittable = bool(spec["refit"])
            self.gemm_pairs = {}
            for node in model.graph.node:
                if node.op_type == "Gemm" and len(node.input) > 2 and node.input[1] in self.weights and node.input[2] in self.weights:
                    self.gemm_pairs[node.input[1]] = node.input[2]
                    self.gemm_pairs[node.input[2]] = node.input[1]

        num_io_tensors = property(lambda self: len(self.shapes))

        def get_tensor_name(self, i):
            return list(self.shapes)[i]

        def get_tensor_shape(self, name):
            return self.shapes.get(name, ())

        def get_tensor_dtype(self, name):
            return {v: k for k, v in NP_TYPES.items()}[self.dtypes[name]]

        def ranges(self, name):
            for prof in self.spec["profiles"]:
                if name in prof:
                    lo, _, hi = prof[name]
                    return list(zip(lo, hi))
            return [(d, d) if d != -1 else (1, 1 << 30) for d in self.shapes[name]]

        def create_execution_context(self):
            return ExecutionContext(self)

        def run(self, feeds, weights):
            import onnxruntime as ort

            key = tuple((n, v.tobytes()) for n, v in sorted(weights.items()))
            sess = self.sessions.get(key)
            if sess is None:  # the graph with these weights baked in (ONNX Runtime ignores overrides of FP16 initializers)
                import onnx
                from onnx import numpy_helper

                model = onnx.ModelProto.FromString(self.model_bytes)
                for init in model.graph.initializer:
                    if init.name in weights:
                        init.CopyFrom(numpy_helper.from_array(np.asarray(weights[init.name]), init.name))
                sess = self.sessions[key] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return dict(zip(self.outputs, sess.run(self.outputs, feeds)))

    class Runtime:
        def __init__(self, logger):
            if not cuda.devices:
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self.DLA_core, self.num_DLA_cores = -1, dla_cores

        def deserialize_cuda_engine(self, blob):
            blob = bytes(blob)
            if not blob.startswith(b"FAKEENGINE"):
                trt.log.append("Error: deserializeCudaEngine: not an engine")
                return None
            spec = json.loads(blob[len(b"FAKEENGINE"):])
            if spec["version"].split(".")[:2] != version.split(".")[:2]:
                trt.log.append(f"Error: the engine was built with TensorRT {spec['version']}, this is {version}")
                return None
            return Engine(spec)

    class Refitter:
        def __init__(self, engine, logger):
            self.engine, self.staged = engine, {}
            trt.calls.append(("refitter", None))

        def get_all_weights(self):
            return list(self.engine.weights) if self.engine.refittable else []

        def get_weights_prototype(self, name):
            w = self.engine.weights.get(name)
            if w is None:
                return types.SimpleNamespace(dtype=DataType.FLOAT, size=-1)
            return types.SimpleNamespace(dtype={v: k for k, v in NP_TYPES.items()}[w.dtype.type], size=w.size)

        def set_named_weights(self, name, weights):
            w = self.engine.weights.get(name)
            if not self.engine.refittable or w is None or weights.size != w.size or NP_TYPES[weights.dtype] != w.dtype.type:
                return False
            self.staged[name] = weights.array.reshape(w.shape).copy()
            trt.calls.append(("set_named_weights", name))
            return True

        def get_missing_weights(self):
            if not trt.knobs["companions"]:
                return []
            return sorted({self.engine.gemm_pairs[n] for n in self.staged if n in self.engine.gemm_pairs} - set(self.staged))

        def refit_cuda_engine(self):
            trt.calls.append(("refit_cuda_engine", sorted(self.staged)))
            if self.get_missing_weights():
                return False
            if trt.knobs["fail_refit"]:
                trt.knobs["fail_refit"] -= 1
                for name in sorted(self.staged)[: max(1, len(self.staged) // 2)]:  # a subset applied, then failure
                    self.engine.weights[name] = self.staged[name]
                return False
            self.engine.weights.update(self.staged)
            return True

    for name, obj in dict(Logger=Logger, BuilderFlag=BuilderFlag, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
                          DeviceType=DeviceType, Weights=Weights, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
                          Refitter=Refitter).items():
        setattr(trt, name, obj)
    return trt
