"""A checkpoint or model never makes a command read a file the user did not name, and no error
message echoes a file's contents.

Each checkpoint here records a data path that holds real, usable data, so a command that
opened it would succeed: refusing proves the recorded path is not used."""
from __future__ import annotations

import builtins
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from export_helpers import make_checkpoint

from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.data.dataset import DataError
from fptt_edge.data.tasks import DataNotGiven, load_task
from fptt_edge.data.tasks import test_set_from_spec as check_set
from fptt_edge.export.errors import ExportError
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.runtime import RuntimeInputError

NMNIST = {"task": "nmnist", "sensor_size": [34, 34, 2], "binning": {"by": "time", "steps": 5}, "downsample": 2, "normalisation": "binary"}
SECRET = "TOPSECRET-0123"


@pytest.fixture
def opened(monkeypatch):
    """Every path opened through open()/io.open()/Path.open() while the test runs."""
    seen: list[str] = []
    real = builtins.open

    def spy(file, *a, **k):
        if isinstance(file, (str, os.PathLike)):
            seen.append(str(Path(file).resolve()))
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


def _npz(path: Path, n: int = 12, t: int = 6, c: int = 3) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    np.savez(path, x=(rng.random((n, t, c)) < 0.2 + 0.5 * (y[:, None, None] == np.arange(c))).astype(np.float32), y=y)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_eval_never_opens_a_recorded_npz(tmp_path, opened):
    data = _npz(tmp_path / "test.npz")
    make_checkpoint(tmp_path / "m.pt", ModelConfig(input_shape=(3,), num_classes=3, hidden=(8,)), {"task": "npz", "test_path": str(data)})
    opened.clear()
    res = run("eval", tmp_path / "m.pt")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"trained on 'npz' data from '{data}'" in res.output and "pass --data FILE" in res.output
    assert str(data.resolve()) not in opened
    res = run("eval", tmp_path / "m.pt", "--data", data)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["samples"] == 12 and str(data.resolve()) in opened


def test_eval_never_opens_a_recorded_split_list(tmp_path, nmnist_fixture, opened):
    split = nmnist_fixture / "test.txt"
    spec = {**NMNIST, "test_path": str(split), "path": str(nmnist_fixture / "train.txt")}
    make_checkpoint(tmp_path / "m.pt", ModelConfig(input_shape=(2, 17, 17), num_classes=10, hidden=(8,)), spec)
    opened.clear()
    res = run("eval", tmp_path / "m.pt", "--max-samples", "4")
    assert res.exit_code == 2 and "pass --data FILE" in res.output and str(split) in res.output
    assert not [p for p in opened if p.startswith(str(nmnist_fixture.resolve()))], "a recorded data file was opened"
    res = run("eval", tmp_path / "m.pt", "--data", split)
    assert res.exit_code == 0 and json.loads(res.output)["samples"] == 6, res.output
    # the user's data are binned as the checkpoint records (steps 5, downsample 2), not by defaults
    ds = check_set(spec, split)
    ref = load_task("nmnist", "test", split, steps=5, downsample=2)
    assert ds.x.shape[1:] == (5, 2, 17, 17) and np.array_equal(ds.x.numpy(), ref.x.numpy())


def test_built_in_data_need_no_path_and_take_an_npz():
    spec = {"task": "smnist", "mode": "row", "source": "digits8x8", "test_path": "/nonexistent/secret.txt"}
    assert len(check_set(spec, limit=7)) == 7  # the bogus recorded path is never looked at


def test_eval_of_a_built_in_model_on_a_user_npz(tmp_path):
    make_checkpoint(tmp_path / "m.pt", ModelConfig(input_shape=(8,), num_classes=10, hidden=(8,)), {"task": "smnist", "mode": "row", "source": "digits8x8"})
    _npz(tmp_path / "own.npz", n=9, t=8, c=8)
    res = run("eval", tmp_path / "m.pt", "--data", tmp_path / "own.npz")
    assert res.exit_code == 0 and json.loads(res.output)["samples"] == 9, res.output
    (tmp_path / "list.txt").write_text("a 1\n")
    res = run("eval", tmp_path / "m.pt", "--data", tmp_path / "list.txt")
    assert res.exit_code == 2 and "expected an .npz" in res.output


def test_unknown_task_without_data_is_refused_with_a_hint():
    with pytest.raises(DataNotGiven, match="pass --data FILE"):
        check_set({"task": "dvsgesture"})
    with pytest.raises(DataNotGiven, match="not built in"):
        check_set({"task": "npz"})


