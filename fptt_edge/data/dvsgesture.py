"""DVS128 Gesture (IBM, 11 classes, 29 users x up to 5 lightings) as users have it on disk.

Two layouts are read, detected from the folder given (``--root``):

- **the original release** (``DvsGesture.tar.gz``): ``userNN_<lighting>.aedat`` (AEDAT 3.1) and
  ``userNN_<lighting>_labels.csv`` (``class,startTime_usec,endTime_usec``, classes 1..11) per
  trial, with ``trials_to_train.txt`` / ``trials_to_test.txt`` listing the trials of each split.
  Each labelled segment of a recording, the events with ``start <= t < end``, is one sample
  (the device runtime segments ``--labels`` the same way);
- **tonic's extracted layout** (``tonic.datasets.DVSGesture``): ``ibmGestureTrain/`` and
  ``ibmGestureTest/`` holding ``userNN_<lighting>/<class>.npy`` (one segment per file, classes
  0..10, ``[N, 4]`` x, y, p, t in ms), optionally under ``DVSGesture/``.

Files are read by the torch-free readers in :mod:`fptt_edge.runtime.events` (the ones the
device uses); a missing or broken file is refused naming it. Each segment is downsampled
(``tonic.transforms.Downsample``) and binned into ``steps`` frames (``tonic.transforms.ToFrame``,
by time or by event count), ON/OFF polarity as two channels: by default 128x128 -> 32x32,
T = 20, as in the paper. The runtime's numpy :class:`~fptt_edge.runtime.frames.FrameBinner`
gives the same frames (tested). The input spec records ``window_us``, the median time span of a
step over the segments, which continuous recognition on the device uses as its frame window.

Augmentation (training split only, never at evaluation): per augmented view, a random spatial
shift of the whole segment (a random crop of the zero-padded sensor, up to ``max_shift``
pixels each way at sensor resolution; events leaving the sensor are dropped) and a random event
drop (each event dropped with a probability drawn from ``[0, max_drop]``), drawn from a
generator seeded by ``seed``. The training loop takes pre-binned tensors, so the views are made
when the data are loaded: ``copies`` augmented views per training segment, after the originals.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..runtime import events as events_io
from ..runtime.errors import EventFileError
from .dataset import DataError, SequenceDataset

SENSOR = events_io.DVS128_SENSOR
CLASSES = ("Hand clapping", "Right hand wave", "Left hand wave", "Right arm cw", "Right arm ccw", "Left arm cw", "Left arm ccw",
           "Arm roll", "Air drums", "Air guitar", "Other gestures")  # tonic.datasets.DVSGesture.classes; CSV class k is index k - 1
CSV_CLASS_OFFSET = 1  # the original labels CSV numbers classes from 1
TONIC_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
SPLIT_LISTS = {"train": "trials_to_train.txt", "test": "trials_to_test.txt"}
TONIC_FOLDERS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}
LAYOUT_HINT = ("expected the original release (trials_to_train.txt, trials_to_test.txt and userNN_<lighting>.aedat with "
               "userNN_<lighting>_labels.csv) or tonic's extracted layout (ibmGestureTrain/ and ibmGestureTest/ holding "
               "userNN_<lighting>/<class>.npy), directly in the folder or under DvsGesture/ or DVSGesture/")


@dataclass(frozen=True)
class Augment:
    """Training augmentation: ``copies`` views per segment, each shifted by up to ``max_shift``
    sensor pixels in x and y and dropping each event with a probability drawn from ``[0, max_drop]``."""

    copies: int = 1
    max_shift: int = 8
    max_drop: float = 0.1

    def __post_init__(self):
        if self.copies < 0 or self.max_shift < 0 or not 0 <= self.max_drop < 1:
            raise DataError(f"augmentation needs copies >= 0, max_shift >= 0 and 0 <= max_drop < 1, got {self}")


DEFAULT_AUGMENT = Augment()


# --- layout ------------------------------------------------------------------------------------

def detect_layout(root) -> tuple[str, Path]:
    """``("original", folder)`` or ``("tonic", folder)``; a :class:`DataError` naming what is missing otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (--root must be the DVS128 Gesture folder; {LAYOUT_HINT})")
    for base in (root, root / "DvsGesture", root / "DVSGesture"):
        if any((base / f).is_file() for f in SPLIT_LISTS.values()):
            return "original", base
        if any((base / d).is_dir() for d in TONIC_FOLDERS.values()):
            return "tonic", base
    raise DataError(f"{root}: not a DVS128 Gesture folder: {LAYOUT_HINT}")


def find_root(path) -> Path:
    """The data set folder from a path a user names: the folder itself or a file or folder inside it
    (``trials_to_test.txt``, ``ibmGestureTest/``, one sample), up to three levels down."""
    path = Path(path)
    for cand in ([path] if path.is_dir() else []) + list(path.parents)[:3]:
        try:
            detect_layout(cand)
        except DataError:
            continue
        return cand
    raise DataError(f"{path}: not in a DVS128 Gesture folder: {LAYOUT_HINT}")


