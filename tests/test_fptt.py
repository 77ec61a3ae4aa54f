"""FPTT: trace updates in closed form, the fused trainer against a plain reference, memory flat in T."""
import copy
import math
import weakref

import pytest
import torch
from torch.nn import functional as F

from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork, detach_state
from fptt_edge.training.fptt import FPTTTraces
from fptt_edge.training.trainers import BPTTTrainer, FPTTTrainer, TrainConfig


def test_trace_update_closed_form_by_hand():
    w = torch.nn.Parameter(torch.tensor([2.0]))
    tr = FPTTTraces([w], alpha=0.1, beta=0.5)
    with torch.no_grad():
        w.fill_(3.0)
    tr.update()  # lam = -0.1 (3-2) = -0.1 ; wbar = 0.5*2 + 0.5*3 - 5*(-0.1) = 3.0
    assert tr.lam[0].item() == pytest.approx(-0.1)
    assert tr.wbar[0].item() == pytest.approx(3.0)
    with torch.no_grad():
        w.fill_(4.0)
    tr.update()  # lam = -0.1 - 0.1 (4-3) = -0.2 ; wbar = 1.5 + 2.0 - 5*(-0.2) = 4.5
    assert tr.lam[0].item() == pytest.approx(-0.2)
    assert tr.wbar[0].item() == pytest.approx(4.5)
    # dR/dW = alpha (W - Wbar) - lam = 0.1 (4 - 4.5) + 0.2 = 0.15
    w.grad = torch.zeros(1)
    tr.add_regularizer_grad()
    assert w.grad.item() == pytest.approx(0.15)
    tr.copy_wbar_to_params()
    assert w.item() == pytest.approx(4.5)


@pytest.mark.parametrize("beta", [0.5, 0.3])
def test_anchor_form_of_the_trace_update_equals_the_wbar_form(beta):
    """The compiled update's recurrence on (A, lam), A = alpha Wbar + lam, written out here in float64 beside the eager
    traces: after each step the eager Wbar, lam and the rebuilt Wbar = (A - lam) / alpha agree; a traces object moved on
    through its anchor (as the graph does) reads that Wbar, and loading a state makes it current again."""
    alpha = 0.1
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, dtype=torch.float64))
    eager = FPTTTraces([w], alpha=alpha, beta=beta)
    w2 = torch.nn.Parameter(w.detach().clone())
    moved = FPTTTraces([w2], alpha=alpha, beta=beta)
    for _ in range(5):
        step = 0.1 * torch.randn(50, dtype=torch.float64)
        with torch.no_grad():
            w.add_(step)
            w2.add_(step)
        eager.update()
        anchor, lam = moved.anchor_and_lam()
        with torch.no_grad():
            new_anchor = (1 - beta) * (2 * anchor - lam) + alpha * (2 * beta - 1) * w2
            lam.copy_(anchor - alpha * w2)
            anchor.copy_(new_anchor)
        moved.moved_on()
        torch.testing.assert_close(moved.lam[0], eager.lam[0])
        torch.testing.assert_close(moved.wbar[0], eager.wbar[0])
    assert float((eager.wbar[0] - w).abs().max()) > 0.01, "vacuous: Wbar = W"
    moved.moved_on()
    bad = {"alpha": alpha, "beta": beta, "wbar": [torch.zeros(50, dtype=torch.float64)], "lam": [torch.zeros(3, dtype=torch.float64)]}
    with pytest.raises(ValueError, match="shape"):
        moved.load_state_dict(bad)  # refused before anything is overwritten
    torch.testing.assert_close(moved.lam[0], eager.lam[0])
    torch.testing.assert_close(moved.wbar[0], eager.wbar[0])
    moved.moved_on()
    moved.load_state_dict(eager.state_dict())
    assert torch.equal(moved.wbar[0], eager.wbar[0]) and torch.equal(moved.lam[0], eager.lam[0])
    older = {k: v for k, v in eager.state_dict().items() if k != "anchor"}  # a checkpoint from before the anchor was saved
    moved.anchor_and_lam()[0].zero_()
    moved.load_state_dict(older)
    torch.testing.assert_close(moved.anchor_and_lam()[0], alpha * eager.wbar[0] + eager.lam[0])


def test_regularizer_grad_equals_autograd():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in ((3, 4), (5,), ())]
    tr = FPTTTraces(params, alpha=0.3, beta=0.4)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    tr.update()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    auto = torch.autograd.grad(tr.regularizer(), params)
    for p in params:
        p.grad = torch.zeros_like(p)
    tr.add_regularizer_grad()
    for p, g in zip(params, auto):
        torch.testing.assert_close(p.grad, g)


