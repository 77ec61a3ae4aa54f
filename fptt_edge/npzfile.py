"""Reading a user's ``.npz`` safely (numpy only, no torch): never unpickles, never allocates what the file does not hold.

Every reader of user ``.npz`` files (training data, device data, guard sets, card data) goes through
:func:`read_npz`: a corrupt, truncated, foreign or crafted file becomes one :class:`NpzError` line.
Before any array is read, each member's declared shape is checked against the bytes the archive
says it holds, so a 1 KB file declaring a petabyte array is refused instead of allocated.
"""
from __future__ import annotations

import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from .errors import FpttEdgeError
from .io import not_a_file

MAX_PERIOD_US = 3_600_000_000  # a sample period of an hour at most, as run --window-ms allows

# what numpy and zipfile raise on corrupt archives and headers
_CORRUPT = (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, zlib.error, TypeError, SyntaxError,
            OverflowError, KeyError, RecursionError, tokenize.TokenError, MemoryError, IndexError, AttributeError, UnicodeDecodeError)


class NpzError(FpttEdgeError, ValueError):
    """A file that is not a readable ``.npz`` of plain arrays."""


def read_npz(path, error: type[Exception] = NpzError) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path`` by name; ``error`` (one line, never quoting the file's bytes) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {not_a_file(path)}")
    try:
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FpttEdgeError as exc:
        raise error(str(exc)) from None
    except _CORRUPT as exc:
        raise error(f"{path}: not a readable .npz file ({_why(exc)})") from None


def checked_lengths(lengths: np.ndarray, n: int, steps: int, path, error: type[Exception] = NpzError) -> np.ndarray:
    """An ``.npz``'s ``lengths`` field: integers ``[n]`` in ``1 .. steps`` (each sample's steps; the rest is padding), int64."""
    if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
        raise error(f"{path}: field 'lengths' must be integer [N = {n}], got {lengths.dtype} {list(lengths.shape)}")
    if n and (lengths.min() < 1 or lengths.max() > steps):
        raise error(f"{path}: field 'lengths' must lie in [1, T = {steps}]")
    return lengths.astype(np.int64)


def float32_x(x: np.ndarray, what: str, error: type[Exception] = NpzError) -> np.ndarray:
    """``x`` of real numbers (float, or bool spikes and integer counts, cast) as contiguous float32, refused with
    ``error`` naming ``what`` when another dtype, or NaN or Inf as float32 (a float64 beyond float32's range)."""
    if x.dtype.kind not in "fiub":
        raise error(f"{what} must hold real numbers (float32; bool or integer are cast), got {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: Inf, refused below (no RuntimeWarning printed)
        x = np.ascontiguousarray(x, np.float32)
    if not np.isfinite(x).all():
        raise error(f"{what} holds NaN or Inf (as float32)")
    return x


def sample_period(value: np.ndarray, path, error: type[Exception] = NpzError) -> int:
    """An ``.npz``'s ``period_us``: one whole number of microseconds in ``1 .. MAX_PERIOD_US``."""
    if value.shape != () or value.dtype.kind not in "iu" or not 1 <= int(value) <= MAX_PERIOD_US:
        shown = str(value.item()) if value.shape == () and value.dtype.kind in "iufb" else f"{value.dtype} {list(value.shape)[:4]}"
        raise error(f"{path}: field 'period_us' must be one whole number of microseconds (the sample period) in "
                    f"1..{MAX_PERIOD_US:,}, got {shown[:30]}")
    return int(value)


PERIOD_TOLERANCE = 0.1  # how far a recording's sample period may lie from the model's before a warning


def period_mismatch(period_us: object, trained_us: object, source, median: bool = False) -> str | None:
    """A one-line warning naming ``source`` when a sample period (``median``: the median interval of its sample times) is
    more than :data:`PERIOD_TOLERANCE` away from ``trained_us``, the one the model was trained at (an ``.npz``'s
    ``period_us``, recorded as its ``window_us``), else None; None where either is unknown (not a whole number >= 1)."""
    known = [v for v in (period_us, trained_us) if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
    if len(known) < 2:
        return None
    period, trained = known
    if abs(period - trained) <= PERIOD_TOLERANCE * trained:
        return None
    ratio = max(period, trained) / min(period, trained)
    return (f"{source}: the sample period ({period / 1e3:g} ms{', the median interval of t' if median else ''}) is not the "
            f"{trained / 1e3:g} ms the model was trained at: the model counts time in steps, so a movement here spans "
            f"{f'{ratio:.2g}' if ratio < 10 else f'{ratio:,.0f}'}x {'more' if period < trained else 'fewer'} steps than in "
            "training; resample the recording to the model's rate")


def _check_declared_sizes(path: Path) -> None:
    """Refuse members whose header declares more data than the archive holds for them, or Python objects."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(6) == npy_format.MAGIC_PREFIX:
                raise NpzError(f"{path}: not a readable .npz file (a single .npy array, not an .npz archive)")
        return  # np.load says what else it is (a pickle, text, ...)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = npy_format.read_magic(member)
                read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                shape, _, dtype = read_header(member, max_header_size=10_000)
                if dtype.hasobject:
                    raise NpzError(f"{path}: {info.filename[:-4]!r} holds Python objects (pickle), which are refused")
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                held = info.file_size - member.tell()
            if declared > held:
                raise NpzError(f"{path}: {info.filename[:-4]!r} declares shape {list(shape)[:6]} ({declared:,} bytes) "
                               f"but holds {max(held, 0):,} bytes: truncated or crafted")


def _why(exc: BaseException) -> str:
    """Why numpy refused a file, in words that never quote the file (numpy's own messages can
    echo an array header, i.e. the file's bytes)."""
    if isinstance(exc, TypeError):  # np.load gave a single array: a .npy, not an .npz archive
        return "a single .npy array, not an .npz archive"
    if isinstance(exc, ValueError) and "pickle" in str(exc):
        return "not an .npz archive, or one holding Python objects (pickle), which are refused"
    if isinstance(exc, MemoryError):
        return "its arrays do not fit in memory"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"corrupt or truncated: {type(exc).__name__}"
