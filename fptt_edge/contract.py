"""The I/O contract of an exported step model, stored in the ONNX file's ``metadata_props``.

An exported model is a pure step ``(x_t, state_t) -> (logits_t, state_{t+1})``. Each state
tensor ``<layer>.<var>`` (``l0.u``, ``l0.s``, ``l0.b``, ..., ``readout.m``) is a graph input
paired with the output ``<layer>.<var>_out``. Everything a runtime with only numpy and
onnx/onnxruntime needs (state shapes and initial values, class names, how raw input became
frames, the parameter -> initializer map for refits) is in the metadata, as JSON strings
under the keys in :data:`KEYS`. This module does not import torch.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from .errors import FpttEdgeError
from .io import not_a_file

MODEL_TYPE = "fptt-edge/ltc-snn-step"
CONTRACT_VERSION = 1
OUTPUT_SUFFIX = "_out"
MAX_BATCH = 1_000_000  # streams a state is built for (the CLI's and the runtime's cap)
KEYS = ("model_type", "contract_version", "class_names", "input", "logits", "state", "model_config",
        "checkpoint_sha256", "exporter", "opset", "parameter_map", "producer")


class ContractError(FpttEdgeError, ValueError):
    """An ONNX file without a usable fptt-edge step contract, with the reason."""


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: graph input ``name``, graph output ``output``, shape (batch first; a
    string for a dynamic axis), dtype and its initial value (every element equals ``init``)."""

    name: str
    output: str
    shape: tuple
    init: float
    dtype: str = "float32"

    def initial(self, batch: int) -> np.ndarray:
        shape = (batch, *[int(d) for d in self.shape[1:]])
        return np.full(shape, self.init, dtype=self.dtype)


@dataclass(frozen=True)
class InputSpec:
    """The per-step input ``name`` ``[batch, *frame_shape]`` and how raw data became frames."""

    name: str
    shape: tuple
    dtype: str = "float32"
    source: dict = field(default_factory=dict)  # task, layout, binning, downsample, normalisation ...
    encoding: dict = field(default_factory=dict)  # fptt_edge.encoding: applied to raw steps before the graph ({}: none)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape[1:])


