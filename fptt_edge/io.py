"""Atomic writes of artefacts: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from .errors import FpttEdgeError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock on temporaries (leftovers are then never removed)
    fcntl = None  # type: ignore[assignment]


class OutputPathError(FpttEdgeError, OSError):
    """An output path that is not (a link to) a regular file, e.g. a folder, a FIFO or a device."""


def output_target(path: Path) -> Path:
    """Where a write to ``path`` lands: ``path``, or the regular file a symbolic link names (the link is kept).

    Anything else that exists there (a folder, a FIFO, a device, a socket, a dangling link) is refused:
    an atomic replace would swap it for a regular file."""
    if not os.path.lexists(path):
        return path
    target = Path(os.path.realpath(path))
    if not target.is_file():
        raise OutputPathError(f"{path}: {not_a_file(Path(path))}; name a file to write")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``path`` may be a link to a regular file (that file is replaced, the link kept); anything else
    but a regular file is refused (:func:`output_target`). The temporary file is locked while it is
    written; leftovers of a killed writer of the same ``path`` (unlocked) are removed first, and no
    other file is touched. A full disk raises ``OSError(ENOSPC)`` naming ``path``; so is any other refusal of the write
    that names no file (a file size limit, ``EFBIG``; a quota, ``EDQUOT``)."""
    path = output_target(Path(path))
    tmp: str | None = None
    held: int | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        held, tmp = _locked_temporary(path)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and (exc.errno == errno.ENOSPC or exc.filename is None):
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None  # named: a file size limit, a quota
        raise
    finally:
        if held is not None:
            os.close(held)


def _umask() -> int:
    """The process's umask (read without changing it where /proc tells)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permissions a written ``path`` gets: those of the file it replaces, else what the umask gives a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


_MARK = "fptt-edge-"  # in every temporary's name: a user's own ".<name>.XXXXXXXX.tmp" is never taken for ours


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` (with the permissions ``path`` will have) and its descriptor, locked for as
    long as it is open."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_MARK}", suffix=".tmp", dir=path.parent)
        with contextlib.suppress(OSError):
            os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)  # another writer's clean-up removed it before the lock: make another


_TEMPORARY = re.compile(r"\.(.+)\.fptt-edge-[a-z0-9_]{8}\.tmp")  # what mkstemp(prefix=".<name>.fptt-edge-", suffix=".tmp") makes


def remove_stale_temporaries(path: Path) -> None:
    """Remove the ``.<name>.fptt-edge-XXXXXXXX.tmp`` files of ``path`` that no live writer holds (a killed writer's leftovers)."""
    if fcntl is None:
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{_MARK}*.tmp"):
        match = _TEMPORARY.fullmatch(tmp.name)
        if match is None or match.group(1) != path.name or tmp.is_symlink() or not tmp.is_file():
            continue
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while its writer lives
                tmp.unlink()
            finally:
                os.close(fd)


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_bytes(obj) -> bytes:
    """``obj`` as the JSON every artefact is written in (indented, sorted keys)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(path, obj) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def write_files_atomic(files: list[tuple[Path, bytes]]) -> None:
    """Write several files all or nothing: every one to its temporary and synced first (a full disk or any other failure
    leaves every existing file as it was), then each renamed over its path, the first listed last."""
    with contextlib.ExitStack() as stack:
        for path, data in files:
            tmp = stack.enter_context(atomic_path(path))
            tmp.write_bytes(data)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file: ``no such file``, or what it is instead (a FIFO is never opened)."""
    if not os.path.lexists(path):
        return "no such file"
    if os.path.islink(path) and not path.exists():
        return "a dangling link"
    return "a folder, not a file" if path.is_dir() else "not a regular file (a FIFO, socket or device)"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_with_sha256(folder: Path, pattern: str, sha: str) -> Path | None:
    """The first regular file in ``folder`` matching ``pattern`` whose SHA-256 is ``sha`` (e.g. the checkpoint an exported
    model names); anything else there (FIFOs, devices, folders, unreadable files) is passed over, never opened."""
    for cand in sorted(Path(folder).glob(pattern)):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(cand).st_mode) and file_sha256(cand) == sha:
                return cand
    return None
