"""A generated corpus of bad event files (nothing checked in as binaries): every reader refuses each
one with a one-line :class:`EventFileError` naming the file, or reads a well-formed recording;
never another exception type, never a hang. Training's N-MNIST reader agrees with the runtime's
on every case, and with tonic's wherever a file is accepted."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fptt_edge.data.dataset import DataError
from fptt_edge.data.nmnist import read_nmnist as training_read_nmnist
from fptt_edge.runtime.errors import EventFileError
from fptt_edge.runtime.events import (
    DVS128_SENSOR,
    EVENT_DTYPE,
    MAX_TIMESTAMP_US,
    NMNIST_SENSOR,
    read_aedat31,
    read_events,
    read_nmnist,
    read_tonic_npy,
)

TONIC_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
READERS = {".bs2": (read_nmnist, NMNIST_SENSOR), ".aedat": (read_aedat31, DVS128_SENSOR), ".npy": (read_tonic_npy, DVS128_SENSOR)}
AEDAT_HEAD = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
PACKET = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"), ("ts_overflow", "<i4"),
                   ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])


# --- writers -------------------------------------------------------------------------------------

def nmnist_bytes(x, y, t, p) -> bytes:
    """The N-MNIST format: 5 bytes per event, big-endian bit fields (no range checks: fuzz writer)."""
    x, y, t, p = (np.asarray(a, np.int64) for a in (x, y, t, p))
    raw = np.empty((len(x), 5), np.uint8)
    raw[:, 0], raw[:, 1] = x & 0xFF, y & 0xFF
    raw[:, 2] = ((p & 1) << 7) | ((t >> 16) & 0x7F)
    raw[:, 3], raw[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return raw.tobytes()


def aedat_packet(x, y, ts, p, valid=None, overflow=0, **header) -> bytes:
    """One AEDAT 3.1 polarity packet; ``header`` overrides fields of its 28-byte header."""
    n = len(x)
    valid = np.ones(n, np.uint32) if valid is None else np.asarray(valid, np.uint32)
    ev = np.empty(n, np.dtype([("data", "<u4"), ("ts", "<u4")]))
    ev["data"] = (np.asarray(x, np.uint32) << 17) | (np.asarray(y, np.uint32) << 2) | (np.asarray(p, np.uint32) << 1) | valid
    ev["ts"] = np.asarray(ts, np.int64) & 0xFFFFFFFF
    fields = {"type": 1, "source": 1, "size": 8, "ts_offset": 4, "ts_overflow": overflow, "capacity": n, "number": n, "valid": int(valid.sum())}
    fields.update(header)
    return np.array([tuple(fields[k] for k in PACKET.names)], PACKET).tobytes() + ev.tobytes()


def write_aedat31(path, packets) -> None:
    """AEDAT 3.1 file for fixtures: ``packets`` = list of (x, y, t, p, valid) arrays per polarity packet;
    ``t`` is split into the packet's ``ts_overflow`` (from its first event) and 31-bit timestamps."""
    out = bytearray(AEDAT_HEAD)
    for x, y, t, p, valid in packets:
        t = np.asarray(t, np.int64)
        out += aedat_packet(x, y, t & 0x7FFFFFFF, p, valid, overflow=int(t[0]) >> 31)
    Path(path).write_bytes(bytes(out))


def npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    import io

    f = io.BytesIO()
    np.save(f, arr, allow_pickle=allow_pickle)
    return f.getvalue()


def structured(x, y, t, p, dtype=TONIC_DTYPE) -> np.ndarray:
    ev = np.zeros(len(x), dtype)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


# --- the corpus ----------------------------------------------------------------------------------

def good_files() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    n = 400
    x, y, p = rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n)
    t = np.sort(rng.integers(0, 300_000, n))
    gx, gy = rng.integers(0, 128, n), rng.integers(0, 128, n)
    special = np.array([(2, 1, 8, 4, 0, 2, 2, 2)], PACKET).tobytes() + bytes(16)  # a non-polarity packet, skipped
    aedat = AEDAT_HEAD + aedat_packet(gx[:150], gy[:150], t[:150], p[:150]) + special + aedat_packet(gx[150:], gy[150:], t[150:], p[150:])
    cols = np.stack([gx, gy, p, t / 1000.0], 1)  # DVSGesture's [N, 4] layout, t in ms
    return {"nmnist.bs2": nmnist_bytes(x, y, t, p), "gesture.aedat": aedat,
            "tonic.npy": npy_bytes(structured(gx, gy, t, p)), "columns.npy": npy_bytes(cols)}


