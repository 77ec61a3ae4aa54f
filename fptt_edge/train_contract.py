"""The I/O contract of an exported FPTT train-step graph (``model.train.onnx``); no torch here.

One call is one FPTT update (``../shared/spec/on-device-fptt.md``)::

    inputs:  x [B, *frame], y [B, C] (one-hot), w [B] (loss weight (t+1)/T, 0 = no loss),
             the network state (as the inference graph), every trainable weight as its own
             tensor (named like the inference graph's initializer), and flat [1, N] buffers
             fptt.wbar, fptt.lam, adamax.m, adamax.u, the update mask, adamax.step [1], lr [1]
    outputs: logits, the next state (``<name>_out``), fptt.weights_out [1, N] (the new W,
             flat), fptt.wbar_out, fptt.lam_out, adamax.m_out, adamax.u_out, adamax.step_out

FPTT-K on the device (``chunk`` L > 1 steps per update, backprop through the chunk): ``x``
is ``[B, L, *frame]``, ``w`` ``[B, L]`` (a loss weight per step; FPTT-K weighs one step per
sequence, the chunk's last one that the sequence reaches) and ``logits`` ``[B, L, C]``; the
state goes in before the chunk's first step and comes out after its last. Such graphs are
contract version 2 (a reader of version 1 refuses them rather than feeding them one step).

The flat buffers follow :attr:`TrainContract.tensors` in order; the weight inputs are views
of a flat buffer at those offsets, so a runtime binds ``weights_out`` of one call as the
weights of the next (ping-pong, no copy). Metadata keys: ``fptt_edge.train.*``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .contract import ContractError

TRAIN_MODEL_TYPE = "fptt-edge/ltc-snn-fptt-train-step"
TRAIN_CONTRACT_VERSION = 2  # 2: chunked updates (``chunk``); a one-step graph is still written as version 1
X, Y, W = "x", "y", "w"
FLAT_IO = {"wbar": "fptt.wbar", "lam": "fptt.lam", "m": "adamax.m", "u": "adamax.u"}
WEIGHTS_OUT, MASK, STEP, LR = "fptt.weights_out", "fptt.mask", "adamax.step", "lr"
TRAINABLE_CHOICES = ("all", "readout", "last", "input")
MAX_CHUNK = 1024  # steps per update in one chunked train-step graph (each is unrolled in the graph)


@dataclass(frozen=True)
class TrainTensor:
    """One trainable tensor: its graph input (= the inference graph's initializer name), shape, flat offset."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Hyper:
    """FPTT + Adamax hyper-parameters baked into the graph (``lr`` is an input; this is its default)."""

    lr: float = 3e-3
    alpha: float = 0.1
    beta: float = 0.5
    clip: float = 1.0
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ContractError(f"hyper-parameter {k} must be a finite number, got {v!r}")
        if self.alpha <= 0 or not 0 < self.beta <= 1 or self.clip <= 0 or self.lr <= 0 or self.eps <= 0:
            raise ContractError("hyper-parameters need alpha > 0, 0 < beta <= 1, clip > 0, lr > 0, eps > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ContractError("Adamax betas must be in [0, 1)")
        with np.errstate(over="ignore", under="ignore"):  # the train graph holds them (and its default lr) as float32
            for k in ("lr", "alpha", "clip", "eps"):
                v32 = np.float32(getattr(self, k))
                if not (np.isfinite(v32) and v32 >= np.finfo(np.float32).tiny):
                    raise ContractError(f"hyper-parameter {k} {getattr(self, k):g} is outside float32's range (1.2e-38 .. 3.4e38), "
                                        "which the train-step graph computes in")


@dataclass(frozen=True)
class TrainContract:
    """What a learner needs to drive ``model.train.onnx``, read from its metadata alone."""

    batch: int
    frame_shape: tuple[int, ...]
    num_classes: int
    states: tuple[tuple[str, tuple[int, ...]], ...]  # (name, per-stream shape) in graph order
    tensors: tuple[TrainTensor, ...]
    trainable: str
    hyper: Hyper
    checkpoint_sha256: str
    inference_sha256: str  # graph_sha256 of the inference model it pairs with ('' if unknown)
    opset: int
    chunk: int = 1  # time steps per update (FPTT-K on the device); 1: an update every step
    model_type: str = TRAIN_MODEL_TYPE
    contract_version: int = 0  # 0: the version this contract needs (1 for one step per update, 2 for chunks)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.contract_version:
            object.__setattr__(self, "contract_version", 1 if self.chunk == 1 else 2)

    @property
    def size(self) -> int:
        """N: elements in every flat buffer."""
        return sum(t.size for t in self.tensors)

    @property
    def x_shape(self) -> tuple[int, ...]:
        """The ``x`` input: ``[B, *frame]``, or ``[B, L, *frame]`` for chunks."""
        return (self.batch, *self.frame_shape) if self.chunk == 1 else (self.batch, self.chunk, *self.frame_shape)

    @property
    def w_shape(self) -> tuple[int, ...]:
        """The loss-weight input ``w``: ``[B]``, or ``[B, L]`` for chunks."""
        return (self.batch,) if self.chunk == 1 else (self.batch, self.chunk)

    @property
    def logits_shape(self) -> tuple[int, ...]:
        return (self.batch, self.num_classes) if self.chunk == 1 else (self.batch, self.chunk, self.num_classes)

    def to_metadata(self) -> dict[str, str]:
        d = {
            "model_type": self.model_type, "contract_version": str(self.contract_version), "batch": str(self.batch),
            "frame_shape": json.dumps(list(self.frame_shape)), "num_classes": str(self.num_classes),
            "states": json.dumps([[n, list(s)] for n, s in self.states]),
            "tensors": json.dumps([[t.name, list(t.shape), t.offset] for t in self.tensors]),
            "trainable": self.trainable, "hyper": json.dumps(asdict(self.hyper), sort_keys=True),
            "checkpoint_sha256": self.checkpoint_sha256, "inference_sha256": self.inference_sha256,
            "opset": str(self.opset), "extra": json.dumps(self.extra, sort_keys=True),
        }
        if self.chunk != 1:
            d["chunk"] = str(self.chunk)
        return {f"fptt_edge.train.{k}": v for k, v in d.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> TrainContract:
        p = {k[len("fptt_edge.train."):]: v for k, v in props.items() if k.startswith("fptt_edge.train.")}
        if p.get("model_type") != TRAIN_MODEL_TYPE:
            raise ContractError(f"{source}: not an fptt-edge train-step model (fptt_edge.train.model_type is {p.get('model_type')!r})")
        try:
            version = int(p["contract_version"])
            if version < 1:
                raise ContractError(f"{source}: invalid train contract version {version}")
            if version > TRAIN_CONTRACT_VERSION:
                raise ContractError(f"{source}: train contract version {version} is newer than this fptt-edge reads "
                                    f"({TRAIN_CONTRACT_VERSION}); upgrade fptt-edge")
            tensors = tuple(TrainTensor(str(n), _shape(s), int(o)) for n, s, o in json.loads(p["tensors"]))
            contract = cls(
                batch=int(p["batch"]), frame_shape=_shape(json.loads(p["frame_shape"])), num_classes=int(p["num_classes"]),
                states=tuple((str(n), _shape(s)) for n, s in json.loads(p["states"])), tensors=tensors,
                trainable=p["trainable"], hyper=Hyper(**json.loads(p["hyper"])), checkpoint_sha256=p["checkpoint_sha256"],
                inference_sha256=p["inference_sha256"], opset=int(p["opset"]), chunk=int(p.get("chunk", "1")), contract_version=version,
                extra=json.loads(p.get("extra", "{}")),
            )
        except ContractError:
            raise
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise ContractError(f"{source}: malformed fptt-edge train metadata ({type(exc).__name__}: {str(exc)[:160]})") from None
        contract.validate(source)
        return contract

    def validate(self, source: str = "model") -> None:
        """Offsets contiguous from 0, positive sizes and batch, known trainable choice, at least one tensor."""
        if self.batch < 1 or self.num_classes < 2 or not self.tensors:
            raise ContractError(f"{source}: train metadata needs batch >= 1, >= 2 classes and >= 1 trainable tensor")
        if not 1 <= self.chunk <= MAX_CHUNK or (self.chunk > 1) != (self.contract_version >= 2):
            raise ContractError(f"{source}: train metadata has chunk {self.chunk} (1..{MAX_CHUNK}) at contract version {self.contract_version}")
        if self.trainable not in TRAINABLE_CHOICES:
            raise ContractError(f"{source}: unknown trainable set {self.trainable!r}")
        offset = 0
        for t in self.tensors:
            if t.offset != offset:
                raise ContractError(f"{source}: trainable tensor {t.name} at offset {t.offset}, expected {offset}")
            offset += t.size
        if len({t.name for t in self.tensors}) != len(self.tensors):
            raise ContractError(f"{source}: duplicate trainable tensor names")


def chunk_loss_weights(lengths: np.ndarray, t0: int, chunk: int) -> np.ndarray:
    """``w`` ``[B, L]`` of the update over steps ``t0 .. t0 + L - 1`` (FPTT-K, as the trainer weighs it): each sequence
    still running at ``t0`` is scored once, at the chunk's last step it reaches, ``p = min(len - 1, t0 + L - 1)``, with
    ``w = (p + 1) / len``; a sequence that ended before ``t0`` gets no loss. ``chunk`` 1 gives ``w_t = (t+1)/T``."""
    lengths = np.asarray(lengths)
    last = lengths.astype(np.int64) - 1
    pick = np.clip(last - t0, 0, chunk - 1)
    w = np.zeros((len(lengths), chunk), np.float32)
    alive = last >= t0
    rows = np.nonzero(alive)[0]
    w[rows, pick[rows]] = (t0 + pick[rows] + 1).astype(np.float32) / lengths[rows].astype(np.float32)  # float32, as the trainer
    return w


def _shape(dims) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if any(d < 1 for d in shape) or len(shape) > 8:
        raise ValueError(f"bad shape {list(dims)}")
    return shape


def read_train_contract(path) -> TrainContract:
    """The train contract of a ``.train.onnx`` file (onnx if installed, else onnxruntime)."""
    from .contract import read_metadata

    return TrainContract.from_metadata(read_metadata(path), str(path))