def reference_fptt_batch(model, x, y, cfg, chunk):
    """FPTT written plainly from the spec: explicit R(W) in the loss, per-tensor loops, no fused ops."""
    params = [p for p in model.parameters()]
    opt = torch.optim.Adamax(params, lr=cfg.lr, foreach=False)
    wbar = [p.detach().clone() for p in params]
    lam = [torch.zeros_like(p) for p in params]
    steps = x.shape[1]
    state = model.initial_state(x.shape[0], x.device)
    for t0 in range(0, steps, chunk):
        t1 = min(steps, t0 + chunk)
        logits = None
        for t in range(t0, t1):
            logits, state = model.step(x[:, t], state)
        reg = sum(0.5 * cfg.alpha * ((p - wb) ** 2).sum() - (p * lm).sum() for p, wb, lm in zip(params, wbar, lam))
        loss = (t1 / steps) * F.cross_entropy(logits, y) + reg
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip, foreach=False)
        opt.step()
        with torch.no_grad():
            for p, wb, lm in zip(params, wbar, lam):
                lm.sub_(cfg.alpha * (p - wb))
                wb.copy_((1 - cfg.beta) * wb + cfg.beta * p - (cfg.beta / cfg.alpha) * lm)
        state = detach_state(state)
    return wbar, lam


@pytest.mark.parametrize("parts", [0, 3])
def test_fused_trainer_matches_plain_reference(parts):
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=(5,), num_classes=3, hidden=(12, 10))).double()
    ref_model = copy.deepcopy(model)
    x = torch.rand(6, 9, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = TrainConfig(parts=parts, lr=0.01, alpha=0.2, beta=0.6, clip=0.5)
    trainer = FPTTTrainer(model, cfg)
    trainer.train_batch(x, y)
    chunk = 1 if parts == 0 else math.ceil(9 / parts)
    wbar, lam = reference_fptt_batch(ref_model, x, y, cfg, chunk)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=name)
    trainer.flat.check_intact()  # backward accumulated into the flat gradient, nothing was reallocated
    (flat_wbar,), (flat_lam,) = trainer.traces.wbar, trainer.traces.lam
    ours = trainer.flat.views(flat_wbar) + trainer.flat.views(flat_lam)
    assert len(ours) == len(wbar + lam)
    for a, b in zip(ours, wbar + lam):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert any(t.abs().max() > 0 for t in lam)


def test_variable_lengths_use_each_sequence_final_step():
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=(4,), num_classes=2, hidden=(8,))).eval()
    x = torch.rand(3, 6, 4)
    lengths = torch.tensor([6, 2, 4])
    full, _ = model(x)
    from fptt_edge.training.trainers import evaluate, final_logits

    picked = final_logits(full, lengths)
    for i, n in enumerate(lengths.tolist()):
        short, _ = model(x[i : i + 1, :n])  # the same sequence cut at its length
        torch.testing.assert_close(picked[i], short[0, -1])
    assert evaluate(model, x, torch.tensor([0, 1, 0]), lengths)["samples"] == 3


class SavedTensorMeter:
    """Peak bytes held by autograd for backward (saved tensors), measured through pack hooks."""

    def __init__(self):
        self.live = self.peak = 0

    def __enter__(self):
        meter = self

        class Holder:
            def __init__(self, t):
                self.t, self.n = t, t.numel() * t.element_size()
                meter.live += self.n
                meter.peak = max(meter.peak, meter.live)
                weakref.finalize(self, meter._release, self.n)

        self._ctx = torch.autograd.graph.saved_tensors_hooks(Holder, lambda h: h.t)
        self._ctx.__enter__()
        return self

    def _release(self, n):
        self.live -= n

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _peak_saved_bytes(method, steps):
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=(4,), num_classes=3, hidden=(32,)))
    trainer = (FPTTTrainer if method == "fptt" else BPTTTrainer)(model, TrainConfig(method=method))
    x, y = torch.rand(8, steps, 4), torch.randint(0, 3, (8,))
    with SavedTensorMeter() as meter:
        trainer.train_batch(x, y)
    return meter.peak


def test_fptt_memory_does_not_grow_with_sequence_length():
    fptt = [_peak_saved_bytes("fptt", t) for t in (10, 40, 160)]
    bptt = [_peak_saved_bytes("bptt", t) for t in (10, 40, 160)]
    assert fptt[0] > 0
    assert fptt[0] == fptt[1] == fptt[2], fptt  # one step's activations, whatever T is
    assert bptt[2] > 3.5 * bptt[1] > 3.5**2 * bptt[0] * 0.9, bptt  # linear in T
    assert bptt[2] > 100 * fptt[2]


@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, 3 * 2048 + 5])
def test_blocked_norm_is_the_two_norm_of_every_element(n):
    from fptt_edge.training.compiled import blocked_norm

    g = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    g[-1] = 1e3  # the tail past the last whole row counts too
    want = float(torch.linalg.vector_norm(g.double()))
    assert float(blocked_norm(g)) == pytest.approx(want, rel=1e-6)
    assert float(blocked_norm(g, row=7)) == pytest.approx(want, rel=1e-6)
