"""Event-camera readers with numpy only, one per file format, shared by training
(:mod:`fptt_edge.data.nmnist` calls them) and the device runtime: N-MNIST binary (``.bs2``),
DVS128 Gesture AEDAT 3.1 (+ labels CSV) and tonic's preprocessed ``.npy`` layouts. All return a
structured array with fields ``x, y, t (us), p`` (:data:`EVENT_DTYPE`) in time order, with the
values tonic's readers give, so binning matches training exactly.

Every reader applies the same rules and raises :class:`EventFileError` (one line, naming the
file) for anything else, never an IndexError, a hang or garbage events:

- Only regular files are read. A FIFO, device, socket or directory is refused from ``os.stat``
  before it is opened (and checked again on the opened descriptor), so nothing blocks or reads
  forever.
- The whole file is checked first: a truncated file or a corrupt structure is refused.
- A recording with no events is refused.
- Coordinates must lie on the sensor (N-MNIST 34x34, DVS128 128x128; for ``.npy`` the
  ``sensor_size`` given, DVS128 by default) as whole numbers, and polarity must be 0 or 1.
- Timestamps must be finite, in ``[0, 2**62)`` us and non-decreasing: a file out of time order
  is refused, not silently sorted.

Timestamp overflow, one decision per format (the result is always int64 us in ``[0, 2**62)``):

- N-MNIST: timestamps are 23 bits (8.4 s) and a recording lasts about 0.3 s, so they cannot wrap
  within the format. The ``y = 240`` overflow marker of the older ATIS tools (tonic's reader drops
  it and adds 8192 us to every later event) never occurs in N-MNIST; a file holding one is
  refused rather than read with shifted timestamps.
- AEDAT 3.1: each packet's ``ts_overflow`` counter is combined with the 31-bit event timestamp,
  ``t = ts_overflow << 31 | ts`` (at most ``2**62 - 1``); a negative counter or timestamp is
  corrupt and refused.
- ``.npy``: timestamps are already int64 us (ms in DVSGesture's ``[N, 4]`` layout, multiplied by
  1000 in the array's own dtype as tonic does); there is no wrap to undo, and a value outside
  ``[0, 2**62)`` (negative, an unsigned value beyond int64, ms that overflow once in us) is
  refused as an overflow. ``2**62`` is AEDAT's bound too, and leaves the binner's
  ``t_last - t_first`` and window sums room in int64.
"""
from __future__ import annotations

import io
import math
import os
import stat
import tokenize
import warnings
from pathlib import Path

import numpy as np

from .errors import EventFileError

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int16)])
NMNIST_SENSOR = (34, 34, 2)
DVS128_SENSOR = (128, 128, 2)
NMNIST_EVENT_BYTES = 5
NMNIST_OVERFLOW_Y = 240  # tonic's (ATIS) timestamp-overflow marker, refused: see the module docstring
MAX_TIMESTAMP_US = 2**62  # exclusive bound of every reader's timestamps
AEDAT_POLARITY_EVENT = 1
AEDAT_HEADER_END = b"#!END-HEADER\r\n"
_PACKET_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"), ("ts_overflow", "<i4"),
                           ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
_POLARITY = np.dtype([("data", "<u4"), ("ts", "<i4")])
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"))
# what numpy's .npy header parsing raises on corrupt bytes (its tokenizer fallback raises TokenError)
_NPY_ERRORS = (ValueError, TypeError, EOFError, OverflowError, SyntaxError, KeyError, UnicodeDecodeError, RecursionError, tokenize.TokenError)


def _error(path, message: str) -> EventFileError:
    """An :class:`EventFileError` of one line that names the file."""
    text = f"{path}: {message}"
    return EventFileError(text.replace("\r", "\\r").replace("\n", "\\n"))


