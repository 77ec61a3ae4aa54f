"""On-device FPTT adaptation: the train-step graph against PyTorch, the torch-free learner, safety."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from export_helpers import restamp_metadata
from onnx import numpy_helper

from fptt_edge.checkpoint import save_checkpoint
from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.contract import ContractError
from fptt_edge.data.digits import load_smnist
from fptt_edge.devices import load_profile
from fptt_edge.export.adapt_export import eps_survives
from fptt_edge.export.lint import lint
from fptt_edge.export.parity import ort_session
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.export.train_check import BULK_RTOL, check_train_parity
from fptt_edge.export.train_graph import _decompositions, example_inputs, make_train_step, select_trainable, trace_train_step
from fptt_edge.model import LTCNetwork
from fptt_edge.runtime.errors import AdaptationError, RuntimeInputError
from fptt_edge.runtime.learner import open_learner
from fptt_edge.train_contract import Hyper, TrainContract
from fptt_edge.training.trainers import FPTTTrainer, TrainConfig

SPEC = {"task": "smnist", "mode": "row", "source": "digits8x8"}


def digits(n: int = 120, offset: int = 0):
    ds = load_smnist("test", mode="row", source="digits8x8")
    return ds.x.numpy()[offset:offset + n].astype(np.float32), ds.y.numpy()[offset:offset + n].astype(np.int64)


def tiny_net(seed: int = 0, hidden: int = 16) -> LTCNetwork:
    torch.manual_seed(seed)
    return LTCNetwork(ModelConfig(input_shape=(8,), num_classes=10, hidden=(hidden,)))


def tiny_checkpoint(folder):
    """``folder/model.pt``: :func:`tiny_net` as a checkpoint trained with FPTT at the default settings."""
    net = tiny_net()
    ckpt = folder / "model.pt"
    save_checkpoint(ckpt, {"kind": "model", "model_config": net.config.to_dict(), "state_dict": net.state_dict(),
                           "class_names": [str(i) for i in range(10)], "input_spec": SPEC,
                           "training": {"method": "fptt", "lr": 3e-3, "alpha": 0.1, "beta": 0.5, "clip": 1.0}})
    return ckpt


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small trained-from-init dense model exported with --adapt (checked against the trainer)."""
    folder = tmp_path_factory.mktemp("adapt")
    report = export_checkpoint(tiny_checkpoint(folder), steps=40, precision_samples=20, adapt=True, adapt_updates=24, log=lambda m: None)
    return folder, report


def test_train_graph_matches_the_pytorch_trainer():
    net = tiny_net()
    hyper = Hyper()
    model, tensors, folded = trace_train_step(net, "all", hyper, 4, None)
    x, y = digits(32)
    result = check_train_parity(folded, tensors, hyper, ort_session(model.SerializeToString()), x, y, None, 4, min_updates=64)
    assert result.updates >= 64 and result.passed, result.to_dict()
    assert sum(result.spike_mismatches.values()) == 0
    # moments are not noise-amplified: they must agree to 1e-5 outright
    assert result.max_rel["m"] <= 1e-5 and result.max_rel["u"] <= 1e-5


def test_train_check_catches_a_wrong_update():
    """The comparison can fail: a graph built with another lr disagrees with the trainer."""
    net = tiny_net()
    model, tensors, folded = trace_train_step(net, "all", Hyper(alpha=0.2), 4, None)
    x, y = digits(8)
    result = check_train_parity(folded, tensors, Hyper(), ort_session(model.SerializeToString()), x, y, None, 4, min_updates=8)
    assert not result.passed


@pytest.mark.parametrize("fault", ["lr x1.1", "no bias correction"])
def test_train_check_catches_a_fault_in_the_graphs_own_update(monkeypatch, fault):
    """A fault in the function the graph is traced from must not widen its own tolerance (the noise floors come from
    the trainer): a rate 10 % too high, or Adamax without its bias correction, fails the check."""
    from fptt_edge.export import train_graph

    orig = train_graph.fptt_adamax_update

    def faulty(g, W, wbar, lam, m, u, mask, step, lr, hyper):
        if fault == "lr x1.1":
            return orig(g, W, wbar, lam, m, u, mask, step, lr * 1.1, hyper)
        return orig(g, W, wbar, lam, m, u, mask, step + 1e6, lr, hyper)  # beta1^step = 0: the correction is gone
    monkeypatch.setattr(train_graph, "fptt_adamax_update", faulty)
    model, tensors, folded = trace_train_step(tiny_net(), "all", Hyper(), 4, None)
    x, y = digits(16)
    result = check_train_parity(folded, tensors, Hyper(), ort_session(model.SerializeToString()), x, y, None, 4, min_updates=16)
    assert not result.passed and not result.buffer_ok("weights")


