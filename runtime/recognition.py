"""Continuous gesture recognition on a live stream: no segment boundaries, a decision rule instead.

A model trained on labelled segments is stepped over a continuous event stream binned into
frames of a fixed time window (the training bin width the model recorded, or one given). Each
step's logits become class probabilities (softmax), smoothed over the last ``window`` steps;
a gesture *starts* when one class's smoothed probability stays at or above ``threshold`` for
``hold`` consecutive steps (it is emitted then, with the time its first confident step began),
and *ends* when that probability falls below ``release`` or another class takes over. Each
emitted :class:`GestureEvent` has a start time, the time it was detected, an end time, the
class and its confidence (the smoothed probability when it was detected).

With labelled segments (a DVS128 Gesture labels CSV), :func:`score` matches the emissions to
them: segment accuracy (the first emission detected inside a segment has its class), detection
delay (detection time minus segment start, for correct detections), missed segments, and false
alarms per minute (emissions that match no segment of their class).

numpy only, no torch.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..npzfile import period_mismatch
from .errors import RuntimeInputError
from .frames import FrameBinner

MAX_SMOOTHING = 100_000  # steps a decision rule averages over (its buffer is steps x classes)


def _is_index(c) -> bool:
    return isinstance(c, (int, np.integer)) and not isinstance(c, bool) and bool(c >= 0)


@dataclass(frozen=True)
class DecisionRule:
    """``window``: steps of probability smoothing (moving average); ``threshold``: smoothed
    probability that makes a class a candidate; ``hold``: consecutive candidate steps before a
    gesture is emitted; ``release``: smoothed probability below which the active gesture ends
    (default ``threshold / 2``, hysteresis); ``refractory``: steps after a gesture ends before the
    same class can start again; ``ignore``: class indices never emitted (e.g. a background class)."""

    window: int = 3
    threshold: float = 0.5
    hold: int = 2
    release: float | None = None
    refractory: int = 0
    ignore: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("window", "hold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise RuntimeInputError(f"{name} must be a positive whole number of steps, got {str(v)[:20]}")
        if self.window > MAX_SMOOTHING:
            raise RuntimeInputError(f"window must be at most {MAX_SMOOTHING:,} steps of smoothing, got {self.window}")
        if not isinstance(self.ignore, (tuple, list)) or not all(_is_index(c) for c in self.ignore):
            raise RuntimeInputError(f"ignore must be a tuple of class indices (whole numbers >= 0), got {str(self.ignore)[:40]}")
        if isinstance(self.refractory, bool) or not isinstance(self.refractory, (int, np.integer)) or self.refractory < 0:
            raise RuntimeInputError(f"refractory must be a whole number of steps >= 0, got {str(self.refractory)[:20]}")
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1):
            raise RuntimeInputError(f"threshold must be a probability in (0, 1], got {str(self.threshold)[:20]}")
        if self.release is not None and not (isinstance(self.release, (int, float)) and 0 <= self.release <= self.threshold):
            raise RuntimeInputError(f"release must be a probability in [0, threshold], got {str(self.release)[:20]}")

    @property
    def release_level(self) -> float:
        return self.threshold / 2 if self.release is None else float(self.release)


@dataclass
class GestureEvent:
    label: int
    name: str
    start_us: int  # start of the first confident step
    detect_us: int  # end of the step at which it was emitted
    confidence: float  # smoothed probability of the class at detection
    end_us: int | None = None  # end of the last step it was active (None while active)

    def to_dict(self) -> dict:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


@dataclass
class Recognizer:
    """The decision rule for one stream: :meth:`update` once per step, :meth:`finish` at the end."""

    class_names: Sequence[str]
    rule: DecisionRule = field(default_factory=DecisionRule)

    def __post_init__(self):
        n = len(self.class_names)
        if any(not 0 <= c < n for c in self.rule.ignore):
            raise RuntimeInputError(f"ignored classes {list(self.rule.ignore)} are outside the model's {n} classes")
        self._probs = np.zeros((self.rule.window, n))
        self._filled = 0
        self._candidate, self._count, self._candidate_start = None, 0, 0
        self._active: GestureEvent | None = None
        self._cooldown: dict[int, int] = {}
        self.events: list[GestureEvent] = []
        self.smoothed = np.zeros(n)

    def update(self, logits: np.ndarray, start_us: int, end_us: int) -> GestureEvent | None:
        """The step covering ``[start_us, end_us)`` gave ``logits``; returns the gesture emitted at this step, if any."""
        logits = np.asarray(logits, np.float64).reshape(-1)
        if logits.shape != (len(self.class_names),) or not np.isfinite(logits).all():
            raise RuntimeInputError(f"logits must be {len(self.class_names)} finite values")
        self._probs[self._filled % self.rule.window] = softmax(logits)
        self._filled += 1
        self.smoothed = self._probs[: min(self._filled, self.rule.window)].mean(0)
        self._cooldown = {c: k - 1 for c, k in self._cooldown.items() if k > 1}
        active = self._active
        if active is not None and self.smoothed[active.label] < self.rule.release_level:
            self._end(start_us)
        order = np.argsort(-self.smoothed)
        best = next((int(c) for c in order if int(c) not in self.rule.ignore), None)
        if best is None or self.smoothed[best] < self.rule.threshold or best in self._cooldown or (
                self._active is not None and self._active.label == best):
            self._candidate, self._count = None, 0
            return None
        if best != self._candidate:
            self._candidate, self._count, self._candidate_start = best, 0, start_us
        self._count += 1
        if self._count < self.rule.hold:
            return None
        if self._active is not None:  # another class took over
            self._end(start_us)
        event = GestureEvent(best, str(self.class_names[best]), int(self._candidate_start), int(end_us), float(self.smoothed[best]))
        self._active, self._candidate, self._count = event, None, 0
        self.events.append(event)
        return event

    def _end(self, at_us: int) -> None:
        active = self._active
        if active is None:
            return
        active.end_us = int(at_us)
        if self.rule.refractory:
            self._cooldown[active.label] = self.rule.refractory + 1
        self._active = None

    def finish(self, end_us: int) -> list[GestureEvent]:
        """Close the active gesture at ``end_us``; all emitted gestures."""
        if self._active is not None:
            self._end(end_us)
        return self.events


# --- a continuous stream as frames ----------------------------------------------------------------

INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)
MAX_WINDOWS = 10_000_000  # steps of one continuous run
FALLBACK_MEMORY = 4 << 30  # bytes the frames may take where the free physical memory cannot be read


def _whole_us(value, what: str, low: int) -> int:
    """``value`` as whole microseconds in ``low .. INT64_MAX``, else :class:`RuntimeInputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= INT64_MAX:
        raise RuntimeInputError(f"{what} must be a whole number of microseconds in {low}..{INT64_MAX}, got {type(value).__name__} {str(value)[:24]}")
    return int(value)


def available_memory() -> int:
    """Memory available to a new allocation in bytes: Linux's ``MemAvailable`` (free memory plus the page cache it can
    reclaim), else free physical pages (``os.sysconf``), else :data:`FALLBACK_MEMORY` where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY


def _check_frames_fit(n: int, window_us: int, frame_bytes: int) -> None:
    """Refuse, before allocating, more windows than a run takes or frames than free memory holds."""
    if n > MAX_WINDOWS:
        raise RuntimeInputError(f"{n:,} windows of {window_us} us (at most {MAX_WINDOWS:,}): choose a larger window")
    need, free = n * frame_bytes, available_memory()
    if need > free:
        raise RuntimeInputError(f"{n:,} windows of {window_us} us need {need / 2**30:.1f} GiB of frames, {free / 2**30:.1f} GiB is free: "
                                "choose a larger window or a shorter recording")


def window_frames(events: np.ndarray, binner: FrameBinner, window_us: int, start_us: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames of consecutive fixed windows ``[start + k * window, start + (k + 1) * window)`` over the
    whole stream, binned as ``binner`` bins (sensor, downsampling, normalisation); and each window's start (us)."""
    window_us = _whole_us(window_us, "the frame window", 1)
    binner._check(events)
    if len(events) == 0:
        raise RuntimeInputError("no events to recognise")
    t = events["t"]
    t0 = int(t[0]) if start_us is None else _whole_us(start_us, "start_us", -INT64_MAX)
    if t0 > int(t[-1]):
        raise RuntimeInputError(f"start_us {t0} is after the recording's last event ({int(t[-1])} us)")
    if int(t[-1]) - t0 > INT64_MAX:
        raise RuntimeInputError(f"start_us {t0} is more than the int64 microsecond range before the recording's last event")
    n = (int(t[-1]) - t0) // window_us + 1
    if t0 + n * window_us > INT64_MAX:
        raise RuntimeInputError(f"windows of {window_us} us from {t0} us run past the int64 microsecond range: choose a smaller window")
    _check_frames_fit(n, window_us, int(np.prod(binner.frame_shape)) * 4)
    starts = t0 + np.arange(n, dtype=np.int64) * window_us
    keep = t >= t0
    ev = events[keep]
    x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
    if binner.downsample > 1:
        x, y = (x * (1.0 / binner.downsample)).astype(np.int64), (y * (1.0 / binner.downsample)).astype(np.int64)
    _, fh, fw = binner.frame_shape
    inside = (x < fw) & (y < fh)
    k = ((ev["t"][inside] - t0) // window_us).astype(np.int64)
    frames = np.zeros((n, *binner.frame_shape), np.float32)
    np.add.at(frames, (k, ev["p"][inside].astype(np.int64), y[inside], x[inside]), 1)
    if binner.normalisation == "binary":
        np.greater(frames, 0, out=frames, casting="unsafe")
    elif binner.normalisation == "log1p":
        np.log1p(frames, out=frames)
    return frames, starts


def recognise(session, frames: np.ndarray, starts: np.ndarray, window_us: int, rule: DecisionRule = DecisionRule(),
              on_event=None, ends: np.ndarray | None = None, step=None) -> dict:
    """Step ``frames`` through a one-stream ``session`` (no resets) and apply ``rule``.

    Step ``i`` spans ``starts[i]`` to ``ends[i]`` (default ``ends = starts + window_us``), its decision made at the end. ``step`` is what
    takes one ``[1, *frame]`` input (default ``session.step``; ``session.step_raw`` for raw samples).
    Returns ``gestures`` (dicts), ``steps``, ``window_us``, ``duration_s`` and ``latency_us``
    (p50/p90/p99 per step, µs); ``on_event(gesture)`` is called as each gesture is emitted."""
    if session.streams != 1:
        raise RuntimeInputError(f"continuous recognition needs a one-stream session, got {session.streams} streams")
    window_us = _whole_us(window_us, "the frame window", 1)
    if not isinstance(frames, np.ndarray) or frames.ndim < 2:
        raise RuntimeInputError("frames must be a numpy array [windows, *frame]")
    if not (isinstance(starts, np.ndarray) and starts.shape == (len(frames),) and np.issubdtype(starts.dtype, np.integer)):
        raise RuntimeInputError(f"starts must be {len(frames)} integer window starts (us), one per frame, got "
                                f"{getattr(starts, 'dtype', type(starts).__name__)} {list(getattr(starts, 'shape', ()))}")
    starts = starts.astype(np.int64)
    if ends is None:  # windows past the int64 range are refused below
        ends = starts + window_us if not len(starts) or int(starts.max()) <= INT64_MAX - window_us else None
    if not (isinstance(ends, np.ndarray) and ends.shape == starts.shape and np.issubdtype(ends.dtype, np.integer)
            and (ends > starts).all()):
        raise RuntimeInputError(f"ends must be {len(frames)} integer step ends (us), each after its step's start")
    step = session.step if step is None else step
    rec = Recognizer(session.contract.class_names, rule)
    latencies = np.empty(len(frames))
    for i, frame in enumerate(frames):
        t0 = time.perf_counter_ns()
        try:
            logits = step(frame[None])
        except RuntimeInputError as exc:  # refused mid-stream (e.g. a state driven to NaN): say which step
            raise RuntimeInputError(f"step {i + 1} of {len(frames)} (ending at {int(ends[i])} us): {exc}") from None
        latencies[i] = time.perf_counter_ns() - t0
        event = rec.update(logits[0], int(starts[i]), int(ends[i]))
        if event is not None and on_event is not None:
            on_event(event)
    end = int(ends[-1]) if len(ends) else 0
    gestures = rec.finish(end)
    us = latencies / 1e3
    return {"steps": len(frames), "window_us": int(window_us), "duration_s": (end - int(starts[0])) / 1e6 if len(starts) else 0.0,
            "rule": asdict(rule), "gestures": [g.to_dict() for g in gestures],
            "latency_us": {p: float(np.percentile(us, q)) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))} if len(us) else None}


def score(gestures: Sequence[dict], segments: Sequence[tuple[int, int, int]], duration_s: float, grace_us: int = 0) -> dict:
    """Emitted gestures against labelled ``segments`` ``(class, start_us, end_us)`` (model classes).

    An emission belongs to the segment whose ``[start, end + grace)`` holds its detection time.
    A segment is correct when the first emission in it has its class; the detection delay is
    that emission's detection time minus the segment start. A false alarm is an emission that
    is in no segment, or in one of another class."""
    segs = sorted(segments, key=lambda s: s[1])
    first: dict[int, dict] = {}
    false_alarms = 0
    for g in sorted(gestures, key=lambda g: g["detect_us"]):
        inside = [i for i, (_, s, e) in enumerate(segs) if s <= g["detect_us"] < e + grace_us]
        if not inside:
            false_alarms += 1
            continue
        i = inside[0]
        first.setdefault(i, g)
        if g["label"] != segs[i][0]:
            false_alarms += 1
    correct = [i for i, g in first.items() if g["label"] == segs[i][0]]
    delays = [(first[i]["detect_us"] - segs[i][1]) / 1e3 for i in correct]
    minutes = duration_s / 60
    return {
        "segments": len(segs),
        "segment_accuracy": len(correct) / len(segs) if segs else None,
        "detected": len(first),
        "missed": len(segs) - len(first),
        "false_alarms": false_alarms,
        "false_alarms_per_minute": false_alarms / minutes if minutes > 0 else None,
        "detection_delay_ms": {"mean": float(np.mean(delays)), "median": float(np.median(delays)), "max": float(np.max(delays))} if delays else None,
        "grace_ms": grace_us / 1e3,
    }


def default_window_us(source: dict) -> int | None:
    """The training bin width the model recorded (``window_us``), if any; one beyond an hour is refused."""
    v = source.get("window_us")
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 1):
        return None
    if v > MAX_DEFAULT_WINDOW_US:
        raise RuntimeInputError(f"the model's metadata records a frame window of {str(v)[:24]} us (window_us), beyond an hour; "
                                "give one (--window-ms)")
    return int(v)


MAX_DEFAULT_WINDOW_US = 3_600_000_000  # an hour, as --window-ms allows


def recognise_events(session, contract, events_path, labels_path=None, window_us: int | None = None, rule: DecisionRule = DecisionRule(),
                     on_event=None, grace_us: int = 0) -> dict:
    """``fptt-edge run --events REC --continuous``: the whole recording as one stream of fixed
    windows (``window_us``, default the training step span the model records), the decision rule
    on the logits, and with ``labels_path`` (a DVS128 Gesture labels CSV) the :func:`score`.
    ``contract`` is the model's own (its binning metadata)."""
    from .events import read_events
    from .inputs import labelled_segments

    binner = FrameBinner.from_contract(contract)
    window = window_us if window_us is not None else default_window_us(contract.input.source)
    if window is None:
        raise RuntimeInputError("the model records no frame window (window_us in its input metadata); give one (--window-ms)")
    segs = None if labels_path is None else labelled_segments(labels_path, contract)  # refused before any step
    frames, starts = window_frames(read_events(events_path), binner, window)
    check_overlap(segs, int(starts[0]), int(starts[-1]) + window, labels_path)
    out = recognise(session, frames, starts, window, rule, on_event)
    if segs is not None:
        out["score"] = score(out["gestures"], segs, out["duration_s"], grace_us)
    return out


def check_overlap(segments, start_us: int, end_us: int, labels_path) -> None:
    """Refuse labels none of whose segments overlaps the recording's ``[start_us, end_us)``: scored, every one would be
    a miss (the labels of another recording, or times on another clock)."""
    if segments and not any(s < end_us and e > start_us for _, s, e in segments):
        raise RuntimeInputError(f"{labels_path}: none of its {len(segments)} segments overlaps the recording ({start_us} to {end_us} us): "
                                "the labels of another recording, or times on another clock?")


def sample_spans(t: np.ndarray | None, n: int, period_us: int | None, capped: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Each step's span ``(start, end]`` (µs) in a recording of ``n`` samples, and the sample period. A sample is
    taken at the end of its step: the step of the sample at ``t[i]`` begins at the sample before it (``t[i - 1]``;
    the first one a period before ``t[0]``), so a gesture is detected at the time of the sample that decided it.
    The period is the median interval of ``t``; without ``t`` the samples are ``period_us`` apart from 0. ``capped``:
    more than :data:`MAX_WINDOWS` samples (the steps of one continuous run) are refused."""
    if capped and n > MAX_WINDOWS:
        raise RuntimeInputError(f"{n:,} samples (at most {MAX_WINDOWS:,} steps in one continuous run): cut the recording")
    if t is None:
        if period_us is None:
            raise RuntimeInputError("the recording has no sample times (t [T], us) and the model records no step span: "
                                    "give the sample period (period_us in the file, or --window-ms)")
        period = _whole_us(period_us, "the sample period", 1)
        if (n - 1) * period > INT64_MAX:
            raise RuntimeInputError(f"{n:,} samples of {period} us run past the int64 microsecond range: choose a smaller period")
        t = np.arange(n, dtype=np.int64) * period
    else:
        if not (isinstance(t, np.ndarray) and t.shape == (n,) and t.dtype == np.int64):
            raise RuntimeInputError(f"t must be {n} int64 sample times (us), got {getattr(t, 'dtype', type(t).__name__)} "
                                    f"{list(getattr(t, 'shape', ()))}")
        if n < 2:
            raise RuntimeInputError("a recording with sample times (t) needs at least 2 samples to have a sample period")
        if not (t[1:] > t[:-1]).all():
            raise RuntimeInputError("t must be strictly increasing sample times (us)")
        # exact even where a gap passes the int64 range (times increase, so each difference is 1 .. 2**64 - 1)
        gaps = np.sort(t[1:].view(np.uint64) - t[:-1].view(np.uint64))
        period = (int(gaps[(len(gaps) - 1) // 2]) + int(gaps[len(gaps) // 2])) // 2
    first = int(t[0]) - period
    if first < INT64_MIN:
        raise RuntimeInputError(f"the recording's first step would begin before the int64 microsecond range (first sample at {int(t[0])} us, "
                                f"sample period {period} us)")
    return np.concatenate((np.array([first], np.int64), t[:-1])), t.copy(), period


def recognise_samples(session, contract, npz_path, labels_path=None, window_us: int | None = None, rule: DecisionRule = DecisionRule(),
                      on_event=None, grace_us: int = 0, warn=None) -> dict:
    """``fptt-edge run --npz REC --continuous``: one continuous recording of samples (an IMU's, any analog
    sensor's; frames for a model without an input encoding) stepped one sample per step, never reset, the
    decision rule on the logits, and with ``labels_path`` (a labels CSV: class, start and end in µs) the
    :func:`score`. Raw samples go through ``session.step_raw``: encoded per step as a live sensor's are, and
    the latency figures include the encoding. Times come from the file's ``t``, else consecutive sample
    periods of the file's ``period_us`` or ``window_us`` (default: the step span the model records, if any). A sample period more than
    10 % from the model's is a warning (``warn(message)`` before the first step, and ``warnings``)."""
    from ..encoding import Encoding
    from .inputs import continuous_from_npz, encoded_x, labelled_segments

    x, t, file_period = continuous_from_npz(npz_path, contract)
    if (t is not None or file_period is not None) and window_us is not None:
        raise RuntimeInputError(f"{npz_path} has its own {'sample times (t)' if t is not None else 'sample period (period_us)'}; "
                                "a sample period (--window-ms) applies to a recording without them")
    starts, ends, period = sample_spans(t, len(x), window_us if window_us is not None else file_period if file_period is not None
                                        else default_window_us(contract.input.source))
    segs = None if labels_path is None else labelled_segments(labels_path, contract)  # refused before any step
    check_overlap(segs, int(starts[0]), int(ends[-1]), labels_path)
    encoding = Encoding.from_dict(contract.input.encoding)
    frames = encoded_x(encoding, x[None], npz_path)[0]  # a sample the encoding cannot take is refused before the first step
    mismatch = period_mismatch(period, default_window_us(contract.input.source), npz_path, median=t is not None)
    if mismatch and warn is not None:
        warn(mismatch)
    if encoding.kind != "none" and hasattr(session, "step_raw"):
        out = recognise(session, x, starts, period, rule, on_event, ends=ends, step=session.step_raw)
        out["input"] = f"raw samples, encoded per step ({encoding.kind})"
    else:  # frames; or raw samples on a session without step_raw (an event-driven front end): the same frames, encoded whole
        out = recognise(session, frames, starts, period, rule, on_event, ends=ends)
        out["input"] = "frames" if encoding.kind == "none" else f"raw samples, encoded whole ({encoding.kind})"
    out["warnings"] = [mismatch] if mismatch else []
    if segs is not None:
        out["score"] = score(out["gestures"], segs, out["duration_s"], grace_us)
    return out