def crafted_cases() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, fragment of the expected error) for inputs every reader must refuse."""
    ok_x, ok_t = [1, 2, 3], [10, 20, 30]
    pk = aedat_packet
    cases = [
        # N-MNIST (polarity is one bit: it cannot be out of range in this format)
        ("empty.bs2", b"", "no events"),
        ("trunc.bs2", nmnist_bytes(ok_x, ok_x, ok_t, [0, 1, 0])[:7], "truncated"),
        ("wide-x.bs2", nmnist_bytes([1, 34, 2], ok_x, ok_t, [0, 1, 0]), "has x = 34, outside the 34x34 sensor"),
        ("wide-y.bs2", nmnist_bytes(ok_x, [1, 2, 255], ok_t, [0, 1, 0]), "has y = 255, outside the 34x34 sensor"),
        ("overflow.bs2", nmnist_bytes(ok_x, [1, 240, 2], ok_t, [0, 1, 0]), "timestamp-overflow marker"),
        ("back.bs2", nmnist_bytes(ok_x, ok_x, [10, 30, 20], [0, 1, 0]), "timestamps go backwards at event 2"),
        # AEDAT 3.1
        ("nohead.aedat", b"\x01\x00" * 40, "not an AEDAT 3.x file"),
        ("headonly.aedat", AEDAT_HEAD, "no events"),
        ("invalid.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], valid=[0, 0, 0]), "no events"),
        ("wide-x.aedat", AEDAT_HEAD + pk([1, 128, 2], ok_x, ok_t, [0, 1, 0]), "has x = 128, outside the 128x128 sensor"),
        ("wide-y.aedat", AEDAT_HEAD + pk(ok_x, [1, 2, 32767], ok_t, [0, 1, 0]), "has y = 32767, outside the 128x128 sensor"),
        ("back-in.aedat", AEDAT_HEAD + pk(ok_x, ok_x, [10, 5, 30], [0, 1, 0]), "timestamps go backwards at event 1"),
        ("back-across.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0]) + pk(ok_x, ok_x, [25, 26, 27], [0, 0, 0]),
         "timestamps go backwards at event 3"),
        ("back-overflow.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], overflow=1) + pk(ok_x, ok_x, ok_t, [0, 0, 0]),
         "timestamps go backwards"),
        ("neg-ts.aedat", AEDAT_HEAD + pk(ok_x, ok_x, [10, 2**31 + 5, 30], [0, 1, 0]), "negative timestamp"),
        ("neg-overflow.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], overflow=-1), "negative timestamp overflow counter"),
        ("size12.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], size=12, number=2, capacity=2), "corrupt polarity packet"),
        ("tsoffset.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], ts_offset=0), "corrupt polarity packet"),
        ("capacity.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], capacity=1), "corrupt packet header"),
        ("size0.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], size=0), "corrupt packet header"),
        ("number.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0], number=2**30, capacity=2**30), "truncated packet at byte"),
        ("halfhead.aedat", AEDAT_HEAD + pk(ok_x, ok_x, ok_t, [0, 1, 0])[:20], "truncated packet header"),
    ]
    # tonic .npy, both layouts
    def s(x=ok_x, y=ok_x, t=ok_t, p=(0, 1, 0), dtype=TONIC_DTYPE) -> bytes:  # a structured array
        return npy_bytes(structured(x, y, t, p, dtype))

    def cols(x=ok_x, y=ok_x, p=(0, 1, 0), t=(0.01, 0.02, 0.03), dtype=np.float64) -> bytes:  # DVSGesture's [N, 4], t in ms
        return npy_bytes(np.stack([x, y, p, t], 1).astype(dtype))

    f64 = np.dtype([("x", "<f8"), ("y", "<f8"), ("t", "<f8"), ("p", "<f8")])
    u64 = np.dtype([("x", "<u8"), ("y", "<u8"), ("t", "<u8"), ("p", "<u8")])
    cases += [
        ("wide-x.npy", s(x=[1, 128, 2]), "has x = 128, outside the 128x128 sensor"),
        ("neg-y.npy", s(y=[1, -1, 2]), "has y = -1, outside the 128x128 sensor"),
        ("huge-x.npy", s(x=[1, 2**64 - 1, 2], dtype=u64), "outside the 128x128 sensor"),
        ("float-x.npy", s(x=[1, 1.5, 2], dtype=f64), "not a whole number"),
        ("nan-x.npy", s(x=[1, np.nan, 2], dtype=f64), "not finite"),
        ("big-x.npy", s(x=[1, 1e30, 2], dtype=f64), "outside the 128x128 sensor"),
        ("p2.npy", s(p=[0, 2, 1]), "has polarity 2, not 0 or 1"),
        ("p-1.npy", s(p=[0, -1, 1]), "has polarity -1, not 0 or 1"),
        ("p-half.npy", s(p=[0, 0.5, 1], dtype=f64), "not a whole number"),
        ("back.npy", s(t=[5, 1, 3]), "timestamps go backwards at event 1"),
        ("nan-t.npy", s(t=[1, np.nan, 3], dtype=f64), "not finite"),
        ("inf-t.npy", s(t=[1, 2, np.inf], dtype=f64), "not finite"),
        ("neg-t.npy", s(t=[-1, 2, 3]), "outside [0, 2**62)"),
        ("max-t.npy", s(t=[1, 2, 2**63 - 1]), "outside [0, 2**62)"),
        ("edge-t.npy", s(t=[1, 2, 2**62]), "outside [0, 2**62)"),
        ("u64-t.npy", s(t=[1, 2, 2**64 - 1], dtype=u64), "outside [0, 2**62)"),
        ("f-big-t.npy", s(t=[1, 2, 1e19], dtype=f64), "outside [0, 2**62)"),
        ("str-t.npy", npy_bytes(np.zeros(3, [("x", "<i8"), ("y", "<i8"), ("t", "S4"), ("p", "<i8")])), "expected numbers"),
        ("complex-x.npy", npy_bytes(np.zeros(3, [("x", "<c8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])), "expected numbers"),
        ("sub.npy", npy_bytes(np.zeros(3, [("x", "<i8", (2,)), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])), "values per event"),
        ("2d.npy", npy_bytes(np.zeros((2, 3), TONIC_DTYPE)), "must be 1-D"),
        ("0d.npy", npy_bytes(np.zeros((), TONIC_DTYPE)), "must be 1-D"),
        ("empty.npy", npy_bytes(np.zeros(0, TONIC_DTYPE)), "no events"),
        ("empty-cols.npy", npy_bytes(np.zeros((0, 4))), "no events"),
        ("cols-wide.npy", cols(x=[1, 500, 2]), "has x = 500.0, outside the 128x128 sensor"),
        ("cols-p.npy", cols(p=[0, 3, 1]), "has polarity 3"),
        ("cols-back.npy", cols(t=[0.03, 0.02, 0.04]), "timestamps go backwards"),
        ("cols-neg-t.npy", cols(t=[-0.5, 0.02, 0.04]), "outside [0, 2**62)"),
        ("cols-nan-t.npy", cols(t=[0.01, np.nan, 0.04]), "not finite"),
        ("cols-ms-overflow.npy", cols(t=[0.01, 0.02, 1e16]), "outside [0, 2**62)"),
        ("cols-f32-overflow.npy", cols(t=[0.01, 0.02, 3e38], dtype=np.float32), "outside [0, 2**62)"),
        ("cols-int-overflow.npy", cols(t=[1, 2, 2**62 // 1000 + 1], dtype=np.int64), "outside [0, 2**62)"),
        ("cols3.npy", npy_bytes(np.zeros((3, 3))), "expected a structured"),
        ("cols-bool.npy", npy_bytes(np.zeros((3, 4), bool)), "expected a structured"),
        ("object.npy", npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True), "needs pickle"),
        ("junk.npy", b"not a numpy file at all", "not a readable .npy file"),
        ("v3.npy", b"\x93NUMPY\x03\x00" + npy_bytes(np.zeros(3, TONIC_DTYPE))[8:], "not supported"),
    ]
    good = npy_bytes(structured(ok_x, ok_x, ok_t, [0, 1, 0]))
    data = structured(ok_x, ok_x, ok_t, [0, 1, 0]).tobytes()

    def lie(shape) -> bytes:  # a header announcing another shape than the data holds
        import io

        f = io.BytesIO()
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(TONIC_DTYPE), "fortran_order": False, "shape": shape})
        return f.getvalue() + data

    cases += [
        ("trailing.npy", good + b"\0" * 32, "truncated or corrupt .npy"),
        ("short.npy", good[:-5], "truncated or corrupt .npy"),
        ("lie-big.npy", lie((4,)), "truncated or corrupt .npy"),
        ("lie-huge.npy", lie((10**12,)), "truncated or corrupt .npy"),
        ("lie-neg.npy", lie((-1,)), "corrupt .npy header"),
        ("lie-2d.npy", lie((3, 1)), "must be 1-D"),
        ("lie-zero.npy", lie((0,))[:-len(data)], "no events"),
    ]
    return cases


def mutated_cases(good: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Truncations, single-bit flips (half of them in the first 128 bytes, where the headers are),
    byte overwrites with 0xFF and random blobs of every format."""
    rng = np.random.default_rng(0)
    out = []
    for name, data in good.items():
        stem, suffix = name.rsplit(".", 1)
        for k, n in enumerate(sorted(set(rng.integers(0, len(data), 20).tolist()))):
            out.append((f"{stem}-cut{k}.{suffix}", data[:n]))
        for k in range(40):
            pos = int(rng.integers(0, min(128, len(data)))) if k % 2 else int(rng.integers(0, len(data)))
            flipped = bytearray(data)
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
            out.append((f"{stem}-flip{k}.{suffix}", bytes(flipped)))
        for k in range(10):
            pos = int(rng.integers(0, len(data) - 4))
            out.append((f"{stem}-ff{k}.{suffix}", data[:pos] + b"\xff" * 4 + data[pos + 4:]))
        for k in range(10):
            out.append((f"{stem}-noise{k}.{suffix}", rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()))
    return out


