"""Adapted weights on disk: numbered generations beside the shipped model, never over it.

``model.onnx`` keeps the factory weights. Each commit of the learner writes
``model.adapted/gen-000007.safetensors`` atomically (temporary file, fsync, rename): the flat
``weights``, ``wbar``, ``lam``, Adamax ``m``/``u`` and ``step``, with metadata holding the
generation, the SHA-256 of the base model and of the train graph, the tensor layout and a
SHA-256 of the tensor bytes. A kill during a save leaves the previous generation as it was.
Loading refuses, with one line, a file for another base model, with another layout, a
checksum mismatch, non-finite values or anything safetensors cannot parse; ``latest_good``
skips such files and says which it skipped. safetensors never unpickles anything.

Only regular files are opened, never through a link (a link, FIFO, device or directory is refused
from ``lstat`` alone, so nothing blocks and nothing outside the store is read), only ``F32`` tensors
of the contract's shapes are read into memory, and the file's size is bounded by the contract
before it is opened. Saves hold an exclusive lock (``flock`` on ``model.adapted/.lock``) while
they pick the next number and write it, so two processes saving at once get different generations
and neither overwrites the other. A save never writes over an existing name: junk under the last
number the loader reads is numbered past, not hit.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import write_bytes_atomic
from ..train_contract import TrainContract
from .errors import AdaptationError

try:  # POSIX (Linux / Jetson); elsewhere saves are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

KEYS = ("weights", "wbar", "lam", "m", "u", "step")
FORMAT = "fptt-edge-adapted"
FORMAT_VERSION = 1
NAME = re.compile(r"^gen-(\d{6,})\.safetensors$")  # gen-000007 ... gen-999999, gen-1000000 ...
MAX_BYTES = 1 << 31  # refuse absurd files before reading them
MAX_HEADER = 1 << 20  # header (tensor table + metadata) bytes beyond the tensors' own
LOCK = ".lock"
LEARNER_LOCK = ".learner.lock"
MAX_GENERATION = 10 ** 12 - 1  # the largest number the loader accepts (at most 12 digits)


@dataclass
class Generation:
    """One loaded generation: the buffers and its metadata."""

    number: int
    path: Path
    buffers: dict[str, np.ndarray]
    meta: dict


def store_dir(model_path) -> Path:
    """``model.onnx`` -> ``model.adapted/``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".adapted")