@dataclass(frozen=True)
class StepContract:
    input: InputSpec
    logits: str
    states: tuple[StateSpec, ...]
    class_names: tuple[str, ...]
    model_config: dict
    checkpoint_sha256: str
    exporter: dict
    opset: int
    parameter_map: dict  # model parameter -> {"initializer": name, "transform": ...}
    producer: str = ""
    model_type: str = MODEL_TYPE
    contract_version: int = CONTRACT_VERSION

    @property
    def batch(self):
        """The exported batch size: an int, or the name of a dynamic axis."""
        return self.input.shape[0]

    def initial_state(self, batch: int | None = None) -> dict[str, np.ndarray]:
        """The deterministic initial state, rebuilt from the metadata alone."""
        if batch is None:
            if not isinstance(self.batch, int):
                raise ContractError("the model has a dynamic batch axis: pass batch=")
            batch = self.batch
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= MAX_BATCH:
            raise ContractError(f"batch must be a whole number in 1..{MAX_BATCH:,}, got {type(batch).__name__} {str(batch)[:20]}")
        return {s.name: s.initial(batch) for s in self.states}

    def to_metadata(self) -> dict[str, str]:
        d = {
            "model_type": self.model_type,
            "contract_version": str(self.contract_version),
            "class_names": json.dumps(list(self.class_names)),
            "input": json.dumps(asdict(self.input)),
            "logits": self.logits,
            "state": json.dumps([asdict(s) for s in self.states]),
            "model_config": json.dumps(self.model_config, sort_keys=True),
            "checkpoint_sha256": self.checkpoint_sha256,
            "exporter": json.dumps(self.exporter, sort_keys=True),
            "opset": str(self.opset),
            "parameter_map": json.dumps(self.parameter_map, sort_keys=True),
            "producer": self.producer,
        }
        return {f"fptt_edge.{k}": v for k, v in d.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> StepContract:
        if not isinstance(props, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
            raise ContractError(f"{source}: the metadata must map names to text")
        props = {k[len("fptt_edge."):]: v for k, v in props.items() if k.startswith("fptt_edge.")}
        if props.get("model_type") != MODEL_TYPE:
            raise ContractError(f"{source}: not an fptt-edge step model (metadata 'fptt_edge.model_type' is {props.get('model_type')!r})")
        missing = [k for k in KEYS if k not in props]
        if missing:
            raise ContractError(f"{source}: metadata lacks {', '.join('fptt_edge.' + k for k in missing)}")
        try:
            version = int(props["contract_version"])
            opset = int(props["opset"])
        except ValueError:
            raise ContractError(f"{source}: contract_version and opset must be integers, got {props['contract_version'][:20]!r}, "
                                f"{props['opset'][:20]!r}") from None
        if version < 1:
            raise ContractError(f"{source}: invalid contract_version {version}")
        if version > CONTRACT_VERSION:
            raise ContractError(f"{source}: contract version {version} is newer than this fptt-edge reads ({CONTRACT_VERSION}); upgrade fptt-edge")
        contract = cls(
            input=_spec(InputSpec, _json(props, "input", dict, source), source),
            logits=props["logits"],
            states=tuple(_spec(StateSpec, s, source) for s in _json(props, "state", list, source)),
            class_names=tuple(_json(props, "class_names", list, source)),
            model_config=_json(props, "model_config", dict, source),
            checkpoint_sha256=props["checkpoint_sha256"],
            exporter=_json(props, "exporter", dict, source),
            opset=opset,
            parameter_map=_json(props, "parameter_map", dict, source),
            producer=props["producer"],
            contract_version=version,
        )
        _check_fields(contract, source)
        return contract


def _fail(source: str, what: str) -> NoReturn:
    raise ContractError(f"{source}: invalid fptt-edge metadata: {what}")


def _json(props: dict, key: str, kind: type, source: str):
    """Metadata entry ``key`` parsed as JSON of type ``kind`` (list or dict)."""
    try:
        value = json.loads(props[key])
    except (ValueError, RecursionError):
        _fail(source, f"fptt_edge.{key} is not valid JSON (or nested beyond reason)")
    if not isinstance(value, kind):
        _fail(source, f"fptt_edge.{key} must be a JSON {'list' if kind is list else 'object'}, got {type(value).__name__}")
    return value


def _spec(kind: type, d, source: str):
    """A :class:`StateSpec` or :class:`InputSpec` from its JSON object."""
    if not isinstance(d, dict) or not isinstance(d.get("shape"), list):
        _fail(source, f"each {kind.__name__} must be an object with a 'shape' list")
    try:
        return kind(**{**d, "shape": tuple(d["shape"])})
    except TypeError as exc:
        _fail(source, f"{kind.__name__}: {exc}")


def _is_size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_shape(shape: tuple, what: str, source: str) -> None:
    batch_ok = _is_size(shape[0]) or (isinstance(shape[0], str) and shape[0]) if shape else False
    if not batch_ok or not all(_is_size(d) for d in shape[1:]):
        _fail(source, f"{what} shape {list(shape)} must be [batch, positive sizes] (batch: a positive int or a dynamic axis name)")


def _check_encoding(c: StepContract, source: str) -> None:
    """The input encoding must be one fptt-edge knows and must produce the graph's input frames."""
    from .encoding import Encoding, EncodingError

    if not isinstance(c.input.encoding, dict):
        _fail(source, "input encoding must be an object")
    try:
        enc = Encoding.from_dict(c.input.encoding)
        if enc.kind != "none" and enc.output_shape((enc.channels,)) != c.input.frame_shape:
            raise EncodingError(f"it gives steps of {enc.channels * enc.factor} values, the graph takes {list(c.input.frame_shape)}")
    except EncodingError as exc:
        _fail(source, f"input encoding: {exc}")


def _check_fields(c: StepContract, source: str) -> None:
    """Types, ranges and finite values of every field: metadata is untrusted input."""
    if not all(isinstance(v, str) for v in (c.checkpoint_sha256, c.producer)):
        _fail(source, "checkpoint_sha256 and producer must be text")
    if not (isinstance(c.input.source, dict) and isinstance(c.input.name, str) and c.input.name and c.input.dtype == "float32"):
        _fail(source, "input needs a name, dtype float32 and a source object")
    if len(c.class_names) < 2 or not all(isinstance(n, str) for n in c.class_names):
        _fail(source, f"class_names must list at least 2 names, got {len(c.class_names)} entries")
    if len(set(c.class_names)) != len(c.class_names):
        twice = next(n for i, n in enumerate(c.class_names) if n in c.class_names[:i])
        _fail(source, f"class_names lists {twice[:40]!r} more than once; each class needs its own name")
    if not all(isinstance(v, dict) and isinstance(v.get("initializer"), (str, type(None))) and isinstance(v.get("transform"), str)
               for v in c.parameter_map.values()):
        _fail(source, "parameter_map entries must be objects with 'initializer' and 'transform'")
    if c.opset < 1:
        _fail(source, f"opset {c.opset}")
    _check_shape(c.input.shape, "input", source)
    _check_encoding(c, source)
    if not c.states:
        _fail(source, "no state tensors")
    names = [c.input.name, c.logits]
    for s in c.states:
        if not (isinstance(s.name, str) and s.name and isinstance(s.output, str) and s.output and s.dtype == "float32"):
            _fail(source, "each state needs a name, an output name and dtype float32")
        _check_shape(s.shape, f"state '{s.name}'", source)
        if s.shape[0] != c.input.shape[0]:
            _fail(source, f"state '{s.name}' has batch {s.shape[0]!r}, the input {c.input.shape[0]!r}")
        if isinstance(s.init, bool) or not isinstance(s.init, (int, float)) or not math.isfinite(s.init) or abs(s.init) > np.finfo(np.float32).max:
            _fail(source, f"state '{s.name}' initial value {str(s.init)[:20]!r} must be a finite number (as float32)")
        names += [s.name, s.output]
    if len(set(names)) != len(names):
        _fail(source, "the input, logits and state names must all differ")


def read_contract(path) -> StepContract:
    """The contract of an exported ``.onnx`` file (onnx if installed, else onnxruntime), checked against its graph."""
    contract = StepContract.from_metadata(read_metadata(path), str(path))
    check_graph(contract, *graph_io(path), source=str(path))
    return contract


def _quiet_options(ort):
    from .runtime.ort_backend import session_options  # runtime imports this module: late

    return session_options(ort, 1)


def read_metadata(path) -> dict[str, str]:
    """The ``metadata_props`` of an ``.onnx`` file (onnx if installed, else onnxruntime)."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: {not_a_file(path)}")
    try:
        import onnx
    except ImportError:  # a device with onnxruntime only
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), _quiet_options(ort), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ContractError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        props = dict(sess.get_modelmeta().custom_metadata_map)
    else:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors vary
            raise ContractError(f"{path}: not an ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
        props = {p.key: p.value for p in model.metadata_props}
    return props


def graph_io(path) -> tuple[dict, dict]:
    """The graph's inputs (initializers excluded) and outputs: ``name -> (type, dims)``, dims
    ints or dynamic axis names. Refuses external data kept outside the model's folder."""
    path = Path(path)
    try:
        import onnx
    except ImportError:  # a device with onnxruntime only (which refuses such external data itself)
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), _quiet_options(ort), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ContractError(f"{path}: not a loadable ONNX model ({_first_line(exc)})") from None
        return ({a.name: (a.type, tuple(a.shape)) for a in sess.get_inputs()},
                {a.name: (a.type, tuple(a.shape)) for a in sess.get_outputs()})
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors vary
        raise ContractError(f"{path}: not an ONNX model ({_first_line(exc)})") from None
    _refuse_external_data(model.graph, path)
    inits = {t.name for t in model.graph.initializer}
    return _value_infos(model.graph.input, inits), _value_infos(model.graph.output, set())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _value_infos(values, skip: set) -> dict:
    out = {}
    for v in values:
        if v.name not in skip:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim) if t.HasField("shape") else None
            out[v.name] = ("tensor(float)" if t.elem_type == 1 else f"tensor(elem_type {t.elem_type})", dims)
    return out