def outcome(reader, path, sensor):
    """``None`` when refused with a proper error, else the (well-formed) events; any other
    exception type propagates and fails the test."""
    try:
        ev = reader(path)
    except EventFileError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(f"{path}: "), message
        return None
    assert ev.dtype == EVENT_DTYPE and ev.ndim == 1 and len(ev) > 0
    assert ev["x"].min() >= 0 and ev["x"].max() < sensor[0] and ev["y"].min() >= 0 and ev["y"].max() < sensor[1]
    assert set(np.unique(ev["p"]).tolist()) <= {0, 1}
    assert ev["t"].min() >= 0 and ev["t"].max() < MAX_TIMESTAMP_US and np.all(np.diff(ev["t"]) >= 0)
    return ev


def run_guarded(fn, timeout=10.0, unblock=None):
    """Run ``fn`` in a daemon thread; a call still running after ``timeout`` fails the test (after
    ``unblock`` frees it, e.g. by opening the FIFO it waits on) instead of hanging the suite."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if unblock:
            unblock()
        pytest.fail(f"reader still running after {timeout} s: it blocked instead of refusing")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# --- tests ---------------------------------------------------------------------------------------

def test_good_files_read(tmp_path):
    for name, data in good_files().items():
        (tmp_path / name).write_bytes(data)
        reader, sensor = READERS["." + name.rsplit(".", 1)[1]]
        ev = outcome(reader, tmp_path / name, sensor)
        assert ev is not None and len(ev) == 400, name
        np.testing.assert_array_equal(read_events(tmp_path / name), ev)


def test_crafted_bad_files_refused_with_one_line(tmp_path):
    cases = crafted_cases()
    assert len(cases) == len({n for n, _, _ in cases})
    for name, data, fragment in cases:
        path = tmp_path / name
        path.write_bytes(data)
        reader, sensor = READERS[path.suffix]
        with pytest.raises(EventFileError) as err:
            reader(path)
        message = str(err.value)
        assert fragment in message and message.startswith(f"{path}: ") and "\n" not in message, (name, message)
        with pytest.raises(EventFileError):
            read_events(path)


def test_mutated_files_refused_or_well_formed(tmp_path):
    counts = {"refused": 0, "read": 0}
    for name, data in mutated_cases(good_files()):
        path = tmp_path / name
        path.write_bytes(data)
        reader, sensor = READERS[path.suffix]
        counts["refused" if outcome(reader, path, sensor) is None else "read"] += 1
    assert counts["refused"] > counts["read"] > 0, counts  # flips in event payloads may still give a valid file


def test_non_regular_files_refused_before_open(tmp_path):
    """A FIFO (no writer: opening it would block, reading it would wait forever), a directory, a
    device and a symlink to a FIFO: each refused from its stat by every reader, training's too."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def unblock():  # a reader blocked in open() of the FIFO returns once a writer comes and goes
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    targets = []
    for suffix in (".bs2", ".aedat", ".npy", ".bin"):
        os.symlink(fifo, tmp_path / f"fifo-link{suffix}")
        os.mkfifo(tmp_path / f"fifo{suffix}")
        (tmp_path / f"dir{suffix}").mkdir()
        targets += [(tmp_path / f"fifo{suffix}", "a FIFO"), (tmp_path / f"fifo-link{suffix}", "a FIFO"),
                    (tmp_path / f"dir{suffix}", "a directory")]
        if os.path.exists("/dev/null"):
            os.symlink("/dev/null", tmp_path / f"null{suffix}")
            targets.append((tmp_path / f"null{suffix}", "a character device"))
    readers = [read_events, *(r for r, _ in READERS.values())]
    for path, kind in targets:
        for reader in readers:
            with pytest.raises(EventFileError) as err:
                run_guarded(lambda reader=reader, path=path: reader(path), unblock=unblock)
            assert str(err.value) == f"{path}: is {kind}, not a regular file: refused (event files are read whole, from regular files only)"
        with pytest.raises(DataError, match="not a regular file"):
            run_guarded(lambda path=path: training_read_nmnist(path), unblock=unblock)
    for reader in readers:
        with pytest.raises(EventFileError, match="cannot read"):
            reader(tmp_path / "missing.bs2")
    with pytest.raises(EventFileError, match="unknown event file type"):
        read_events(tmp_path / "dir.bs2" / ".." / "x.txt")