def checksum(buffers: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in KEYS:
        h.update(k.encode())
        h.update(np.ascontiguousarray(buffers[k], np.float32).tobytes())
    return h.hexdigest()


def layout(contract: TrainContract) -> str:
    return json.dumps([[t.name, list(t.shape), t.offset] for t in contract.tensors])


class AdaptedStore:
    """The generations of one base model (``base_sha256``) and train graph (``contract``)."""

    def __init__(self, folder, base_sha256: str, train_sha256: str, contract: TrainContract):
        self.folder, self.base_sha256, self.train_sha256, self.contract = Path(folder), base_sha256, train_sha256, contract

    def check_folder(self) -> None:
        """Refuse, before any work is done, a store path that cannot hold generations."""
        if os.path.lexists(self.folder) and not self.folder.is_dir():
            raise AdaptationError(f"{self.folder}: exists and is not a folder (adapted weights are kept in a folder of this name)")
        for lock in (self.folder / LOCK, self.folder / LEARNER_LOCK):
            if os.path.lexists(lock) and (lock.is_symlink() or not lock.is_file()):
                raise AdaptationError(f"{lock}: exists and is not a regular file (the store's lock)")
        self.next_number()  # refuses a full store now, not after a whole training run

    def hold_for_learning(self) -> int | None:
        """Take the store for one learner until :meth:`release` (``flock`` on ``folder/.learner.lock``, dropped by the kernel
        if the learner's process dies): two learners would each build a generation on the same start, and the newer would
        silently drop the other's learning. ``None`` where there is no ``flock``."""
        if fcntl is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LEARNER_LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AdaptationError(f"{self.folder}: another adaptation of this model is running; wait for it to end") from None
        return fd

    @staticmethod
    def release(held: int) -> None:
        os.close(held)  # drops the lock

    def generations(self) -> list[int]:
        """Generation numbers present, newest first (names that do not match, or beyond what the loader reads, are ignored)."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = NAME.match(p.name)
            # canonical names only: gen-0000007.safetensors would alias generation 7
            if m and self.path(int(m.group(1))).name == p.name and int(m.group(1)) <= MAX_GENERATION:
                found.append(int(m.group(1)))
        return sorted(found, reverse=True)

    def next_number(self) -> int:
        """The number the next save takes: after the highest name; if that is the last, the first free name after the newest
        generation that loads (junk under a high name does not block saves; no existing file is ever written over)."""
        taken = self.generations()
        if not taken or taken[0] < MAX_GENERATION:
            return (taken or [0])[0] + 1
        good = self.latest_good()
        start, names = (1 if good is None else good.number + 1), set(taken)
        number = next((n for n in range(start, MAX_GENERATION + 1) if n not in names and not os.path.lexists(self.path(n))), None)
        if number is None:
            raise AdaptationError(f"{self.folder}: generation numbers are used up (none free after generation {start - 1}); "
                                  "move the folder away to start again from the shipped weights")
        return number

    def path(self, number: int) -> Path:
        return self.folder / f"gen-{number:06d}.safetensors"

    def max_bytes(self) -> int:
        """The largest file this store writes or reads: the tensors plus a bounded header."""
        return min(MAX_BYTES, 8 + MAX_HEADER + (5 * self.contract.size + 1) * 4)

    def save(self, buffers: dict[str, np.ndarray], info: dict | None = None) -> Generation:
        """Write the next generation atomically; returns it."""
        from safetensors.numpy import save

        missing = [k for k in KEYS if k not in buffers]
        if missing:
            raise AdaptationError(f"cannot save adapted weights without {missing}")
        n = self.contract.size
        tensors = {}
        for k in KEYS:
            want = (1,) if k == "step" else (1, n)
            try:
                with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 -> inf, refused below
                    v = np.array(buffers[k], np.float32, copy=True, order="C")  # a copy: the caller keeps training
            except (TypeError, ValueError) as exc:
                raise AdaptationError(f"refusing to save adapted weights: '{k}' is not numeric ({type(exc).__name__})") from None
            if v.shape != want:
                raise AdaptationError(f"refusing to save adapted weights: '{k}' has shape {list(v.shape)}, the train graph needs {list(want)}")
            if not np.isfinite(v).all():
                raise AdaptationError(f"refusing to save adapted weights: '{k}' holds NaN or Inf")
            tensors[k] = v
        try:
            info_json = json.dumps(info or {}, sort_keys=True, default=_plain)
        except (TypeError, ValueError) as exc:
            raise AdaptationError(f"refusing to save adapted weights: info is not plain JSON ({str(exc).splitlines()[0][:200]})") from None
        self.check_folder()
        with _locked(self.folder):
            number = self.next_number()
            meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "generation": str(number),
                    "base_sha256": self.base_sha256, "train_sha256": self.train_sha256, "layout": layout(self.contract),
                    "checksum": checksum(tensors), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "info": info_json}
            data = save(tensors, metadata=meta)
            if len(data) > self.max_bytes():
                raise AdaptationError(f"refusing to save adapted weights: {len(data)} bytes, more than {self.max_bytes()} (info too large?)")
            path = self.path(number)
            write_bytes_atomic(path, data)
        return Generation(number, path, tensors, meta)

    def load(self, path) -> Generation:
        """Load and verify one file (any name); :class:`AdaptationError` with one line if it is not usable."""
        path = Path(path)
        fd = self._open(path)
        try:
            meta, tensors = _read(path, self.contract.size, fd)
        finally:
            os.close(fd)
        if meta.get("format") != FORMAT:
            raise AdaptationError(f"{path}: not an fptt-edge adapted-weights file")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise AdaptationError(f"{path}: adapted-weights format {meta.get('format_version', '')[:20]!r}; this fptt-edge reads {FORMAT_VERSION}")
        if meta.get("base_sha256") != self.base_sha256:
            raise AdaptationError(f"{path}: adapted from another model (base {str(meta.get('base_sha256'))[:12]!r}..., "
                                  f"this one is {self.base_sha256[:12]!r}...)")
        if meta.get("layout") != layout(self.contract):
            raise AdaptationError(f"{path}: its trainable tensors differ from this train graph's")
        n = self.contract.size
        for k in KEYS:
            want = (1,) if k == "step" else (1, n)
            v = tensors.get(k)
            if v is None or v.dtype != np.float32 or v.shape != want:
                raise AdaptationError(f"{path}: tensor '{k}' missing or not float32 {list(want)}")
            if not np.isfinite(v).all():
                raise AdaptationError(f"{path}: tensor '{k}' holds NaN or Inf")
        if set(tensors) != set(KEYS):
            raise AdaptationError(f"{path}: unexpected tensors {sorted(set(tensors) - set(KEYS))}")
        if meta.get("checksum") != checksum(tensors):
            raise AdaptationError(f"{path}: checksum mismatch (the file was changed or damaged)")
        generation = meta.get("generation", "")
        if not (generation.isascii() and generation.isdigit() and len(generation) <= 12) or not 1 <= int(generation) <= MAX_GENERATION:
            raise AdaptationError(f"{path}: invalid generation number {generation[:20]!r}")
        number = int(generation)
        named = NAME.match(path.name)
        if named is not None and int(named.group(1)) != number:
            raise AdaptationError(f"{path}: holds generation {number}, its name says {int(named.group(1))}")
        return Generation(number, path, tensors, meta)

    def _open(self, path: Path) -> int:
        """A descriptor of ``path`` if it is a regular file of a plausible size, itself and not a link (``lstat`` first:
        a link, FIFO or device is never opened; ``O_NOFOLLOW`` and the same inode after opening: nor is a swapped-in link)."""
        st = _os_call(path, os.lstat, path)
        if stat.S_ISLNK(st.st_mode):
            raise AdaptationError(f"{path}: a symbolic link (adapted weights are read only from regular files in the store)")
        if not stat.S_ISREG(st.st_mode):
            raise AdaptationError(f"{path}: not a regular file")
        if st.st_size > self.max_bytes():
            raise AdaptationError(f"{path}: {st.st_size} bytes, more than an adapted-weights file of this model ({self.max_bytes()})")
        fd = _os_call(path, os.open, path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, now.st_size) != (st.st_dev, st.st_ino, st.st_size):
            os.close(fd)
            raise AdaptationError(f"{path}: changed while it was opened")
        return fd

    def latest_good(self, warn=None) -> Generation | None:
        """The newest generation that loads and verifies; ``warn(message)`` for each one skipped."""
        for number in self.generations():
            try:
                return self.load(self.path(number))
            except AdaptationError as exc:
                if warn is not None:
                    warn(f"skipping {exc}")
        return None


@contextlib.contextmanager
def _locked(folder: Path):
    """Exclusive ``flock`` on ``folder/.lock`` (released by the kernel if the holder is killed)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _os_call(path: Path, fn, *args):
    """``fn(*args)``; its ``OSError`` (or ``ValueError``: a NUL in the name) as one line naming ``path``."""
    try:
        return fn(*args)
    except (OSError, ValueError) as exc:
        raise AdaptationError(f"{path}: cannot read adapted weights ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None


def _plain(obj):
    """numpy scalars and arrays in ``info`` as plain JSON values."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _read(path: Path, n: int, fd: int) -> tuple[dict, dict[str, np.ndarray]]:
    """safetensors' own parser (Rust; no pickle) on the open file ``fd`` (by its ``/proc`` name where there is one, so
    nothing swapped in at ``path`` is read); its errors become one line.

    Shapes and dtypes are checked from the header before any tensor is read: only ``F32``
    tensors of the expected shape are materialised (numpy has no bf16/fp8; big tensors stay unread)."""
    from safetensors import safe_open

    opened = f"/proc/self/fd/{fd}"
    try:
        with safe_open(opened if os.path.exists(opened) else str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            if len(keys) > len(KEYS):
                raise AdaptationError(f"{path}: {len(keys)} tensors; an adapted-weights file holds {len(KEYS)}")
            tensors = {}
            for k in KEYS:
                if k not in keys:
                    continue
                want = [1] if k == "step" else [1, n]
                view = f.get_slice(k)
                if view.get_dtype() != "F32" or list(view.get_shape()) != want:
                    raise AdaptationError(f"{path}: tensor '{k}' missing or not float32 {want}")
                tensors[k] = f.get_tensor(k)
            extra = sorted(set(keys) - set(KEYS))
            if extra:
                raise AdaptationError(f"{path}: unexpected tensors {[k[:40] for k in extra]}")
    except AdaptationError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, AttributeError (fp8), ...
        first = str(exc).splitlines()[0][:200] if str(exc).strip() else ""
        raise AdaptationError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {first})") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise AdaptationError(f"{path}: metadata that is not text")
    return meta, tensors
