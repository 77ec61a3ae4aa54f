"""The adapted-weights store (``runtime/adapted.py``): round trip, kill -9 during a save, a generated
hostile corpus, refused saves and concurrent saves.

Expectations are computed here, independently of the module: safetensors files are written and
read with ``struct``/``json``/``numpy`` below, the checksum is recomputed with ``hashlib`` from the
documented key order, and the hostile files are generated from a good one (nothing hard-coded)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fptt_edge.runtime.adapted import KEYS, AdaptedStore, Generation, checksum, layout, store_dir
from fptt_edge.runtime.errors import AdaptationError
from fptt_edge.train_contract import Hyper, TrainContract, TrainTensor

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ORDER = ("weights", "wbar", "lam", "m", "u", "step")  # the file format's tensors, in checksum order
BASE = hashlib.sha256(b"the shipped model.onnx").hexdigest()
OTHER_BASE = hashlib.sha256(b"another model.onnx").hexdigest()
TRAIN = hashlib.sha256(b"the model.train.onnx").hexdigest()
SHAPES = (("a", (3, 4)), ("b", (5,)))
N = sum(int(np.prod(s)) for _, s in SHAPES)
UNVERIFIED = ("created", "info", "train_sha256")  # metadata the loader does not check (free text)


def contract() -> TrainContract:
    tensors, offset = [], 0
    for name, shape in SHAPES:
        tensors.append(TrainTensor(name, shape, offset))
        offset += int(np.prod(shape))
    return TrainContract(batch=4, frame_shape=(8,), num_classes=10, states=(("l0.u", (16,)),), tensors=tuple(tensors),
                         trainable="all", hyper=Hyper(), checkpoint_sha256="c" * 64, inference_sha256="d" * 64, opset=20)


def buffers(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: rng.standard_normal((1, N)).astype(np.float32) for k in ORDER if k != "step"}
    out["step"] = np.array([seed + 1], np.float32)
    return out


def make_store(folder, base: str = BASE) -> AdaptedStore:
    return AdaptedStore(folder, base, TRAIN, contract())


# --- an independent safetensors writer / reader and the format's metadata -----------------------------
def expected_checksum(bufs) -> str:
    h = hashlib.sha256()
    for k in ORDER:
        h.update(k.encode("ascii"))
        h.update(np.asarray(bufs[k], "<f4").tobytes())
    return h.hexdigest()


def expected_layout() -> str:
    offsets = np.cumsum([0] + [int(np.prod(s)) for _, s in SHAPES])
    return json.dumps([[name, list(shape), int(off)] for (name, shape), off in zip(SHAPES, offsets)])


def good_meta(bufs, generation: int = 2, **override) -> dict[str, str]:
    meta = {"format": "fptt-edge-adapted", "format_version": "1", "generation": str(generation), "base_sha256": BASE,
            "train_sha256": TRAIN, "layout": expected_layout(), "checksum": expected_checksum(bufs),
            "created": "2024-01-01T00:00:00Z", "info": "{}"}
    meta.update(override)
    return {k: v for k, v in meta.items() if v is not None}


def frame(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def encode(entries, metadata=None) -> bytes:
    """A safetensors file written here: ``entries`` = [(name, dtype, shape, raw bytes)], contiguous offsets."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    hb = json.dumps(header).encode()
    return frame(hb + b" " * (-len(hb) % 8), data)


def entries_of(bufs, dtype=None):
    out = []
    for k in ORDER:
        v = np.asarray(bufs[k])
        out.append((k, dtype or "F32", v.shape, np.ascontiguousarray(v, "<f8" if dtype == "F64" else "<f4").tobytes()))
    return out