def test_export_checks_never_open_a_recorded_path(tmp_path, opened):
    data = _npz(tmp_path / "test.npz")
    make_checkpoint(tmp_path / "m.pt", ModelConfig(input_shape=(3,), num_classes=3, hidden=(8,)), {"task": "npz", "test_path": str(data)})
    opened.clear()
    with pytest.raises(ExportError, match=r"pass --data FILE to evaluate on it.*, or --no-check") as info:
        export_checkpoint(tmp_path / "m.pt", tmp_path / "m.onnx", streams=1, steps=20, precision_samples=4, log=lambda m: None)
    assert "\n" not in str(info.value) and not (tmp_path / "m.onnx").exists()
    assert str(data.resolve()) not in opened
    export_checkpoint(tmp_path / "m.pt", tmp_path / "m.onnx", streams=1, steps=20, precision_samples=4, data=data, log=lambda m: None)
    assert (tmp_path / "m.onnx").is_file() and str(data.resolve()) in opened  # checked on the data the user named


def _nmnist_model(tmp_path, recorded) -> Path:
    make_checkpoint(tmp_path / "m.pt", ModelConfig(input_shape=(2, 17, 17), num_classes=10, hidden=(8,)), {**NMNIST, "test_path": str(recorded)})
    export_checkpoint(tmp_path / "m.pt", tmp_path / "m.onnx", check=False, log=lambda m: None)
    return tmp_path / "m.onnx"


def test_runtime_recordings_come_from_the_named_list_only(tmp_path, nmnist_fixture):
    from fptt_edge.contract import read_contract
    from fptt_edge.runtime.inputs import from_contract_source

    model = _nmnist_model(tmp_path, nmnist_fixture / "test.txt")
    contract = read_contract(model)
    with pytest.raises(TypeError):
        from_contract_source(contract)  # pylint: disable=no-value-for-parameter - a path is required
    recs = from_contract_source(contract, nmnist_fixture / "test.txt", limit=4)
    ref = load_task("nmnist", "test", nmnist_fixture / "test.txt", steps=5, downsample=2, limit=4)
    assert [r.label for r in recs] == ref.y.tolist()
    for r, x in zip(recs, ref.x.numpy()):
        np.testing.assert_array_equal(r.frames, x)  # runtime binning == training binning, through the metadata
    bad = nmnist_fixture / "bad.txt"
    bad.write_text(f"# header\ntest0 1\n{SECRET} 1 2\n")
    with pytest.raises(RuntimeInputError, match=r"bad.txt:3: expected") as info:
        from_contract_source(contract, bad)
    assert SECRET not in str(info.value)
    bad.write_text("../test0 1\n")
    with pytest.raises(RuntimeInputError, match="must not leave"):
        from_contract_source(contract, bad)


def test_engine_verification_uses_only_named_data(tmp_path, nmnist_fixture, monkeypatch):
    """verify_engine (``build``) used to read the split list recorded in the metadata; now only
    --verify-npz, else random frames. (ONNX Runtime stands in for TensorRT here.)"""
    import fptt_edge.runtime.verify as verify
    from fptt_edge.runtime.session import open_session

    model = _nmnist_model(tmp_path, nmnist_fixture / "test.txt")
    monkeypatch.setattr(verify, "open_session", lambda path, backend, contract=None: open_session(model, "ort"))
    result = verify.verify_engine(model, model, steps=10)
    assert result["inputs"].startswith("random event frames") and result["passed"]
    frames = tmp_path / "frames.npz"
    np.savez(frames, x=np.zeros((2, 5, 2, 17, 17), np.float32), y=np.array([0, 1]))
    assert verify.verify_engine(model, model, npz=frames, steps=10)["inputs"] == str(frames)


def test_split_list_errors_give_the_line_not_its_text(tmp_path):
    from fptt_edge.data.nmnist import read_split_list

    (tmp_path / "l.txt").write_text(f"#sample #class\na\t1\n{SECRET}\tseven\n")
    with pytest.raises(DataError, match=r"l.txt:3: expected 'sample<TAB>class'") as info:
        read_split_list(tmp_path / "l.txt")
    assert SECRET not in str(info.value)


def _raw_npy(header: str) -> bytes:
    header = header + " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8


@pytest.mark.parametrize("case", ["header-keys", "header-garbage", "npy-not-npz", "text"])
def test_npz_errors_never_echo_the_file(tmp_path, case):
    path = tmp_path / "d.npz"
    if case == "text":
        path.write_text(f"{SECRET}\n" * 5)
    elif case == "npy-not-npz":
        with open(path, "wb") as f:
            np.save(f, np.array([1.0]))
    else:
        header = {"header-keys": f"{{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '{SECRET}': 1, }}",
                  "header-garbage": f"{{'descr': '<f4', {SECRET}"}[case]
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", _raw_npy(header))
            z.writestr("y.npy", _raw_npy(header))
    with pytest.raises(DataError, match="not a readable .npz file") as info:
        load_task("npz", "test", path)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    res = run("train", "--task", "npz", "--train", path, "--test", path, "--out", tmp_path / "run", "--quiet")
    assert res.exit_code == 2 and SECRET not in res.output and "Traceback" not in res.output