def _tensors(graph):
    """Every tensor stored in a graph and its subgraphs (initializers, attribute values)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for a in node.attribute:
            yield from [a.t, *a.tensors, *[t for sp in [a.sparse_tensor, *a.sparse_tensors] for t in (sp.values, sp.indices)]]
            for g in [a.g, *a.graphs]:
                yield from _tensors(g)


def _refuse_external_data(graph, path: Path) -> None:
    folder = path.parent.resolve()
    for t in _tensors(graph):
        if t.data_location != 1 and not len(t.external_data):  # 1: TensorProto.EXTERNAL
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if not location or Path(location).is_absolute() or not (folder / location).resolve().is_relative_to(folder):
            raise ContractError(f"{path}: tensor {t.name[:60]!r} keeps its data outside the model's folder ({location[:100]!r}); "
                                "refused without reading it")


def check_graph(c: StepContract, inputs: dict, outputs: dict, source: str = "model") -> None:
    """Refuse metadata that disagrees with the graph: names, types and shapes of the input, the
    logits (one per class name) and every state pair."""
    want_in = {c.input.name: c.input.shape, **{s.name: s.shape for s in c.states}}
    want_out = {c.logits: (c.batch, len(c.class_names)), **{s.output: s.shape for s in c.states}}
    for kind, want, got in (("inputs", want_in, inputs), ("outputs", want_out, outputs)):
        if set(want) != set(got):
            raise ContractError(f"{source}: the metadata names graph {kind} {sorted(want)[:8]}, the graph has {sorted(got)[:8]}")
        for name, shape in want.items():
            typ, dims = got[name]
            if typ != "tensor(float)" or dims is None or len(dims) != len(shape) or not all(map(_same_dim, dims, shape)):
                raise ContractError(f"{source}: '{name}' is {typ} {list(dims) if dims is not None else '[?]'} in the graph, "
                                    f"float {list(shape)} in the metadata")


def _same_dim(graph_dim, meta_dim) -> bool:
    """A static size must match exactly; a dynamic axis (a name) matches any dynamic axis."""
    return graph_dim == meta_dim if isinstance(meta_dim, int) else not isinstance(graph_dim, int) or graph_dim == 0


# Checksum of graph and weights: SHA-256 over the serialised ModelProto without its metadata_props.

CHECKSUM_KEY = "fptt_edge.graph_sha256"
METADATA_CHECKSUM_KEY = "fptt_edge.metadata_sha256"  # the other entries (contract, class names, hyper-parameters); newer exports
_METADATA_FIELD = 14  # ModelProto.metadata_props


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        value, pos, shift = value | (b & 0x7F) << shift, pos + 1, shift + 7
        if not b & 0x80:
            return value, pos


def _fields(buf) -> list[tuple[int, int, int, int]]:
    """Top-level protobuf fields of ``buf``: (number, start, payload start, end); ValueError if malformed."""
    out, pos = [], 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire, payload = key >> 3, key & 7, pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, payload = _varint(buf, pos)
            pos = payload + size
        else:
            raise ValueError(f"wire type {wire}")
        if number == 0 or pos > len(buf):
            raise ValueError("truncated field")
        out.append((number, start, payload, pos))
    return out


def graph_sha256(data: bytes) -> str:
    """SHA-256 of a serialised ModelProto without its metadata_props (graph, weights, opsets,
    producer): the hash of the model serialised with metadata_props cleared, as protobuf writes
    fields in number order. External data files are not covered."""
    buf, h = memoryview(data), hashlib.sha256()
    for number, start, _, end in _fields(buf):
        if number != _METADATA_FIELD:
            h.update(buf[start:end])
    return h.hexdigest()


def metadata_sha256(entries) -> str:
    """SHA-256 of metadata ``(key, value)`` entries but the two checksums, in key order, as JSON."""
    kept = sorted((k, v) for k, v in entries if k not in (CHECKSUM_KEY, METADATA_CHECKSUM_KEY))
    return hashlib.sha256(json.dumps(kept, ensure_ascii=False).encode()).hexdigest()


def stamp_checksum(model) -> str:
    """Write ``fptt_edge.graph_sha256`` (graph and weights) and ``fptt_edge.metadata_sha256`` (the other metadata
    entries) into an onnx ``ModelProto``, replacing earlier ones; returns the graph's."""
    digest = graph_sha256(model.SerializeToString(deterministic=True))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in (CHECKSUM_KEY, METADATA_CHECKSUM_KEY)]
    del model.metadata_props[:]
    for key, value in [*keep, (CHECKSUM_KEY, digest), (METADATA_CHECKSUM_KEY, metadata_sha256(keep))]:
        model.metadata_props.add(key=key, value=value)
    return digest