def read_trials(path: Path) -> list[str]:
    """Trial names (``userNN_<lighting>``) from a ``trials_to_*.txt``: one ``.aedat`` file name per line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the trial list ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    trials = []
    for n, line in enumerate(lines, 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if "/" in name or "\\" in name or not name.endswith(".aedat") or name in (".aedat", "..aedat"):
            raise DataError(f"{path}:{n}: expected a recording name 'userNN_<lighting>.aedat' in the same folder")
        trials.append(name[: -len(".aedat")])
    if not trials:
        raise DataError(f"{path}: lists no recordings")
    return trials


# --- events -> samples -------------------------------------------------------------------------

def segments(events: np.ndarray, labels: list[tuple[int, int, int]], path="recording") -> list[tuple[int, np.ndarray]]:
    """The labelled segments of one recording: ``(class - 1, events with start <= t < end)`` per
    labels row (events in time order, as the readers return them)."""
    t = events["t"]
    out = []
    for label, start, end in labels:
        if not CSV_CLASS_OFFSET <= label < CSV_CLASS_OFFSET + len(CLASSES):
            raise DataError(f"{path}: label class {label} is outside 1..{len(CLASSES)}")
        a, b = np.searchsorted(t, start, "left"), np.searchsorted(t, end, "left")
        out.append((label - CSV_CLASS_OFFSET, events[a:b]))
    return out


def _read(reader, path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    try:
        return reader(path)
    except EventFileError as exc:
        raise DataError(str(exc)) from None


def original_segments(base: Path, split: str, limit: int | None = None):
    """``(name, class, events)`` of every labelled segment of the split's trials, in list order."""
    trials = read_trials(_need(base / SPLIT_LISTS[split], f"the original release lists the {split} recordings there"))
    count = 0
    for trial in trials:
        events = _read(events_io.read_aedat31, base / f"{trial}.aedat", f"listed in {SPLIT_LISTS[split]}")
        labels = _read(events_io.read_gesture_labels, base / f"{trial}_labels.csv", f"the labels of {trial}.aedat")
        for k, (label, seg) in enumerate(segments(events, labels, base / f"{trial}_labels.csv")):
            if limit is not None and count >= limit:
                return
            count += 1
            yield f"{trial}[{k}]", label, seg


