"""Hostile input to on-device adaptation and ``shift``: damaged guard sets, crafted ``.npz`` files, absurd options, output
paths that are not files. Each case: one line, exit status 2, nothing written or changed; and ``lengths`` are honoured."""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.lib import format as npy_format
from test_adapt import digits, exported  # noqa: F401 - the module fixture: a small model exported with --adapt
from test_hostile import refused_api, refused_cli

from fptt_edge.cli import main


@pytest.fixture
def model(exported, tmp_path):  # noqa: F811 - the imported fixture
    """A fresh copy of the exported model folder (model.onnx, model.train.onnx, model.guard.npz)."""
    folder, _ = exported
    dst = tmp_path / "m"
    dst.mkdir()
    for name in ("model.onnx", "model.train.onnx", "model.guard.npz"):
        if (folder / name).is_file():
            shutil.copy(folder / name, dst / name)
    return dst / "model.onnx"


@pytest.fixture
def data(tmp_path):
    x, y = digits(12, offset=200)
    path = tmp_path / "new.npz"
    np.savez(path, x=x, y=y)
    return path


def _declared(shape, path):
    """An .npz of 1 KB whose 'x' header declares ``shape`` float32 (a petabyte for the big ones)."""
    def header(shape, descr):
        buf = io.BytesIO()
        npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
        return buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header(shape, "<f4") + b"\0" * 1000)
        z.writestr("y.npy", header((4,), "<i8") + b"\0" * 32)


def _flip(path: Path, at: float):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def _guard_like(model: Path, path: Path, **change):
    with np.load(model.with_name("model.guard.npz")) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(change)
    np.savez(path, **arrays)


GUARD_CASES = {  # (what to do to the guard set (a copy of it for --guard), where the damaged file goes: 'default' = MODEL.guard.npz, 'option' = --guard)
    "bitflip-compressed": (lambda m, p: _flip(p, 0.5), "default"),
    "truncated": (lambda m, p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "default"),
    "npy-not-npz": (lambda m, p: np.save(open(p, "wb"), np.zeros((2, 3, 8), np.float32)), "option"),  # noqa: SIM115
    "declared-petabyte": (lambda m, p: _declared((10 ** 12, 28, 28), p), "option"),
    "x-complex": (lambda m, p: _guard_like(m, p, x=np.load(m.with_name("model.guard.npz"))["x"].astype(np.complex64)), "option"),
    "x-text": (lambda m, p: _guard_like(m, p, x=np.full((2, 3, 8), "1.0")), "option"),
    "x-datetime": (lambda m, p: _guard_like(m, p, x=np.zeros((2, 3, 8), "datetime64[s]")), "option"),
    "x-beyond-float32": (lambda m, p: _guard_like(m, p, x=np.load(m.with_name("model.guard.npz"))["x"].astype(np.float64) * 1e39), "option"),
    "no-y": (lambda m, p: np.savez(p, x=np.zeros((2, 3, 8), np.float32)), "option"),
    # MODEL.guard.npz that is there but is no file: adaptation ran without its guard, saying only 'guard (none)'
    "default-is-a-folder": (lambda m, p: (p.unlink(), p.mkdir()), "default"),
    "default-is-a-fifo": (lambda m, p: (p.unlink(), os.mkfifo(p)), "default"),
    "default-is-a-dangling-link": (lambda m, p: (p.unlink(), p.symlink_to(p.with_name("gone.npz"))), "default"),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(GUARD_CASES))
def test_hostile_guard_set(model, data, tmp_path, name):
    if not model.with_name("model.guard.npz").is_file():
        pytest.skip("no guard set was exported")
    make, where = GUARD_CASES[name]
    target = model.with_name("model.guard.npz") if where == "default" else tmp_path / "guard.npz"
    if where == "option":
        shutil.copy(model.with_name("model.guard.npz"), target)
    make(model, target)
    args = ["adapt", model, "--data", data] + (["--guard", target] if where == "option" else [])
    out = refused_cli(args, model.parent, tmp_path)
    assert "guard" in out or str(target) in out, out  # refused for the guard set, not for anything else
    assert not model.with_name("model.adapted").exists()


