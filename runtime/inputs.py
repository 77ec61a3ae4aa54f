"""Recordings to stream: event files (binned with the model's recorded binning) or an ``.npz`` of frames (or raw samples),
or one continuous ``.npz`` recording."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import StepContract
from ..encoding import Encoding, EncodingError
from ..npzfile import checked_lengths, float32_x, period_mismatch, read_npz, sample_period
from ..splitlist import read_split_list
from .errors import EventFileError, RuntimeInputError
from .events import read_events, read_gesture_labels
from .frames import FrameBinner


@dataclass
class Recording:
    name: str
    frames: np.ndarray  # [T, *frame] float32
    label: int | None = None


def from_events(path, contract: StepContract, labels=None) -> list[Recording]:
    """One recording per file, or one per labelled segment (DVS128 Gesture ``labels.csv``)."""
    binner = FrameBinner.from_contract(contract)
    events = read_events(path)
    if len(events) == 0:
        raise EventFileError(f"{path}: no events")
    if labels is None:
        return [Recording(Path(path).name, binner(events))]
    out = []
    for label, start, end in labelled_segments(labels, contract):
        seg = events[(events["t"] >= start) & (events["t"] < end)]
        out.append(Recording(f"{Path(path).name}[{start}:{end}]", binner(seg), label))
    return out


def labelled_segments(labels, contract: StepContract) -> list[tuple[int, int, int]]:
    """The segments of a DVS128 Gesture labels CSV as ``(model class, start_us, end_us)``; a class outside the model's is refused."""
    offset = csv_class_offset(contract)
    classes = len(contract.class_names)
    out = []
    for label, start, end in read_gesture_labels(labels):
        if not 0 <= label - offset < classes:
            raise RuntimeInputError(f"{labels}: class {label} is outside the model's {classes} classes, numbered "
                                    f"{offset}..{classes - 1 + offset} in the CSV")
        out.append((label - offset, start, end))
    return out


def csv_class_offset(contract: StepContract) -> int:
    """What to subtract from a labels-CSV class to get the model's class: 1 for a model trained on
    DVS128 Gesture by ``--task dvsgesture`` (the CSV numbers classes 1..11, the model 0..10), else 0."""
    offset = contract.input.source.get("csv_class_offset", 0)
    if offset not in (0, 1) or isinstance(offset, bool):
        raise RuntimeInputError(f"the model's metadata has csv_class_offset {str(offset)[:20]!r}; expected 0 or 1")
    return int(offset)


def from_npz(path, contract: StepContract, warn=None) -> list[Recording]:
    """``x`` float32 ``[N, T, *frame]`` (or ``[T, *frame]``), optional ``y`` ``[N]`` integer labels and ``lengths``
    ``[N]`` (each recording's steps, 1..T; the rest of ``x`` is padding and is not streamed).

    For a model that records an input encoding (``contract.input.encoding``), ``x`` holds the raw
    steps ``[.., T, C]`` and the encoding is applied here, with the code training used. An optional
    ``period_us`` (the sample period) other than the model's is told to ``warn(message)``."""
    from .recognition import default_window_us

    arrays = read_npz(path, RuntimeInputError)
    if "x" not in arrays:
        raise RuntimeInputError(f"{path}: not a usable .npz with an 'x' array (have {sorted(arrays)[:10]})")
    x, y, lengths = arrays["x"], arrays.get("y"), arrays.get("lengths")
    encoding = Encoding.from_dict(contract.input.encoding)  # validated with the contract
    frame = contract.input.frame_shape if encoding.kind == "none" else (encoding.channels,)
    if x.shape[-len(frame):] != frame or x.ndim not in (len(frame) + 1, len(frame) + 2) or 0 in x.shape:
        raise RuntimeInputError(f"{path}: x has shape {x.shape}; the model takes frames {frame} ([N, T >= 1, *frame] or [T, *frame])")
    x = encoded_x(encoding, float32_x(x if x.ndim == len(frame) + 2 else x[None], f"{path}: field 'x'", RuntimeInputError), path)
    if y is not None and (y.shape != (len(x),) or y.dtype.kind not in "iu"):
        raise RuntimeInputError(f"{path}: y must be [N = {len(x)}] integer labels, got {y.dtype} {list(y.shape)}")
    classes = len(contract.class_names)
    if y is not None and len(y) and (y.min() < 0 or y.max() >= classes):
        raise RuntimeInputError(f"{path}: y holds labels outside the model's classes 0..{classes - 1} (range {y.min()}..{y.max()})")
    if "period_us" in arrays:
        mismatch = period_mismatch(sample_period(arrays["period_us"], path, RuntimeInputError), default_window_us(contract.input.source), path)
        if mismatch and warn is not None:
            warn(mismatch)
    steps = [x.shape[1]] * len(x)
    if lengths is not None:  # variable-length recordings, zero padded to T: each is cut to its own length
        steps = [int(n) for n in checked_lengths(lengths, len(x), x.shape[1], path, RuntimeInputError)]
    return [Recording(f"{Path(path).name}[{i}]", x[i, :steps[i]], None if y is None else int(y[i])) for i in range(len(x))]


def encoded_x(encoding: Encoding, x: np.ndarray, path) -> np.ndarray:
    """The raw steps ``x`` (``[..., T, C]``) of the file ``path`` through ``encoding``, refused in one line where it cannot take them."""
    try:
        return encoding.encode(x)
    except EncodingError as exc:  # e.g. values that overflow float32 once standardised
        raise RuntimeInputError(f"{path}: field 'x': {exc}") from None


