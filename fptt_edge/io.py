"""Atomic writes of artefacts: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 3600.0  # a temporary file of another name this old is a killed writer's


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Temporary files a killed writer left in the folder are removed first (those of ``path`` at
    once, others after :data:`STALE_AFTER_S`). A full disk raises ``OSError(ENOSPC)`` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")  # what mkstemp(prefix=".<name>.", suffix=".tmp") makes


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.XXXXXXXX.tmp`` files beside ``path``: of ``path`` itself, or older than :data:`STALE_AFTER_S`."""
    now = time.time()
    for tmp in path.parent.glob(".*.tmp"):
        match = _TEMPORARY.fullmatch(tmp.name)
        if match is None:
            continue
        with contextlib.suppress(OSError):
            if match.group(1) == path.name or now - tmp.stat().st_mtime > STALE_AFTER_S:
                tmp.unlink()


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