DATA_CASES = {
    "npy-not-npz": lambda p: np.save(open(p, "wb"), np.zeros((2, 3, 8), np.float32)),  # noqa: SIM115
    "declared-petabyte": lambda p: _declared((10 ** 12, 8, 8), p),
    "lengths-zero": lambda p: np.savez(p, x=digits(4)[0], y=digits(4)[1], lengths=np.array([0, 8, 8, 8])),
    "lengths-past-end": lambda p: np.savez(p, x=digits(4)[0], y=digits(4)[1], lengths=np.array([9, 8, 8, 8])),
    "lengths-float": lambda p: np.savez(p, x=digits(4)[0], y=digits(4)[1], lengths=np.full(4, 2.5)),
    "lengths-short": lambda p: np.savez(p, x=digits(4)[0], y=digits(4)[1], lengths=np.array([3, 3])),
}


@pytest.mark.parametrize("flag", ["--data", "--score"])
@pytest.mark.parametrize("name", list(DATA_CASES))
def test_hostile_adapt_data(model, data, tmp_path, name, flag):
    bad = tmp_path / "bad.npz"
    DATA_CASES[name](bad)
    args = ["adapt", model, "--data", bad] if flag == "--data" else ["adapt", model, "--data", data, "--score", bad]
    assert str(bad) in refused_cli(args, model.parent, tmp_path)


HUGE_X_CASES = {  # where an .npz whose float64 x lies beyond float32's range goes
    "adapt --data": lambda m, d, bad: ["adapt", m, "--data", bad],
    "adapt --guard": lambda m, d, bad: ["adapt", m, "--data", d, "--guard", bad],
    "shift --task npz": lambda m, d, bad: ["shift", "--task", "npz", "--data", bad, "--shift", "none", "-o", bad.with_name("o.npz")],
}


