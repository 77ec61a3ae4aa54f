"""One place that turns a task name (or a checkpoint's ``input_spec``) into train/test data."""
from __future__ import annotations

from pathlib import Path

import torch

from ..encoding import Encoding, EncodingError, encoding_of
from .dataset import DataError, SequenceDataset

TASKS = ("smnist", "psmnist", "nmnist", "npz", "dvsgesture")


def load_task(task: str, split: str, path=None, *, mode: str = "pixel", source: str = "mnist", steps: int = 20,
              binning: str = "time", downsample: int = 1, normalisation: str = "binary", num_classes: int | None = None,
              limit: int | None = None, augment: bool = True, seed: int = 0) -> SequenceDataset:
    """The ``split`` ("train"/"test") of ``task``; ``path`` is the split list (nmnist), .npz file (npz) or the
    data set folder (dvsgesture; ``augment``: its training split's augmented views, drawn with ``seed``)."""
    if task in ("smnist", "psmnist"):
        from .digits import load_smnist

        ds = load_smnist(split, mode=mode, permuted=task == "psmnist", source=source)
    elif task == "nmnist":
        from .nmnist import load_nmnist

        if path is None:
            raise DataError(f"--task nmnist needs --{split} PATH: the split list (e.g. train1K.txt) beside the .bs2 recordings")
        path = Path(path).resolve()
        ds = load_nmnist(path.parent, path.name, steps=steps, binning=binning, downsample=downsample, normalisation=normalisation, limit=limit)
        ds.input_spec["path"] = str(path)
    elif task == "npz":
        from .npz import load_npz

        if path is None:
            raise DataError(f"--task npz needs --{split} FILE.npz")
        ds = load_npz(path, num_classes=num_classes)
        ds.input_spec["path"] = str(Path(path).resolve())
    elif task == "dvsgesture":
        from .dvsgesture import DEFAULT_AUGMENT, load_dvsgesture

        if path is None:
            raise DataError("--task dvsgesture needs --root DIR: the DVS128 Gesture folder (original release or tonic's layout)")
        # the loader applies the limit to segments, before the training split's augmented views are added
        return load_dvsgesture(path, split, steps=steps, binning=binning, downsample=downsample, normalisation=normalisation,
                               augmentation=DEFAULT_AUGMENT if augment else None, seed=seed, limit=limit)
    else:
        raise DataError(f"unknown task {task!r}; choose from {TASKS}")
    return ds.take(limit)


BUILT_IN = ("smnist", "psmnist")


def test_set_from_spec(spec: dict, path=None, limit: int | None = None, num_classes: int | None = None) -> SequenceDataset:
    """The evaluation data for a checkpoint trained on ``spec``: the built-in data sets load as
    they did in training; otherwise ``path``, the file the user names, is read (an ``.npz`` of
    frames, or for N-MNIST a split list binned as the checkpoint records). The input encoding the
    checkpoint records (``spec["encoding"]``, fitted on its training data) is applied, so files hold
    raw data as training read them.

    A data path recorded in the checkpoint is never opened (a checkpoint must not make a command
    read a file nobody named); it only appears, as a hint, in the error when ``path`` is missing."""
    ds = _raw_test_set(spec, path, limit, num_classes)
    try:
        enc = encoding_of(spec)
    except EncodingError as exc:
        raise DataError(f"the checkpoint's input encoding is unusable: {exc}") from None
    return encode_dataset(ds, enc)


def period_warning(ds: SequenceDataset, spec: dict, source) -> str | None:
    """A warning when the ``.npz`` ``source`` (loaded as ``ds``) records a sample period (``period_us``) more than 10 % from
    the one the checkpoint's training data recorded (``spec``, its input spec), else None."""
    from ..npzfile import period_mismatch

    return period_mismatch(ds.input_spec.get("window_us"), spec.get("window_us"), source) if ds.input_spec.get("task") == "npz" else None


