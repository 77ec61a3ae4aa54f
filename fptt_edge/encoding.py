"""Input encodings for analog channels (IMU, accelerometer, any sampled signal), numpy only.

An encoding turns raw steps ``[.., T, C]`` into what the network takes, is fitted on the
training split only, recorded in the checkpoint (``input_spec["encoding"]``) and in the ONNX
metadata (the ``encoding`` of the input spec), and applied by the device runtime with this very
code (no torch), so both sides compute the same frames.

- ``none``: the data as given.
- ``standardize``: per channel ``(x - mean_c) / std_c`` (mean and std over the valid steps of the
  training sequences).
- ``delta``: level-crossing (send-on-delta) encoding into ``2C`` spike channels, as event sensors
  do: per channel a reference level starts at the sequence's first sample; at each later step
  ``n = floor(|x_t - ref| / threshold_c)`` level crossings are emitted on the ON (rising) or OFF
  (falling) channel as the count ``n``, and the reference moves by ``n * threshold_c``.
  ``threshold_c = threshold * std_c``. Channels ``[ON_0..ON_{C-1}, OFF_0..OFF_{C-1}]``.
- ``standardize+delta``: both, ``3C`` channels ``[z, ON, OFF]`` (the level and its changes).

Every encoding is causal (step ``t`` depends on steps ``<= t`` only), so a stream can be encoded
step by step (:meth:`Encoding.stream`) with the same result as a whole sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ENCODINGS = ("none", "standardize", "delta", "standardize+delta")
DEFAULT_THRESHOLD = 0.1  # delta: level spacing in units of the channel's standard deviation
_MIN_STD = 1e-6


class EncodingError(ValueError):
    """An encoding description that is not usable (metadata is untrusted input)."""


@dataclass(frozen=True)
class Encoding:
    kind: str = "none"
    channels: int = 0  # raw channels C (0 with "none": any)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.kind not in ENCODINGS:
            raise EncodingError(f"unknown encoding {str(self.kind)[:30]!r}; choose from {ENCODINGS}")
        if self.kind == "none":
            return
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels < 1:
            raise EncodingError("an encoding needs channels >= 1")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise EncodingError(f"an encoding needs one mean and one std per channel ({self.channels})")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise EncodingError("encoding means must be finite and stds finite and > 0")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not (math.isfinite(self.threshold)
                                                                                                    and self.threshold > 0):
            raise EncodingError("the delta threshold must be a finite number > 0")

    @property
    def factor(self) -> int:
        """Output channels per raw channel."""
        return {"none": 1, "standardize": 1, "delta": 2, "standardize+delta": 3}[self.kind]

    def output_shape(self, raw_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The frame shape the network takes for raw steps of ``raw_shape``."""
        if self.kind == "none":
            return tuple(raw_shape)
        if tuple(raw_shape) != (self.channels,):
            raise EncodingError(f"the {self.kind} encoding takes steps of {self.channels} channels, got {list(raw_shape)}")
        return (self.channels * self.factor,)

    def to_dict(self) -> dict:
        if self.kind == "none":
            return {"kind": "none"}
        d: dict = {"kind": self.kind, "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}
        if "delta" in self.kind:
            d["threshold"] = float(self.threshold)
        return d

    @classmethod
    def from_dict(cls, d) -> Encoding:
        """From a checkpoint's or a model's metadata; ``{}``/``None`` is ``none``. Raises :class:`EncodingError`."""
        if not d:
            return cls()
        if not isinstance(d, dict):
            raise EncodingError("the encoding must be an object")
        unknown = set(d) - {"kind", "channels", "mean", "std", "threshold"}
        if unknown:
            raise EncodingError(f"unknown encoding fields {sorted(str(k)[:20] for k in unknown)[:5]}")
        mean, std = d.get("mean", ()), d.get("std", ())
        if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
            raise EncodingError("encoding mean and std must be lists")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*mean, *std)):
            raise EncodingError("encoding mean and std must hold numbers")
        try:
            return cls(kind=d.get("kind", "none"), channels=d.get("channels", 0), mean=tuple(mean), std=tuple(std),
                       threshold=d.get("threshold", DEFAULT_THRESHOLD))
        except TypeError as exc:
            raise EncodingError(str(exc)) from None

    @classmethod
    def fit(cls, kind: str, x: np.ndarray, lengths: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD) -> Encoding:
        """Fit on training sequences ``x`` ``[N, T, C]`` (only steps ``< lengths[i]`` count)."""
        if kind == "none":
            return cls()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3:
            raise EncodingError(f"the {kind} encoding is for [N, T, C] channel data, got steps of shape {list(x.shape[2:])}")
        valid = np.ones(x.shape[:2], bool) if lengths is None else np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]
        steps = x[valid]  # [M, C]
        mean = steps.mean(0)
        std = np.maximum(steps.std(0), _MIN_STD)
        return cls(kind=kind, channels=int(x.shape[2]), mean=tuple(mean.tolist()), std=tuple(std.tolist()), threshold=float(threshold))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Raw ``[..., T, C]`` -> encoded ``[..., T, factor * C]`` float32 (``none``: ``x`` as float32)."""
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "none":
            return x
        if x.ndim < 2 or x.shape[-1] != self.channels:
            raise EncodingError(f"the {self.kind} encoding takes [..., T, {self.channels}] steps, got shape {list(x.shape)}")
        parts = []
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, in one line
            if "standardize" in self.kind:
                parts.append(self._standardized(x))
            if "delta" in self.kind:
                parts.extend(self._delta(x))
        return self._checked(np.concatenate(parts, axis=-1))

    def _standardized(self, x: np.ndarray) -> np.ndarray:
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def _threshold(self) -> np.ndarray:
        """The delta encoding's level spacing per channel, ``threshold * std_c`` (float32)."""
        return (np.asarray(self.std, np.float32) * np.float32(self.threshold)).astype(np.float32)

    def _checked(self, out: np.ndarray) -> np.ndarray:
        """``out`` as float32, refused in one line where the encoding made it non-finite."""
        out = out.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise EncodingError(f"the {self.kind} encoding gives non-finite values on these steps (non-finite raw values, or values "
                                "so far from the training data's mean that they overflow float32)")
        return out

    def _delta(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        thr = self._threshold()
        on = np.zeros_like(x)
        off = np.zeros_like(x)
        ref = x[..., 0, :].copy()
        for t in range(1, x.shape[-2]):
            on[..., t, :], off[..., t, :], ref = _crossings(x[..., t, :], ref, thr)
        return on, off

    def stream(self) -> EncodingStream:
        """A step-by-step encoder for one stream (the same frames as :meth:`encode` on the whole sequence)."""
        return EncodingStream(self)


def _crossings(xt: np.ndarray, ref: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ON and OFF crossing counts of one step and the moved reference level."""
    d = xt - ref
    n = np.floor(np.abs(d) / thr).astype(np.float32)
    up = d > 0
    on = np.where(up, n, np.float32(0))
    off = np.where(up, np.float32(0), n)
    return on, off, (ref + (on - off) * thr).astype(np.float32)


class EncodingStream:
    """Causal step-by-step encoding: ``step(x_t)`` with ``x_t`` ``[..., C]`` (one row per stream).

    The delta encoding's reference levels are state: a stream's first step sets its levels and emits no
    crossings. ``reset(row)`` makes one stream start over (a new recording on it); ``reset()`` all.
    The state arrays are replaced, never changed in place, so a :meth:`snapshot` costs no copy."""

    def __init__(self, encoding: Encoding):
        self.encoding = encoding
        self.ref: np.ndarray | None = None  # [..., C] reference levels (delta), set by the first step
        self.fresh: np.ndarray | None = None  # [...] rows whose next step starts a sequence
        self._thr = encoding._threshold()  # made once, not per step

    def reset(self, row: int | None = None) -> None:
        if row is None or self.fresh is None:
            self.ref = self.fresh = None
        else:
            fresh = self.fresh.copy()
            fresh[row] = True
            self.fresh = fresh

    def snapshot(self) -> tuple:
        """The state, for :meth:`restore` (a step that the caller then refuses must not move the levels)."""
        return self.ref, self.fresh

    def restore(self, state: tuple) -> None:
        self.ref, self.fresh = state

    def step(self, xt: np.ndarray) -> np.ndarray:
        enc = self.encoding
        xt = np.asarray(xt, dtype=np.float32)
        if enc.kind == "none":
            return xt
        if xt.ndim < 1 or xt.shape[-1] != enc.channels or (self.ref is not None and xt.shape != self.ref.shape):
            want = f"{list(self.ref.shape)}" if self.ref is not None else f"[..., {enc.channels}]"
            raise EncodingError(f"the {enc.kind} encoding takes steps of shape {want}, got {list(xt.shape)}")
        parts = []
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, in one line
            if "standardize" in enc.kind:
                parts.append(enc._standardized(xt))
            if "delta" in enc.kind:
                if self.ref is None or self.fresh is None:
                    ref, fresh = xt.copy(), np.zeros(xt.shape[:-1], bool)
                    on, off = np.zeros_like(xt), np.zeros_like(xt)
                else:
                    on, off, ref = _crossings(xt, self.ref, self._thr)
                    fresh = self.fresh
                    if fresh.any():  # a stream that starts over: its first step, as above
                        on[fresh], off[fresh], ref[fresh] = 0, 0, xt[fresh]
                        fresh = np.zeros_like(fresh)
                parts.extend((on, off))
        out = enc._checked(np.concatenate(parts, axis=-1))
        if "delta" in enc.kind:
            self.ref, self.fresh = ref, fresh
        return out


def encoding_of(spec) -> Encoding:
    """The encoding an input spec (a checkpoint's ``input_spec`` or a model's input source) records."""
    return Encoding.from_dict(spec.get("encoding") if isinstance(spec, dict) else None)