@pytest.mark.parametrize("fault", ["gradient x2", "gradient negated", "rate x1.5"])
@pytest.mark.parametrize("target", ["readout.fc.bias", "layers.0.gate_a.bias"])
def test_train_check_catches_a_fault_confined_to_one_tensor(monkeypatch, fault, target):
    """A fault in one small tensor (a bias of 16 or 10 of the 1,300 weights): a rate 1.5x too high for one bias leaves the
    whole buffer's bulk and its largest deviation within their float32 bounds (it passed before the per-tensor bound; a
    doubled or negated gradient fails those too); the median of that tensor's elements moves far beyond rounding noise."""
    from fptt_edge.export import train_graph

    orig = train_graph.fptt_adamax_update
    _, tensors, _ = trace_train_step(tiny_net(), "all", Hyper(), 4, None)
    t = next(t for t in tensors if t.name == target)

    def faulty(g, W, wbar, lam, m, u, mask, step, lr, hyper):
        factor = torch.ones_like(g)
        factor[:, t.offset:t.offset + t.size] = {"gradient x2": 2.0, "gradient negated": -1.0, "rate x1.5": 1.0}[fault]
        out = orig(g * factor, W, wbar, lam, m, u, mask, step, lr, hyper)
        if fault != "rate x1.5":
            return out
        rate = torch.ones_like(g)
        rate[:, t.offset:t.offset + t.size] = 1.5
        return (W + (out[0] - W) * rate, *out[1:])
    monkeypatch.setattr(train_graph, "fptt_adamax_update", faulty)
    model, tensors, folded = trace_train_step(tiny_net(), "all", Hyper(), 4, None)
    result = check_train_parity(folded, tensors, Hyper(), ort_session(model.SerializeToString()), *digits(32), None, 4, min_updates=32)
    assert not result.passed and result.tensor_worst["weights"] == target, result.to_dict()
    assert result.tensor_rel["weights"] > 100 * BULK_RTOL["weights"]


