"""``--ema-decay``: a per-batch moving average of the evaluated weights is what a run evaluates, selects and
saves; training itself is untouched, the average resumes exactly, and crafted averages are refused."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_hostile import RESUMABLE, TINY, refused_cli
from test_training_selection import Crash, _config, _data

from fptt_edge.model import LTCNetwork
from fptt_edge.training import loop
from fptt_edge.training.averaging import WeightAverage
from fptt_edge.training.trainers import BPTTTrainer, FPTTTrainer, TrainConfig

TRAINERS = {"fptt": FPTTTrainer, "bptt": BPTTTrainer}


def _closed_form(seq: list[torch.Tensor], decay: float) -> torch.Tensor:
    """a_1 = w_1, a_n = d_n a_{n-1} + (1 - d_n) w_n with d_n = min(decay, (1 + n) / (10 + n)), in float64."""
    avg = seq[0].double()
    for n, w in enumerate(seq[1:], start=2):
        d = min(decay, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * w.double()
    return avg


def test_the_average_follows_its_closed_form_and_swaps_back_even_on_error():
    g = torch.Generator().manual_seed(0)
    seq = [torch.randn(7, generator=g) for _ in range(100)]
    avg = WeightAverage(0.9)
    for w in seq:
        avg.update([w, 2 * w])
    assert avg.rate() == 0.9  # the warm-up is over after 80 updates
    torch.testing.assert_close(avg.average[0].double(), _closed_form(seq, 0.9), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(avg.average[1].double(), 2 * _closed_form(seq, 0.9), rtol=1e-6, atol=1e-6)
    weights = [torch.zeros(7), torch.ones(7)]
    with pytest.raises(Crash), avg.swapped_in(weights):
        assert torch.equal(weights[0], avg.average[0])
        raise Crash
    assert torch.equal(weights[0], torch.zeros(7)) and torch.equal(weights[1], torch.ones(7))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(1.0)


@pytest.mark.parametrize("method", ["fptt", "bptt"])
def test_model_pt_holds_the_average_of_the_evaluated_weights_and_training_is_untouched(tmp_path, monkeypatch, method):
    train, test = _data(40, 0), _data(12, 1)
    trainer_cls, original = TRAINERS[method], TRAINERS[method].train_batch
    seen: list[torch.Tensor] = []

    def recorded(self, *a, **k):
        out = original(self, *a, **k)
        seen.append(torch.cat([w.detach().reshape(-1) for w in self.evaluated_weights()]).clone())
        return out

    monkeypatch.setattr(trainer_cls, "train_batch", recorded)
    common = dict(method=method, epochs=2, batch_size=8, val_fraction=0.0)  # no validation: model.pt keeps the last epoch
    loop.fit(_config(), TrainConfig(**common), train, test, tmp_path / "plain", progress=False)
    plain = list(seen)
    seen.clear()
    loop.fit(_config(), TrainConfig(**common, ema_decay=0.8), train, test, tmp_path / "ema", progress=False)
    assert len(plain) == 10 and all(torch.equal(a, b) for a, b in zip(plain, seen)), "the average changed training"
    a = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resume checkpoint must hold the training weights, not the average"
    notes = [json.loads((tmp_path / run / "metrics.json").read_text())["notes"] for run in ("plain", "ema")]
    assert "weights" not in notes[0] and "moving average (decay 0.8)" in notes[1]["weights"]
    saved = torch.load(tmp_path / "ema" / "model.pt", weights_only=True)["state_dict"]
    names = [n for n, _ in LTCNetwork(_config()).named_parameters()]
    got = torch.cat([saved[n].reshape(-1) for n in names])
    expect = _closed_form(plain, 0.8).float()
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, plain[-1], atol=1e-4), "vacuous: the average equals the last weights"


def test_the_average_resumes_exactly_mid_epoch(tmp_path, monkeypatch):
    train, test = _data(40, 0), _data(12, 1)
    cfg = TrainConfig(method="fptt", epochs=2, batch_size=8, checkpoint_interval=1e-9, ema_decay=0.8)
    original, calls = FPTTTrainer.train_batch, []

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 7:
            raise Crash
        return original(self, *a, **k)

    loop.fit(_config(), cfg, train, test, tmp_path / "full", progress=False)
    monkeypatch.setattr(FPTTTrainer, "train_batch", crashing)
    with pytest.raises(Crash):
        loop.fit(_config(), cfg, train, test, tmp_path / "cut", progress=False)
    monkeypatch.setattr(FPTTTrainer, "train_batch", original)
    loop.fit(_config(), cfg, train, test, tmp_path / "cut", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["weight_average"]
    rb = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["weight_average"]
    assert ra["updates"] == rb["updates"] == 10 and torch.equal(ra["average"][0], rb["average"][0])


def _average(p, **changes):
    return {**p, "weight_average": {**p["weight_average"], **changes}}


AVERAGE_CASES = {
    "missing": lambda p: {k: v for k, v in p.items() if k != "weight_average"},
    "not-a-dict": lambda p: {**p, "weight_average": [1, 2]},
    "other-decay": lambda p: _average(p, decay=0.5),
    "updates-negative": lambda p: _average(p, updates=-1),
    "updates-bool": lambda p: _average(p, updates=True),
    "updates-text": lambda p: _average(p, updates="many"),
    "no-tensors": lambda p: _average(p, average=[]),
    "tensor-text": lambda p: _average(p, average=["x" for _ in p["weight_average"]["average"]]),
    "wrong-shape": lambda p: _average(p, average=[a[:-1] for a in p["weight_average"]["average"]]),
    "wrong-dtype": lambda p: _average(p, average=[a.double() for a in p["weight_average"]["average"]]),
    "nan": lambda p: _average(p, average=[torch.full_like(a, float("nan")) for a in p["weight_average"]["average"]]),
    "inf": lambda p: _average(p, average=[torch.full_like(a, float("inf")) for a in p["weight_average"]["average"]]),
    "no-count": lambda p: {**p, "weight_average": {k: v for k, v in p["weight_average"].items() if k != "updates"}},
}


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    from click.testing import CliRunner

    from fptt_edge.cli import main

    root = tmp_path_factory.mktemp("ema")
    res = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--ema-decay", "0.9", "--out", str(root / "run")])
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("name", list(AVERAGE_CASES))
def test_crafted_averages_in_a_resume_checkpoint_are_refused(ema_run, tmp_path, name):
    out = tmp_path / "run"
    shutil.copytree(ema_run / "run", out)
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["weight_average"]["updates"] > 0
    torch.save(AVERAGE_CASES[name](payload), out / "checkpoint.pt")
    said = refused_cli(["train", *RESUMABLE, "--epochs", "2", "--ema-decay", "0.9", "--out", out, "--resume"], tmp_path)
    assert "weight average" in said or "averages its weights" in said, said


@pytest.mark.parametrize("decay", ["1", "-0.1", "nan"])
def test_absurd_decays_are_refused(tmp_path, decay):
    refused_cli(["train", *TINY, "--epochs", "1", "--ema-decay", decay, "--out", tmp_path / "run"], tmp_path, usage=True)


def test_resume_refuses_another_decay(ema_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ema_run / "run", out)
    refused_cli(["train", *RESUMABLE, "--epochs", "2", "--ema-decay", "0.5", "--out", out, "--resume"], tmp_path, expect="ema_decay")


def test_the_untouched_run_resumes(ema_run, tmp_path):
    """The control for the refusals above: the same command on the unmodified checkpoint trains on."""
    from click.testing import CliRunner

    from fptt_edge.cli import main

    out = tmp_path / "run"
    shutil.copytree(ema_run / "run", out)
    res = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "2", "--ema-decay", "0.9", "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["weight_average"]["updates"] == 4  # 2 epochs x 2 batches