@pytest.mark.parametrize("name", list(HUGE_X_CASES))
def test_x_beyond_float32_is_one_line_without_a_warning(model, data, tmp_path, name):
    import warnings

    x, y = digits(6, offset=200)
    bad = tmp_path / "huge.npz"
    np.savez(bad, x=x.astype(np.float64) * 1e39, y=y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = refused_cli(HUGE_X_CASES[name](model, data, bad), model.parent, tmp_path)
    assert str(bad) in out and "NaN or Inf" in out, out  # the file named, the guard set's too
    assert [str(w.message) for w in caught] == [] and "Warning" not in out
    assert not (tmp_path / "o.npz").exists() and not model.with_name("model.adapted").exists()


def _file_as_store(m: Path, t: Path):
    m.with_name("model.adapted").write_text("not a folder")


def _folder_as_lock(m: Path, t: Path):
    (m.with_name("model.adapted") / ".lock").mkdir(parents=True)


ADAPT_OPTION_CASES = {  # -> (extra arguments, a usage error?)
    "seed-negative": (lambda m, t: ["--seed", "-1"], True),
    "max-drop-nan": (lambda m, t: ["--max-drop", "nan"], True),
    "lr-nan": (lambda m, t: ["--lr", "nan"], True),
    "lr-inf": (lambda m, t: ["--lr", "inf"], True),
    "lr-beyond-float32": (lambda m, t: ["--lr", "1e300"], False),
    "lr-below-float32": (lambda m, t: ["--lr", "1e-300"], False),
    "holdout-nan": (lambda m, t: ["--holdout", "nan"], True),
    "store-is-a-file": (lambda m, t: (_file_as_store(m, t), [])[1], False),
    "store-lock-is-a-folder": (lambda m, t: (_folder_as_lock(m, t), [])[1], False),
}


@pytest.mark.parametrize("name", list(ADAPT_OPTION_CASES))
def test_hostile_adapt_options(model, data, tmp_path, name):
    make, usage = ADAPT_OPTION_CASES[name]
    extra = make(model, tmp_path)
    out = refused_cli(["adapt", model, "--data", data, "--holdout", "0", *extra], model.parent, tmp_path, usage=usage)
    assert str(data) not in out  # refused for the option, not for the data
    assert not list(model.parent.rglob("gen-*"))


def test_adapt_labels_cut_one_continuous_recording_only(model, data, tmp_path):
    """--labels with --data: the segments of one recording with sample times; not an .npz of recordings, not a split list."""
    labels = tmp_path / "labels.csv"
    labels.write_text("1,0,5000\n")
    refused_cli(["adapt", model, "--data", data, "--labels", labels], model.parent, tmp_path, expect="y describes separate recordings")
    (tmp_path / "list.txt").write_text("a\t1\n")
    refused_cli(["adapt", model, "--data", tmp_path / "list.txt", "--labels", labels], model.parent, tmp_path,
                expect="a split list labels its recordings")
    with np.load(data) as f:
        frame = f["x"].shape[2:]
    np.savez(tmp_path / "rec.npz", x=np.zeros((20, *frame), np.float32), t=np.arange(20) * 1000)
    labels.write_text("1,0,5000\n1,100000,200000\n")
    refused_cli(["adapt", model, "--data", tmp_path / "rec.npz", "--labels", labels], model.parent, tmp_path,
                expect="the segment 100000..200000 us holds no sample of rec.npz (0..19000 us)")
    labels.write_text("1,100000,200000\n")  # none on the recording's clock
    refused_cli(["adapt", model, "--data", tmp_path / "rec.npz", "--labels", labels], model.parent, tmp_path,
                expect="none of its 1 segments overlaps the recording (0 to 19001 us): the labels of another recording, or times on another clock?")
    assert not list(model.parent.rglob("gen-*"))


LEARNER_OPTION_CASES = {  # open_learner keyword arguments that must be refused with one AdaptationError line, naming the option
    "max_drop": [float("nan"), 1.5, -2.0, "x", None, True],
    "rate_band": [0, 0.0, 0.5, -2.0, float("nan"), float("inf"), "4"],
    "lr": ["abc", 1j, 10 ** 400, np.zeros(3), float("nan")],
    "guard": ["text", "one", "four", "bad-lengths", "array"],
}


def _guard_value(kind: str, gx, gy):
    return {"text": "(x, y)", "one": (gx,), "four": (gx, gy, gy, gy), "bad-lengths": (gx, gy, gy - gy), "array": gx}[kind]


@pytest.mark.parametrize("option", list(LEARNER_OPTION_CASES))
def test_hostile_learner_options(model, option):
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import open_learner

    gx, gy = digits(6, offset=260)
    for value in LEARNER_OPTION_CASES[option]:
        value = _guard_value(value, gx, gy) if option == "guard" else value
        kwargs = {"guard": (gx, gy), option: value}
        exc = refused_api(open_learner, model, store=False, **kwargs)
        assert isinstance(exc, AdaptationError) and option in str(exc), (value, str(exc))
    with open_learner(model, store=False, guard=(gx, gy), max_drop=-1.0, rate_band=1.0, lr=np.float32(1e-3)):
        pass  # the edges are taken


@pytest.mark.parametrize("kwargs", [{"threads": "2"}, {"threads": 1.5}, {"threads": 0}, {"threads": 10 ** 10}, {"streams": 10 ** 7},
                                    {"streams": 2}, {"session": object()}, {"session": "model.onnx"}])
def test_hostile_learner_session_options_are_refused_as_open_session_refuses_them(model, kwargs):
    """threads and streams are checked as :func:`open_session` checks them (streams must be the batch a fixed-batch model
    was exported with: the live session could not run a step), and ``session`` must be a StreamSession."""
    from fptt_edge.runtime.learner import open_learner

    exc = refused_api(open_learner, model, store=False, **kwargs)
    assert next(iter(kwargs)) in str(exc) or "session" in str(exc), str(exc)


@pytest.mark.parametrize("store", [False, True])
def test_a_ring_beyond_memory_is_refused_before_anything_is_allocated(model, store):
    """The ring buffer and replay slots are preallocated: 10^9 frames per stream is one line, not a MemoryError, and a
    learner refused so leaves the store free for the next."""
    from fptt_edge.runtime.learner import open_learner

    exc = refused_api(open_learner, model, store=store, ring=10 ** 9)
    assert "ring=1000000000" in str(exc) and "GiB" in str(exc), str(exc)
    with open_learner(model, store=store):
        pass


def test_hostile_learner_train_seed_and_evaluate_weights(model):
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import open_learner

    x, y = digits(4, offset=280)
    with open_learner(model, store=False) as learner:
        n = learner.train_contract.size
        for seed in (-1, "x", 1.5, None):
            exc = refused_api(learner.train, x, y, seed=seed)
            assert isinstance(exc, AdaptationError) and "seed" in str(exc)
        assert learner.events.updates == 0
        for wbar in (np.zeros(5), np.zeros((2, n)), np.zeros((1, n), complex), "abc", np.zeros((1, n), "U1")):
            exc = refused_api(learner.evaluate, x, y, wbar=wbar)
            assert isinstance(exc, AdaptationError) and "wbar" in str(exc)
        current = learner.backend.buffers()["wbar"].copy()
        assert learner.evaluate(x, y, wbar=current.reshape(-1).astype(np.float64)) == learner.evaluate(x, y)
        for bad in ({"x": [x[0], x[1, :3]], "y": y[:2]}, {"x": x, "y": y, "lengths": [0, 1, 2, 3]},
                    {"x": x, "y": y, "lengths": [9, 9, 9, 9]}, {"x": x, "y": y, "lengths": np.ones(3, int)}):
            exc = refused_api(learner.evaluate, **bad)
            assert isinstance(exc, AdaptationError)


def _contract(exported_with: str, names: list[str]):
    from fptt_edge.train_contract import Hyper, TrainContract, TrainTensor

    tensors = tuple(TrainTensor(name, (2,), 2 * i) for i, name in enumerate(names))
    return TrainContract(batch=4, frame_shape=(8,), num_classes=10, states=(), tensors=tensors, trainable=exported_with, hyper=Hyper(),
                         checkpoint_sha256="c" * 64, inference_sha256="d" * 64, opset=20)


def test_a_trainable_set_the_train_graph_only_partly_holds_is_refused():
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import trainable_names

    two, one = {"hidden": [16, 16]}, {"hidden": [16]}
    readout = _contract("readout", ["readout.fc.weight", "readout.fc.bias"])
    last1 = _contract("last", ["layers.0.fc_x.weight", "layers.0.fc_h.weight", "readout.fc.weight"])
    last2 = _contract("last", ["layers.1.fc_x.weight", "layers.1.fc_h.weight", "readout.fc.weight"])
    refused = [(readout, two, c) for c in ("all", "last", "input")] + [(last2, two, c) for c in ("all", "input")]
    for contract, config, choice in refused:
        exc = refused_api(trainable_names, contract, config, choice)
        assert isinstance(exc, AdaptationError), str(exc)
        assert f"--trainable {contract.trainable}" in str(exc) and f"fptt-edge export MODEL.pt --adapt --trainable {choice}" in str(exc)
    assert trainable_names(readout, two, "readout") == ["readout.fc.weight", "readout.fc.bias"]
    assert trainable_names(last2, two, "readout") == ["readout.fc.weight"]
    assert trainable_names(last1, one, "all") == [t.name for t in last1.tensors]  # one layer: its last layer and readout are all
    assert trainable_names(last1, one, "input") == ["layers.0.fc_x.weight"]


def test_a_train_graph_whose_metadata_claims_more_than_its_tensors_is_refused():
    """``trainable`` is metadata (outside the checksum); the tensors are checked against the graph's inputs. A readout graph
    relabelled ``all`` trained the readout alone for ``--trainable all``, and said 'all'."""
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import trainable_names

    two = {"hidden": [16, 16]}
    lies = [_contract("all", ["readout.fc.weight"]), _contract("all", ["layers.1.fc_x.weight", "readout.fc.weight"]),
            _contract("last", ["layers.0.fc_x.weight"]), _contract("input", ["readout.fc.weight"])]
    for contract in lies:
        for choice in ("all", "readout", "last", "input"):
            exc = refused_api(trainable_names, contract, two, choice)
            assert isinstance(exc, AdaptationError) and "metadata" in str(exc), str(exc)


@pytest.fixture(scope="module")
def readout_model(exported, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The same small model exported with --adapt --trainable readout."""
    from fptt_edge.export.pipeline import export_checkpoint

    folder = tmp_path_factory.mktemp("readout")
    shutil.copy(exported[0] / "model.pt", folder / "model.pt")
    export_checkpoint(folder / "model.pt", steps=40, precision_samples=20, adapt=True, trainable="readout", adapt_updates=24, log=lambda m: None)
    return folder / "model.onnx"


def test_adapt_refuses_a_trainable_set_the_train_graph_cannot_update(readout_model, data, tmp_path):
    model = readout_model
    for choice in ("all", "last", "input"):
        out = refused_cli(["adapt", model, "--data", data, "--holdout", "0", "--trainable", choice], model.parent, tmp_path)
        assert "--trainable readout" in out and f"fptt-edge export MODEL.pt --adapt --trainable {choice}" in out, out
    assert not model.with_name("model.adapted").exists()
    res = CliRunner().invoke(main, ["adapt", str(model), "--data", str(data), "--holdout", "0", "--max-drop", "1", "--trainable", "readout",
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["trainable"] == "readout"
    from fptt_edge.runtime.learner import open_learner

    with open_learner(model, store=False) as learner:  # by default, what the graph was exported to update
        assert learner.trainable == "readout"


def test_adapt_refuses_a_readout_graph_relabelled_all(readout_model, data, tmp_path):
    model = tmp_path / "m" / "model.onnx"
    model.parent.mkdir()
    for name in ("model.onnx", "model.train.onnx", "model.guard.npz"):
        shutil.copy(readout_model.with_name(name), model.with_name(name))

    def relabel(m):
        next(p for p in m.metadata_props if p.key == "fptt_edge.train.trainable").value = "all"
    _edit_train_graph(model, relabel, restamp=False)
    for extra in ([], ["--trainable", "all"]):
        assert "metadata" in refused_cli(["adapt", model, "--data", data, "--holdout", "0", *extra], model.parent, tmp_path)
    assert not model.with_name("model.adapted").exists()


def _edit_train_graph(model: Path, edit, restamp: bool) -> None:
    import onnx

    from fptt_edge.contract import stamp_checksum

    train = model.with_name("model.train.onnx")
    m = onnx.load(str(train))
    edit(m)
    if restamp:  # an edit that also forges the checksum
        stamp_checksum(m)
    train.write_bytes(m.SerializeToString())


def test_a_train_graph_onnx_runtime_cannot_load_is_refused_before_any_work(model, data):
    def unknown_op(m):
        m.graph.node[len(m.graph.node) // 2].op_type = "NoSuchOperator"  # the metadata still matches; the graph does not load
    _edit_train_graph(model, unknown_op, restamp=True)
    assert "cannot load this train-step graph" in refused_cli(["adapt", model, "--data", data], model.parent)


@pytest.mark.parametrize("restamp", [False])
def test_a_train_graph_edited_after_export_is_refused_by_its_checksum(model, data, restamp):
    def sigmoid_to_tanh(m):  # still loads and trains, wrongly
        next(n for n in m.graph.node if n.op_type == "Sigmoid").op_type = "Tanh"
    _edit_train_graph(model, sigmoid_to_tanh, restamp)
    assert "graph_sha256" in refused_cli(["adapt", model, "--data", data], model.parent)


def test_a_second_learner_on_the_same_model_is_refused_until_the_first_closes(model, data):
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import open_learner

    first = open_learner(model)
    try:
        with pytest.raises(AdaptationError, match="another adaptation of this model is running"):
            open_learner(model)
        refused_cli(["adapt", model, "--data", data], model.parent)
    finally:
        first.close()
    open_learner(model).close()  # free again


def test_a_closed_learner_refuses_every_call_with_one_line(model):
    """After close() (the store is let go, the sessions freed) each call is one AdaptationError line, nothing saved: commit
    was an IndexError or AttributeError, learn queued frames and label replayed them."""
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import open_learner

    x, y = digits(4, offset=280)
    learner = open_learner(model)
    for i in range(4):
        learner.learn(x[i], int(y[i]))
    learner.observe(x[0, 0][None])
    learner.close()
    learner.close()  # twice is fine
    calls = [lambda: learner.learn(x[0], 0), lambda: learner.label(0, 0, 0, 1), lambda: learner.observe(x[0, 0][None]), learner.flush,
             lambda: learner.train(x, y), lambda: learner.evaluate(x, y), learner.check, learner.commit, learner.push,
             learner.reset_to_factory, lambda: learner.step(x[0, 0][None]), lambda: learner.set_trainable("readout")]
    for call in calls:
        exc = refused_api(call)
        assert isinstance(exc, AdaptationError) and "closed" in str(exc), str(exc)
    assert not list(model.parent.rglob("gen-*"))


def test_a_learner_interrupted_while_it_scores_the_guard_set_lets_the_store_go(model, monkeypatch):
    """Ctrl-C (or any failure) while a new learner scores the shipped weights on the guard set must release the store: the
    lock was kept by the half-built learner and every later learner in the process was refused as 'another adaptation'."""
    from fptt_edge.runtime.learner import Learner, open_learner

    gx, gy = digits(6, offset=260)

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Learner, "_score", interrupted)
        with pytest.raises(KeyboardInterrupt):
            open_learner(model, guard=(gx, gy))
    open_learner(model, guard=(gx, gy)).close()


def _generation_weights(model: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    (gen,) = sorted(model.with_name("model.adapted").glob("gen-*.safetensors"))
    return load_file(str(gen))["wbar"]


def test_adapt_honours_the_lengths_in_the_data(exported, tmp_path):  # noqa: F811 - the imported fixture
    """Adapting on zero-padded recordings with ``lengths`` = adapting on the recordings cut to those lengths."""
    folder, _ = exported
    x, y = digits(12, offset=300)
    lengths = np.array([3, 8, 5, 8, 2, 6, 8, 4, 7, 8, 3, 5])
    padded = x.copy()
    for i, n in enumerate(lengths):
        padded[i, n:] = 0.0
    np.savez(tmp_path / "padded.npz", x=padded, y=y, lengths=lengths)
    np.savez(tmp_path / "garbage-tail.npz", x=x, y=y, lengths=lengths)  # past each length: real data, which must be ignored too
    reports = {}
    for name in ("padded", "garbage-tail", "whole"):
        case = tmp_path / name
        shutil.copytree(folder, case, ignore=shutil.ignore_patterns("model.adapted", "*.pt"))
        data = tmp_path / ("padded.npz" if name == "whole" else f"{name}.npz")
        if name == "whole":  # the same recordings without lengths: trained on the padding too
            np.savez(data := tmp_path / "whole.npz", x=padded, y=y)
        res = CliRunner().invoke(main, ["adapt", str(case / "model.onnx"), "--data", str(data), "--holdout", "0", "--max-drop", "1",
                                        "--json"])
        assert res.exit_code == 0, res.output
        reports[name] = json.loads(res.output)
    assert reports["padded"]["updates"] == reports["garbage-tail"]["updates"]
    a, b, c = (_generation_weights(tmp_path / n / "model.onnx") for n in ("padded", "garbage-tail", "whole"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_adapt_json_reports_the_generations_it_skipped(model, data):
    store = model.with_name("model.adapted")
    store.mkdir()
    (store / "gen-000001.safetensors").write_bytes(b"not safetensors at all")
    res = CliRunner().invoke(main, ["adapt", str(model), "--data", str(data), "--holdout", "0", "--max-drop", "1", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["started_from"] == "factory weights" and any("gen-000001" in w for w in report["warnings"])


def test_junk_under_a_huge_generation_number_does_not_block_adapt(model, data):
    store = model.with_name("model.adapted")
    store.mkdir()
    junk = {store / "gen-999999999999.safetensors": b"junk\n", store / "gen-1000000000000.safetensors": b""}
    for path, content in junk.items():
        path.write_bytes(content)
    res = CliRunner().invoke(main, ["adapt", str(model), "--data", str(data), "--holdout", "0", "--max-drop", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["committed"] and (store / "gen-000001.safetensors").is_file()
    assert all(path.read_bytes() == content for path, content in junk.items())


def test_the_store_refuses_a_generation_number_its_loader_would_not_read(model, monkeypatch):
    from fptt_edge.runtime import adapted
    from fptt_edge.runtime.adapted import AdaptedStore
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import factory_weights, train_path_for
    from fptt_edge.train_contract import read_train_contract

    train = train_path_for(model)
    contract = read_train_contract(train)
    store = AdaptedStore(model.with_name("model.adapted"), "a" * 64, "b" * 64, contract)
    w = factory_weights(model, contract)
    buffers = {"weights": w, "wbar": w, "lam": 0 * w, "m": 0 * w, "u": 0 * w, "step": np.zeros(1, np.float32)}
    monkeypatch.setattr(adapted, "MAX_GENERATION", 2)
    assert [store.save(buffers).number for _ in range(2)] == [1, 2]
    with pytest.raises(AdaptationError, match="generation numbers are used up"):
        store.save(buffers)
    assert store.generations() == [2, 1]


# ---------------------------------------------------------------- shift and the writers behind every artefact

SHIFT = ["shift", "--mode", "row", "--samples", "3"]


def _fifo(t: Path) -> Path:
    os.mkfifo(t / "pipe")
    return t / "pipe"


def _link_to_fifo(t: Path) -> Path:
    (t / "stdout").symlink_to(_fifo(t))
    return t / "stdout"


SHIFT_CASES = {  # -> (arguments after SHIFT, a usage error?)
    "gain-beyond-float32": (lambda t: ["--shift", "gain:1e39", "-o", t / "o.npz"], False),
    "columns-on-pixels": (lambda t: ["--mode", "pixel", "--shift", "columns:3", "-o", t / "o.npz"], False),
    "seed-negative": (lambda t: ["--shift", "dropout:0.5", "--seed", "-1", "-o", t / "o.npz"], True),
    "npz-without-data": (lambda t: ["--task", "npz", "--shift", "none", "-o", t / "o.npz"], False),
    "output-empty": (lambda t: ["--shift", "none", "-o", ""], False),
    "output-under-a-file": (lambda t: ((t / "f").write_text("mine"), ["--shift", "none", "-o", t / "f" / "o.npz"])[1], False),
    "output-a-folder": (lambda t: ((t / "d").mkdir(), ["--shift", "none", "-o", t / "d"])[1], True),
    "output-a-fifo": (lambda t: ["--shift", "none", "-o", _fifo(t)], False),
    "output-a-link-to-a-fifo": (lambda t: ["--shift", "none", "-o", _link_to_fifo(t)], False),
    "output-a-dangling-link": (lambda t: ((t / "dangling").symlink_to(t / "nowhere" / "x.npz"), ["--shift", "none", "-o", t / "dangling"])[1],
                               False),
}


@pytest.mark.parametrize("name", list(SHIFT_CASES))
def test_hostile_shift(tmp_path, name):
    make, usage = SHIFT_CASES[name]
    out = refused_cli([*SHIFT, *make(tmp_path)], tmp_path, usage=usage)
    assert "--test" not in out  # shift's own option is --data
    if "fifo" in name:
        assert (tmp_path / "pipe").is_fifo()  # not replaced by a regular file
    assert not (tmp_path / "o.npz").exists()


def test_shift_writes_through_a_link_to_a_regular_file_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(target)
    res = CliRunner().invoke(main, [*SHIFT, "--shift", "none", "-o", str(tmp_path / "link.npz")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "link.npz").is_symlink() and np.load(target)["x"].shape[0] == 3


def test_a_write_removes_only_its_own_dead_writers_temporaries(tmp_path):
    import fcntl

    from fptt_edge.io import write_bytes_atomic

    dead = tmp_path / ".m.onnx.fptt-edge-k1ll3d_x.tmp"  # a killed writer of m.onnx: nobody holds it
    live = tmp_path / ".m.onnx.fptt-edge-w0rk1ng_.tmp"  # a writer of m.onnx still at work
    other = tmp_path / ".thesis.draft_v2.tmp"  # someone else's file of the same pattern, old
    mine = tmp_path / ".m.onnx.backup01.tmp"  # a user's own file named like mkstemp's default, unheld
    for p in (dead, live, other, mine):
        p.write_bytes(b"x")
    os.utime(other, (0, 0))
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        write_bytes_atomic(tmp_path / "m.onnx", b"new")
        assert not dead.exists() and live.exists() and other.exists() and (tmp_path / "m.onnx").read_bytes() == b"new"
    write_bytes_atomic(tmp_path / "m.onnx", b"newer")  # the writer is gone now: its leftover goes
    assert not live.exists() and other.exists() and mine.read_bytes() == b"x"


def test_adapt_without_json_draws_its_progress_and_commits(model, data):
    res = CliRunner().invoke(main, ["adapt", str(model), "--data", str(data), "--holdout", "0", "--max-drop", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "adapting" in res.output and "weights: " in res.output and list(model.with_name("model.adapted").glob("gen-*.safetensors"))


def test_a_run_that_ends_at_the_factory_weights_keeps_the_earlier_generation(model, data):
    """A diverging run (every check rolls back, three in a row return to the factory weights) saves nothing: the
    generation it started from stays the latest, and run keeps using it."""
    from fptt_edge.runtime.adaptation import adapt, adapted_weights

    first = adapt(model, data=data, holdout=0.0, max_drop=1.0)
    assert first["committed"]
    diverged = adapt(model, data=data, holdout=0.0, lr=1e30, check_every=1)
    assert diverged["factory_resets"] >= 1 and not diverged["committed"] and diverged["weights"] is None
    assert sorted(p.name for p in (model.parent / "model.adapted").glob("gen-*.safetensors")) == [Path(first["weights"]).name]
    assert adapted_weights(model)[1] == first["weights"]