def parse(data: bytes):
    """(metadata, {name: float32 array}) of a safetensors file, read here."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n:]
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32"
        a, b = t["data_offsets"]
        tensors[name] = np.frombuffer(body[a:b], "<f4").reshape(t["shape"])
    return meta, tensors


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == np.float32 and np.asarray(b[k]).shape == a[k].shape and a[k].tobytes() == np.asarray(b[k], np.float32).tobytes()
        for k in a)


def one_line(exc: BaseException) -> bool:
    msg = str(exc)
    return (bool(msg.strip()) and "\n" not in msg and "\r" not in msg and "Traceback" not in msg
            and exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__))


def in_thread(fn, timeout: float = 10.0):
    """fn() in a thread; TimeoutError if it does not return (a load that blocks on a FIFO)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError
    if "error" in out:
        raise out["error"]
    return out["value"]


# --- 1. round trip ------------------------------------------------------------------------------------
def test_round_trip_numbers_and_latest(tmp_path):
    assert store_dir(tmp_path / "model.onnx") == tmp_path / "model.adapted"
    assert KEYS == ORDER and json.loads(layout(contract())) == json.loads(expected_layout())
    store = make_store(store_dir(tmp_path / "model.onnx"))
    assert store.generations() == [] and store.latest_good() is None
    saved = []
    for i in range(3):
        bufs = buffers(i)
        gen = store.save(bufs, {"i": i, "lr": np.float32(0.5)})
        assert isinstance(gen, Generation) and gen.number == i + 1
        assert gen.path == store.path(i + 1) and gen.path.name == f"gen-{i + 1:06d}.safetensors" and gen.path.is_file()
        assert checksum(bufs) == expected_checksum(bufs)
        saved.append(bufs)
    assert store.generations() == [3, 2, 1]
    for number, bufs in enumerate(saved, 1):
        meta, tensors = parse(store.path(number).read_bytes())  # read here, not by the module
        assert same(tensors, bufs)
        assert meta["checksum"] == expected_checksum(bufs) and meta["generation"] == str(number)
        assert meta["base_sha256"] == BASE and meta["train_sha256"] == TRAIN and meta["layout"] == expected_layout()
        assert meta["format"] == "fptt-edge-adapted" and meta["format_version"] == "1"
        assert json.loads(meta["info"]) == {"i": number - 1, "lr": 0.5}
        gen = store.load(store.path(number))
        assert gen.number == number and same(gen.buffers, bufs)
    warns = []
    latest = store.latest_good(warn=warns.append)
    assert warns == [] and latest.number == 3 and same(latest.buffers, saved[2])
    # float64 input is stored as its float32 rounding; the generation does not alias the caller's arrays
    b64 = {k: v.astype(np.float64) / 3 for k, v in buffers(7).items()}
    gen = store.save(b64)
    expect = {k: v.astype(np.float32) for k, v in b64.items()}
    assert gen.number == 4 and same(store.load(gen.path).buffers, expect)
    mine = buffers(8)
    gen = store.save(mine)
    mine["weights"][0, 0] += 1.0
    assert same(store.latest_good().buffers, buffers(8)) and same(gen.buffers, buffers(8))


def test_names_that_are_not_generations(tmp_path):
    store = make_store(tmp_path)
    store.save(buffers(1))
    good = store.path(1).read_bytes()
    for name in ("gen-0000009.safetensors", "gen-9.safetensors", "gen-000009.safetensors.bak", "gen-00000a.safetensors",
                 ".gen-000009.safetensors.abcd1234.tmp", "GEN-000009.safetensors"):
        (tmp_path / name).write_bytes(good)
    assert store.generations() == [1]
    # a copy under another generation's name is refused (its metadata says 1) and skipped
    store.path(5).write_bytes(good)
    warns = []
    assert store.latest_good(warn=warns.append).number == 1
    assert len(warns) == 1 and "gen-000005" in warns[0] and "name says 5" in warns[0]
    # past gen-999999 the numbers keep going (and are found again)
    store.path(999_999).write_bytes(encode(entries_of(buffers(2)), good_meta(buffers(2), generation=999_999)))
    gen = store.save(buffers(3))
    assert gen.number == 1_000_000 and gen.path.name == "gen-1000000.safetensors"
    assert store.generations()[:2] == [1_000_000, 999_999]
    assert same(store.latest_good().buffers, buffers(3))