def _raw_test_set(spec: dict, path=None, limit: int | None = None, num_classes: int | None = None) -> SequenceDataset:
    task = spec.get("task")
    if path is not None:
        if task == "nmnist" and Path(path).suffix.lower() != ".npz":
            return load_task("nmnist", "test", path, steps=spec["binning"]["steps"], binning=spec["binning"]["by"],
                             downsample=spec["downsample"], normalisation=spec["normalisation"], limit=limit)
        if task == "dvsgesture" and Path(path).suffix.lower() != ".npz":  # the folder, or a file in it (trials_to_test.txt)
            from .dvsgesture import find_root

            root = find_root(path)
            try:
                opts = {"steps": int(spec["binning"]["steps"]), "binning": spec["binning"]["by"], "downsample": int(spec["downsample"]),
                        "normalisation": spec["normalisation"]}
            except (KeyError, TypeError, ValueError):
                raise DataError("the checkpoint's input_spec lacks the DVS128 Gesture binning (binning, downsample, normalisation)") from None
            return load_task("dvsgesture", "test", root, limit=limit, augment=False, **opts)
        if task == "npz" or Path(path).suffix.lower() == ".npz":
            return load_task("npz", "test", path, num_classes=num_classes, limit=limit)
        raise DataError(f"{path}: expected an .npz file (x [N, T, ...], y [N]) for a model trained on {_task_name(task)} data")
    if task in BUILT_IN:
        return load_task(task, "test", mode=spec["mode"], source=spec["source"], limit=limit)
    raise DataNotGiven(_missing_data_message(spec))


class DataNotGiven(DataError):
    """File-based data a command needs and the user did not name."""


def _task_name(task) -> str:
    return repr(task) if not isinstance(task, str) else repr(task[:20])


def _missing_data_message(spec: dict) -> str:
    task = spec.get("task")
    recorded = spec.get("test_path") or spec.get("path")
    if isinstance(recorded, str) and recorded:
        where = f"this checkpoint was trained on {_task_name(task)} data from {recorded[:300]!r}"
    else:
        where = f"this checkpoint was trained on {_task_name(task)} data, which are not built in"
    return f"{where}; pass --data FILE to evaluate on it (a path recorded in a checkpoint is never opened)"


def data_identity(ds: SequenceDataset) -> dict:
    """What a resumed run must find again: the input spec (task and the options that turned raw
    data into steps), the sample count, the SHA-256 of the data file (for N-MNIST: of the split
    list, and of the listed recordings' names and sizes) and a SHA-256 of the loaded samples.
    Plain data (strings, numbers, lists, dicts), saved in resume checkpoints."""
    import hashlib

    from ..io import file_sha256

    spec = {k: v for k, v in ds.input_spec.items() if k not in _PATH_KEYS}
    h = hashlib.sha256()
    for name, t in (("x", ds.x), ("y", ds.y), ("lengths", ds.lengths)):
        if t is None:
            continue
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{name} {arr.dtype.str} {list(arr.shape)}\n".encode())
        h.update(arr.data)  # C-contiguous: the raw bytes
    ident = {"spec": spec, "samples": len(ds), "samples_sha256": h.hexdigest()}
    path = ds.input_spec.get("path")
    if isinstance(path, str):
        ident["file"] = path
        ident["file_sha256"] = file_sha256(path)
        if ds.input_spec.get("task") == "nmnist":
            ident["recordings_sha256"] = _recordings_sha256(Path(path), len(ds))
    return ident


_PATH_KEYS = ("path", "test_path", "split", "file")  # where the data lie, not what they are: compared by content


def _recordings_sha256(split_list: Path, n: int) -> str:
    """SHA-256 over the names and sizes of the first ``n`` recordings a split list names."""
    import hashlib

    from .nmnist import read_split_list

    h = hashlib.sha256()
    for name, label in read_split_list(split_list)[:n]:
        rec = split_list.parent / f"{name}.bs2"
        h.update(f"{name}\t{label}\t{rec.stat().st_size if rec.is_file() else -1}\n".encode())
    return h.hexdigest()


def fit_encoding(train: SequenceDataset, kind: str, threshold: float = 0.1) -> Encoding:
    """The input encoding ``kind`` fitted on ``train`` (channel data ``[N, T, C]`` only)."""
    if kind == "none":
        return Encoding()
    if len(train.input_shape) != 1:
        raise DataError(f"--encoding {kind} is for channel data [N, T, C]; these steps have shape {list(train.input_shape)}")
    return Encoding.fit(kind, train.x.numpy(), None if train.lengths is None else train.lengths.numpy(), threshold)


def encode_dataset(ds: SequenceDataset, enc: Encoding) -> SequenceDataset:
    """``ds`` with ``enc`` applied to its steps and recorded in its input spec (``ds`` itself for ``none``)."""
    if enc.kind == "none":
        return ds
    try:
        x = torch.from_numpy(enc.encode(ds.x.numpy()))
    except EncodingError as exc:
        shape = f" (the data were recorded with {list(ds.input_shape)} channels per step)" if tuple(ds.input_shape) != (enc.channels,) else ""
        raise DataError(f"{exc}{shape}") from None
    spec = {**ds.input_spec, "encoding": enc.to_dict(), "raw_shape": list(ds.input_shape)}
    return SequenceDataset(x, ds.y, ds.class_names, spec, ds.lengths)
