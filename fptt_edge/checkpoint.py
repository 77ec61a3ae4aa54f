"""Safe checkpoints: only tensors and plain data, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a dict::

    format: "fptt-edge-checkpoint"   format_version: 1   kind: "model" | "resume"
    model_config: {...}              state_dict: {name: tensor}
    training: {method, hyper-parameters}   class_names: [...]   input_spec: {...}
    metrics: {...}                   (resume only) trainer, progress, history

Nothing else is ever unpickled: a file that needs arbitrary classes or callables is refused
before any of its code can run. Writes are atomic (temporary file + rename).
"""
from __future__ import annotations

import io
import lzma
import math
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import FpttEdgeError
from .io import write_bytes_atomic
from .model import LTCNetwork

FORMAT = "fptt-edge-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(FpttEdgeError, ValueError):
    """A checkpoint that cannot be used, with the reason."""


def save_checkpoint(path, payload: dict) -> None:
    """Write atomically; serialised in memory first so a full disk is an ``OSError`` naming ``path``."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes_atomic(path, buf.getvalue())


# What reading the archive can raise on a crafted or damaged file (zipfile, zlib, lzma, struct).
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                   struct.error, zlib.error, lzma.LZMAError, IndexError, OverflowError)
_MAX_ZIP_VERSION = 45  # zip64; torch writes stored members that need no more


def _check_archive(path: Path) -> None:
    """Refuse an archive torch and zipfile could read differently, or that hides something:
    encrypted or oddly compressed members, newer zip features, data before the archive, an
    empty directory, members whose CRC does not match (torch does not check CRCs)."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a fptt-edge checkpoint (not a torch zip archive; truncated or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if not infos:
                raise CheckpointError(f"{path}: not a fptt-edge checkpoint (an empty archive)")
            if all(i.filename.endswith(".npy") and "/" not in i.filename for i in infos):
                raise CheckpointError(f"{path}: not a fptt-edge checkpoint (a numpy .npz archive of arrays, e.g. data)")
            for info in infos:
                if info.flag_bits & 0x1:
                    raise CheckpointError(f"{path}: member {info.filename[:80]!r} is encrypted; a checkpoint never is")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise CheckpointError(f"{path}: member {info.filename[:80]!r} uses zip compression method {info.compress_type}; "
                                          "checkpoints are stored or deflated")
                if info.extract_version > _MAX_ZIP_VERSION:
                    raise CheckpointError(f"{path}: member {info.filename[:80]!r} needs zip version {info.extract_version / 10:.1f}, "
                                          f"newer than a checkpoint uses ({_MAX_ZIP_VERSION / 10:.1f})")
            count, offset = _end_record(path)
            if offset not in (archive.start_dir, 0xFFFFFFFF) or count not in (len(infos), 0xFFFF):
                raise CheckpointError(f"{path}: corrupt checkpoint (data before the archive, or a wrong directory offset or count)")
            damaged = archive.testzip()
    except CheckpointError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch in '{damaged[:80]}')")


def _end_record(path: Path) -> tuple[int | None, int | None]:
    """The member count and central directory offset the end record states (zipfile ignores the
    count and silently corrects a wrong offset; other readers may not)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - 65_557))
        tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if not 0 <= end <= len(tail) - 22:
        return None, None
    count, _, offset = struct.unpack_from("<HII", tail, end + 10)
    return count, offset


def load_checkpoint(path, kind: str | None = None) -> dict:
    """Load and validate a checkpoint, refusing anything that is not tensors and plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'no such checkpoint file' if not os.path.lexists(path) else 'not a regular file'}")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain data "
            f"(a checkpoint is never unpickled into arbitrary objects){_refused_global(exc)}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, IndexError, struct.error) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fptt-edge checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid format_version {str(version)[:20]!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} was written by a newer fptt-edge; this one reads up to {FORMAT_VERSION}. Upgrade fptt-edge."
        )
    _check_fields(payload, path)
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"{path}: a '{payload['kind']}' checkpoint where a '{kind}' one is needed")
    return payload


def _refused_global(exc: Exception) -> str:
    """What torch's refusal names (e.g. ``posix.system``), printable ASCII only; never its advice to load unsafely."""
    for line in str(exc).splitlines():
        if "GLOBAL" in line or line.startswith("Unsupported"):
            shown = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in line.strip())[:160]
            return f". Detail: {shown}"
    return ""


_FIELDS = {"kind": str, "model_config": dict, "state_dict": dict}
_OPTIONAL = {"class_names": list, "input_spec": dict, "training": dict, "metrics": dict, "history": list, "training_config": dict,
             "trainer": dict, "progress": dict, "selected_state": dict}
