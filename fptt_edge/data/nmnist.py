"""N-MNIST event recordings -> frames per time step (the path DVS128 Gesture uses too).

Each recording is read with the torch-free reader the device runtime uses
(:func:`fptt_edge.runtime.events.read_nmnist`: the file checked whole, events identical to
tonic's ``read_mnist_file``, returned in tonic's N-MNIST dtype), optionally downsampled
(``tonic.transforms.Downsample``) and binned into ``steps`` frames (``tonic.transforms.ToFrame``)
either by time (equal time spans) or by event count (equal numbers of events). Frames are
``[T, 2, H, W]`` (polarity as channel), normalised as ``counts`` (raw), ``binary`` (count > 0)
or ``log1p``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime import events as events_io
from ..runtime.errors import EventFileError
from ..splitlist import read_split_list as split_list_rows
from .dataset import DataError, SequenceDataset

SENSOR = events_io.NMNIST_SENSOR
TONIC_NMNIST_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])  # tonic.datasets.NMNIST.dtype
BINNINGS = ("time", "events")
NORMALISATIONS = ("binary", "counts", "log1p")


def read_nmnist(path) -> np.ndarray:
    """Events of one N-MNIST ``.bs2``/``.bin`` recording as tonic's structured array (x, y, t, p,
    all int64): the runtime's reader, so training and the device read every file alike (see
    :mod:`fptt_edge.runtime.events` for what is refused); its errors become :class:`DataError`."""
    try:
        events = events_io.read_nmnist(path)
    except EventFileError as exc:
        raise DataError(str(exc)) from None
    return events.astype(TONIC_NMNIST_DTYPE)


def events_to_frames(events: np.ndarray, steps: int, binning: str = "time", downsample: int = 1, normalisation: str = "binary",
                     sensor: tuple[int, int, int] = SENSOR) -> np.ndarray:
    """``[steps, 2, H // downsample, W // downsample]`` float32 frames from one recording's events
    (tonic's Downsample + ToFrame; also DVS128 Gesture's path with its own ``sensor``)."""
    import tonic.transforms as T

    if binning not in BINNINGS:
        raise DataError(f"binning must be one of {BINNINGS}")
    if normalisation not in NORMALISATIONS:
        raise DataError(f"normalisation must be one of {NORMALISATIONS}")
    if downsample > 1:
        events = T.Downsample(spatial_factor=1.0 / downsample)(events)
        sensor = (sensor[0] // downsample, sensor[1] // downsample, sensor[2])
        events = events[(events["x"] < sensor[0]) & (events["y"] < sensor[1])]
    if len(events) == 0:
        return np.zeros((steps, sensor[2], sensor[1], sensor[0]), np.float32)
    kwargs = {"n_time_bins": steps} if binning == "time" else {"n_event_bins": steps}
    frames = T.ToFrame(sensor_size=sensor, **kwargs)(events).astype(np.float32)
    if frames.shape[0] != steps:  # tonic yields fewer bins for very short recordings: pad with empty frames
        frames = np.concatenate([frames, np.zeros((steps - frames.shape[0], *frames.shape[1:]), np.float32)])
    if normalisation == "binary":
        frames = (frames > 0).astype(np.float32)
    elif normalisation == "log1p":
        frames = np.log1p(frames)
    return frames


def read_split_list(path, classes: int = 10) -> list[tuple[str, int]]:
    """``sample<TAB>class`` lines after a ``#`` header (:func:`fptt_edge.splitlist.read_split_list`), classes
    ``0 .. classes - 1``; a list without recordings is refused."""
    rows = split_list_rows(path, DataError, classes)
    if not rows:
        raise DataError(f"{path}: lists no recordings")
    return rows


def load_nmnist(root, split_file: str, steps: int = 20, binning: str = "time", downsample: int = 1,
                normalisation: str = "binary", limit: int | None = None) -> SequenceDataset:
    """Frames for the recordings listed in ``root/split_file`` (e.g. ``train1K.txt``)."""
    root = Path(root)
    split_path = root / split_file if not Path(split_file).is_absolute() else Path(split_file)
    if not split_path.is_file():
        raise DataError(f"{split_path}: N-MNIST split list not found")
    rows = read_split_list(split_path)[:limit]
    frames = np.stack([events_to_frames(read_nmnist(root / f"{name}.bs2"), steps, binning, downsample, normalisation) for name, _ in rows])
    labels = np.array([c for _, c in rows], dtype=np.int64)
    spec = {
        "task": "nmnist",
        "sensor_size": list(SENSOR),
        "layout": "[T, polarity, y, x]",
        "steps": steps,
        "binning": {"by": binning, "steps": steps},
        "downsample": downsample,
        "normalisation": normalisation,
        "shape": list(frames.shape[2:]),
        "split": split_file,
    }
    return SequenceDataset(torch.from_numpy(frames), torch.from_numpy(labels), [str(i) for i in range(10)], spec)
