"""One place that turns a task name (or a checkpoint's ``input_spec``) into train/test data."""
from __future__ import annotations

from pathlib import Path

from .dataset import DataError, SequenceDataset

TASKS = ("smnist", "psmnist", "nmnist", "npz")


def load_task(task: str, split: str, path=None, *, mode: str = "pixel", source: str = "mnist", steps: int = 20,
              binning: str = "time", downsample: int = 1, normalisation: str = "binary", num_classes: int | None = None,
              limit: int | None = None) -> SequenceDataset:
    """The ``split`` ("train"/"test") of ``task``; ``path`` is the split list (nmnist) or .npz file (npz)."""
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
    else:
        raise DataError(f"unknown task {task!r}; choose from {TASKS}")
    return ds.take(limit)


def test_set_from_spec(spec: dict, path=None, limit: int | None = None, num_classes: int | None = None) -> SequenceDataset:
    """Rebuild the evaluation data a checkpoint was trained for (``path`` overrides the recorded file)."""
    task = spec.get("task")
    if task in ("smnist", "psmnist"):
        return load_task(task, "test", mode=spec["mode"], source=spec["source"], limit=limit)
    if task == "nmnist":
        test_path = path or spec.get("test_path")
        return load_task("nmnist", "test", test_path, steps=spec["binning"]["steps"], binning=spec["binning"]["by"],
                         downsample=spec["downsample"], normalisation=spec["normalisation"], limit=limit)
    if task == "npz":
        test_path = path or spec.get("test_path")
        return load_task("npz", "test", test_path, num_classes=num_classes, limit=limit)
    raise DataError(f"the checkpoint's input spec names no known task ({task!r}); pass --data")
