"""FPTT-K on the device: ``export --adapt-chunk L`` (one update per L steps, backprop through them), its loss
weights, the learner against the PyTorch trainer's FPTT-K, and the contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_adapt import digits, tiny_checkpoint, tiny_net
from torch.nn import functional as F

from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.devices import load_profile
from fptt_edge.export import train_graph
from fptt_edge.export.lint import lint
from fptt_edge.export.parity import ort_session
from fptt_edge.export.train_check import check_train_parity, loss_weights
from fptt_edge.export.train_graph import trace_train_step
from fptt_edge.model import LTCNetwork
from fptt_edge.runtime.learner import open_learner
from fptt_edge.train_contract import Hyper, TrainContract, chunk_loss_weights, read_train_contract
from fptt_edge.training.trainers import FPTTTrainer, TrainConfig, picked_step_loss

CHUNK = 3  # the 8-step digits rows: chunks of 3, 3 and 2 steps (the last one padded in the graph)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8])
def test_chunk_loss_weights_give_the_trainers_fptt_k_loss(chunk):
    """The learner's per-step weights, summed against every step's CE, equal the trainer's loss on its picked steps."""
    rng = np.random.default_rng(chunk)
    steps, batch, classes = 8, 6, 4
    lengths = rng.integers(1, steps + 1, batch)
    lengths[0] = steps
    y = torch.from_numpy(rng.integers(0, classes, batch))
    logits = torch.from_numpy(rng.standard_normal((batch, steps + chunk, classes)).astype(np.float32))  # junk past the end
    for t0 in range(0, steps, chunk):
        w = chunk_loss_weights(lengths, t0, chunk)
        assert w.shape == (batch, chunk) and w.dtype == np.float32
        ce = F.cross_entropy(logits[:, t0:t0 + chunk].reshape(-1, classes), y.repeat_interleave(chunk), reduction="none")
        mine = (torch.from_numpy(w).reshape(-1) * ce).sum() / batch
        theirs = picked_step_loss(logits[:, t0:min(steps, t0 + chunk)], y, torch.from_numpy(lengths), t0)[0]
        assert float(mine) == pytest.approx(float(theirs), rel=1e-6, abs=1e-7), t0
        assert ((w > 0).sum(1) == (lengths > t0)).all()  # one scored step per running sequence, none after its end
        if chunk == 1:
            np.testing.assert_array_equal(w[:, 0], loss_weights(lengths, t0))


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """The tiny dense model exported through the CLI with ``--adapt --adapt-chunk 3`` (checked against the trainer)."""
    folder = tmp_path_factory.mktemp("adapt_chunk")
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint(folder)), "--adapt", "--adapt-chunk", str(CHUNK), "--adapt-updates", "12",
                                       "--parity-steps", "40", "--precision-samples", "20", "--guard-samples", "20"])
    return folder, result


def test_export_writes_a_checked_chunked_train_graph(chunked):
    folder, result = chunked
    assert result.exit_code == 0, result.output
    assert f"an update every {CHUNK} steps" in result.output
    report = json.loads((folder / "model.report.json").read_text())["train_step"]
    assert report["passed"] and report["chunk"] == CHUNK and report["parity"]["updates"] >= 12
    assert sum(report["parity"]["spike_mismatches"].values()) == 0 and report["parity"]["spike_checks"] > 0
    contract = read_train_contract(folder / "model.train.onnx")
    assert contract.chunk == CHUNK and contract.contract_version == 2
    assert contract.x_shape == (4, CHUNK, 8) and contract.w_shape == (4, CHUNK) and contract.logits_shape == (4, CHUNK, 10)
    info = json.loads(CliRunner().invoke(main, ["info", str(folder / "model.train.onnx")]).output)
    assert info["chunk"] == CHUNK and info["contract_version"] == 2


def test_chunked_learner_matches_the_trainers_fptt_k(chunked):
    """Four labelled segments of different lengths through the learner = FPTTTrainer(parts=K).train_batch on them."""
    folder, _ = chunked
    x, y = digits(4, offset=300)
    lengths = np.array([8, 5, 3, 7])
    with open_learner(folder / "model.onnx", store=False) as learner:
        start = {k: v.copy() for k, v in learner.backend.buffers().items()}
        for i in range(4):
            learner.learn(x[i, :lengths[i]], int(y[i]))
        got = learner.backend.buffers()
        trainer = FPTTTrainer(tiny_net(), TrainConfig(lr=3e-3, parts=3))  # ceil(8 / 3) = 3 steps per update
        assert np.array_equal(trainer.flat.flat.detach().numpy(), start["weights"][0])
        trainer.train_batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lengths))
        opt = trainer.optimizer.state[trainer.flat.flat]
        assert float(got["step"][0]) == 3 == float(opt["step"])
        for name, ref in (("m", opt["exp_avg"]), ("u", opt["exp_inf"]), ("weights", trainer.flat.flat.detach())):
            ref = ref.numpy()
            assert np.abs(got[name][0] - ref).max() <= 1e-4 * np.abs(ref).max(), name
        moved = np.abs(got["weights"][0] - start["weights"][0]).max()
        assert moved > 1e-3  # the comparison above is not between two unchanged buffers