def tonic_segments(base: Path, split: str, limit: int | None = None):
    """``(name, class, events)`` of every ``userNN_<lighting>/<class>.npy`` of the split's folder."""
    folder = _need(base / TONIC_FOLDERS[split], f"tonic's layout keeps the {split} samples there", directory=True)
    count = 0
    for trial in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(trial.glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
        for f in files:
            if not re.fullmatch(r"\d+", f.stem) or int(f.stem) >= len(CLASSES):
                raise DataError(f"{f}: expected '<class>.npy' with class 0..{len(CLASSES) - 1} (tonic's layout)")
            if limit is not None and count >= limit:
                return
            count += 1
            yield f"{trial.name}/{f.name}", int(f.stem), _read(events_io.read_tonic_npy, f, "a sample")
    if count == 0:
        raise DataError(f"{folder}: no userNN_<lighting>/<class>.npy samples")


def _need(path: Path, why: str, directory: bool = False) -> Path:
    if not (path.is_dir() if directory else path.is_file()):
        raise DataError(f"{path}: missing ({why})")
    return path


def augment(events: np.ndarray, rng: np.random.Generator, aug: Augment, sensor=SENSOR) -> np.ndarray:
    """One augmented view: the segment shifted by a random (dx, dy), then a random event drop."""
    dx, dy = rng.integers(-aug.max_shift, aug.max_shift + 1, size=2)
    x, y = events["x"].astype(np.int64) + dx, events["y"].astype(np.int64) + dy
    keep = (x >= 0) & (x < sensor[0]) & (y >= 0) & (y < sensor[1])
    if aug.max_drop > 0:
        keep &= rng.random(len(events)) >= rng.uniform(0, aug.max_drop)
    out = events[keep].copy()
    out["x"], out["y"] = x[keep], y[keep]
    return out


def events_to_frames(events: np.ndarray, steps: int, binning: str = "time", downsample: int = 4, normalisation: str = "binary",
                     sensor=SENSOR) -> np.ndarray:
    """``[steps, 2, H // downsample, W // downsample]`` float32 frames of one segment (the N-MNIST path, tonic)."""
    from .nmnist import events_to_frames as bin_events

    return bin_events(events.astype(TONIC_DTYPE), steps, binning, downsample, normalisation, sensor=tuple(sensor))


def load_dvsgesture(root, split: str, steps: int = 20, binning: str = "time", downsample: int = 4, normalisation: str = "binary",
                    augmentation: Augment | None = DEFAULT_AUGMENT, seed: int = 0, limit: int | None = None) -> SequenceDataset:
    """The ``split`` ("train"/"test") of the DVS128 Gesture folder ``root`` in either layout, as frames.

    ``limit``: the first N segments. ``augmentation`` applies to the training split only (None: off)."""
    if split not in SPLIT_LISTS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if downsample < 1 or SENSOR[0] // downsample < 1:
        raise DataError(f"downsample must be in 1..{SENSOR[0]}, got {downsample}")
    layout, base = detect_layout(root)
    source = original_segments(base, split, limit) if layout == "original" else tonic_segments(base, split, limit)
    names, labels, frames, skipped, kept = [], [], [], [], []
    for name, label, seg in source:
        if len(seg) == 0:
            skipped.append(name)
            continue
        names.append(name)
        labels.append(label)
        kept.append(seg)
        frames.append(events_to_frames(seg, steps, binning, downsample, normalisation))
    if not frames:
        raise DataError(f"{base}: no {split} segments with events ({layout} layout)")
    aug = augmentation if split == "train" and augmentation is not None and augmentation.copies > 0 else None
    if aug is not None:
        rng = np.random.default_rng(seed)
        for _ in range(aug.copies):
            for seg, label in zip(kept, list(labels[: len(kept)])):
                frames.append(events_to_frames(augment(seg, rng, aug), steps, binning, downsample, normalisation))
                labels.append(label)
    x = np.stack(frames)
    spec = {
        "task": "dvsgesture",
        "sensor_size": list(SENSOR),
        "layout": "[T, polarity, y, x]",
        "source_layout": layout,
        "steps": steps,
        "binning": {"by": binning, "steps": steps},
        "downsample": downsample,
        "normalisation": normalisation,
        "shape": list(x.shape[2:]),
        "csv_class_offset": CSV_CLASS_OFFSET,
        "window_us": int(np.median([(int(seg["t"][-1]) - int(seg["t"][0])) // steps for seg in kept])) or 1,  # a step's typical time span
        "split": split,
        "segments": len(kept),
        "skipped_empty_segments": len(skipped),
        "augmentation": None if aug is None else {**asdict(aug), "seed": seed},
    }
    if layout == "original":
        spec["path"] = str((base / SPLIT_LISTS[split]).resolve())
    else:
        spec["root"] = str(base.resolve())
    return SequenceDataset(torch.from_numpy(x), torch.tensor(labels, dtype=torch.int64), list(CLASSES), spec)


def split_validation_by_segment(ds: SequenceDataset, fraction: float, seed: int) -> tuple[SequenceDataset, SequenceDataset | None]:
    """``(train, validation)`` for a training split with augmented views: a stratified ``fraction``
    of the *segments* is held out (the same draw as :func:`~fptt_edge.data.dataset.stratified_split`
    over the originals); validation holds their originals only, and no view of a held-out segment
    stays in training (a view of a validation sample in training would flatter model selection)."""
    from .dataset import split_validation, stratified_split

    n = int(ds.input_spec.get("segments") or len(ds))
    if len(ds) % n or not torch.equal(ds.y.reshape(-1, n), ds.y[:n].expand(len(ds) // n, n)):
        return split_validation(ds, fraction, seed)  # not originals followed by whole blocks of views: split samples
    if fraction == 0:
        return ds, None
    keep, held = stratified_split(ds.y[:n], fraction, seed)
    if len(held) == 0:
        return ds, None
    copies = len(ds) // n
    train_idx = (keep[None, :] + n * torch.arange(copies)[:, None]).reshape(-1)
    train, val = ds.subset(train_idx), ds.subset(held)
    train.input_spec["segments"] = len(keep)
    val.input_spec["segments"], val.input_spec["augmentation"] = len(held), None
    train.input_spec["validation"] = val.input_spec["validation"] = {"split": "stratified by segment", "fraction": fraction, "seed": int(seed),
                                                                       "held_out": len(held), "of": n}
    return train, val


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of ``epoch`` (epoch 0: ``seed`` itself, what :func:`load_dvsgesture` drew at load)."""
    return int(seed) if epoch == 0 else int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def fresh_views(root, limit: int | None, opts: dict, val_fraction: float, seed: int):
    """``views(epoch)`` for :func:`~fptt_edge.training.loop.fit`: the training split read again with new
    augmented views drawn from :func:`epoch_seed` (the originals and the held-out validation segments
    are those of epoch 0; the same epoch always gives the same views, so a resumed run trains on
    what it would have). Reads the recordings again each epoch (nothing held in memory)."""
    load_opts = {k: v for k, v in opts.items() if k in ("steps", "binning", "downsample", "normalisation")}

    def views(epoch: int) -> SequenceDataset:
        ds = load_dvsgesture(root, "train", limit=limit, seed=epoch_seed(seed, epoch), **load_opts)
        if val_fraction > 0:
            ds, _ = split_validation_by_segment(ds, val_fraction, seed)
        return ds

    return views