def test_training_and_runtime_nmnist_readers_agree_with_each_other_and_tonic(tmp_path):
    """Every N-MNIST case of the corpus: the same refusal (same message) on both sides, or the same
    events, equal to tonic's ``read_mnist_file`` in values and, on the training side, in dtype."""
    import tonic

    good = {k: v for k, v in good_files().items() if k.endswith(".bs2")}
    cases = [(n, d) for n, d, _ in crafted_cases() if n.endswith(".bs2")] + mutated_cases(good) + list(good.items())
    accepted = 0
    for name, data in cases:
        path = tmp_path / name
        path.write_bytes(data)
        try:
            ours = read_nmnist(path)
        except EventFileError as exc:
            with pytest.raises(DataError) as err:
                training_read_nmnist(path)
            assert str(err.value) == str(exc)
            continue
        accepted += 1
        train = training_read_nmnist(path)
        ref = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
        assert train.dtype == ref.dtype and train.tobytes() == ref.tobytes(), name
        for k in "xytp":
            np.testing.assert_array_equal(ours[k], ref[k])
    assert accepted > 5


def test_timestamp_overflow_policy(tmp_path):
    """AEDAT's ts_overflow is combined with the 31-bit timestamp up to 2**62 - 1; N-MNIST's
    overflow marker is refused on both sides (tonic would shift later events by 8192 us)."""
    big = 2**31 - 1
    (tmp_path / "o.aedat").write_bytes(AEDAT_HEAD + aedat_packet([1, 2], [3, 4], [5, 6], [0, 1], overflow=3)
                                       + aedat_packet([1], [1], [big], [1], overflow=big))
    ev = read_aedat31(tmp_path / "o.aedat")
    assert ev["t"].tolist() == [(3 << 31) | 5, (3 << 31) | 6, 2**62 - 1]
    (tmp_path / "m.bs2").write_bytes(nmnist_bytes([1, 0, 2], [1, 240, 2], [10, 0, 20], [0, 0, 1]))
    with pytest.raises(EventFileError, match="overflow marker"):
        read_nmnist(tmp_path / "m.bs2")
    with pytest.raises(DataError, match="overflow marker"):
        training_read_nmnist(tmp_path / "m.bs2")
    np.save(tmp_path / "t.npy", structured([1, 2], [1, 2], [0, 2**62 - 1], [0, 1]))
    assert read_tonic_npy(tmp_path / "t.npy")["t"].tolist() == [0, 2**62 - 1]


