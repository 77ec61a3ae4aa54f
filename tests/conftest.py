from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NMNIST_DIR = ROOT.parent / "shared" / "data" / "nmnist-small"

torch.set_num_threads(1)


@pytest.fixture
def nmnist_dir() -> Path:
    if not (NMNIST_DIR / "train1K.txt").is_file():
        pytest.skip("../shared/data/nmnist-small is not present")
    return NMNIST_DIR


def write_nmnist_recording(path: Path, x, y, t, p) -> None:
    """Write events in the N-MNIST binary format (5 bytes per event, big-endian bit fields)."""
    x, y, t, p = (np.asarray(a, dtype=np.int64) for a in (x, y, t, p))
    raw = np.empty((len(x), 5), dtype=np.uint8)
    raw[:, 0] = x
    raw[:, 1] = y
    raw[:, 2] = (p << 7) | ((t >> 16) & 0x7F)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    path.write_bytes(raw.tobytes())


@pytest.fixture
def nmnist_fixture(tmp_path) -> Path:
    """A generated N-MNIST-format folder: 12 train and 6 test recordings, two classes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "nmnist"
    folder.mkdir()
    for split, count in (("train.txt", 12), ("test.txt", 6)):
        lines = ["#sample #class"]
        for i in range(count):
            name = f"{split[:-4]}{i}"
            label = i % 2
            n = 400
            # class 0: events on the left half; class 1: on the right half
            xs = rng.integers(0, 17, n) + 17 * label
            write_nmnist_recording(folder / f"{name}.bs2", xs, rng.integers(0, 34, n), np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 2, n))
            lines.append(f"{name}\t{label}")
        (folder / split).write_text("\n".join(lines) + "\n")
    return folder