MAX_GEN = 10 ** 12 - 1  # the last number the loader reads (12 digits)


def test_junk_under_the_last_numbers_does_not_block_saves(tmp_path):
    store = make_store(tmp_path)
    store.save(buffers(1))
    junk = {store.path(MAX_GEN): b"junk\n", tmp_path / "gen-1000000000000.safetensors": b""}
    for path, data in junk.items():
        path.write_bytes(data)
    store.check_folder()  # room is left: after generation 1
    assert store.save(buffers(2)).number == 2
    store.path(3).write_bytes(b"junk where the next number would go")
    assert store.save(buffers(3)).number == 4  # numbered past an existing name, never over it
    assert all(path.read_bytes() == data for path, data in junk.items())
    assert store.path(3).read_bytes() == b"junk where the next number would go"
    warns = []
    assert same(store.latest_good(warn=warns.append).buffers, buffers(3))
    assert len(warns) == 1 and f"gen-{MAX_GEN}" in warns[0]


def test_a_store_at_its_last_number_is_refused_before_any_work(tmp_path):
    store = make_store(tmp_path)
    store.path(MAX_GEN).write_bytes(encode(entries_of(buffers(2)), good_meta(buffers(2), generation=MAX_GEN)))
    assert store.load(store.path(MAX_GEN)).number == MAX_GEN  # a good generation with the last number
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for attempt in (store.check_folder, lambda: store.save(buffers(3))):
        with pytest.raises(AdaptationError, match="generation numbers are used up") as info:
            attempt()
        assert one_line(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != ".lock"} == before


# --- 2. kill -9 during a save -----------------------------------------------------------------------
CHILD = r"""
import os, pathlib, sys, time
sys.path.insert(0, sys.argv[1])
from test_adapted_store import buffers, make_store
import fptt_edge.runtime.adapted as adapted
folder, mode = pathlib.Path(sys.argv[2]), sys.argv[3]
store = make_store(folder)

def say(*words):
    print(*words, flush=True)

if mode in ("kill-before-rename", "kill-mid-write"):
    store.save(buffers(1))
    say("saved", 1, 1)
    if mode == "kill-before-rename":
        real_fsync = os.fsync
        def fsync(fd):  # the io helper fsyncs the written temporary file, then renames it
            real_fsync(fd)
            say("writing")
            time.sleep(120)
        os.fsync = fsync
    else:
        def write_bytes(self, data):  # half the bytes reach the temporary file
            with open(self, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                say("writing")
                time.sleep(120)
        pathlib.Path.write_bytes = write_bytes
    store.save(buffers(2))
    say("finished")
elif mode == "slow":  # holds the save between picking its number and writing it, until ``go`` exists
    seed, go = int(sys.argv[4]), pathlib.Path(sys.argv[5])
    real_write = adapted.write_bytes_atomic
    def slow_write(path, data):
        say("writing", path.name)
        while not go.exists():
            time.sleep(0.002)
        real_write(path, data)
    adapted.write_bytes_atomic = slow_write
    gen = store.save(buffers(seed))
    say("saved", gen.number, seed)
elif mode == "save":
    seed = int(sys.argv[4])
    say("ready")
    gen = store.save(buffers(seed))
    say("saved", gen.number, seed)
elif mode == "stress":
    tag, count, go = int(sys.argv[4]), int(sys.argv[5]), pathlib.Path(sys.argv[6])
    say("ready")
    while not go.exists():
        time.sleep(0.002)
    for i in range(count):
        seed = 1000 * tag + i
        gen = store.save(buffers(seed))
        say("saved", gen.number, seed)
"""


