"""Events -> frames per time step, with numpy only, exactly as training binned them with tonic.

``FrameBinner.from_contract(contract)`` reads the binning the model was trained with from its
metadata (sensor size, ``steps`` bins by ``time`` or by ``events``, spatial ``downsample``,
``normalisation``). Time bins follow tonic's ``ToFrame(n_time_bins=...)``: window
``(t_last - t_first) // steps``, starts ``t_first + k * window``; event bins tonic's
``n_event_bins``: ``len // steps`` events each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import StepContract
from .errors import RuntimeInputError


@dataclass(frozen=True)
class FrameBinner:
    sensor_size: tuple[int, int, int]  # (W, H, polarities), tonic's order
    steps: int
    by: str = "time"  # "time" | "events"
    downsample: int = 1
    normalisation: str = "binary"  # "binary" | "counts" | "log1p"

    @classmethod
    def from_contract(cls, contract: StepContract) -> FrameBinner:
        src = contract.input.source
        try:
            binner = cls(tuple(src["sensor_size"]), src["binning"]["steps"], src["binning"]["by"], src.get("downsample", 1),
                         src.get("normalisation", "binary"))
        except (KeyError, TypeError) as exc:
            raise RuntimeInputError(f"the model's metadata records no event binning ({exc}); it was not trained on event frames") from None
        count = lambda v, top: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top  # noqa: E731
        if not (len(binner.sensor_size) == 3 and all(count(v, 1 << 16) for v in binner.sensor_size) and count(binner.steps, 1 << 20)
                and count(binner.downsample, 1 << 16) and binner.by in ("time", "events")
                and binner.normalisation in ("binary", "counts", "log1p")):
            raise RuntimeInputError("the model's metadata records an invalid event binning (sensor_size [W, H, P], steps, by, "
                                    "downsample, normalisation)")
        if binner.frame_shape != contract.input.frame_shape:
            raise RuntimeInputError(f"binning gives frames {binner.frame_shape}, the model takes {contract.input.frame_shape}")
        return binner

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        w, h, p = self.sensor_size
        return (p, h // self.downsample, w // self.downsample)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """``[steps, P, H, W]`` float32 frames of one recording (or one labelled segment)."""
        self._check(events)
        x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
        if self.downsample > 1:
            x, y = (x * (1.0 / self.downsample)).astype(np.int64), (y * (1.0 / self.downsample)).astype(np.int64)
        _, fh, fw = self.frame_shape
        keep = (x < fw) & (y < fh)
        events, x, y = events[keep], x[keep], y[keep]
        frames = np.zeros((self.steps, *self.frame_shape), np.float32)
        if len(events) == 0:
            return frames
        for k, (a, b) in enumerate(self._slices(events)):
            np.add.at(frames[k], (events["p"][a:b].astype(np.int64), y[a:b], x[a:b]), 1)
        if self.normalisation == "binary":
            np.greater(frames, 0, out=frames, casting="unsafe")
        elif self.normalisation == "log1p":
            np.log1p(frames, out=frames)
        return frames

    def _check(self, events) -> None:
        """Events as the readers in :mod:`.events` return them: on this sensor, in time order
        (an out-of-range index would wrap around in the frame, unsorted times break the bins)."""
        names = getattr(getattr(events, "dtype", None), "names", None) or ()
        if not isinstance(events, np.ndarray) or events.ndim != 1 or not {"x", "y", "t", "p"} <= set(names):
            raise RuntimeInputError("events must be a 1-D structured array with fields x, y, t, p (as fptt_edge.runtime.events reads them)")
        if len(events) == 0:
            return
        w, h, p = self.sensor_size
        for k, hi in (("x", w), ("y", h), ("p", p)):
            if events[k].min() < 0 or events[k].max() >= hi:
                raise RuntimeInputError(f"events outside the {w}x{h}x{p} sensor the model was trained for ({k} not in [0, {hi}))")
        if np.any(np.diff(events["t"]) < 0):
            raise RuntimeInputError("event timestamps go backwards: events must be in time order")

    def _slices(self, events: np.ndarray):
        if self.by == "events":
            count = len(events) // self.steps
            starts = np.arange(self.steps) * count
            return zip(starts, starts + count)
        t = events["t"]
        window = (t[-1] - t[0]) // self.steps
        starts = np.arange(self.steps) * window + t[0]
        return zip(np.searchsorted(t, starts), np.searchsorted(t, starts + window))
