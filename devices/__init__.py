"""Jetson device profiles: one TOML file per module in this folder (``fptt_edge.devices``).

A profile says what the exported graph must satisfy on that device (TensorRT version and so
its ONNX opset range and op set, DLA cores) and what the device offers (GPU architecture,
memory, JetPack, CUDA, Python; peak FP32/FP16 compute and memory bandwidth, with their source,
for the model card's latency estimate). ``load_profile("orin-nano-8gb")`` or a path to a TOML file.
"""
from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

from ..errors import FpttEdgeError

PROFILE_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = "orin-nano-8gb"
MAX_PROFILE_BYTES = 1 << 20  # a profile is a few hundred bytes


class DeviceProfileError(FpttEdgeError, ValueError):
    """An unknown or malformed device profile, with the reason."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    module: str
    gpu_arch: str
    compute_capability: str
    memory_gb: float
    dla_cores: int
    jetpack: str
    tensorrt: str
    cuda: str
    python: str
    min_opset: int
    max_opset: int
    memory_bandwidth_gbs: float | None = None
    peak_fp32_gflops: float | None = None
    peak_fp16_gflops: float | None = None
    peak_source: str = ""
    unconfirmed: tuple[str, ...] = ()

    @property
    def tensorrt_major(self) -> int:
        return int(self.tensorrt.split(".")[0])

    @property
    def python_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.python.split("."))

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name, or a user's TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise DeviceProfileError(f"unknown device profile {name_or_path!r}; known: {', '.join(profile_names())} (or a path to a .toml profile)")
    try:
        data = tomllib.loads(_read_profile(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeviceProfileError(f"{path}: unreadable device profile ({exc})") from None
    known = {f.name for f in fields(DeviceProfile)}
    unknown = set(data) - known
    if unknown:
        raise DeviceProfileError(f"{path}: unknown fields {sorted(unknown)}")
    optional = {f.name for f in fields(DeviceProfile) if f.default is not MISSING}
    missing = [f.name for f in fields(DeviceProfile) if f.name not in data and f.name not in optional]
    if missing:
        raise DeviceProfileError(f"{path}: missing fields {missing}")
    wrong = [k for k, v in data.items() if not _of_type(k, v)]
    if wrong:
        raise DeviceProfileError(f"{path}: invalid profile (wrong type for {', '.join(sorted(wrong))}: versions are quoted text, "
                                 "e.g. python = \"3.10\"; counts are whole numbers; unconfirmed is a list of field names)")
    try:
        profile = DeviceProfile(**{**data, "unconfirmed": tuple(data.get("unconfirmed", ()))})
        for name in ("tensorrt", "python"):  # parsed by lint (DLA, Python checks): ASCII digits and dots only
            if not re.fullmatch(r"[0-9]{1,4}(\.[0-9]{1,4}){0,3}", getattr(profile, name)):
                raise ValueError(f"{name} must be a version of digits and dots, e.g. \"10.3\", got {getattr(profile, name)[:20]!r}")
        if not (1 <= profile.min_opset <= profile.max_opset):
            raise ValueError("need 1 <= min_opset <= max_opset")
        printable = [k for k in _TEXT if isinstance(getattr(profile, k), str) and not getattr(profile, k).isprintable()]
        if printable:  # shown on one line by lint, export and devices: no newlines or terminal escapes
            raise ValueError(f"{', '.join(sorted(printable))} must be printable text on one line")
        if not 0 < profile.memory_gb < 1e6:
            raise ValueError(f"memory_gb must be a positive number of gigabytes, got {str(profile.memory_gb)[:20]!r}")
        for name in ("memory_bandwidth_gbs", "peak_fp32_gflops", "peak_fp16_gflops"):
            value = getattr(profile, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9):
                raise ValueError(f"{name} must be a positive number, got {str(value)[:20]!r}")
        if not isinstance(profile.peak_source, str):
            raise ValueError("peak_source must be text")
    except (TypeError, ValueError) as exc:
        raise DeviceProfileError(f"{path}: invalid profile ({exc})") from None
    return profile


def _read_profile(path: Path) -> str:
    """The text of a profile file: a regular file of at most :data:`MAX_PROFILE_BYTES` (a FIFO or device would block or never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DeviceProfileError(f"{path}: not a regular file; a device profile is a .toml file")
        if info.st_size > MAX_PROFILE_BYTES:
            raise DeviceProfileError(f"{path}: {info.st_size:,} bytes; a device profile is a small .toml file (at most {MAX_PROFILE_BYTES:,} bytes)")
        data = f.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise DeviceProfileError(f"{path}: more than {MAX_PROFILE_BYTES:,} bytes; a device profile is a small .toml file")
    return data.decode()


_TEXT = {"name", "module", "gpu_arch", "compute_capability", "jetpack", "tensorrt", "cuda", "python", "peak_source"}
_COUNTS = {"dla_cores", "min_opset", "max_opset"}
_NUMBERS = {"memory_gb", "memory_bandwidth_gbs", "peak_fp32_gflops", "peak_fp16_gflops"}


def _of_type(name: str, value) -> bool:
    """Whether a profile field's TOML value has the type the field needs."""
    if name in _TEXT:
        return isinstance(value, str)
    if name in _COUNTS:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if name in _NUMBERS:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "unconfirmed":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return False


def all_profiles() -> list[DeviceProfile]:
    return [load_profile(n) for n in profile_names()]