def continuous_from_npz(path, contract: StepContract) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """``run --npz REC --continuous``: one continuous recording (an IMU's or any sensor's), never cut into pieces.

    ``x`` float32 ``[T, *input]`` (or ``[1, T, *input]``): raw samples ``[T, C]`` for a model that records an
    input encoding, frames otherwise; optional ``t`` ``[T]`` integer sample times in µs, strictly increasing,
    or ``period_us``, the sample period (samples that far apart from 0). Its labels are time segments
    (``--labels``), so ``y`` and ``lengths``, which label and cut whole recordings, are refused. Returns
    ``x``, ``t`` (int64, or None) and ``period_us`` (or None)."""
    arrays = read_npz(path, RuntimeInputError)
    if "x" not in arrays:
        raise RuntimeInputError(f"{path}: not a usable .npz with an 'x' array (have {sorted(arrays)[:10]})")
    whole = sorted({"y", "lengths"} & set(arrays))
    if whole:
        raise RuntimeInputError(f"{path}: {' and '.join(whole)} describe{'' if len(whole) > 1 else 's'} separate recordings; a recording "
                                "that --continuous streams whole or --labels cuts into segments is one stream [T, ...], labelled by time "
                                "(a labels CSV): drop them, or give the recordings without those options")
    encoding = Encoding.from_dict(contract.input.encoding)  # validated with the contract
    shape = contract.input.frame_shape if encoding.kind == "none" else (encoding.channels,)
    x = arrays["x"]
    if x.ndim == len(shape) + 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape or len(x) == 0:
        what = "raw samples" if encoding.kind != "none" else "frames"
        raise RuntimeInputError(f"{path}: x has shape {x.shape}; a continuous recording for this model is {what} [T >= 1, {', '.join(map(str, shape))}]")
    x = float32_x(x, f"{path}: field 'x'", RuntimeInputError)
    t, period = arrays.get("t"), arrays.get("period_us")
    if t is not None and period is not None:
        raise RuntimeInputError(f"{path}: t (sample times) and period_us (a sample period) both give the samples' timing; keep one")
    if t is None:
        return x, None, None if period is None else sample_period(period, path, RuntimeInputError)
    if t.shape != (len(x),) or t.dtype.kind not in "iu":
        raise RuntimeInputError(f"{path}: t must be [T = {len(x)}] integer sample times (us), got {t.dtype} {list(t.shape)}")
    if t.dtype.kind == "u" and len(t) and int(t.max()) > np.iinfo(np.int64).max:
        raise RuntimeInputError(f"{path}: t holds sample times beyond the int64 microsecond range")
    t = t.astype(np.int64)
    if not (t[1:] > t[:-1]).all():
        raise RuntimeInputError(f"{path}: t must be strictly increasing sample times (us)")
    return x, t, None


def segments_from_npz(path, contract: StepContract, labels, warn=None) -> list[Recording]:
    """The labelled segments (a labels CSV: class, start and end in µs) of one continuous ``.npz`` recording
    (:func:`continuous_from_npz`): each the samples whose time lies in ``[start, end)``, encoded on its own
    (a fresh delta reference, as training's separate recordings were). The times are the file's ``t``, else
    its ``period_us`` or the step span the model records apart from 0; a segment holding no sample is refused, and
    labels none of whose segments overlaps the recording get the clock named. ``warn(message)`` hears of a sample
    period other than the model's."""
    from .recognition import check_overlap, default_window_us, sample_spans

    x, t, period = continuous_from_npz(path, contract)
    if t is None and period is None:
        period = default_window_us(contract.input.source)
    if t is None and period is None:
        raise RuntimeInputError(f"{path} has no sample times (t [T], us) or sample period (period_us) to place the labelled segments of "
                                f"{Path(labels).name} on")
    if t is not None and len(t) < 2:  # one sample: its time, and no interval to compare with the model's period
        times, period = t, None
    else:
        try:  # each sample's time: the end of its step; no limit on the samples (each segment is a recording of its own)
            _, times, period = sample_spans(t, len(x), period, capped=False)
        except RuntimeInputError as exc:
            raise RuntimeInputError(f"{path}: {exc}") from None
    mismatch = period_mismatch(period, default_window_us(contract.input.source), path, median=t is not None)
    if mismatch and warn is not None:
        warn(mismatch)
    segments = labelled_segments(labels, contract)
    check_overlap(segments, int(times[0]), int(times[-1]) + 1, labels)
    encoding = Encoding.from_dict(contract.input.encoding)
    out = []
    for label, start, end in segments:
        a, b = (int(i) for i in np.searchsorted(times, [start, end]))
        if a == b:
            raise RuntimeInputError(f"{labels}: the segment {start}..{end} us holds no sample of {Path(path).name} "
                                    f"({int(times[0])}..{int(times[-1])} us)")
        out.append(Recording(f"{Path(path).name}[{start}:{end}]", encoded_x(encoding, x[None, a:b], path)[0], label))
    return out


def from_contract_source(contract: StepContract, path, limit: int | None = 20) -> list[Recording]:
    """Labelled recordings from the N-MNIST split list ``path`` (``<recording> <label>`` lines,
    ``.bs2`` files beside it), binned as the model's metadata records for its training data.

    ``path`` is the list the user names: a data path recorded in the metadata is never opened
    (a model file must not make a command read files nobody named). Errors give the line
    number and what was expected, never the line itself."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeInputError(f"{path}: not found or not a regular file (expected an N-MNIST split list)")
    out: list[Recording] = []
    for name, label in read_split_list(path, RuntimeInputError)[:limit]:
        recs = from_events(path.parent / f"{name}.bs2", contract)
        for r in recs:
            r.label = label
        out.extend(recs)
    return out