def _read(path) -> bytes:
    """The bytes of a regular file; a FIFO, device or directory is refused before it is opened."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise _error(path, f"cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for is_kind, name in _FILE_KINDS if is_kind(st.st_mode)), "a special file")
        raise _error(path, f"is {kind}, not a regular file: refused (event files are read whole, from regular files only)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO swapped in after the stat cannot block the open
    except OSError as exc:
        raise _error(path, f"cannot read ({exc.strerror or exc})") from None
    with open(fd, "rb", closefd=True) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _error(path, "is no longer a regular file: refused (it changed while being opened)")
        try:
            return f.read()
        except OSError as exc:
            raise _error(path, f"cannot read ({exc.strerror or exc})") from None


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _range_message(name: str, value, index: int, sensor) -> str:
    if name in ("x", "y"):
        return f"event {index} has {name} = {value}, outside the {sensor[0]}x{sensor[1]} sensor"
    if name == "p":
        return f"event {index} has polarity {value}, not 0 or 1"
    return f"event {index} has timestamp {value} us, outside [0, 2**62): negative or overflowing"


def _finish(path, x, y, t, p, sensor) -> np.ndarray:
    """The checks every reader ends with, on int64 columns, then the events as :data:`EVENT_DTYPE`."""
    if len(t) == 0:
        raise _error(path, "no events: an empty recording")
    for name, v, hi in (("x", x, sensor[0]), ("y", y, sensor[1]), ("p", p, 2), ("t", t, MAX_TIMESTAMP_US)):
        bad = (v < 0) | (v >= hi)
        if bad.any():
            i = _first(bad)
            raise _error(path, _range_message(name, v[i], i, sensor))
    back = np.diff(t) < 0
    if back.any():
        i = _first(back)
        raise _error(path, f"timestamps go backwards at event {i + 1} ({t[i]} -> {t[i + 1]} us): events must be in time order")
    ev = np.empty(len(t), EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def read_nmnist(path) -> np.ndarray:
    """N-MNIST ``.bs2``: 5 bytes per event (x, y, polarity bit + 23-bit us timestamp, big-endian)."""
    raw = _read(path)
    if not raw:
        raise _error(path, "no events (0 bytes: an empty or truncated N-MNIST recording)")
    if len(raw) % NMNIST_EVENT_BYTES:
        raise _error(path, f"truncated or not an N-MNIST recording ({len(raw)} bytes is not a whole number of "
                           f"{NMNIST_EVENT_BYTES}-byte events)")
    b = np.frombuffer(raw, np.uint8).reshape(-1, NMNIST_EVENT_BYTES).astype(np.int64)
    marker = b[:, 1] == NMNIST_OVERFLOW_Y
    if marker.any():
        raise _error(path, f"event {_first(marker)} is a timestamp-overflow marker (y = {NMNIST_OVERFLOW_Y}), which N-MNIST's "
                           "23-bit timestamps never need: refused rather than read with shifted timestamps")
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    return _finish(path, b[:, 0], b[:, 1], t, b[:, 2] >> 7, NMNIST_SENSOR)


def read_aedat31(path) -> np.ndarray:
    """AEDAT 3.1 (DVS128 Gesture as IBM distributes it): ``#`` header lines, then packets of a
    28-byte header and ``number`` events of ``size`` bytes; polarity events are a uint32
    (bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x) and an int32 us timestamp, which the
    packet's ``ts_overflow`` extends (``t = ts_overflow << 31 | ts``). Invalid events are skipped."""
    raw = _read(path)
    end = raw.find(AEDAT_HEADER_END)
    if not raw.startswith(b"#!AER-DAT3") or end < 0:
        raise _error(path, "not an AEDAT 3.x file (no '#!AER-DAT3' version line or no '#!END-HEADER')")
    pos, chunks = end + len(AEDAT_HEADER_END), []
    while pos < len(raw):
        if pos + _PACKET_HEADER.itemsize > len(raw):
            raise _error(path, f"truncated packet header at byte {pos}")
        h = np.frombuffer(raw, _PACKET_HEADER, 1, pos)[0]
        size, number, capacity, overflow = int(h["size"]), int(h["number"]), int(h["capacity"]), int(h["ts_overflow"])
        if size <= 0 or number < 0 or capacity < number:
            raise _error(path, f"corrupt packet header at byte {pos} (size {size}, number {number}, capacity {capacity})")
        body = pos + _PACKET_HEADER.itemsize
        if body + size * number > len(raw):
            raise _error(path, f"truncated packet at byte {pos}: {number} events of {size} bytes announced, {len(raw) - body} bytes left")
        if int(h["type"]) == AEDAT_POLARITY_EVENT:
            if size != _POLARITY.itemsize or int(h["ts_offset"]) != 4:
                raise _error(path, f"corrupt polarity packet at byte {pos}: events of {size} bytes with the timestamp at byte "
                                   f"{int(h['ts_offset'])} (8 and 4 expected)")
            if overflow < 0:
                raise _error(path, f"corrupt polarity packet at byte {pos}: negative timestamp overflow counter {overflow}")
            ev = np.frombuffer(raw, _POLARITY, number, body)
            ev = ev[(ev["data"] & 1) == 1]  # valid events only
            negative = ev["ts"] < 0
            if negative.any():
                raise _error(path, f"corrupt polarity packet at byte {pos}: negative timestamp {int(ev['ts'][_first(negative)])}")
            data = ev["data"].astype(np.int64)
            chunks.append(((data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, (overflow << 31) | ev["ts"].astype(np.int64), (data >> 1) & 1))
        pos = body + size * number
    x, y, t, p = (np.concatenate([c[k] for c in chunks]) if chunks else np.empty(0, np.int64) for k in range(4))
    return _finish(path, x, y, t, p, DVS128_SENSOR)


def read_gesture_labels(path) -> list[tuple[int, int, int]]:
    """DVS128 Gesture ``*_labels.csv``: ``class,startTime_usec,endTime_usec`` rows -> (class, start, end).

    Header lines (starting with a letter) are skipped. Every other line must hold three whole,
    finite numbers with ``class >= 0`` and ``0 <= start < end < 2**62`` us; a file without such a
    row is refused. Errors name the line, never echo it."""
    try:
        lines = _read(path).decode().splitlines()
    except UnicodeDecodeError:
        raise _error(path, "labels are not UTF-8 text") from None
    rows = [_label_row(path, n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.strip()[0].isalpha()]
    if not rows:
        raise _error(path, "no label rows ('class,startTime_usec,endTime_usec')")
    return rows


def _label_row(path, n: int, line: str) -> tuple[int, int, int]:
    try:
        label, start, end = (_whole(v) for v in line.split(","))
    except ValueError:
        raise _error(f"{path}:{n}", "expected 'class,startTime_usec,endTime_usec' as three whole numbers") from None
    if label < 0 or not 0 <= start < end < MAX_TIMESTAMP_US:
        raise _error(f"{path}:{n}", f"need class >= 0 and 0 <= start < end < 2**62 us, got {label}, {start}, {end}")
    return label, start, end


def _whole(text: str) -> int:
    """A whole number written as an int or a float ('5000' or '5e3'); ValueError otherwise (NaN, inf, 1.5)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def _npy_header(f) -> tuple:
    version = np.lib.format.read_magic(f)
    with warnings.catch_warnings():  # numpy warns about headers it had to repair (Python 2 files)
        warnings.simplefilter("ignore")
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")


def _load_npy(path, raw: bytes) -> np.ndarray:
    """The array of a ``.npy`` file's bytes, its header checked against the data before any
    allocation (a corrupt shape cannot ask for terabytes); never unpickles."""
    f = io.BytesIO(raw)
    try:
        shape, fortran, dtype = _npy_header(f)
    except _NPY_ERRORS as exc:
        raise _error(path, f"not a readable .npy file ({exc})") from None
    if dtype.hasobject:
        raise _error(path, "the array holds Python objects (loading them needs pickle): refused")
    if any(n < 0 for n in shape):
        raise _error(path, f"corrupt .npy header: shape {shape}")
    count, offset = math.prod(shape), f.tell()
    need, have = count * dtype.itemsize, len(raw) - offset
    if need != have:
        raise _error(path, f"truncated or corrupt .npy: the header announces {shape} {dtype} ({need} bytes of data), the file holds {have}")
    if count and not dtype.itemsize:
        raise _error(path, f"corrupt .npy header: items of dtype {dtype} hold no bytes")
    try:
        arr = np.frombuffer(raw, dtype, count, offset) if count else np.empty(0, dtype)
        return arr.reshape(shape, order="F" if fortran else "C")
    except _NPY_ERRORS as exc:
        raise _error(path, f"not a readable .npy file ({exc})") from None


def _npy_column(path, name: str, v: np.ndarray, hi: int, sensor) -> np.ndarray:
    """An int64 copy of a numeric column whose values must be whole numbers in ``[0, hi)``."""
    if v.dtype.kind == "b":
        v = v.astype(np.int64)
    if v.dtype.kind not in "iuf":
        raise _error(path, f"field {name!r} has dtype {v.dtype}, expected numbers")
    if v.dtype.kind == "f":
        bad = ~np.isfinite(v)
        if bad.any():
            raise _error(path, f"event {_first(bad)} has {name} = {v[_first(bad)]}, not finite")
        bad = v != np.trunc(v)
        if bad.any():
            raise _error(path, f"event {_first(bad)} has {name} = {v[_first(bad)]}, not a whole number")
    bad = (v < 0) | (v >= hi)
    if bad.any():
        raise _error(path, _range_message(name, v[_first(bad)], _first(bad), sensor))
    return v.astype(np.int64)


def _npy_timestamps(path, t: np.ndarray, scale: int) -> np.ndarray:
    """int64 us from a timestamp column in units of ``1 / scale`` us (1000: ms). Floats are
    multiplied in their own dtype and truncated, as tonic does; results outside ``[0, 2**62)`` us
    are refused as overflow."""
    if t.dtype.kind not in "iuf":
        raise _error(path, f"field 't' has dtype {t.dtype}, expected numbers")
    unit = " ms" if scale == 1000 else " us"
    if t.dtype.kind == "f":
        bad = ~np.isfinite(t)
        if bad.any():
            raise _error(path, f"event {_first(bad)} has timestamp {t[_first(bad)]}{unit}, not finite")
        with np.errstate(over="ignore"):
            us = t * t.dtype.type(scale) if scale != 1 else t
        bad = ~np.isfinite(us) | (us < 0) | (us >= MAX_TIMESTAMP_US)
    else:
        us = t
        bad = (t < 0) | (t > (MAX_TIMESTAMP_US - 1) // scale)
    if bad.any():
        i = _first(bad)
        raise _error(path, f"event {i} has timestamp {t[i]}{unit}, outside [0, 2**62) us: negative or overflowing")
    return us.astype(np.int64) if t.dtype.kind == "f" else us.astype(np.int64) * scale


def read_tonic_npy(path, sensor_size=DVS128_SENSOR) -> np.ndarray:
    """tonic's preprocessed ``.npy``: a 1-D structured array with x, y, t (us), p; or DVSGesture's
    ``[N, 4]`` columns (x, y, p, t in ms), converted as tonic does (t * 1000 -> us). The file does
    not record its sensor: coordinates are checked against ``sensor_size`` (W, H, P), DVS128's by
    default."""
    raw = _read(path)
    arr = _load_npy(path, raw)
    names = arr.dtype.names or ()
    if {"x", "y", "t", "p"} <= set(names):
        if arr.ndim != 1:
            raise _error(path, f"a structured event array must be 1-D, this one has shape {arr.shape}")
        cols, scale = {k: arr[k] for k in "xytp"}, 1
        for k, v in cols.items():
            if v.ndim != 1:
                raise _error(path, f"field {k!r} holds {v.shape[1:]} values per event, expected one")
    elif not names and arr.ndim == 2 and arr.shape[1] == 4 and arr.dtype.kind in "iuf":
        cols, scale = {"x": arr[:, 0], "y": arr[:, 1], "p": arr[:, 2], "t": arr[:, 3]}, 1000
    else:
        raise _error(path, f"expected a structured x/y/t/p array or [N, 4] (x, y, p, t), got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        raise _error(path, "no events: an empty recording")
    sensor = tuple(int(s) for s in sensor_size)
    x = _npy_column(path, "x", cols["x"], sensor[0], sensor)
    y = _npy_column(path, "y", cols["y"], sensor[1], sensor)
    p = _npy_column(path, "p", cols["p"], 2, sensor)
    return _finish(path, x, y, _npy_timestamps(path, cols["t"], scale), p, sensor)


def read_events(path, sensor_size=None) -> np.ndarray:
    """Dispatch on the file type: ``.bs2`` / ``.bin`` (N-MNIST), ``.aedat`` (AEDAT 3.1), ``.npy``
    (tonic; checked against ``sensor_size`` when given, else DVS128's)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".bs2", ".bin"):
        return read_nmnist(path)
    if suffix == ".aedat":
        return read_aedat31(path)
    if suffix == ".npy":
        return read_tonic_npy(path, sensor_size or DVS128_SENSOR)
    raise _error(path, f"unknown event file type {suffix!r}; expected .bs2 / .bin (N-MNIST), .aedat (AEDAT 3.1) or .npy (tonic)")
