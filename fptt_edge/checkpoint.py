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

import pickle
import zipfile
from pathlib import Path

import torch

from .config import ModelConfig
from .io import atomic_path
from .model import LTCNetwork

FORMAT = "fptt-edge-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


def save_checkpoint(path, payload: dict) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, kind: str | None = None) -> dict:
    """Load and validate a checkpoint, refusing anything that is not tensors and plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a fptt-edge checkpoint (not a torch zip archive; truncated or another format)")
    try:  # torch does not check the archive's CRCs: a flipped bit in a tensor would load silently
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch in '{damaged}')")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors and plain data "
            f"(a checkpoint is never unpickled into arbitrary objects). Detail: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fptt-edge checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} was written by a newer fptt-edge; this one reads up to {FORMAT_VERSION}. Upgrade fptt-edge."
        )
    for key in ("kind", "model_config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"{path}: a '{payload['kind']}' checkpoint where a '{kind}' one is needed")
    return payload


def model_from_payload(payload: dict, path="checkpoint") -> LTCNetwork:
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model_config: {exc}") from None
    model = LTCNetwork(config)
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict must map names to tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model config: {str(exc).splitlines()[0]}") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or Inf")
    model.eval()
    return model


def load_model(path) -> tuple[LTCNetwork, dict]:
    """The network (eval mode) and the checkpoint's metadata from a model or resume checkpoint."""
    payload = load_checkpoint(path)
    return model_from_payload(payload, path), payload
