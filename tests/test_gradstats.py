"""The per-epoch gradient-norm figures: the running statistics against a closed form, and the norm each trainer records
against the norm of an independent autograd gradient."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork
from fptt_edge.training import gradstats
from fptt_edge.training.trainers import BPTTTrainer, FPTTTrainer, TrainConfig

B, T, C, K = 4, 6, 3, 5


def _net() -> LTCNetwork:
    torch.manual_seed(0)
    return LTCNetwork(ModelConfig(input_shape=(C,), num_classes=K, hidden=(8,)))


def _batch():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(B, T, C, generator=g) < 0.5).float() * 1.5, torch.randint(0, K, (B,), generator=g)


def test_running_figures_equal_the_closed_form():
    norms = np.array([0.3, 2.0, 1.0, 0.0, 7.5, 1.0000001], np.float32)
    stats = gradstats.new_stats()
    for n in norms:
        gradstats.record(stats, torch.tensor(n), clip=1.0)
    got = gradstats.summary(stats)
    logs = np.log(np.maximum(norms.astype(np.float64), 1e-30))
    assert got["updates"] == len(norms) and got["clipped"] == pytest.approx(np.mean(norms > 1.0))  # 2.0, 7.5, 1.0000001
    assert got["max"] == pytest.approx(7.5) and got["geo_mean"] == pytest.approx(math.exp(logs.mean()), rel=1e-5)


def test_an_overflowed_gradient_is_reported_as_none_not_as_inf():
    stats = gradstats.new_stats()
    gradstats.record(stats, torch.tensor(1.0), clip=1.0)
    gradstats.record(stats, torch.tensor(float("inf")), clip=1.0)
    got = gradstats.summary(stats)
    assert got == {"updates": 2, "clipped": 0.5, "geo_mean": None, "max": None}
    assert gradstats.summary(gradstats.new_stats()) == {"updates": 0, "clipped": 0.0, "geo_mean": None, "max": 0.0}


@pytest.mark.parametrize("values,ok", [([3, 1, -2.5, 4.0], True), ([3, 1, float("nan"), float("inf")], True), ([3, 4, 0, 1], False),
                                       ([3.5, 1, 0, 1], False), ([3, 1, 0], False), ([3, True, 0, 1], False), ("3,1,0,1", False), ([1e300, 0, 0, 1], False)])
def test_saved_figures_are_checked(values, ok):
    assert (gradstats.from_saved(values) is not None) == ok


def test_bptt_records_the_norm_of_its_autograd_gradient():
    model = _net()
    ref = copy.deepcopy(model)
    trainer = BPTTTrainer(model, TrainConfig(method="bptt", bptt_loss="last", clip=1e-3))
    x, y = _batch()
    trainer.train_batch(x, y)
    logits, _ = ref(x, ref.initial_state(B))
    grads = torch.autograd.grad(F.cross_entropy(logits[:, -1], y), list(ref.parameters()), allow_unused=True)
    want = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
    got = gradstats.summary(trainer.grad_stats)
    assert got["updates"] == 1 and got["clipped"] == (1.0 if want > 1e-3 else 0.0) and want > 0
    assert got["max"] == pytest.approx(want, rel=1e-5) and got["geo_mean"] == pytest.approx(want, rel=1e-5)


def test_fptt_records_every_update_with_the_regulariser_in_its_norm():
    """T updates per batch (K = T), each the norm of the loss gradient plus the regulariser's, as the clip sees it."""
    model = _net()
    trainer = FPTTTrainer(model, TrainConfig(clip=1e9))
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, **kw):  # an independent norm of the same gradients, before the clip
        seen.append(math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params)))
        return clip(params, max_norm, **kw)
    torch.nn.utils.clip_grad_norm_ = spy
    try:
        x, y = _batch()
        trainer.train_batch(x, y)
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    got = gradstats.summary(trainer.grad_stats)
    assert got["updates"] == len(seen) == T and got["clipped"] == 0.0
    assert got["max"] == pytest.approx(max(seen), rel=1e-5)
    assert got["geo_mean"] == pytest.approx(math.exp(np.mean(np.log(seen))), rel=1e-5)


def test_curves_plot_the_norms_where_epochs_have_them(tmp_path):
    """An older run's epochs (no figures), an overflowed largest norm (None) and an epoch without gradient (0) all plot."""
    import matplotlib.image

    from fptt_edge.reporting import plot_curves

    base = {"train_loss": 2.0, "test_loss": 2.1, "train_accuracy": 0.3, "test_accuracy": 0.25}
    history = [{"epoch": 1, **base}, {"epoch": 2, **base, "grad_norm": {"updates": 5, "clipped": 0.2, "geo_mean": 0.5, "max": None}},
               {"epoch": 3, **base, "grad_norm": {"updates": 5, "clipped": 0.0, "geo_mean": 0.0, "max": 0.0}}]
    plot_curves(history, tmp_path / "with.png", clip=1.0)
    plot_curves(history[:1], tmp_path / "without.png")
    wide, narrow = (matplotlib.image.imread(tmp_path / f) for f in ("with.png", "without.png"))
    assert wide.shape[1] > 1.4 * narrow.shape[1]  # a third panel


def test_counts_stay_exact_past_float32s_integers():
    """An epoch of per-step FPTT on full PS-MNIST at batch 2 makes ~23.5M updates: beyond 2**24, where float32 stops counting."""
    stats = gradstats.new_stats()
    stats[0] = 2.0 ** 24
    for _ in range(3):
        gradstats.record(stats, torch.tensor(0.5), clip=1.0)
    assert gradstats.summary(stats)["updates"] == 2 ** 24 + 3