class Child:
    """A child process running CHILD; its stdout lines arrive on a queue."""

    def __init__(self, folder, mode, *args):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), str(folder), mode, *map(str, args)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"child said {self.seen}, not {prefix!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"child ended (said {self.seen}): {self.proc.stderr.read()[-2000:]}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def finish(self, timeout: float = 60.0) -> list[tuple[int, int]]:
        """Wait for the end; the (generation, seed) pairs it saved."""
        self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        assert self.proc.returncode == 0, self.proc.stderr.read()[-2000:]
        return [(int(w[1]), int(w[2])) for w in (line.split() for line in self.seen) if w[0] == "saved"]


@pytest.mark.parametrize("mode", ["kill-before-rename", "kill-mid-write"])
def test_kill_9_during_save_keeps_previous_generation(tmp_path, mode):
    folder = tmp_path / "model.adapted"
    child = Child(folder, mode)
    child.wait_for("saved 1")
    child.wait_for("writing")
    temporaries = sorted(p.name for p in folder.glob(".gen-*.tmp"))
    assert len(temporaries) == 1  # the save is under way: its temporary file exists, gen-000002 does not
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait(timeout=30)
    assert child.proc.returncode == -signal.SIGKILL
    store = make_store(folder)
    assert sorted(p.name for p in folder.glob(".gen-*.tmp")) == temporaries  # the killed writer's leftovers ...
    assert store.generations() == [1]  # ... are not generations
    warns = []
    gen = store.latest_good(warn=warns.append)
    assert warns == [] and gen.number == 1 and same(gen.buffers, buffers(1))
    # the next save (the dead writer's lock is gone with it) takes number 2 and clears the leftover
    gen = in_thread(lambda: store.save(buffers(3)), timeout=30)
    assert gen.number == 2 and list(folder.glob(".gen-*.tmp")) == []
    assert same(store.latest_good(warn=warns.append).buffers, buffers(3)) and warns == []


# --- 3. the hostile corpus ----------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    data: bytes | None = None  # file contents, or
    kind: str = "file"  # "file", "dir", "fifo", "symlink", "sparse"
    target: str = ""  # symlink target
    expect: str = ""  # a word the message must hold
    tolerated: bool = False  # damage to free-text metadata only: may load, then identical to the original


