"""Torch-free boundaries: the device-side commands and every runtime module work with torch unimportable."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from export_helpers import make_checkpoint, real_spec

from fptt_edge.config import ModelConfig
from fptt_edge.export.pipeline import export_checkpoint

NO_TORCH = "import sys; sys.modules['torch'] = None; "
CLI = NO_TORCH + "sys.argv[0] = 'fptt-edge'; from fptt_edge.cli import main; main()"
TORCH_FREE = ["fptt_edge.cli", "fptt_edge.contract", "fptt_edge.summary", "fptt_edge.torch_bench", "fptt_edge.devices",
              "fptt_edge.devices.tensorrt_ops", "fptt_edge.export", "fptt_edge.export.lint"]


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """A folder as on a device: an exported model and frames, no checkpoint."""
    tmp = tmp_path_factory.mktemp("boundary")
    spec, shape = real_spec()
    make_checkpoint(tmp / "m.pt", ModelConfig(input_shape=shape, num_classes=10, hidden=(16,)), spec)
    folder = tmp / "device"
    folder.mkdir()
    export_checkpoint(tmp / "m.pt", folder / "model.onnx", check=False, log=lambda m: None)
    frames = (np.random.default_rng(0).random((2, 8, *shape)) < 0.1).astype(np.float32)
    np.savez(folder / "x.npz", x=frames, y=np.array([1, 2]))
    return folder


def no_torch(*args: str, code: str = CLI, cwd=None) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-2000:]
    return proc.stdout


COMMANDS = {
    "devices": (["devices"], lambda out: "orin-nano-8gb*" in out),
    "lint": (["lint", "model.onnx", "--device", "orin-nx-16gb"], lambda out: "device lint (orin-nx-16gb" in out and "PASS" in out),
    "info": (["info", "model.onnx"], lambda out: json.loads(out)["logits"]["classes"][0] == "class-0"),
    "run": (["run", "model.onnx", "--npz", "x.npz", "--json"], lambda out: json.loads(out)["steps"] == 16),
    "bench": (["bench", "model.onnx", "--steps", "50", "--backends", "ort"],
              lambda out: any(line.split()[:2] == ["ort", "1"] for line in out.splitlines()) and "no PyTorch row" in out
              and "{" not in out),  # the table only: no JSON after it
}


@pytest.mark.parametrize("name", COMMANDS)
def test_device_commands_run_without_torch(device, name):
    args, check = COMMANDS[name]
    out = no_torch(*args, cwd=device)
    assert check(out), out


@pytest.mark.parametrize("args", [["info", "m.pt"], ["export", "m.pt", "--no-check"], ["eval", "m.pt"], ["card", "m.pt"]],
                         ids=lambda a: a[0])
def test_checkpoint_commands_without_torch_say_what_to_install(device, tmp_path, args):
    (tmp_path / "m.pt").write_bytes((device.parent / "m.pt").read_bytes())
    proc = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("Error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert 'pip install "fptt-edge[train]"' in proc.stderr and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_every_runtime_module_imports_without_torch():
    code = NO_TORCH + f"""
import importlib
from pathlib import Path
import fptt_edge.runtime as rt
names = sorted(p.stem for p in Path(rt.__file__).parent.glob("*.py") if p.stem != "__init__")
for name in [*("fptt_edge.runtime." + n for n in names), *{TORCH_FREE!r}]:
    importlib.import_module(name)
print(len(names))
"""
    assert int(no_torch(code=code)) >= 15  # the runtime's modules, all of them


def test_lint_verdicts_and_refusals(device, tmp_path):
    from click.testing import CliRunner

    from fptt_edge.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["lint", str(device / "model.onnx"), "--device", "jetson-nano"])  # TensorRT 8.2 parses opsets <= 13
    assert res.exit_code == 1 and "FAIL" in res.output and "error: [opset]" in res.output
    res = runner.invoke(main, ["lint", str(device / "model.onnx"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["verdict"] in ("pass", "pass with warnings")
    (tmp_path / "junk.onnx").write_bytes(bytes(range(256)) * 3)
    for args in (["lint", str(tmp_path / "junk.onnx")], ["lint", str(tmp_path / "absent.onnx")], ["lint", str(device / "model.onnx"), "--device", "nope"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and res.output.startswith("Error:"), res.output
