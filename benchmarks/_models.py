"""Shared by the runtime benchmarks: an exported model (and its checkpoint) of a given shape."""
from __future__ import annotations

from pathlib import Path

import torch

from fptt_edge.checkpoint import save_checkpoint
from fptt_edge.config import ModelConfig
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.model import LTCNetwork

NMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-small"
NMNIST_SPEC = {"task": "nmnist", "sensor_size": [34, 34, 2], "binning": {"by": "time", "steps": 20}, "downsample": 1, "normalisation": "binary"}


def exported_model(out: Path, input_shape, hidden, batch=None, spec=None, seed=0) -> tuple[Path, Path]:
    """``(model.onnx, model.pt)``: an initialised LTC network (weights as at the start of training), exported without checks."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ModelConfig(input_shape=tuple(input_shape), num_classes=10, hidden=tuple(hidden))
    net = LTCNetwork(config)
    ckpt, onnx_path = out / "model.pt", out / "model.onnx"
    save_checkpoint(ckpt, {"kind": "model", "model_config": config.to_dict(), "state_dict": net.state_dict(),
                           "class_names": [str(i) for i in range(10)], "input_spec": spec or {}})
    export_checkpoint(ckpt, onnx_path, batch=batch, check=False, log=lambda m: None)
    return onnx_path, ckpt
