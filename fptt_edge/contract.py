"""The I/O contract of an exported step model, stored in the ONNX file's ``metadata_props``.

An exported model is a pure step ``(x_t, state_t) -> (logits_t, state_{t+1})``. Each state
tensor ``<layer>.<var>`` (``l0.u``, ``l0.s``, ``l0.b``, ..., ``readout.m``) is a graph input
paired with the output ``<layer>.<var>_out``. Everything a runtime with only numpy and
onnx/onnxruntime needs (state shapes and initial values, class names, how raw input became
frames, the parameter -> initializer map for refits) is in the metadata, as JSON strings
under the keys in :data:`KEYS`. This module does not import torch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MODEL_TYPE = "fptt-edge/ltc-snn-step"
CONTRACT_VERSION = 1
OUTPUT_SUFFIX = "_out"
KEYS = ("model_type", "contract_version", "class_names", "input", "logits", "state", "model_config",
        "checkpoint_sha256", "exporter", "opset", "parameter_map", "producer")


class ContractError(ValueError):
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
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> "StepContract":
        props = {k[len("fptt_edge."):]: v for k, v in props.items() if k.startswith("fptt_edge.")}
        if props.get("model_type") != MODEL_TYPE:
            raise ContractError(f"{source}: not an fptt-edge step model (metadata 'fptt_edge.model_type' is {props.get('model_type')!r})")
        missing = [k for k in KEYS if k not in props]
        if missing:
            raise ContractError(f"{source}: metadata lacks {', '.join('fptt_edge.' + k for k in missing)}")
        try:
            version = int(props["contract_version"])
        except ValueError:
            raise ContractError(f"{source}: invalid contract_version {props['contract_version']!r}") from None
        if version > CONTRACT_VERSION:
            raise ContractError(f"{source}: contract version {version} is newer than this fptt-edge reads ({CONTRACT_VERSION}); upgrade fptt-edge")
        try:
            inp = json.loads(props["input"])
            states = tuple(StateSpec(**{**s, "shape": tuple(s["shape"])}) for s in json.loads(props["state"]))
            return cls(
                input=InputSpec(**{**inp, "shape": tuple(inp["shape"])}),
                logits=props["logits"],
                states=states,
                class_names=tuple(json.loads(props["class_names"])),
                model_config=json.loads(props["model_config"]),
                checkpoint_sha256=props["checkpoint_sha256"],
                exporter=json.loads(props["exporter"]),
                opset=int(props["opset"]),
                parameter_map=json.loads(props["parameter_map"]),
                producer=props["producer"],
                contract_version=version,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ContractError(f"{source}: malformed fptt-edge metadata ({type(exc).__name__}: {exc})") from None


def read_contract(path) -> StepContract:
    """The contract of an exported ``.onnx`` file (onnx if installed, else onnxruntime)."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    try:
        import onnx
    except ImportError:  # a device with onnxruntime only
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ContractError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        props = dict(sess.get_modelmeta().custom_metadata_map)
    else:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors vary
            raise ContractError(f"{path}: not an ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
        props = {p.key: p.value for p in model.metadata_props}
    return StepContract.from_metadata(props, str(path))