def test_npy_sensor_size_and_float_layouts(tmp_path):
    np.save(tmp_path / "a.npy", structured([0, 200], [0, 100], [1, 2], [0, 1]))
    with pytest.raises(EventFileError, match="outside the 128x128 sensor"):
        read_tonic_npy(tmp_path / "a.npy")
    assert read_events(tmp_path / "a.npy", sensor_size=(240, 180, 2))["x"].tolist() == [0, 200]
    cols = np.array([[1, 2, 1, 0.5], [3, 4, 0, 1.25]], np.float32)
    np.save(tmp_path / "f32.npy", cols)  # tonic multiplies ms by 1000 in the array's dtype
    assert read_tonic_npy(tmp_path / "f32.npy")["t"].tolist() == (cols[:, 3] * np.float32(1000)).astype(np.int64).tolist()
    flags = np.zeros(2, [("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])  # tonic's DVSGesture dtype
    flags["p"], flags["t"] = [True, False], [1, 2]
    np.save(tmp_path / "b.npy", flags)
    assert read_tonic_npy(tmp_path / "b.npy")["p"].tolist() == [1, 0]


def test_corpus_size():
    """The number reported for issue 9: crafted cases + mutations (+ the non-regular files test)."""
    assert len(crafted_cases()) + len(mutated_cases(good_files())) >= 300
