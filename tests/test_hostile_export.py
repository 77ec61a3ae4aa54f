"""Export, lint, bench and run against crafted device profiles, graphs and outputs: one line and exit 2, nothing written."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import helper
from test_hostile import art, refused_cli  # noqa: F401 - the module fixture: good artefacts to start from

from fptt_edge.contract import stamp_checksum
from fptt_edge.devices import PROFILE_DIR
from fptt_edge.runtime.benchmark import bench_blas_floor

PROFILE_EDITS = {  # natural TOML mistakes in a user's own profile
    "python-unquoted": ("python = ", 'python = 3.10'),
    "tensorrt-unquoted": ("tensorrt = ", "tensorrt = 10"),
    "unconfirmed-numbers": ("unconfirmed = ", "unconfirmed = [1, 2]"),
    "unconfirmed-text": ("unconfirmed = ", 'unconfirmed = "abc"'),
    "dla-cores-text": ("dla_cores = ", 'dla_cores = "two"'),
    "min-opset-float": ("min_opset = ", "min_opset = 1.5"),
    "memory-text": ("memory_gb = ", 'memory_gb = "8"'),
    "tensorrt-not-a-version": ("tensorrt = ", 'tensorrt = "10.x"'),  # lint's DLA check parsed it: a ValueError traceback
    "tensorrt-negative": ("tensorrt = ", 'tensorrt = "-5"'),
    "python-not-a-version": ("python = ", 'python = "3.x"'),
    "tensorrt-absurd-version": ("tensorrt = ", 'tensorrt = "' + "1" * 400 + '"'),
    "name-two-lines": ("name = ", 'name = "x\n## forged"'),
    "name-terminal-escape": ("name = ", 'name = "x\u001b[2J"'),
    "memory-nan": ("memory_gb = ", "memory_gb = nan"),
    "memory-negative-inf": ("memory_gb = ", "memory_gb = -inf"),
}


@pytest.mark.parametrize("name", list(PROFILE_EDITS))
def test_hostile_device_profile(art, tmp_path, name):  # noqa: F811 - the imported fixture
    start, line = PROFILE_EDITS[name]
    text = (PROFILE_DIR / "orin-nano-8gb.toml").read_text().splitlines()
    (tmp_path / "p.toml").write_text("\n".join(line if row.startswith(start) else row for row in text) + "\n")
    refused_cli(["lint", art.onnx, "--device", tmp_path / "p.toml"], tmp_path, art.root)
    refused_cli(["export", art.pt, "-o", tmp_path / "e.onnx", "--no-check", "--device", tmp_path / "p.toml"], tmp_path, art.root)
    assert not (tmp_path / "e.onnx").exists()


@pytest.fixture
def fifo_profile(tmp_path):
    """A FIFO named like a profile; a reader left blocked on it is released after 20 s (EOF), so a hang fails, not stalls."""
    import os
    import threading

    path = tmp_path / "fifo.toml"
    os.mkfifo(path)
    done = threading.Event()

    def release():
        while not done.wait(20):
            try:  # succeeds only while a reader waits on it; closing gives that reader EOF
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=release, daemon=True).start()
    yield path
    done.set()


@pytest.mark.parametrize("cmd", ["lint", "export", "build"])
def test_a_device_profile_that_is_not_a_regular_file_is_refused(art, tmp_path, fifo_profile, cmd):  # noqa: F811
    args = {"lint": ["lint", art.onnx], "export": ["export", art.pt, "-o", tmp_path / "e.onnx", "--no-check"], "build": ["build", art.onnx]}[cmd]
    refused_cli([*args, "--device", fifo_profile], tmp_path, art.root, expect="not a regular file")
    assert not (tmp_path / "e.onnx").exists()


def test_a_huge_device_profile_is_refused_unread(art, tmp_path):  # noqa: F811
    big = tmp_path / "big.toml"
    big.write_text((PROFILE_DIR / "orin-nano-8gb.toml").read_text() + "#" * (2 << 20) + "\n")
    refused_cli(["lint", art.onnx, "--device", big], tmp_path, art.root, expect="at most")


def test_export_checks_every_output_before_writing_the_first(art, tmp_path):  # noqa: F811
    shutil.copy(art.onnx, tmp_path / "x.onnx")
    (tmp_path / "x.report.json").mkdir()
    # --batch 2: the graph it would write differs from the one there, which must stay unchanged (refused_cli checks)
    refused_cli(["export", art.pt, "-o", tmp_path / "x.onnx", "--no-check", "--batch", "2"], tmp_path, art.root)


@pytest.mark.parametrize("name", ["m.train.onnx", "m.fp16.onnx", "M.Train.ONNX"])
def test_export_refuses_the_names_of_its_side_files(art, tmp_path, name):  # noqa: F811
    refused_cli(["export", art.pt, "-o", tmp_path / name, "--no-check"], tmp_path, art.root)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["0", "-2", "5000", "3.5", "many"])
def test_export_refuses_an_absurd_adapt_chunk(art, tmp_path, value):  # noqa: F811
    refused_cli(["export", art.pt, "-o", tmp_path / "m.onnx", "--no-check", "--adapt", "--adapt-chunk", value], tmp_path, art.root, usage=True)
    assert not list(tmp_path.iterdir())


def _graph(make):
    def build(good, path):
        model = onnx.load(str(good.onnx))
        make(model)
        onnx.save(model, str(path))
    return build


LINT_CASES = {
    "empty-file": lambda good, path: path.write_bytes(b""),
    "no-nodes": _graph(lambda m: m.graph.ClearField("node")),
    "undefined-input": _graph(lambda m: m.graph.node[len(m.graph.node) // 2].input.__setitem__(0, "nowhere")),
    "cycle": _graph(lambda m: m.graph.node[0].input.__setitem__(0, m.graph.node[-1].output[0])),
}


@pytest.mark.parametrize("name", list(LINT_CASES))
def test_lint_refuses_what_is_not_a_valid_onnx_graph(art, tmp_path, name):  # noqa: F811
    LINT_CASES[name](art, tmp_path / "bad.onnx")
    refused_cli(["lint", tmp_path / "bad.onnx"], tmp_path, art.root)


def test_the_blas_floor_passes_over_a_gemm_whose_weight_is_computed(art, tmp_path):  # noqa: F811
    model = onnx.load(str(art.onnx))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemms:
        pytest.skip("no Gemm in this model")
    w = gemms[0].input[1]
    init = next(t for t in model.graph.initializer if t.name == w)
    model.graph.initializer.remove(init)
    model.graph.node.insert(0, helper.make_node("Constant", [], [w], value=init))
    stamp_checksum(model)
    onnx.save(model, str(tmp_path / "c.onnx"))
    assert bench_blas_floor(tmp_path / "c.onnx", 1, 10) is None


@pytest.mark.parametrize("labels", [[99, 1], [-1, 1]])
def test_run_refuses_labels_outside_the_models_classes(art, tmp_path, labels):  # noqa: F811
    with np.load(art.frames) as f:
        x = f["x"]
    np.savez(tmp_path / "f.npz", x=x, y=np.array(labels))
    assert "outside the model's classes" in refused_cli(["run", art.onnx, "--npz", tmp_path / "f.npz"], tmp_path, art.root)