def verify_checksum(path) -> None:
    """Refuse an ``.onnx`` file whose graph or weights differ from what was exported (bit flips,
    edits): its ``fptt_edge.graph_sha256`` must match. Needs neither onnx nor onnxruntime."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContractError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        buf = memoryview(data)
        recorded = [_entry(buf[p:e]) for n, _, p, e in _fields(buf) if n == _METADATA_FIELD]
        digest = graph_sha256(data)
    except ValueError:  # includes UnicodeDecodeError
        raise ContractError(f"{path}: not an ONNX model (malformed protobuf)") from None
    values = [v for k, v in recorded if k == CHECKSUM_KEY]
    if not values:
        raise ContractError(f"{path}: no {CHECKSUM_KEY} checksum (exported by an older fptt-edge, or edited): re-export it, "
                            "or pass --no-verify (verify=False) to run it as it is")
    if values[-1] != digest:
        raise ContractError(f"{path}: checksum mismatch: the graph or weights changed since export (a corrupt copy or an edited "
                            "file); re-export it, or pass --no-verify (verify=False) if you edited it on purpose")
    meta = [v for k, v in recorded if k == METADATA_CHECKSUM_KEY]  # exports before it have none: their graph is checked
    if meta and meta[-1] != metadata_sha256(recorded):
        raise ContractError(f"{path}: checksum mismatch: the metadata (contract, class names, hyper-parameters) changed since "
                            "export (an edited file); re-export it, or pass --no-verify (verify=False) if you edited it on purpose")


def _entry(buf) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    fields = {n: bytes(buf[p:e]).decode() for n, _, p, e in _fields(buf)}
    return fields.get(1, ""), fields.get(2, "")
