"""Event-camera readers with numpy only: N-MNIST binary, DVS128 Gesture AEDAT 3.1 (+ labels CSV),
and tonic's preprocessed ``.npy`` layout. All return a structured array with fields
``x, y, t (µs), p`` sorted by time, the dtype tonic uses, so binning matches training exactly.

Every reader checks the whole file first: a truncated or corrupt file raises
:class:`EventFileError` naming the file and what is wrong, never an IndexError or garbage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import EventFileError

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int16)])
NMNIST_SENSOR = (34, 34, 2)
DVS128_SENSOR = (128, 128, 2)
AEDAT_POLARITY_EVENT = 1
AEDAT_HEADER_END = b"#!END-HEADER\r\n"
_PACKET_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"), ("ts_overflow", "<i4"),
                           ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])


def _read(path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EventFileError(f"{path}: cannot read ({exc.strerror})") from None


def _events(x, y, t, p) -> np.ndarray:
    ev = np.empty(len(x), EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def read_nmnist(path) -> np.ndarray:
    """N-MNIST ``.bs2``: 5 bytes per event (x, y, polarity bit + 23-bit µs timestamp, big-endian)."""
    raw = _read(path)
    if len(raw) == 0 or len(raw) % 5:
        raise EventFileError(f"{path}: truncated or not an N-MNIST recording ({len(raw)} bytes is not a whole number of 5-byte events)")
    b = np.frombuffer(raw, np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = b[:, 0], b[:, 1]
    if x.max() >= NMNIST_SENSOR[0] or y.max() >= NMNIST_SENSOR[1]:
        raise EventFileError(f"{path}: event coordinates outside the 34x34 sensor: not an N-MNIST recording")
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    if np.any(np.diff(t) < 0):
        raise EventFileError(f"{path}: timestamps go backwards: corrupt N-MNIST recording")
    return _events(x, y, t, b[:, 2] >> 7)


def read_aedat31(path) -> np.ndarray:
    """AEDAT 3.1 (DVS128 Gesture as IBM distributes it): ``#`` header lines, then packets of a
    28-byte header and ``number`` events of ``size`` bytes; polarity events are a uint32
    (bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x) and an int32 µs timestamp."""
    raw = _read(path)
    end = raw.find(AEDAT_HEADER_END)
    if not raw.startswith(b"#!AER-DAT3") or end < 0:
        raise EventFileError(f"{path}: not an AEDAT 3.x file (no '#!AER-DAT3' version line or no '#!END-HEADER')")
    pos, chunks = end + len(AEDAT_HEADER_END), []
    while pos < len(raw):
        if pos + _PACKET_HEADER.itemsize > len(raw):
            raise EventFileError(f"{path}: truncated packet header at byte {pos}")
        h = np.frombuffer(raw, _PACKET_HEADER, 1, pos)[0]
        size, number = int(h["size"]), int(h["number"])
        if size <= 0 or number < 0 or int(h["capacity"]) < number:
            raise EventFileError(f"{path}: corrupt packet header at byte {pos} (size {size}, number {number}, capacity {int(h['capacity'])})")
        body = pos + _PACKET_HEADER.itemsize
        if body + size * number > len(raw):
            raise EventFileError(f"{path}: truncated packet at byte {pos}: {number} events of {size} bytes announced, "
                                 f"{len(raw) - body} bytes left")
        if int(h["type"]) == AEDAT_POLARITY_EVENT:
            if size != 8:
                raise EventFileError(f"{path}: polarity events must be 8 bytes, packet at byte {pos} says {size}")
            ev = np.frombuffer(raw, np.dtype([("data", "<u4"), ("ts", "<i4")]), number, body)
            ev = ev[(ev["data"] & 1) == 1]  # valid events only
            data = ev["data"].astype(np.int64)
            t = (int(h["ts_overflow"]) << 31) | ev["ts"].astype(np.int64)
            chunks.append(_events((data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, t, (data >> 1) & 1))
        pos = body + size * number
    events = np.concatenate(chunks) if chunks else np.empty(0, EVENT_DTYPE)
    if len(events) and (events["x"].max() >= DVS128_SENSOR[0] or events["y"].max() >= DVS128_SENSOR[1]):
        raise EventFileError(f"{path}: event coordinates outside the 128x128 DVS128 sensor")
    return events[np.argsort(events["t"], kind="stable")]


def read_gesture_labels(path) -> list[tuple[int, int, int]]:
    """DVS128 Gesture ``*_labels.csv``: ``class,startTime_usec,endTime_usec`` rows -> (class, start, end)."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EventFileError(f"{path}: cannot read labels ({exc})") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line[0].isalpha():
            continue
        parts = line.split(",")
        try:
            label, start, end = (int(float(v)) for v in parts)
        except ValueError:
            raise EventFileError(f"{path}:{n}: expected 'class,startTime_usec,endTime_usec', got {line!r}") from None
        if end <= start:
            raise EventFileError(f"{path}:{n}: segment ends before it starts")
        rows.append((label, start, end))
    return rows


def read_tonic_npy(path) -> np.ndarray:
    """tonic's preprocessed ``.npy``: a structured array with x, y, t, p; or DVSGesture's [N, 4]
    columns (x, y, p, t in ms), converted as tonic does (t * 1000 -> µs)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise EventFileError(f"{path}: not a readable .npy event file ({exc})") from None
    if arr.dtype.names and {"x", "y", "t", "p"} <= set(arr.dtype.names):
        ev = _events(arr["x"], arr["y"], arr["t"], arr["p"].astype(np.int16))
    elif arr.ndim == 2 and arr.shape[1] == 4 and arr.dtype.kind in "iuf":
        ev = _events(arr[:, 0], arr[:, 1], (arr[:, 3] * 1000).astype(np.int64), arr[:, 2])
    else:
        raise EventFileError(f"{path}: expected a structured x/y/t/p array or [N, 4] (x, y, p, t), got {arr.dtype} {arr.shape}")
    if len(ev) and (ev["x"].min() < 0 or ev["y"].min() < 0):
        raise EventFileError(f"{path}: negative event coordinates")
    return ev[np.argsort(ev["t"], kind="stable")]


def read_events(path) -> np.ndarray:
    """Dispatch on the file type: ``.bs2`` (N-MNIST), ``.aedat`` (AEDAT 3.1), ``.npy`` (tonic)."""
    suffix = Path(path).suffix.lower()
    readers = {".bs2": read_nmnist, ".bin": read_nmnist, ".aedat": read_aedat31, ".npy": read_tonic_npy}
    if suffix not in readers:
        raise EventFileError(f"{path}: unknown event file type {suffix!r}; expected .bs2 / .bin (N-MNIST), .aedat (AEDAT 3.1) or .npy (tonic)")
    return readers[suffix](path)