_SPEC_CHOICES = {"mode": ("pixel", "row"), "source": ("mnist", "digits8x8"), "normalisation": ("binary", "counts", "log1p")}


def _check_fields(payload: dict, path) -> None:
    """Types of the known fields (the CLI reads them), refused with the field's name."""
    for key in _FIELDS:
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    for key, kind in {**_FIELDS, **_OPTIONAL}.items():
        if key in payload and not isinstance(payload[key], kind):
            raise CheckpointError(f"{path}: '{key}' must be a {kind.__name__}, got {type(payload[key]).__name__}")
    if payload["kind"] not in ("model", "resume"):
        raise CheckpointError(f"{path}: unknown checkpoint kind {payload['kind'][:20]!r}")
    if not all(isinstance(n, str) for n in payload.get("class_names", [])):
        raise CheckpointError(f"{path}: class_names must be a list of names")
    if not isinstance(payload.get("metrics", {}).get("epochs", []), list):
        raise CheckpointError(f"{path}: metrics.epochs must be a list")
    for key in ("training", "input_spec", "metrics", "training_config", "history"):  # described as JSON by info, card and metrics.json
        if key in payload and not plain_json(payload[key]):
            raise CheckpointError(f"{path}: '{key}' must hold plain values (numbers, text, lists, dicts), not tensors or objects")
    _check_input_spec(payload.get("input_spec", {}), path)


def _check_input_spec(spec: dict, path) -> None:
    """The fields that rebuild the evaluation data (``eval``/``export``) must have the types and values training wrote."""
    task = str(spec.get("task"))
    wanted = {"smnist": ("mode", "source"), "psmnist": ("mode", "source"), "nmnist": ("normalisation",)}.get(task, ())
    bad = [k for k in wanted if spec.get(k) not in _SPEC_CHOICES[k]]
    if task == "nmnist":
        binning = spec.get("binning")
        if not (isinstance(binning, dict) and binning.get("by") in ("time", "events") and _count(binning.get("steps"))):
            bad.append("binning")
        if not _count(spec.get("downsample")):
            bad.append("downsample")
    bad += [k for k in ("path", "test_path") if k in spec and not isinstance(spec[k], str)]
    if bad:
        raise CheckpointError(f"{path}: input_spec of task {str(task)[:20]!r} has invalid {', '.join(bad)}")


def plain_json(v, depth: int = 0) -> bool:
    """Whether ``v`` is made of JSON's own values only, nested at most 32 deep (finite or not: NaN is how a diverged loss is
    recorded), so describing, comparing and showing it cannot fail."""
    if depth > 32:
        return False
    if v is None or isinstance(v, (str, bool, int, float)):
        return True
    if isinstance(v, (list, tuple)):
        return all(plain_json(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and plain_json(x, depth + 1) for k, x in v.items())
    return False


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_config(d: dict, path) -> ModelConfig:
    for key in ("b_j0", "beta_adapt"):
        v = d.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CheckpointError(f"{path}: invalid model_config: {key} must be a finite number, got {str(v)[:20]!r}")
    try:
        return ModelConfig.from_dict(d)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: invalid model_config: {str(exc)[:200]}") from None


def check_weights(config: ModelConfig, state: dict, path) -> None:
    """Names, shapes and dtypes of ``state`` against the model the config describes (built without memory)."""
    try:
        with torch.device("meta"):
            expected = {k: (v.shape, v.dtype) for k, v in LTCNetwork(config).state_dict().items()}
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: invalid model_config ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: state_dict must map names to tensors")
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"{path}: weights do not match the model config (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, tensor in state.items():
        if (tensor.shape, tensor.dtype) != expected[name]:
            raise CheckpointError(f"{path}: tensor '{name}' is {tensor.dtype} {list(tensor.shape)}, the model config needs "
                                  f"{expected[name][1]} {list(expected[name][0])}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or Inf")


def model_from_payload(payload: dict, path="checkpoint") -> LTCNetwork:
    config = _check_config(payload["model_config"], path)
    state = payload["state_dict"]
    check_weights(config, state, path)
    names = payload.get("class_names")
    if names is not None and len(names) != config.num_classes:
        raise CheckpointError(f"{path}: {len(names)} class names for {config.num_classes} classes")
    model = LTCNetwork(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model config: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model


def load_model(path) -> tuple[LTCNetwork, dict]:
    """The network (eval mode) and the checkpoint's metadata from a model or resume checkpoint."""
    payload = load_checkpoint(path)
    return model_from_payload(payload, path), payload