def test_conv_backward_matches_autograd():
    """The hand-written convolution_backward decomposition against eager autograd (same function, same inputs)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    torch.manual_seed(1)
    net = LTCNetwork(ModelConfig(input_shape=(2, 8, 8), num_classes=4, hidden=(8,), conv_channels=(3,)))
    from fptt_edge.export.step_graph import fold_batch_norm

    folded, _ = fold_batch_norm(net)
    names = select_trainable(folded, "all")
    fn = make_train_step(folded, names, Hyper())
    args = list(example_inputs(folded, names, 2, Hyper()))
    args[0] = torch.rand(*args[0].shape)
    args[2] = torch.full((2,), 0.7)
    traced = make_fx(fn, decomposition_table=_decompositions(), tracing_mode="real")(*args)
    assert not any("convolution_backward" in str(n.target) for n in traced.graph.nodes)
    for a, b in zip(fn(*args), traced(*args)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_frozen_tensors_stay_bit_identical():
    net = tiny_net()
    hyper = Hyper()
    model, tensors, folded = trace_train_step(net, "all", hyper, 4, None)
    sess = ort_session(model.SerializeToString())
    args = [a.numpy().copy() for a in example_inputs(folded, [t.name for t in tensors], 4, hyper)]
    x, y = digits(4)
    args[0], args[1] = x[:, 3], np.eye(10, dtype=np.float32)[y]
    names = [i.name for i in sess.get_inputs()]
    feeds = dict(zip(names, args))
    feeds["fptt.lam"] = np.random.default_rng(0).standard_normal(feeds["fptt.lam"].shape).astype(np.float32) * 1e-3
    readout = np.zeros_like(feeds["fptt.mask"])
    for t in tensors:
        if t.name.startswith("readout."):
            readout[0, t.offset:t.offset + t.size] = 1.0
    feeds["fptt.mask"] = readout
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    frozen = readout[0] == 0
    for name, src in (("fptt.weights_out", feeds["fptt.wbar"]), ("fptt.lam_out", feeds["fptt.lam"]), ("adamax.m_out", feeds["adamax.m"])):
        assert np.array_equal(out[name][0, frozen].view(np.uint32), src[0, frozen].view(np.uint32)), name
        assert not np.array_equal(out[name][0, ~frozen], src[0, ~frozen]), name


def test_adamax_eps_survives_export():
    net = tiny_net()
    model, tensors, _ = trace_train_step(net, "readout", Hyper(), 2, None)
    contract = TrainContract(batch=2, frame_shape=(8,), num_classes=10, states=(), tensors=tensors, trainable="readout", hyper=Hyper(),
                             checkpoint_sha256="", inference_sha256="", opset=20)
    eps = np.float32(1e-8)
    holders = [i for i in model.graph.initializer if numpy_helper.to_array(i).size == 1 and numpy_helper.to_array(i).item() == eps]
    assert holders, "no eps constant left in the graph"
    assert eps_survives(model, ort_session(model.SerializeToString()), contract)
    for init in holders:  # the check can fail: without eps a zero gradient divides 0 by 0
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    assert not eps_survives(model, ort_session(model.SerializeToString()), contract)


@pytest.mark.parametrize("training", [{"lr": 1e300}, {"lr": 1e-300}, {"alpha": 1e300}, {"clip": 1e39}])
def test_export_adapt_refuses_hyper_parameters_a_float32_graph_cannot_hold(tmp_path, training):
    """The checkpoint's hyper-parameters become float32 constants and the default lr of the train graph: one beyond float32's
    range (inf) or below it (0) is one line, exit 2, nothing written (lr 1e300 was a RuntimeError traceback, lr 1e-300 a
    graph whose learner refused its own default lr)."""
    ckpt = tiny_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    payload["training"].update(training)
    save_checkpoint(ckpt, payload)
    result = CliRunner().invoke(main, ["export", str(ckpt), "--adapt", "--no-check"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and "float32" in result.output.strip().splitlines()[-1], result.output
    assert not list(tmp_path.glob("model.*onnx"))
    with pytest.raises(ContractError, match="float32"):
        Hyper(**training)


def test_trainable_sets():
    net = LTCNetwork(ModelConfig(input_shape=(8,), num_classes=10, hidden=(8, 8)))
    assert all(n.startswith("readout.") for n in select_trainable(net, "readout"))
    assert {n.split(".")[1] for n in select_trainable(net, "last") if n.startswith("layers.")} == {"1"}
    assert select_trainable(net, "input") == ["layers.0.fc_x.weight", "layers.0.fc_x.bias"]
    assert len(select_trainable(net, "all")) == len(list(net.parameters()))


def test_train_graph_passes_the_tensorrt_8_lint():
    """No INT64 tensors and only TensorRT 8.x ops, converted to opset 17 for JetPack 5."""
    model, _, _ = trace_train_step(tiny_net(), "all", Hyper(), 4, 17)
    result = lint(model, load_profile("xavier-nx"))
    assert result.verdict != "fail", result.to_dict()
    assert not any(f.check == "int64" for f in result.findings)


def test_export_adapt_writes_a_checked_train_graph(exported):
    folder, report = exported
    ts = report.train_step
    assert ts["passed"] and ts["parity"]["updates"] >= 24 and ts["eps_survives"]
    assert (folder / "model.train.onnx").is_file() and (folder / "model.guard.npz").is_file()
    meta = {p.key: p.value for p in onnx.load(str(folder / "model.train.onnx")).metadata_props}
    contract = TrainContract.from_metadata(meta)
    assert contract.hyper.lr == pytest.approx(3e-3) and contract.batch == 4 and contract.trainable == "all"
    inf = {i.name for i in onnx.load(str(folder / "model.onnx")).graph.initializer}
    assert {t.name for t in contract.tensors} <= inf  # every trained tensor maps to an inference initializer


def test_learner_without_torch_trains_commits_and_run_uses_it(exported, tmp_path):
    folder, _ = exported
    x, y = digits(40, offset=200)
    np.savez(tmp_path / "shift.npz", x=x * 0.5, y=y)
    code = f"""
