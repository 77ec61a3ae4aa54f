"""Checkpoints on real data for the export tests (N-MNIST from ../shared, else shipped S-MNIST).

A checkpoint records where its data came from (``test_path``), but no command opens a recorded
path: tests pass the data as a user would, with :func:`check_data`. Tests about N-MNIST itself
use :func:`nmnist_spec`, which skips when ../shared is absent instead of passing on other data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fptt_edge.checkpoint import save_checkpoint
from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork

ROOT = Path(__file__).resolve().parents[1]
NMNIST_DIR = ROOT.parent / "shared" / "data" / "nmnist-small"


def real_spec() -> tuple[dict, tuple[int, ...]]:
    """The input spec of the real test data (N-MNIST when ../shared has it, else S-MNIST), and its frame shape."""
    if (NMNIST_DIR / "test100.txt").is_file():
        path = str((NMNIST_DIR / "test100.txt").resolve())
        spec = {"task": "nmnist", "sensor_size": [34, 34, 2], "binning": {"by": "time", "steps": 20}, "downsample": 2, "normalisation": "binary",
                "test_path": path}
        return spec, (2, 17, 17)
    return {"task": "smnist", "mode": "row", "source": "mnist"}, (28,)


def nmnist_spec() -> tuple[dict, tuple[int, ...]]:
    """The real N-MNIST spec, or a skip when ../shared/data/nmnist-small is absent."""
    spec, shape = real_spec()
    if spec["task"] != "nmnist":
        pytest.skip("../shared/data/nmnist-small is not present")
    return spec, shape


def check_data(spec: dict) -> str | None:
    """The data file a user passes (``--data``) for a checkpoint of ``spec``: None for built-in data sets."""
    return spec.get("test_path")


def frame_spec(tmp: Path) -> tuple[dict, tuple[int, ...]]:
    """Frame-shaped real data for a conv model: N-MNIST, or S-MNIST digits revealed row by row as [T, 1, 28, 28]."""
    spec, shape = real_spec()
    if len(shape) == 3:
        return spec, shape
    from fptt_edge.data.digits import load_smnist

    ds = load_smnist("test", mode="row").take(60)
    img = ds.x.numpy()  # [N, 28, 28]
    t = np.arange(28)[:, None, None]
    frames = (img[:, None] * (np.arange(28)[None, None, :, None] <= t[None])).astype(np.float32)[:, :, None]  # [N, 28, 1, 28, 28]
    path = tmp / "frames.npz"
    np.savez(path, x=frames, y=ds.y.numpy())
    return {"task": "npz", "test_path": str(path)}, (1, 28, 28)


def make_checkpoint(path: Path, config: ModelConfig, spec: dict, seed: int = 0, input_gain: float = 1.0) -> LTCNetwork:
    """A checkpoint with initialised weights (biases stay zero: equal-valued parameters), random BN statistics."""
    torch.manual_seed(seed)
    net = LTCNetwork(config)
    with torch.no_grad():
        for layer in net.layers:
            first = getattr(layer, "fc_x", None) or layer.conv
            first.weight.mul_(input_gain)
            bn = getattr(layer, "bn", None)
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.1, 0.1)
    save_checkpoint(path, {"kind": "model", "model_config": config.to_dict(), "state_dict": net.state_dict(),
                           "class_names": [f"class-{i}" for i in range(config.num_classes)], "input_spec": spec, "training": {"method": "none"}})
    return net.eval()


def restamp_metadata(model) -> None:
    """Re-stamp an edited model's ``fptt_edge.metadata_sha256`` (where it has one): a file crafted with a consistent
    metadata checksum, so that what the loaders check beyond the checksum is what refuses it."""
    from fptt_edge.contract import METADATA_CHECKSUM_KEY, metadata_sha256

    entries = [(p.key, p.value) for p in model.metadata_props]
    for p in model.metadata_props:
        if p.key == METADATA_CHECKSUM_KEY:
            p.value = metadata_sha256(entries)