def _spans(header: bytes, keys) -> list[tuple[int, int]]:
    """Byte spans of the ``"key":"value"`` entries of ``keys`` in a header (JSON escapes honoured)."""
    out = []
    for key in keys:
        m = re.search(rb'"' + key.encode() + rb'":"(?:[^"\\]|\\.)*"', header)
        assert m is not None, key
        out.append(m.span())
    return out


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def corpus(good: bytes, marker: Path) -> list[Case]:
    """Hostile variants of ``good`` (a valid gen-000002 of ``buffers(2)``) and of the format."""
    bufs = buffers(2)
    meta_good = good_meta(bufs)
    (hlen,) = struct.unpack("<Q", good[:8])
    header, start = good[8:8 + hlen], 8 + hlen
    cases = [Case("empty file", b"")]
    # truncated at many offsets
    offsets = {1, 4, 7, 8, 9, 10, start - 1, start, start + 1, len(good) - 4, len(good) - 1}
    offsets |= set(range(0, len(good), max(1, len(good) // 48)))
    cases += [Case(f"truncated at {n}", good[:n]) for n in sorted(offsets) if n < len(good)]
    cases.append(Case("one byte too many", good + b"\0"))
    # single-bit flips: every bit of the length field, one bit of every header byte, one of every data byte
    free = [(a + 8, b + 8) for a, b in _spans(header, UNVERIFIED)]
    for pos in range(start):
        for bit in (range(8) if pos < 8 else [pos % 8]):
            damaged = bytearray(good)
            damaged[pos] ^= 1 << bit
            tolerated = any(a <= pos < b for a, b in free)
            cases.append(Case(f"header bit {bit} of byte {pos}", bytes(damaged), tolerated=tolerated))
    for pos in range(start, len(good)):
        damaged = bytearray(good)
        damaged[pos] ^= 1 << (pos % 8)
        finite = bool(np.isfinite(np.frombuffer(bytes(damaged[start:]), "<f4")).all())
        cases.append(Case(f"data bit {pos % 8} of byte {pos}", bytes(damaged), expect="checksum" if finite else "NaN"))
    # random bytes
    rng = np.random.default_rng(1234)
    for size in (1, 7, 8, 9, 64, 1000, len(good), 1 << 16):
        cases.append(Case(f"{size} random bytes", rng.bytes(size)))
        cases.append(Case(f"{size} random bytes after a fitting length", frame(rng.bytes(size))))
    for i in range(4):
        data = rng.bytes(len(good) - start)
        finite = bool(np.isfinite(np.frombuffer(data, "<f4")).all())
        cases.append(Case(f"good header, random data {i}", good[:start] + data, expect="checksum" if finite else "NaN"))
    # the length field
    for claim in (10**15, 1 << 50, (1 << 64) - 1, 1 << 63, hlen + 1 + len(good), 0, 1, 2):
        cases.append(Case(f"header length {claim}", struct.pack("<Q", claim) + good[8:]))
    # header JSON that is not a usable object
    for text in (b"[]", b'"text"', b"1", b"null", b"true", b"{", b"{}", b"{}}", b"{" * 100_000, b"[" * 100_000 + b"]" * 100_000,
                 b'{"\xff\xfe": 1}', b"\xef\xbb\xbf{}", b'{"__metadata__": [1]}', b'{"__metadata__": {"format": 1}}',
                 b'{"__metadata__": null}', b'{"weights": 5}', b'{"weights": {"dtype": "F32"}}', header.replace(b"{", b"[", 1)):
        cases.append(Case(f"header {text[:24]!r}", frame(text, good[start:])))
    # wrong dtypes (sized to match the dtype, so only the dtype is wrong)
    w = np.asarray(bufs["weights"])
    for dtype, raw in (("F16", w.astype("<f2").tobytes()), ("BF16", w.astype("<f4").tobytes()[: 2 * N]), ("F64", w.astype("<f8").tobytes()),
                       ("I32", w.astype("<i4").tobytes()), ("I64", w.astype("<i8").tobytes()), ("U8", bytes(N)), ("BOOL", bytes(N)),
                       ("F8_E4M3", bytes(N)), ("F8_E5M2", bytes(N)), ("C64", w.astype("<c8").tobytes()), ("X32", w.tobytes()),
                       ("", w.tobytes()), ("f32", w.tobytes())):
        entries = [(k, dtype, s, raw) if k == "weights" else (k, d, s, r) for k, d, s, r in entries_of(bufs)]
        cases.append(Case(f"weights as {dtype or 'empty dtype'}", encode(entries, meta_good)))
    cases.append(Case("float64 tensors", encode(entries_of(bufs, "F64"), meta_good), expect="float32"))
    # offsets: overlapping, out of range, reversed, gapped, negative, fractional
    for what, mangle in (("overlapping", lambda t: {**t, "wbar": {**t["wbar"], "data_offsets": t["weights"]["data_offsets"]}}),
                         ("out of range", lambda t: {**t, "step": {**t["step"], "data_offsets": [t["step"]["data_offsets"][0], 1 << 40]}}),
                         ("reversed", lambda t: {**t, "weights": {**t["weights"], "data_offsets": t["weights"]["data_offsets"][::-1]}}),
                         ("gapped", lambda t: {**t, "step": {**t["step"], "data_offsets": [x + 4 for x in t["step"]["data_offsets"]]}}),
                         ("negative", lambda t: {**t, "weights": {**t["weights"], "data_offsets": [-4, 4 * N - 4]}}),
                         ("fractional", lambda t: {**t, "weights": {**t["weights"], "data_offsets": [0.0, 4.0 * N]}}),
                         ("short", lambda t: {**t, "weights": {**t["weights"], "shape": [1, N + 1]}})):
        table = json.loads(header)
        cases.append(Case(f"{what} offsets", frame(json.dumps(mangle(table)).encode(), good[start:])))
    # shapes
    for k, shape in (("weights", (N,)), ("weights", (1, 1, N)), ("weights", (1, N + 1)), ("weights", (1, N - 1)), ("step", (1, 1)),
                     ("step", (2,)), ("lam", (1, 100_000)), ("u", (0,)), ("m", (N, 1))):
        entries = [(name, "F32", shape, bytes(4 * int(np.prod(shape)))) if name == k else e for e in entries_of(bufs) for name in [e[0]]]
        cases.append(Case(f"{k} of shape {list(shape)}", encode(entries, meta_good)))
    cases.append(Case("overflowing shape", frame(json.dumps({**json.loads(header), "weights": {"dtype": "F32", "shape": [1 << 62, 1 << 62],
                                                                                                  "data_offsets": [0, 4 * N]}}).encode(), good[start:])))
    # metadata
    for what, override, expect in (
            ("another model", {"base_sha256": OTHER_BASE}, "another model"),
            ("another model, newline in its hash", {"base_sha256": "\n\n" + OTHER_BASE}, "another model"),
            ("no base", {"base_sha256": None}, "another model"),
            ("other layout", {"layout": json.dumps([["a", [4, 3], 0], ["b", [5], 12]])}, ""),
            ("renamed tensors", {"layout": expected_layout().replace('"b"', '"c"')}, ""),
            ("layout not JSON", {"layout": "]["}, ""),
            ("wrong format", {"format": "safetensors"}, ""),
            ("no format", {"format": None}, ""),
            ("format version 2", {"format_version": "2"}, ""),
            ("format version 1.0", {"format_version": "1.0"}, ""),
            ("huge format version", {"format_version": "9" * 100_000}, ""),
            ("no format version", {"format_version": None}, ""),
            ("no checksum", {"checksum": None}, "checksum"),
            ("checksum of other buffers", {"checksum": expected_checksum(buffers(3))}, "checksum"),
            ("generation text", {"generation": "two"}, "generation"),
            ("generation 0", {"generation": "0"}, "generation"),
            ("generation -2", {"generation": "-2"}, "generation"),
            ("generation with spaces", {"generation": " 2 "}, "generation"),
            ("huge generation", {"generation": "9" * 5000}, "generation"),
            ("generation of another name", {"generation": "3"}, "generation"),
            ("no generation", {"generation": None}, "generation")):
        cases.append(Case(f"metadata: {what}", encode(entries_of(bufs), good_meta(bufs, **override)), expect=expect))
    cases.append(Case("no metadata", encode(entries_of(bufs))))
    # non-finite values under a checksum recomputed to match them
    for k in ORDER:
        for value in (np.nan, np.inf, -np.inf):
            bad = {name: np.array(v) for name, v in bufs.items()}
            bad[k].flat[-1] = value
            cases.append(Case(f"{k} holds {value}", encode(entries_of(bad), good_meta(bad)), expect="NaN or Inf"))
    # extra and missing tensors
    extra = [("extra", "F32", (1,), bytes(4))]
    cases.append(Case("an extra tensor", encode(entries_of(bufs) + extra, meta_good)))
    cases.append(Case("100 extra tensors", encode(entries_of(bufs) + [(f"x{i}", "F32", (1,), bytes(4)) for i in range(100)], meta_good)))
    cases.append(Case("a tensor renamed", encode([("Weights", *e[1:]) if e[0] == "weights" else e for e in entries_of(bufs)], meta_good)))
    for k in ORDER:
        cases.append(Case(f"no {k}", encode([e for e in entries_of(bufs) if e[0] != k], meta_good), expect="missing"))
    # pickles (would make ``marker`` if anything unpickled them)
    payload = pickle.dumps(Evil(marker), protocol=2)
    cases += [Case("a pickle", payload), Case("a pickle after a length", frame(payload)),
              Case("a pickle as the header", frame(payload, good[start:]))]
    # things that are not regular files
    cases += [Case("a directory", kind="dir"), Case("a FIFO", kind="fifo"), Case("a link to /dev/zero", kind="symlink", target="/dev/zero"),
              Case("a link to /dev/null", kind="symlink", target="/dev/null"), Case("a dangling link", kind="symlink", target="nowhere"),
              Case("a link to itself", kind="symlink", target="gen-000002.safetensors"),
              Case("a 3 GiB sparse file", kind="sparse")]
    return cases


def _place(path: Path, case: Case) -> None:
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    if case.kind == "file":
        path.write_bytes(case.data)
    elif case.kind == "dir":
        path.mkdir()
    elif case.kind == "fifo":
        os.mkfifo(path)
    elif case.kind == "symlink":
        path.symlink_to(case.target)
    elif case.kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(3 << 30)


def _unblock(path: Path) -> None:
    """Give a reader stuck on a FIFO its end of file."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        assert exc.errno in (errno.ENXIO, errno.ENOENT)


def check_case(store: AdaptedStore, case: Case) -> str | None:
    """What is wrong with how ``store`` takes ``case`` placed as gen-000002 beside a good gen-000001 (None: all right)."""
    path = store.path(2)
    _place(path, case)
    try:
        gen = in_thread(lambda: store.load(path), timeout=10)
    except TimeoutError:
        _unblock(path)
        return "load blocked"
    except AdaptationError as exc:
        if not one_line(exc):
            return f"message not one line: {str(exc)!r}"
        if case.expect and case.expect not in str(exc):
            return f"message {str(exc)!r} does not say {case.expect!r}"
    except Exception as exc:  # noqa: BLE001 - the point of the corpus
        return f"raised {type(exc).__name__}: {str(exc)[:120]}"
    else:
        if not case.tolerated:
            return "loaded"
        want = {k: good_meta(buffers(2))[k] for k in ("format", "format_version", "base_sha256", "layout", "checksum", "generation")}
        if not (same(gen.buffers, buffers(2)) and gen.number == 2 and all(gen.meta.get(k) == v for k, v in want.items())):
            return "loaded something other than the original"
        return None
    warns = []
    try:
        latest = in_thread(lambda: store.latest_good(warn=warns.append), timeout=10)
    except Exception as exc:  # noqa: BLE001 - the point of the corpus
        return f"latest_good raised {type(exc).__name__}"
    if latest is None or latest.number != 1 or not same(latest.buffers, buffers(1)):
        return "latest_good did not fall back to generation 1"
    if len(warns) != 1 or "gen-000002" not in warns[0] or "\n" in warns[0]:
        return f"latest_good warned {warns!r}"
    return None


def test_hostile_corpus(tmp_path, monkeypatch):
    src = make_store(tmp_path / "src")
    src.save(buffers(1))
    src.save(buffers(2))
    good = src.path(2).read_bytes()
    marker = tmp_path / "unpickled"
    cases = corpus(good, marker)
    # positive controls: the writer here makes files the store accepts, so each case fails for its own reason
    store = make_store(tmp_path / "model.adapted")
    store.path(1).parent.mkdir()
    store.path(1).write_bytes(src.path(1).read_bytes())
    for control in (good, encode(entries_of(buffers(2)), good_meta(buffers(2)))):
        assert check_case(store, Case("control", control, tolerated=True)) is None
        assert same(store.latest_good().buffers, buffers(2))

    def unpickling(*args, **kwargs):
        raise AssertionError("something unpickled")

    monkeypatch.setattr(pickle, "load", unpickling)
    monkeypatch.setattr(pickle, "loads", unpickling)
    monkeypatch.setattr(np, "load", unpickling)
    problems = [(case.name, problem) for case in cases if (problem := check_case(store, case)) is not None]
    store.path(2).unlink()  # the last case is a 3 GiB sparse file
    assert problems == []
    assert not marker.exists()
    strict = [c for c in cases if not c.tolerated]
    assert len(strict) > 1000 and len({c.name for c in cases}) == len(cases)


def test_a_link_in_the_store_is_skipped_and_its_target_never_opened(tmp_path, monkeypatch):
    import safetensors

    elsewhere = make_store(tmp_path / "elsewhere")
    elsewhere.save(buffers(1))
    elsewhere.save(buffers(2))  # a good generation 2 of this very model, outside the store
    store = make_store(tmp_path / "model.adapted")
    store.save(buffers(1))
    store.path(2).symlink_to(elsewhere.path(2))
    opened = []
    real_open = safetensors.safe_open

    def tracing(name, *args, **kwargs):
        opened.append(os.path.realpath(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", tracing)
    with pytest.raises(AdaptationError, match="symbolic link") as info:
        store.load(store.path(2))
    assert one_line(info.value)
    warns = []
    latest = store.latest_good(warn=warns.append)
    assert latest.number == 1 and same(latest.buffers, buffers(1))
    assert len(warns) == 1 and warns[0].startswith("skipping ") and "gen-000002" in warns[0] and "symbolic link" in warns[0]
    assert os.path.realpath(elsewhere.path(2)) not in opened and os.path.realpath(store.path(1)) in opened
    assert store.save(buffers(3)).number == 3 and store.path(2).is_symlink()  # the link is numbered past, not written through


# --- 4. refused saves ----------------------------------------------------------------------------------
def test_save_refuses_bad_buffers_and_writes_nothing(tmp_path):
    fresh = make_store(tmp_path / "never")
    store = make_store(tmp_path / "model.adapted")
    store.save(buffers(1))
    before = {p.name: p.read_bytes() for p in store.folder.iterdir()}
    bad = []
    for k in ORDER:
        bad.append({name: v for name, v in buffers(2).items() if name != k})
        for value in (np.nan, np.inf, -np.inf):
            b = buffers(2)
            b[k][..., -1] = value
            bad.append(b)
        bad.append({**buffers(2), k: np.zeros((1, N + 1) if k != "step" else (2,), np.float32)})
        bad.append({**buffers(2), k: np.full((1, N) if k != "step" else (1,), 1e300)})  # beyond float32: inf
        bad.append({**buffers(2), k: np.array([["x"] * N] if k != "step" else ["x"])})
    bad.append({})
    for b in bad:
        for s in (store, fresh):
            with pytest.raises(AdaptationError) as info:
                s.save(b)
            assert one_line(info.value)
    with pytest.raises(AdaptationError):
        store.save(buffers(2), {"not json": object()})
    assert not fresh.folder.exists()
    assert {p.name: p.read_bytes() for p in store.folder.iterdir()} == before


# --- 5. concurrent saves ---------------------------------------------------------------------------------
def _verify_all(folder: Path, saved: list[tuple[int, int]]) -> None:
    store = make_store(folder)
    numbers = [n for n, _ in saved]
    assert sorted(numbers) == list(range(1, len(saved) + 1))  # distinct, none lost
    assert store.generations() == sorted(numbers, reverse=True)
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    for number, seed in saved:
        gen = store.load(store.path(number))
        assert gen.number == number and same(gen.buffers, buffers(seed))


def test_a_save_that_starts_while_another_writes_gets_the_next_number(tmp_path):
    folder, go = tmp_path / "model.adapted", tmp_path / "go"
    slow = Child(folder, "slow", 11, go)
    assert slow.wait_for("writing") == "writing gen-000001.safetensors"  # its number is picked; nothing is written yet
    fast = Child(folder, "save", 22)
    fast.wait_for("ready")
    time.sleep(0.5)  # the second save is under way (waiting for the lock, or racing without one)
    go.touch()
    saved = fast.finish() + slow.finish()
    assert sorted(seed for _, seed in saved) == [11, 22]
    _verify_all(folder, saved)


def test_two_processes_saving_at_once(tmp_path):
    folder, go = tmp_path / "model.adapted", tmp_path / "go"
    children = [Child(folder, "stress", tag, 12, go) for tag in (1, 2)]
    for c in children:
        c.wait_for("ready")
    go.touch()
    saved = [pair for c in children for pair in c.finish()]
    assert len(saved) == 24
    _verify_all(folder, saved)
