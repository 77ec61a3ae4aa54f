"""A user's own data: ``.npz`` with ``x`` float32 (or bool/integer, cast) ``[N, T, C]`` (or ``[N, T, ...]`` frames),
``y`` integer labels ``[N]``, optional ``lengths`` ``[N]`` (1 <= length <= T) and optional ``period_us``, the
sensor's sample period (a step's span, recorded as the model's ``window_us``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..npzfile import checked_lengths, float32_x, read_npz, sample_period
from .dataset import DataError, SequenceDataset

MAX_CLASSES = 100_000  # without a model to say how many, labels beyond this are taken for corrupt data


def load_npz(path, num_classes: int | None = None) -> SequenceDataset:
    path = Path(path)
    arrays = read_npz(path, DataError)  # refuses a missing file, a folder or a FIFO, naming which
    for key in ("x", "y"):
        if key not in arrays:
            have = sorted(arrays)
            shown = ", ".join(have[:8]) + (f" and {len(have) - 8} more" if len(have) > 8 else "")
            raise DataError(f"{path}: missing field '{key}' (have {shown or 'none'}); an .npz of frames needs 'x' and 'y'")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 3 or min(x.shape[1:]) < 1:
        raise DataError(f"{path}: field 'x' must be [N, T, C] or [N, T, ...] with T >= 1 steps and non-empty frames, got shape {x.shape}")
    x = float32_x(x, f"{path}: field 'x'", DataError)  # as the device's reader: bool spikes and integer counts are cast
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: field 'y' must be [N] with N = {len(x)}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: field 'y' must hold integer labels, got {y.dtype}")
    if len(y) == 0:
        raise DataError(f"{path}: no samples")
    if y.min() < 0 or y.max() >= (num_classes or MAX_CLASSES):
        raise DataError(f"{path}: field 'y' labels must be in [0, {num_classes or MAX_CLASSES}), got range [{y.min()}, {y.max()}]")
    lengths: torch.Tensor | None = None
    if "lengths" in arrays:
        lengths = torch.from_numpy(checked_lengths(arrays["lengths"], len(x), x.shape[1], path, DataError))
    classes = int(num_classes or y.max() + 1)
    spec = {"task": "npz", "file": path.name, "steps": int(x.shape[1]), "shape": list(x.shape[2:]), "normalisation": "as provided"}
    if "period_us" in arrays:
        spec["window_us"] = sample_period(arrays["period_us"], path, DataError)
    return SequenceDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), [str(i) for i in range(max(classes, 2))], spec, lengths)