import sys, json
sys.modules['torch'] = None
from fptt_edge.runtime.adaptation import adapt
r = adapt({str(folder / 'model.onnx')!r}, data={str(tmp_path / 'shift.npz')!r}, factory=True, max_drop=1.0)
print(json.dumps({{k: r[k] for k in ('committed', 'weights', 'updates')}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["committed"] and result["updates"] > 0
    # run picks up the latest generation; --factory ignores it
    np.savez(tmp_path / "frames.npz", x=x[:5], y=y[:5])
    adapted = json.loads(CliRunner().invoke(main, ["run", str(folder / "model.onnx"), "--npz", str(tmp_path / "frames.npz"), "--json"]).output)
    factory = json.loads(CliRunner().invoke(main, ["run", str(folder / "model.onnx"), "--npz", str(tmp_path / "frames.npz"), "--json",
                                                   "--factory"]).output)
    assert adapted["weights"].endswith(".safetensors") and factory["weights"] == "factory"
    # a damaged train graph, as a missing one: a warning, and the shipped weights run (the generations' layout is unknown)
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "model.train.onnx").write_bytes((folder / "model.train.onnx").read_bytes()[:5000])
    res = CliRunner().invoke(main, ["run", str(damaged / "model.onnx"), "--npz", str(tmp_path / "frames.npz"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["weights"] == "factory", res.output
    assert "model.train.onnx cannot be read" in res.stderr and "using the factory weights" in res.stderr


def test_zero_padded_recordings_are_scored_at_their_own_last_step(exported, tmp_path):
    """Recordings of 4 and 8 steps in one zero-padded array with ``lengths`` score as the two sets scored apart
    (evaluate, the held-out and --score figures of adapt, and a guard set with lengths)."""
    from fptt_edge.runtime.adaptation import adapt

    folder, _ = exported
    x, y = digits(40, offset=150)
    short, long_ = x[:20, :4], x[20:]
    padded = x.copy()
    padded[:20, 4:] = 0.0
    lengths = np.array([4] * 20 + [8] * 20)
    with open_learner(folder / "model.onnx", store=False) as learner:
        apart = (learner.evaluate(short, y[:20]).accuracy * 20 + learner.evaluate(long_, y[20:]).accuracy * 20) / 40
        assert learner.evaluate(padded, y, lengths=lengths).accuracy == pytest.approx(apart)
        assert learner.evaluate(padded, y).accuracy != pytest.approx(apart)  # the padding matters on this data
    np.savez(tmp_path / "padded.npz", x=padded, y=y, lengths=lengths)
    np.savez(tmp_path / "guard.npz", x=padded, y=y, lengths=lengths)
    report = adapt(folder / "model.onnx", data=tmp_path / "padded.npz", score=[tmp_path / "padded.npz"], guard=tmp_path / "guard.npz",
                   holdout=0.0, factory=True, max_drop=1.0)
    assert report["accuracy_before"][str(tmp_path / "padded.npz")] == pytest.approx(apart)
    assert report["accuracy_before"]["guard"] == pytest.approx(apart)


def test_learner_matches_the_trainer_on_one_batch(exported):
    """A batch of 4 labelled recordings through the learner = FPTTTrainer.train_batch on them."""
    folder, _ = exported
    x, y = digits(4, offset=300)
    with open_learner(folder / "model.onnx", store=False) as learner:
        start = {k: v.copy() for k, v in learner.backend.buffers().items()}
        for i in range(4):
            learner.learn(x[i], int(y[i]))
        got = learner.backend.buffers()
        net = tiny_net()
        trainer = FPTTTrainer(net, TrainConfig(lr=3e-3))
        assert np.array_equal(trainer.flat.flat.detach().numpy(), start["weights"][0])
        trainer.train_batch(torch.from_numpy(x), torch.from_numpy(y))
        opt = trainer.optimizer.state[trainer.flat.flat]
        for name, ref in (("m", opt["exp_avg"]), ("u", opt["exp_inf"])):
            ref = ref.numpy()
            assert np.abs(got[name][0] - ref).max() <= 1e-4 * np.abs(ref).max(), name
        assert float(got["step"][0]) == x.shape[1]
        np.testing.assert_allclose(got["weights"][0], trainer.flat.flat.detach().numpy(), atol=3e-3 * x.shape[1])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_partly_filled_batch_at_flush_is_the_trainers_update_on_those_sequences(exported, n):
    """flush() with n < B slots: the same update as FPTTTrainer.train_batch on the n sequences (the graph divides the loss
    by its batch B, so the learner scales the weights by B / n)."""
    folder, _ = exported
    x, y = digits(n, offset=310)
    with open_learner(folder / "model.onnx", store=False) as learner:
        for i in range(n):
            learner.learn(x[i], int(y[i]))
        learner.flush()
        got = learner.backend.buffers()
        trainer = FPTTTrainer(tiny_net(), TrainConfig(lr=3e-3))
        trainer.train_batch(torch.from_numpy(x), torch.from_numpy(y))
        opt = trainer.optimizer.state[trainer.flat.flat]
        for name, ref in (("m", opt["exp_avg"]), ("u", opt["exp_inf"])):
            ref = ref.numpy()
            assert np.abs(got[name][0] - ref).max() <= 1e-4 * np.abs(ref).max(), name


def test_label_replays_the_ring_buffer_and_refuses_bad_input(exported):
    folder, _ = exported
    x, y = digits(4, offset=100)
    with open_learner(folder / "model.onnx", store=False, ring=16) as learner:
        for t in range(8):
            learner.step(x[0, t][None])
        before = {k: v.copy() for k, v in learner.backend.buffers().items()}
        bad = [dict(stream=1, y=0, start=0, end=8), dict(stream=0, y=10, start=0, end=8), dict(stream=0, y=0, start=4, end=12),
               dict(stream=0, y=0, start=5, end=5), dict(stream=0.5, y=0, start=0, end=8), dict(stream=0, y=1.0, start=0, end=8),
               dict(stream=0, y=-1, start=0, end=8)]
        for kw in bad:
            with pytest.raises(AdaptationError):
                learner.label(**kw)
        with pytest.raises(RuntimeInputError):
            learner.step(np.full((1, 8), np.nan, np.float32))
        with pytest.raises(AdaptationError):
            learner.learn(np.full((8, 8), np.inf, np.float32), 0)
        for k, v in learner.backend.buffers().items():
            assert np.array_equal(v, before[k]), k
        for t in range(8, 24):  # frames 0..7 fall out of the 16-frame ring
            learner.observe(x[0, t % 8][None])
        with pytest.raises(AdaptationError, match="no longer in the ring"):
            learner.label(0, int(y[0]), 0, 8)
        assert learner.label(0, int(y[0]), 16, 24) == 0  # queued in a slot
        assert learner.flush() == 8


def test_rollback_on_nan_and_on_guard_drop_then_factory(exported):
    folder, _ = exported
    gx, gy = digits(20, offset=260)
    with open_learner(folder / "model.onnx", store=False, guard=(gx, gy), max_drop=-1.0, max_failures=2) as learner:
        factory = learner.backend.buffers()["weights"].copy()
        x, y = digits(4, offset=280)
        for i in range(4):
            learner.learn(x[i], int(y[i]))
        r = learner.check()  # max_drop < 0: every guard check fails -> rollback, lr halves
        assert not r.ok and learner.events.rollbacks >= 1
        learner.check()
        assert learner.events.factory_resets >= 1
        assert np.array_equal(learner.backend.buffers()["weights"], factory)
        assert learner.events.forgetting == learner.events.rollbacks == 2  # both were the guard set's accuracy
    with open_learner(folder / "model.onnx", store=False, guard=(gx, gy)) as learner:
        good = learner.backend.buffers()["weights"].copy()
        learner.backend.buffers()["m"][0, 0] = np.nan  # injected NaN
        r = learner.check()
        assert not r.ok and not r.finite
        assert learner.events.rollbacks == 1 and learner.events.forgetting == 0  # not a forgetting
        assert all(np.isfinite(v).all() for v in learner.backend.buffers().values())
        assert np.array_equal(learner.backend.buffers()["weights"], good)


def test_learner_refuses_a_train_graph_of_another_model(exported, tmp_path):
    folder, _ = exported
    other = tmp_path / "model.onnx"
    data = (folder / "model.onnx").read_bytes()
    other.write_bytes(data)
    (tmp_path / "model.train.onnx").write_bytes((folder / "model.train.onnx").read_bytes())
    m = onnx.load(str(other))
    m.doc_string = "changed"
    onnx.save(m, str(other))
    with pytest.raises(AdaptationError, match="another model.onnx"):
        open_learner(other)


def test_info_describes_the_train_graph(exported):
    folder, _ = exported
    out = CliRunner().invoke(main, ["info", str(folder / "model.train.onnx")])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    net = tiny_net()
    assert info["weights"] == sum(p.numel() for p in net.parameters()) and info["batch"] == 4
    assert set(info["tensors"]) == {n for n, _ in net.named_parameters()}


def _tampered_train_graphs(folder):
    """(name, bytes) of broken train graphs: truncated, random, and metadata that lies."""
    data = (folder / "model.train.onnx").read_bytes()
    yield "truncated", data[: len(data) // 2]
    yield "random", np.random.default_rng(0).bytes(4000)
    edits = {
        "fptt_edge.train.batch": ["0", "-3", "x", "5", "1000000000000"],
        "fptt_edge.train.tensors": ["[]", "[[\"a\", [2], 7]]", "not json", "[[\"layers.0.a_m\", [], 0]]"],
        "fptt_edge.train.hyper": ['{"lr": NaN}', '{"alpha": -1}', "[]", '{"lr": 1e-3, "bogus": 1}'],
        "fptt_edge.train.model_type": ["something-else"],
        "fptt_edge.train.contract_version": ["99", "v1", "0", "2"],
        "fptt_edge.train.inference_sha256": ["0" * 64],
        "fptt_edge.train.frame_shape": ["[9]", "[0]", "[100000, 100000, 100000]"],
    }
    for key, values in edits.items():
        for value in values:
            m = onnx.load_from_string(data)
            for p in m.metadata_props:
                if p.key == key:
                    p.value = value
            restamp_metadata(m)  # crafted consistently: the contract's own checks refuse it
            yield f"{key}={value}", m.SerializeToString()
    m = onnx.load_from_string(data)  # a hand edit of a valid value (the default rate): the metadata checksum refuses it
    hyper = next(p for p in m.metadata_props if p.key == "fptt_edge.train.hyper")
    hyper.value = json.dumps({**json.loads(hyper.value), "lr": 3.0})
    yield "hand-edited default lr", m.SerializeToString()
    m = onnx.load_from_string(data)  # two tensors of one shape with their names swapped: offsets, names and shapes all valid
    for p in m.metadata_props:
        if p.key == "fptt_edge.train.tensors":
            tensors = json.loads(p.value)
            assert tensors[0][1] == tensors[1][1]
            tensors[0][0], tensors[1][0] = tensors[1][0], tensors[0][0]
            p.value = json.dumps(tensors)
    restamp_metadata(m)
    yield "tensors in another order than the graph concatenates them", m.SerializeToString()
    for added in ({"chunk": "3"}, {"chunk": "3", "contract_version": "2"}, {"chunk": "0", "contract_version": "2"},
                  {"chunk": "1e9", "contract_version": "2"}):  # a chunked contract on a one-step graph, or absurd chunks
        m = onnx.load_from_string(data)
        for p in m.metadata_props:
            if p.key == "fptt_edge.train.contract_version" and "contract_version" in added:
                p.value = added["contract_version"]
        m.metadata_props.add(key="fptt_edge.train.chunk", value=added["chunk"])
        restamp_metadata(m)
        yield f"added {added}", m.SerializeToString()


def test_broken_or_lying_train_graphs_are_refused_with_one_line(exported, tmp_path):
    folder, _ = exported
    x, y = digits(8)
    np.savez(tmp_path / "new.npz", x=x, y=y)
    cases = 0
    for name, blob in _tampered_train_graphs(folder):
        case = tmp_path / f"case{cases}"
        case.mkdir()
        (case / "model.onnx").write_bytes((folder / "model.onnx").read_bytes())
        (case / "model.train.onnx").write_bytes(blob)
        result = CliRunner().invoke(main, ["adapt", str(case / "model.onnx"), "--data", str(tmp_path / "new.npz"), "--json"])
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, (name, result.output)
        if name.endswith(("=1000000000000", "100000]")):  # absurd sizes: refused as metadata the graph does not have, before anything is allocated
            assert "disagree with its metadata" in result.output, (name, result.output)
        if name.startswith("hand-edited"):
            assert "metadata_sha256" in result.output, (name, result.output)
        assert not (case / "model.adapted").exists(), name
        assert (case / "model.train.onnx").read_bytes() == blob  # nothing rewritten
        cases += 1
    assert cases >= 25



def test_forgetting_counts_the_guard_accuracy_alone(exported):
    """A check failed by the guard accuracy alone counts as forgetting (more --max-drop would pass it); one failed by the
    accuracy and a spike rate out of band, or by a spike rate alone, does not; the reason names each failure."""
    from fptt_edge.runtime.learner import GuardResult

    folder, _ = exported
    gx, gy = digits(20, offset=260)
    with open_learner(folder / "model.onnx", store=False, guard=(gx, gy), max_drop=0.0, max_failures=100) as learner:
        base = learner.baseline
        layer, ref = next(iter(base.spike_rate.items()))
        wild = min(1.0, max(ref * learner.rate_band, 1e-3)) * 2 + 0.01  # above the band's top
        cases = [(base.accuracy - 0.5, ref, 1, ["guard accuracy"]),
                 (base.accuracy - 0.5, wild, 0, ["guard accuracy", "spike rate of"]),
                 (base.accuracy, wild, 0, ["spike rate of"])]
        for accuracy, rate, counted, said in cases:
            forgot = learner.events.forgetting
            learner._score = lambda w, a=accuracy, r=rate: GuardResult(a, {**base.spike_rate, layer: r}, True, True)
            result = learner.check()
            assert not result.ok and [p for p in ("guard accuracy", "spike rate of") if p in result.reason] == said, result.reason
            assert learner.events.forgetting - forgot == counted, (accuracy, rate, result.reason)

def test_adapt_says_when_every_rollback_was_forgetting(exported, tmp_path):
    """A guard set the shipped model scores perfectly (its own predictions as labels), --max-drop 0 and random labels at a
    high rate: every check finds it forgotten, nothing is committed, and the CLI says why and what would let it go; with
    --max-drop 1 the same run commits and says nothing of the kind."""
    from fptt_edge.runtime import open_session

    folder, _ = exported
    model = tmp_path / "model.onnx"
    for name in ("model.onnx", "model.train.onnx"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    gx, _ = digits(40, offset=300)
    own = np.zeros(len(gx), np.int64)  # the shipped model's own last-step predictions
    with open_session(model) as session:
        for i, seq in enumerate(gx):
            session.reset()
            for frame in seq:
                logits = session.step(frame[None])
            own[i] = int(logits.argmax())
    np.savez(tmp_path / "guard.npz", x=gx, y=own)
    x, _ = digits(20, offset=340)  # the last 20 of the test digits
    np.savez(tmp_path / "new.npz", x=x, y=np.random.default_rng(0).integers(0, 10, len(x)))
    args = ["adapt", str(model), "--data", str(tmp_path / "new.npz"), "--guard", str(tmp_path / "guard.npz"), "--holdout", "0",
            "--lr", "0.05", "--check-every", "20", "--epochs", "2"]
    res = CliRunner().invoke(main, [*args, "--max-drop", "0"])
    assert res.exit_code == 0, res.output
    assert "guard (" in res.output and "-> 1.000" in res.output  # back on the shipped weights
    assert "weights: not committed" in res.output and "every rollback was the guard set forgotten" in res.output, res.output
    assert "--max-drop 1" in res.output
    assert not list(tmp_path.glob("model.adapted/gen-*"))
    report = json.loads(CliRunner().invoke(main, [*args, "--max-drop", "0", "--json"]).output)
    assert report["forgetting_rollbacks"] == report["rollbacks"] >= 1 and not report["committed"]
    res = CliRunner().invoke(main, [*args, "--max-drop", "1"])
    assert res.exit_code == 0 and "gen-000001" in res.output and "forgotten" not in res.output, res.output
