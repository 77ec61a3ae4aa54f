"""Model configuration: a small, JSON-serialisable description of an LTC-SNN."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

FLOAT32_MAX = 3.4028234663852886e38  # the weights' and states' type: b_j0 fills a float32 state


@dataclass(frozen=True)
class ModelConfig:
    """What an :class:`~fptt_edge.model.LTCNetwork` is built from.

    ``input_shape`` is the shape of one time step of input without the batch axis:
    ``(C,)`` for a dense stack, ``(C, H, W)`` for event frames (a conv stack, or a dense
    stack over the flattened frame when ``conv_channels`` is empty).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (64,)
    conv_channels: tuple[int, ...] = ()
    conv_kernel: int = 3
    conv_batch_norm: bool = True
    b_j0: float = 0.1
    beta_adapt: float = 1.8
    initial_u: str = "zero"  # "zero" (deterministic, deployable) or "uniform" (U[0,1), training only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "hidden", tuple(int(v) for v in self.hidden))
        object.__setattr__(self, "conv_channels", tuple(int(v) for v in self.conv_channels))
        if len(self.input_shape) not in (1, 3) or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (C,) or (C, H, W) with positive sizes, got {self.input_shape}")
        if self.conv_channels and len(self.input_shape) != 3:
            raise ValueError("a conv stack needs input_shape (C, H, W)")
        if not self.hidden and not self.conv_channels:
            raise ValueError("the network needs at least one hidden layer")
        if any(h < 1 for h in self.hidden + self.conv_channels):
            raise ValueError("layer sizes must be positive")
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be a positive odd number")
        if not all(abs(v) <= FLOAT32_MAX for v in (self.b_j0, self.beta_adapt)):
            raise ValueError(f"b_j0 and beta_adapt must lie within float32's range (|x| <= {FLOAT32_MAX:.4g}), got {self.b_j0:.4g} "
                             f"and {self.beta_adapt:.4g}")
        if self.initial_u not in ("zero", "uniform"):
            raise ValueError("initial_u must be 'zero' or 'uniform'")
        if self.conv_channels:
            _, h, w = self.input_shape
            if h >> len(self.conv_channels) < 1 or w >> len(self.conv_channels) < 1:
                raise ValueError("too many conv layers for the input size (each halves H and W)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))