def test_the_chunked_check_fails_against_another_update(chunked):
    """The comparison can fail: the chunked graph (alpha 0.1) against a trainer with alpha 0.2."""
    net = tiny_net()
    model, tensors, folded = trace_train_step(net, "all", Hyper(), 4, None, CHUNK)
    x, y = digits(8)
    good = check_train_parity(folded, tensors, Hyper(), ort_session(model.SerializeToString()), x, y, None, 4, min_updates=6,
                              chunk=CHUNK)
    bad = check_train_parity(folded, tensors, Hyper(alpha=0.2), ort_session(model.SerializeToString()), x, y, None, 4,
                             min_updates=6, chunk=CHUNK)
    assert good.passed and not bad.passed


def _whole_chunk_step(net, names, hyper, chunk):
    """The chunk's update as one function of all L steps (autograd through them): what the unrolled graph must equal."""
    module, frozen, n_state = train_graph._step_module(net, names)

    def fn(x, y, w, *rest):
        state, weights = rest[:n_state], rest[n_state:n_state + len(names)]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in weights]
            params = {**frozen, **{f"net.{n}": t for n, t in zip(names, leaves)}}
            loss, per_step = 0, []
            for i in range(chunk):
                out = torch.func.functional_call(module, params, (x[:, i], *state))
                state = out[1:]
                per_step.append(out[0])
                loss = loss + (w[:, i] * -(y * torch.log_softmax(out[0], dim=1)).sum(1)).sum()
            grads = torch.autograd.grad(loss / x.shape[0], leaves, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
        updated = train_graph.fptt_adamax_update(train_graph._flat(grads), train_graph._flat(weights), *rest[n_state + len(names):], hyper)
        return (torch.stack(per_step, dim=1).detach(), *(s.detach() for s in state), *updated)

    return fn


@pytest.mark.slow
def test_the_unrolled_chunk_equals_the_chunk_traced_whole():
    """One traced step unrolled in ONNX gives the numbers of backprop traced through all L steps, bit for bit (the sums
    of the state and weight gradients in autograd's order), with a frozen first layer, a partial mask and opset 17;
    TensorRT 8.x's lint finds no INT64 in it."""
    torch.manual_seed(0)
    net, hyper, opset = LTCNetwork(ModelConfig(input_shape=(8,), num_classes=5, hidden=(8, 6))), Hyper(), 17
    model, tensors, folded = trace_train_step(net, "last", hyper, 3, opset, CHUNK)
    names = [t.name for t in tensors]
    args = train_graph.example_inputs(folded, names, 3, hyper, CHUNK)
    inputs, outputs = train_graph.io_names(folded, names)
    whole = train_graph._trace(_whole_chunk_step(folded, names, hyper, CHUNK), args, inputs, outputs, opset)
    rng = np.random.default_rng(1)
    feeds = {n: a.numpy().copy() for n, a in zip(inputs, args)}
    feeds["x"] = (rng.random(feeds["x"].shape) < 0.5).astype(np.float32)
    feeds["w"] = rng.random(feeds["w"].shape).astype(np.float32)
    feeds["fptt.lam"] = rng.standard_normal(feeds["fptt.lam"].shape).astype(np.float32) * 1e-3
    feeds["fptt.mask"] = (rng.random(feeds["fptt.mask"].shape) < 0.8).astype(np.float32)
    feeds["adamax.step"][:] = 4
    got, want = (ort_session(m.SerializeToString()).run(None, feeds) for m in (model, whole))
    for name, a, b in zip(outputs, got, want):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
    assert len(model.graph.node) < len(whole.graph.node)
    assert not any(f.check == "int64" for f in lint(model, load_profile("xavier-nx")).findings)


@pytest.mark.parametrize("meta,ok", [({"chunk": "3", "contract_version": "2"}, True), ({"chunk": "3", "contract_version": "1"}, False),
                                     ({"contract_version": "2"}, False), ({"chunk": "0", "contract_version": "2"}, False),
                                     ({"chunk": "2000", "contract_version": "2"}, False), ({"contract_version": "3"}, False)])
def test_a_chunk_needs_contract_version_two_and_a_sane_length(chunked, meta, ok):
    folder, _ = chunked
    props = {k: v for k, v in TrainContract.to_metadata(read_train_contract(folder / "model.train.onnx")).items()
             if k != "fptt_edge.train.chunk"}
    props.update({f"fptt_edge.train.{k}": v for k, v in meta.items()})
    if ok:
        assert TrainContract.from_metadata(props).chunk == 3
    else:
        from fptt_edge.contract import ContractError

        with pytest.raises(ContractError):
            TrainContract.from_metadata(props)


def test_a_chunk_longer_than_the_check_sequences_is_refused_before_anything_is_written(tmp_path):
    """Every chunk would be padded past the sequences' end, where the check compares no spikes: it would pass blind."""
    from test_hostile import refused_cli

    ckpt = tiny_checkpoint(tmp_path)
    steps = 8  # the tiny checkpoint's digits: 8 rows of 8 pixels
    said = refused_cli(["export", ckpt, "--adapt", "--adapt-chunk", str(steps + 1), "--adapt-updates", "4"], tmp_path)
    assert f"longer than the check data's sequences ({steps} steps)" in said
