"""The compiled FPTT update (one torch.compile graph) against the eager one: the same spikes at
every step, the same weights, traces and Adamax moments within float32 rounding, no recompiles
per step, and the eager fall-back where it does not apply."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn import functional as F

from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork, detach_state
from fptt_edge.training.compiled import why_not_compiled
from fptt_edge.training.trainers import FPTTTrainer, TrainConfig, make_trainer

B, T, C, K = 4, 10, 3, 4
LENGTHS = torch.tensor([10, 4, 7, 1])

pytestmark = pytest.mark.skipif(why_not_compiled(torch.nn.Linear(1, 1), torch.device("cpu"), 1, False) is not None,
                                reason="no compiler for torch.compile here")


def _net(seed: int = 0) -> LTCNetwork:
    torch.manual_seed(seed)
    return LTCNetwork(ModelConfig(input_shape=(C,), num_classes=K, hidden=(12, 10)))


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, C, generator=g) < 0.5).float() * 1.5, torch.randint(0, K, (B,), generator=g)


@pytest.fixture(scope="module")
def compiled():
    """One compiled trainer for the module (compiling takes seconds): its update is stateless apart
    from the buffers, which each test resets from a fresh eager trainer."""
    import torch._dynamo.utils as dynamo_utils

    trainer = FPTTTrainer(_net(), TrainConfig(batch_size=B), compile=True)
    x, y = _batch()
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    trainer.train_batch(x, y)  # builds and compiles
    trainer.frames_compiled = dynamo_utils.counters["stats"]["unique_graphs"] - frames  # type: ignore[attr-defined]
    assert trainer.compiled is not None, trainer.compile_note
    return trainer


def _reset(trainer: FPTTTrainer, like: FPTTTrainer) -> None:
    """``trainer``'s weights, traces and Adamax state := ``like``'s (fresh)."""
    with torch.no_grad():
        trainer.flat.flat.copy_(like.flat.flat)
        trainer.traces.load_state_dict(like.traces.state_dict())
    st = trainer.optimizer.state[trainer.flat.flat]
    st["step"].zero_()
    st["exp_avg"].zero_()
    st["exp_inf"].zero_()
    trainer.grad_stats.copy_(like.grad_stats)


def _buffers(trainer: FPTTTrainer) -> dict[str, torch.Tensor]:
    st = trainer.optimizer.state[trainer.flat.flat]
    return {"weights": trainer.flat.flat.detach().clone(), "wbar": trainer.traces.wbar[0].clone(), "lam": trainer.traces.lam[0].clone(),
            "exp_avg": st["exp_avg"].clone(), "exp_inf": st["exp_inf"].clone()}


def _eager_steps(trainer: FPTTTrainer, x, y, lengths, order=None):
    """The eager update step by step (batch in ``order``): the spikes of every step."""
    order = torch.arange(B) if order is None else order
    x, y = x[order], y[order]
    lengths = None if lengths is None else lengths[order]
    state = trainer.model.initial_state(B)
    spikes = []
    trainer.model.train()
    for t in range(T):
        logits, state = trainer.model.step(x[:, t], state)
        w = torch.full((B,), (t + 1) / T) if lengths is None else torch.where(t < lengths, (t + 1) / lengths.float(), torch.zeros(()))
        trainer.apply_update((w * F.cross_entropy(logits, y, reduction="none")).sum() / B)
        state = detach_state(state)
        inverse = torch.argsort(order)
        spikes.append([st.s[inverse].clone() for st in state.layers])
    return spikes


def _compiled_steps(trainer: FPTTTrainer, x, y, lengths, contiguous: bool = True):
    """The compiled update step by step. A step's input sliced from ``x`` ``[B, T, C]`` is not contiguous; made contiguous
    it has the strides of the prepared call (train_batch's), which runs its graph without dynamo."""
    state = trainer.model.initial_state(B)
    spikes = []
    for t in range(T):
        w = torch.full((B,), (t + 1) / T) if lengths is None else torch.where(t < lengths, (t + 1) / lengths.float(), torch.zeros(()))
        x_t = x[:, t : t + 1]
        _, state = trainer.compiled(x_t.contiguous() if contiguous else x_t, y, w, state)
        spikes.append([st.s.clone() for st in state.layers])
    return spikes


def _direct_calls(trainer: FPTTTrainer) -> int:
    """Updates that ran the compiled graph without dynamo (compiled._DirectGraph)."""
    assert trainer.compiled is not None
    return sum(d.calls for d in trainer.compiled._direct.values())


@pytest.mark.parametrize(("with_lengths", "direct"), [(False, True), (True, True), (True, False)],
                         ids=["direct", "direct-lengths", "through-dynamo-lengths"])
def test_compiled_update_equals_eager(compiled, with_lengths, direct):
    """Both ways of running the graph: directly (a prepared call shape) and through dynamo (a strided input)."""
    lengths = LENGTHS if with_lengths else None
    x, y = _batch(2)
    fresh, eager, control = (FPTTTrainer(_net(), TrainConfig(batch_size=B)) for _ in range(3))  # the same initial weights
    _reset(compiled, fresh)
    s_eager = _eager_steps(eager, x, y, lengths)
    _eager_steps(control, x, y, lengths, order=torch.arange(B).flip(0))  # the same math, batch summed in reverse: the noise floor
    calls = _direct_calls(compiled)
    s_comp = _compiled_steps(compiled, x, y, lengths, contiguous=direct)
    assert _direct_calls(compiled) - calls == (T if direct else 0)
    for t in range(T):
        for a, b in zip(s_eager[t], s_comp[t]):
            assert torch.equal(a, b), f"spikes differ at step {t}"
    assert sum(int(s.sum()) for step in s_eager for s in step) > 0, "vacuous: no spikes"
    _assert_buffers_close(_buffers(compiled), _buffers(eager), _buffers(control), updates=T)
    assert float((compiled.flat.flat.detach() - fresh.flat.flat.detach()).abs().max()) > 1e-3, "vacuous: nothing learned"
    _assert_grad_stats_close(compiled, eager, updates=T)


def _assert_grad_stats_close(compiled: FPTTTrainer, eager: FPTTTrainer, updates: int) -> None:
    """The pre-clip gradient norms the compiled graph records (its own blocked sum) against the eager clip's."""
    got, want = compiled.grad_stats, eager.grad_stats
    assert float(got[0]) == float(want[0]) == updates and float(got[1]) == float(want[1])
    torch.testing.assert_close(got[2:], want[2:], rtol=1e-4, atol=1e-4)


def _assert_buffers_close(got: dict, want: dict, noise: dict, updates: int) -> None:
    """Compiled buffers against eager ones, with eager against itself (batch summed in reverse) as the rounding floor."""
    lr = TrainConfig().lr
    for name in got:
        diff = (got[name] - want[name]).abs()
        floor = float((noise[name] - want[name]).abs().max())  # eager against itself (batch summed in reverse): float32 rounding
        scale = max(float(want[name].abs().max()), 1e-3)
        if name == "lam":  # lam accumulates -alpha (W - Wbar): a rounding in W reaches it alpha times the weights' scale
            scale = max(scale, TrainConfig().alpha * float(want["weights"].abs().max()))
        # The compiled backward rounds differently (~1 ulp). Adamax turns that into a visible step only where a
        # gradient is near zero (|g| ~ eps); those few elements may differ by a fraction of lr per update.
        close = diff <= max(1e-6 * scale, 4 * floor)
        assert float(close.float().mean()) >= 0.99, (name, int((~close).sum()), diff.numel())
        assert float(diff.max()) <= 0.1 * lr * updates, (name, float(diff.max()))


@pytest.mark.parametrize("parts,with_lengths", [(4, False), (3, True)])
def test_compiled_fptt_k_equals_eager(parts, with_lengths):
    """FPTT-K: one graph per chunk length (T = 10; K = 4: chunks of 3, 3, 3 and 1 steps; K = 3: 4, 4 and 2), backprop
    through the chunk; four batches, so the later ones run with guards skipped among two cached graphs."""
    import torch._dynamo.utils as dynamo_utils

    lengths = LENGTHS if with_lengths else None
    cfg = TrainConfig(batch_size=B, parts=parts)
    compiled, eager, control = FPTTTrainer(_net(), cfg, compile=True), FPTTTrainer(_net(), cfg), FPTTTrainer(_net(), cfg)
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    rev = torch.arange(B).flip(0)
    for i in range(4):
        x, y = _batch(10 + i)
        got, want = compiled.train_batch(x, y, lengths), eager.train_batch(x, y, lengths)
        control.train_batch(x[rev], y[rev], None if lengths is None else lengths[rev])
        assert int(got[1]) == int(want[1]) and float(got[0]) == pytest.approx(float(want[0]), rel=1e-4, abs=1e-5), i
    assert compiled.compiled is not None, compiled.compile_note
    chunk_lengths = {min(T, t0 + -(-T // parts)) - t0 for t0 in range(0, T, -(-T // parts))}
    assert dynamo_utils.counters["stats"]["unique_graphs"] - frames == len(chunk_lengths), "one graph per chunk length"
    updates = 4 * -(-T // -(-T // parts))
    assert int(compiled.optimizer.state[compiled.flat.flat]["step"]) == updates == int(eager.optimizer.state[eager.flat.flat]["step"])
    _assert_buffers_close(_buffers(compiled), _buffers(eager), _buffers(control), updates=updates)
    assert float((compiled.flat.flat - FPTTTrainer(_net(), cfg).flat.flat).detach().abs().max()) > 1e-3, "vacuous: nothing learned"
    _assert_grad_stats_close(compiled, eager, updates)


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_compiled_traces_equal_eager_at_other_betas(beta):
    """The graph carries (A, lam) instead of (Wbar, lam); at beta != 0.5 its anchor update keeps the alpha (2 beta - 1) W
    term that the default drops. One update each from the same moved-on state (weights, traces, Adamax moments after an
    eager batch), so rounding has no room to grow (over many updates at beta 0.3 it does, on either path)."""
    cfg = TrainConfig(batch_size=B, beta=beta)
    compiled, eager, control = FPTTTrainer(_net(), cfg, compile=True), FPTTTrainer(_net(), cfg), FPTTTrainer(_net(), cfg)
    x, y = _batch(20)
    eager.train_batch(x, y)
    for other in (compiled, control):
        with torch.no_grad():
            other.flat.flat.copy_(eager.flat.flat)
        other.traces.load_state_dict(eager.traces.state_dict())
        other.optimizer.load_state_dict(copy.deepcopy(eager.optimizer.state_dict()))  # (loading shares the moment tensors)
    x, y = _batch(21)
    x = x[:, :1]  # a one-step sequence: one update
    rev = torch.arange(B).flip(0)
    compiled.train_batch(x, y)
    eager.train_batch(x, y)
    control.train_batch(x[rev], y[rev])
    assert compiled.compiled is not None, compiled.compile_note
    _assert_buffers_close(_buffers(compiled), _buffers(eager), _buffers(control), updates=1)
    assert float((compiled.traces.wbar[0] - compiled.flat.flat).detach().abs().max()) > 1e-4, "vacuous: Wbar = W"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("parts,with_lengths", [(0, False), (3, True)])
def test_compiled_update_on_cuda_runs_as_cuda_graphs_and_equals_eager(parts, with_lengths):
    """On a GPU the graph runs as CUDA graphs (mode "reduce-overhead"): its in-place buffers are static addresses, so
    cudagraph trees do not skip it, and each call's outputs are cloned before the next replay overwrites them (FPTT-K
    with lengths keeps a chunk's logits across later calls)."""
    import torch._dynamo.utils as dynamo_utils

    dev = torch.device("cuda")
    lengths = LENGTHS.to(dev) if with_lengths else None
    cfg = TrainConfig(batch_size=B, parts=parts)
    compiled, eager, control = (FPTTTrainer(_net().to(dev), cfg, compile=c) for c in (True, False, False))
    skips = dynamo_utils.counters["inductor"]["cudagraph_skips"]
    rev = torch.arange(B, device=dev).flip(0)
    for i in range(3):
        x, y = (t.to(dev) for t in _batch(30 + i))
        got, want = compiled.train_batch(x, y, lengths), eager.train_batch(x, y, lengths)
        control.train_batch(x[rev], y[rev], None if lengths is None else lengths[rev])
        assert int(got[1]) == int(want[1]) and float(got[0]) == pytest.approx(float(want[0]), rel=1e-4, abs=1e-5), i
    assert compiled.compiled is not None, compiled.compile_note
    assert dynamo_utils.counters["inductor"]["cudagraph_skips"] == skips, "CUDA graphs were skipped"
    updates = int(eager.optimizer.state[eager.flat.flat]["step"])
    _assert_buffers_close({k: v.cpu() for k, v in _buffers(compiled).items()}, {k: v.cpu() for k, v in _buffers(eager).items()},
                          {k: v.cpu() for k, v in _buffers(control).items()}, updates=updates)


@pytest.fixture(scope="module")
def fptt_k_compiled():
    """An FPTT-K trainer (10 steps in chunks of 4, 4, 2: two graphs) compiled once for the module's tests."""
    return FPTTTrainer(_net(), TrainConfig(batch_size=B, parts=3), compile=True)


def test_the_direct_graph_updates_bitwise_as_dynamo_runs_it(fptt_k_compiled):
    """FPTT-K train_batch (10 steps in chunks of 4, 4, 2: two graphs, picked steps) through the prepared graphs run
    directly, then from the same start through the same graphs run by dynamo (the direct graphs dropped): the same
    weights, traces, moments, step count, gradient figures and returned loss, bit for bit. (Per step, the direct path is
    checked against eager updates by test_compiled_update_equals_eager.)"""
    import torch._dynamo.utils as dynamo_utils

    trainer = fptt_k_compiled
    trainer.train_batch(*_batch(59), LENGTHS)  # compiled (prepared) by the first batch of this module
    calls = _direct_calls(trainer)
    start = (trainer.flat.flat.detach().clone(), copy.deepcopy(trainer.traces.state_dict()),
             copy.deepcopy(trainer.optimizer.state_dict()), trainer.grad_stats.clone())
    batches = [_batch(60 + i) for i in range(3)]

    def run() -> tuple:
        losses = [trainer.train_batch(x, y, LENGTHS) for x, y in batches]
        st = trainer.optimizer.state[trainer.flat.flat]
        return (losses, trainer.flat.flat.detach().clone(), trainer.traces.lam[0].clone(), trainer.traces.wbar[0].clone(),
                trainer.grad_stats.clone(), *(st[k].clone() for k in ("step", "exp_avg", "exp_inf")))

    direct = run()
    assert trainer.compiled is not None and len(trainer.compiled._direct) == 2  # one graph per chunk length
    assert _direct_calls(trainer) - calls == 3 * 3 and not torch.equal(direct[1], start[0])
    with torch.no_grad():
        trainer.flat.flat.copy_(start[0])
    trainer.traces.load_state_dict(copy.deepcopy(start[1]))
    trainer.optimizer.load_state_dict(copy.deepcopy(start[2]))
    trainer.grad_stats.copy_(start[3])
    kept = dict(trainer.compiled._direct)
    trainer.compiled._direct.clear()
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    dynamo = run()
    trainer.compiled._direct.update(kept)  # the fixture's trainer as it was
    assert dynamo_utils.counters["stats"]["unique_graphs"] == frames  # the same graphs, no recompile
    for (loss_a, right_a), (loss_b, right_b) in zip(direct[0], dynamo[0]):
        assert torch.equal(loss_a, loss_b) and int(right_a) == int(right_b)
    for a, b in zip(direct[1:], dynamo[1:]):
        assert torch.equal(a, b)


def test_a_failure_after_direct_updates_is_raised_not_taken_for_a_compile_failure(fptt_k_compiled, monkeypatch):
    """A call through dynamo that fails after updates ran directly (here the last chunk's, its direct graph dropped) has
    changed the weights already: it is raised, not turned into CompileUnavailable, which would send the whole batch to
    the eager path and apply its first chunks twice."""
    trainer = fptt_k_compiled
    trainer.train_batch(*_batch(90), LENGTHS)
    update = trainer.compiled
    assert update is not None
    short = [key for key in update._direct if key[7][0][1] == 2]  # x [B, 2, C]: the last chunk's graph
    assert len(short) == 1
    del update._direct[short[0]]
    update._calls_by_shape.clear()  # as if every update so far had run directly

    def failing(*args):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(update, "_fn", failing)
    steps = int(trainer.optimizer.state[trainer.flat.flat]["step"])
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.train_batch(*_batch(91), LENGTHS)
    # two chunks ran and the third counted its step before failing; redone eagerly the batch would have made it steps + 5
    assert trainer.compiled is update and int(trainer.optimizer.state[trainer.flat.flat]["step"]) == steps + 3


def test_a_direct_graph_that_differs_from_dynamos_run_is_not_used(monkeypatch):
    """prepare() runs the graph directly on copies and compares with dynamo's run: a direct call that returns its outputs
    in another order (what a changed dynamo could make of the frame's return) is refused, and the updates, through
    dynamo, equal eager ones as before."""
    import fptt_edge.training.compiled as compiled_mod

    real = compiled_mod._DirectGraph.__call__
    monkeypatch.setattr(compiled_mod._DirectGraph, "__call__", lambda self, args: real(self, args)[::-1])
    trainer, eager = FPTTTrainer(_net(), TrainConfig(batch_size=B), compile=True), FPTTTrainer(_net(), TrainConfig(batch_size=B))
    x, y = _batch(70)
    got, want = trainer.train_batch(x, y), eager.train_batch(x, y)
    assert trainer.compiled is not None and trainer.compiled._direct == {}
    assert int(got[1]) == int(want[1]) and float(got[0]) == pytest.approx(float(want[0]), rel=1e-4, abs=1e-5)
    # not vacuous: unpatched, this setting runs directly (the `compiled` fixture's trainer; test_compiled_update_equals_eager)


@pytest.mark.parametrize(("parts", "oracle", "with_lengths"), [(T, False, False), (T, True, True), (5, False, True)],
                         ids=["per-step", "per-step-oracle-lengths", "fptt-k-lengths"])
def test_a_short_batch_runs_the_graph_padded_and_updates_as_eager(parts, oracle, with_lengths):
    """An epoch's short last batch (3 of the graph's 4 sequences; per step, or FPTT-K: 10 steps in chunks of 2) runs
    the compiled graph padded with a sequence of loss weight 0: the same summed loss and correct count as eager on the
    3, the buffers equal within rounding, the oracle's table and the generator's draws (a uniform initial state) as
    eager's."""
    lengths = LENGTHS[:3] if with_lengths else None
    torch.manual_seed(0)
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(12, 10), initial_u="uniform")
    cfg = TrainConfig(batch_size=B, parts=parts, oracle=oracle)
    nets = [LTCNetwork(config) for _ in range(3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    compiled, eager, control = FPTTTrainer(nets[0], cfg, compile=True), FPTTTrainer(nets[1], cfg), FPTTTrainer(nets[2], cfg)
    warm = 6 if oracle else 1  # full batches first (the first compiles); the oracle's table fills over several
    for i in range(warm):
        x, y = _batch(80 + i)
        compiled.train_batch(x, y), eager.train_batch(x, y), control.train_batch(x, y)
    without = None
    if oracle:  # eager from the same point without the oracle term: the term must change this batch's updates
        without = FPTTTrainer(LTCNetwork(config), TrainConfig(batch_size=B, parts=parts))
        with torch.no_grad():
            without.flat.flat.copy_(eager.flat.flat)
        without.traces.load_state_dict(copy.deepcopy(eager.traces.state_dict()))
        without.optimizer.load_state_dict(copy.deepcopy(eager.optimizer.state_dict()))
    x, y = _batch(90)
    x, y = x[:3], y[:3]
    calls = _direct_calls(compiled)
    g_c, g_e = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got, want = compiled.train_batch(x, y, lengths, g_c), eager.train_batch(x, y, lengths, g_e)
    flip = torch.arange(2, -1, -1)
    control.train_batch(x[flip], y[flip], None if lengths is None else lengths[flip], torch.Generator().manual_seed(5))
    assert _direct_calls(compiled) - calls == parts, "the short batch did not run the compiled graph"  # one update per part
    assert int(got[1]) == int(want[1]) and float(got[0]) == pytest.approx(float(want[0]), rel=1e-4, abs=1e-5)
    assert torch.equal(g_c.get_state(), g_e.get_state())
    _assert_buffers_close(_buffers(compiled), _buffers(eager), _buffers(control), updates=(warm + 1) * parts)
    if without is not None:
        assert compiled.oracle is not None and eager.oracle is not None and compiled.oracle.table is not None
        torch.testing.assert_close(compiled.oracle.table, eager.oracle.table, rtol=1e-4, atol=1e-5)
        without.train_batch(x, y, lengths, torch.Generator().manual_seed(5))
        term = float((eager.flat.flat - without.flat.flat).abs().max())
        assert term > 20 * float((compiled.flat.flat - eager.flat.flat).abs().max()), "the oracle term's effect is not above compiled-vs-eager's difference"


def test_the_cuda_graph_bookkeeping_runs_and_changes_nothing_on_cpu():
    """What the CUDA path adds (static-address marks, a step begun per call, outputs cloned), run on CPU: the APIs exist in
    this torch, nothing recompiles, and FPTT-K with lengths (a chunk's logits kept across later calls) equals eager."""
    import torch._dynamo.utils as dynamo_utils

    cfg = TrainConfig(batch_size=B, parts=3)
    compiled, eager = FPTTTrainer(_net(), cfg, compile=True), FPTTTrainer(_net(), cfg)
    x, y = _batch(40)
    compiled.train_batch(x, y, LENGTHS)
    eager.train_batch(x, y, LENGTHS)
    assert compiled.compiled is not None, compiled.compile_note
    compiled.compiled.cuda_graphs = True
    compiled.compiled._direct.clear()  # on CUDA the graphs run through dynamo (cudagraph trees), never directly
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    for i in range(2):
        x, y = _batch(41 + i)
        got, want = compiled.train_batch(x, y, LENGTHS), eager.train_batch(x, y, LENGTHS)
        assert int(got[1]) == int(want[1]) and float(got[0]) == pytest.approx(float(want[0]), rel=1e-4, abs=1e-5), i
    assert dynamo_utils.counters["stats"]["unique_graphs"] == frames
    assert getattr(compiled.compiled.weights, "_dynamo_static_input_type", None) == "unguarded"


def test_trainers_of_many_shapes_in_one_process_all_compile():
    """Each compiled update has its own graphs and recompile limit (a copy of the code object): with the limit at 1, a
    second trainer of another shape still compiles (sharing one code object it would hit the limit and go eager)."""
    import torch._dynamo.config

    x, y = _batch(7)
    with torch._dynamo.config.patch(recompile_limit=1):
        for hidden in ((5,), (7, 3)):
            torch.manual_seed(0)
            net = LTCNetwork(ModelConfig(input_shape=(C,), num_classes=K, hidden=hidden))
            trainer = FPTTTrainer(net, TrainConfig(batch_size=B), compile=True)
            trainer.train_batch(x, y)
            assert trainer.compiled is not None, trainer.compile_note


def test_compiled_train_batch_reports_like_eager_and_never_recompiles(compiled):
    import torch._dynamo.utils as dynamo_utils

    x, y = _batch(3)
    fresh, eager = (FPTTTrainer(_net(), TrainConfig(batch_size=B)) for _ in range(2))
    _reset(compiled, fresh)
    # One graph for all T updates of the first batch: a value that changes per step (the step size,
    # the loss weight) taken as a Python number would recompile at the second update (guards are
    # evaluated on the first two calls, skipped after).
    assert compiled.frames_compiled == 1, compiled.frames_compiled
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    loss_c, correct_c = compiled.train_batch(x, y, LENGTHS)
    compiled.train_batch(x, y)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == frames, "the compiled update recompiled"
    _reset(compiled, fresh)
    loss_c, correct_c = compiled.train_batch(x, y, LENGTHS)
    loss_e, correct_e = eager.train_batch(x, y, LENGTHS)
    assert int(correct_c) == int(correct_e) and float(loss_c) == pytest.approx(float(loss_e), rel=1e-4)
    assert int(compiled.optimizer.state[compiled.flat.flat]["step"]) == T == int(eager.optimizer.state[eager.flat.flat]["step"])


def test_an_eager_update_after_compiled_ones_takes_the_current_traces(compiled):
    """The graph moves (A, lam) on and leaves Wbar to be rebuilt; an eager update that follows (a short last batch)
    must still take dR/dW = alpha (W - Wbar) - lam."""
    x, y = _batch(5)
    _reset(compiled, FPTTTrainer(_net(), TrainConfig(batch_size=B)))
    compiled.train_batch(x, y)
    traces, flat = compiled.traces, compiled.flat.flat
    with torch.no_grad():
        flat.grad.zero_()
        traces.add_regularizer_grad()
        want = traces.alpha * (flat - traces.wbar[0]) - traces.lam[0]
        assert float(traces.lam[0].abs().max()) > 1e-4, "vacuous: the traces did not move"
        assert torch.allclose(flat.grad, want, rtol=1e-5, atol=1e-7)
        flat.grad.zero_()


def test_eager_fall_back_where_the_compiled_update_does_not_apply(compiled, monkeypatch):
    x, y = _batch(4)
    import torch._dynamo.utils as dynamo_utils

    frames, calls = dynamo_utils.counters["stats"]["unique_graphs"], _direct_calls(compiled)
    big = compiled.train_batch(torch.cat([x, x[:1]]), torch.cat([y, y[:1]]))  # more than the graph's batch: eager, no second graph
    assert torch.isfinite(big[0]) and _direct_calls(compiled) == calls and dynamo_utils.counters["stats"]["unique_graphs"] == frames
    assert make_trainer(_net(), TrainConfig(compile="auto"), updates_planned=100).compile is False
    assert make_trainer(_net(), TrainConfig(compile="auto"), updates_planned=10**6).compile is True
    # FPTT-K (T = 28, K = 4: chunks of 7 steps) repays compiling only on longer runs; chunks of 28 never under "auto"
    assert make_trainer(_net(), TrainConfig(parts=4, compile="auto"), updates_planned=10**6, steps=28).compile is True
    assert make_trainer(_net(), TrainConfig(parts=4, compile="auto"), updates_planned=40_000, steps=28).compile is False
    assert make_trainer(_net(), TrainConfig(compile="auto"), updates_planned=40_000, steps=28).compile is True
    assert make_trainer(_net(), TrainConfig(parts=1, compile="auto"), updates_planned=10**9, steps=28).compile is False
    assert make_trainer(_net(), TrainConfig(parts=4, compile="auto"), updates_planned=10**6).compile is False  # T not known
    assert make_trainer(_net(), TrainConfig(parts=4, compile="on")).compile is True
    long_chunks = FPTTTrainer(_net(), TrainConfig(batch_size=B, parts=1), compile=True)
    with monkeypatch.context() as m:
        m.setattr("fptt_edge.training.compiled.MAX_COMPILED_CHUNK", T - 1)  # K = 1: one chunk of T steps, one too many
        long_chunks.train_batch(x, y)
    assert long_chunks.compiled is None and "unrolls the chunk" in (long_chunks.compile_note or "")
    assert make_trainer(_net(), TrainConfig(method="bptt", compile="on")).__class__.__name__ == "BPTTTrainer"


def test_a_failing_compiler_falls_back_to_eager_without_changing_anything(monkeypatch):
    """torch.compile raising at the first call (no working compiler): the batch runs eagerly, as an
    eager trainer runs it, and the trainer stays eager."""
    import fptt_edge.training.compiled as compiled_mod

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    x, y = _batch(5)
    trainer = FPTTTrainer(_net(), TrainConfig(batch_size=B), compile=True)
    eager = FPTTTrainer(_net(), TrainConfig(batch_size=B))
    with pytest.warns(UserWarning, match="eager instead"):
        got = trainer.train_batch(x, y, LENGTHS, torch.Generator().manual_seed(3))
    want = eager.train_batch(x, y, LENGTHS, torch.Generator().manual_seed(3))
    assert trainer.compiled is None and "no C++ compiler" in (trainer.compile_note or "")
    assert torch.equal(trainer.flat.flat, eager.flat.flat) and float(got[0]) == float(want[0])
    assert int(trainer.optimizer.state[trainer.flat.flat]["step"]) == T


def test_a_chunk_length_that_fails_to_compile_sends_the_batch_eager_before_any_update(monkeypatch):
    """FPTT-K with a shorter last chunk (T = 10, K = 3: 4, 4, 2 steps) whose graph fails to compile: the failure comes
    before the batch's first update, so the batch runs eagerly from where it started (no chunk updated twice)."""
    import fptt_edge.training.compiled as compiled_mod

    real = torch.compile

    def short_chunks_fail(fn, **kwargs):
        compiled_fn = real(fn, **kwargs)

        def call(*args):
            if args[7].shape[1] == 2:  # x of the last, 2-step chunk (after the 7 buffers)
                raise RuntimeError("inductor failed on this graph")
            return compiled_fn(*args)
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", short_chunks_fail)
    x, y = _batch(6)
    cfg = TrainConfig(batch_size=B, parts=3)
    trainer, eager = FPTTTrainer(_net(), cfg, compile=True), FPTTTrainer(_net(), cfg)
    with pytest.warns(UserWarning, match="eager instead"):
        got = trainer.train_batch(x, y, LENGTHS)
    want = eager.train_batch(x, y, LENGTHS)
    assert trainer.compiled is None and "inductor failed" in (trainer.compile_note or "")
    assert torch.equal(trainer.flat.flat, eager.flat.flat) and float(got[0]) == float(want[0])
    assert int(trainer.optimizer.state[trainer.flat.flat]["step"]) == 3 == int(eager.optimizer.state[eager.flat.flat]["step"])


def test_metrics_say_how_the_updates_ran(tmp_path, monkeypatch):
    """A run with FPTT-K compiled (``--compile on``) trains through the graph and metrics.json says so; eager and BPTT
    runs say eager / nothing."""
    from fptt_edge.data.dataset import SequenceDataset
    from fptt_edge.training import loop

    g = torch.Generator().manual_seed(0)
    y = torch.arange(16) % K
    data = SequenceDataset((torch.rand(16, T, C, generator=g) < 0.5).float(), y, [str(i) for i in range(K)], {"task": "test-data"})
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(8,))
    run = lambda name, **kw: loop.fit(config, TrainConfig(epochs=1, batch_size=B, val_fraction=0.0, **kw), data, data,  # noqa: E731
                                      tmp_path / name, progress=False)
    assert run("k", parts=5, compile="on")["fptt_update"] == "compiled"
    assert run("k-auto-short", parts=5, compile="auto")["fptt_update"] == "eager"  # 4 batches x 10 steps: too short to repay
    monkeypatch.setattr("fptt_edge.training.compiled.AUTO_MIN_UPDATES", 10)  # the loop passes T, so "auto" sees chunks of 2
    assert run("k-auto", parts=5, compile="auto")["fptt_update"] == "compiled"
    assert run("eager", parts=5, compile="off")["fptt_update"] == "eager"
    assert "fptt_update" not in run("bptt", method="bptt")
    assert json.loads((tmp_path / "k" / "metrics.json").read_text())["fptt_update"] == "compiled"


def test_the_clip_coefficient_is_computed_once_not_per_weight():
    """The fused clip/Adamax/trace loop over the weights must read the clip's coefficient, not recompute
    ``min(1, clip / (sqrt(s) + 1e-6))`` per vector: its in-place stores may alias the norm's buffer, so the C++ compiler
    cannot hoist that square root and division (they cost ~0.2 ms of a ~2.3 ms update at 726k weights). Read from the
    C++ inductor generates for one update, compiled afresh (no cached graph)."""
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code

    trainer = FPTTTrainer(_net(), TrainConfig(batch_size=B), compile=True)
    x, y = _batch(30)
    with inductor_config.patch(fx_graph_cache=False):
        _, codes = run_and_get_code(trainer.train_batch, x[:, :1], y)
    assert trainer.compiled is not None, trainer.compile_note
    n = trainer.flat.flat.numel()
    loops = [_loop_body(after) for code in codes for after in code.split(f"x0<static_cast<int64_t>({n}L)")[1:]]
    # Adamax's max(beta2 u, |g| + eps) marks the update's loop (vectorised: at::vec::maximum; scalar: max_propagate_nan)
    update = [body for body in loops if "maximum" in body or "max_propagate_nan" in body]
    assert update, f"no loop over the {n} weights with Adamax's maximum in the generated code"
    assert all("sqrt" not in body for body in update), "the clip's coefficient is recomputed per weight vector"


def _loop_body(after_header: str) -> str:
    """The body of the C++ loop whose header ends ``after_header``'s text: from its first ``{`` to the matching ``}``."""
    start = after_header.index("{")
    depth = 0
    for i, ch in enumerate(after_header[start:], start):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return after_header[start : i + 1]
    return after_header[start:]
