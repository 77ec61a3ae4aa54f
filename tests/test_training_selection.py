"""Training that ends well: the validation split, model selection on it (never on the test set),
early stopping, learning-rate schedules resumed exactly, and the honest training accuracy."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fptt_edge.checkpoint import load_model
from fptt_edge.config import ModelConfig
from fptt_edge.data.dataset import SequenceDataset, split_validation, stratified_split
from fptt_edge.model import LTCNetwork
from fptt_edge.training import loop
from fptt_edge.training.schedule import default_milestones, lr_at
from fptt_edge.training.trainers import FPTTTrainer, TrainConfig, evaluate

T, C, K = 6, 3, 3


def _data(n: int, seed: int) -> SequenceDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = (torch.rand(n, T, C, generator=g) < 0.2 + 0.5 * (y[:, None, None] % C == torch.arange(C))).float()
    return SequenceDataset(x, y, [str(i) for i in range(K)], {"task": "test-data", "seed": seed})


def _config() -> ModelConfig:
    return ModelConfig(input_shape=(C,), num_classes=K, hidden=(6,))


# ---------------------------------------------------------------- the validation split


def test_validation_split_is_stratified_disjoint_and_fixed_by_the_seed():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(y, 0.1, seed=3)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(100))  # a partition
    assert torch.bincount(y[held]).tolist() == [5, 3, 2]  # 10 % of each class
    again, held2 = stratified_split(y, 0.1, seed=3)
    assert torch.equal(held, held2) and torch.equal(keep, again)
    assert not torch.equal(held, stratified_split(y, 0.1, seed=4)[1])
    train, val = split_validation(_data(30, 0), 0.2, seed=0)
    assert (len(train), len(val)) == (24, 6) and val.input_spec["validation"]["held_out"] == 6
    assert split_validation(_data(30, 0), 0.0, seed=0)[1] is None


# ---------------------------------------------------------------- model selection and early stopping


def _scripted_fit(tmp_path, monkeypatch, val_script, method="fptt", **cfg_changes):
    """fit() where the validation accuracy of each epoch is scripted (everything else is real);
    returns the metrics and the weights evaluated at each epoch."""
    train, val, test = _data(48, 0), _data(15, 1), _data(12, 2)
    seen: list[dict] = []
    real = loop.evaluate

    def scripted(model, x, y, lengths=None, **kw):
        out = real(model, x, y, lengths, **kw)
        if x is val.x:
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            out["accuracy"] = val_script[len(seen) - 1]
        return out

    monkeypatch.setattr(loop, "evaluate", scripted)
    cfg = TrainConfig(method=method, epochs=len(val_script), batch_size=8, lr=0.02, **cfg_changes)
    metrics = loop.fit(_config(), cfg, train, test, tmp_path, progress=False, val=val)
    return metrics, seen


def test_model_pt_holds_the_best_validation_epoch(tmp_path, monkeypatch):
    metrics, seen = _scripted_fit(tmp_path, monkeypatch, [0.3, 0.7, 0.5, 0.6])
    assert metrics["selected_epoch"] == 2 and metrics["val_accuracy"] == 0.7
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["selected_epoch"] == 2 and on_disk["last_epoch"]["epoch"] == 4 and len(on_disk["epochs"]) == 4
    assert on_disk["test_accuracy"] == on_disk["epochs"][1]["test_accuracy"]  # the selected epoch's test figure
    assert on_disk["last_epoch"]["test_accuracy"] == on_disk["epochs"][3]["test_accuracy"]
    model, payload = load_model(tmp_path / "model.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[1][k]), k  # the weights evaluated at epoch 2
    assert not all(torch.equal(seen[1][k], seen[3][k]) for k in seen[1]), "vacuous: the weights did not change after epoch 2"
    assert payload["metrics"]["selected_epoch"] == 2
    # the resume checkpoint holds the last (training) weights, not the selected ones
    resume = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(resume["history"]) == 4


def test_ties_go_to_the_lower_validation_loss_and_the_test_set_selects_nothing(tmp_path, monkeypatch):
    metrics, _ = _scripted_fit(tmp_path, monkeypatch, [0.5, 0.5, 0.5], method="bptt")
    losses = [e["val_loss"] for e in metrics["epochs"]]
    assert metrics["selected_epoch"] == 1 + min(range(3), key=lambda i: (losses[i], i))


def test_early_stopping_after_patience_epochs_without_a_better_validation_accuracy(tmp_path, monkeypatch):
    metrics, seen = _scripted_fit(tmp_path, monkeypatch, [0.3, 0.7, 0.5, 0.6, 0.9, 0.95], method="bptt", patience=2)
    assert len(metrics["epochs"]) == 4 and len(seen) == 4  # epochs 3 and 4 did not beat epoch 2
    assert metrics["stopped_early"] and metrics["selected_epoch"] == 2


def test_without_validation_data_the_last_epoch_is_kept(tmp_path):
    train, test = _data(40, 0), _data(12, 1)
    cfg = TrainConfig(method="bptt", epochs=2, batch_size=8, val_fraction=0.0)
    metrics = loop.fit(_config(), cfg, train, test, tmp_path, progress=False)
    assert metrics["selected_epoch"] == 2 and metrics["val_accuracy"] is None and metrics["selection"].startswith("last epoch")


# ---------------------------------------------------------------- the honest training accuracy


def test_train_accuracy_is_scored_like_the_test_set_and_the_online_figure_has_its_own_name(tmp_path):
    train, test = _data(40, 0), _data(12, 1)
    cfg = TrainConfig(method="fptt", epochs=2, batch_size=8, val_fraction=0.25, train_eval_samples=0)
    metrics = loop.fit(_config(), cfg, train, test, tmp_path, progress=False)
    model, _ = load_model(tmp_path / "model.pt")
    kept, _ = split_validation(train, 0.25, cfg.seed)
    best = metrics["epochs"][metrics["selected_epoch"] - 1]
    assert best["train_accuracy"] == evaluate(model, kept.x, kept.y)["accuracy"] == metrics["train_accuracy"]
    assert "online_accuracy" in best and metrics["train_samples"] == len(kept) == 30


def test_online_accuracy_overstates_what_fptt_learned():
    """Labels that carry no information: FPTT's per-step updates pull the readout toward each
    sequence's own label while it is read (one sequence per batch here), so the online figure beats
    chance; scored like the test set, the same weights are at chance."""
    torch.manual_seed(0)
    n, steps = 40, 30
    x = torch.rand(n, steps, C)
    y = torch.randint(0, 2, (n,))
    model = LTCNetwork(ModelConfig(input_shape=(C,), num_classes=2, hidden=(8,)))
    trainer = FPTTTrainer(model, TrainConfig(lr=0.05, batch_size=1))
    correct = 0
    for b in range(n):
        correct += int(trainer.train_batch(x[b:b + 1], y[b:b + 1])[1])
    honest = evaluate(model, x, y)["accuracy"]
    assert correct / n >= 0.75 and abs(honest - 0.5) <= 0.2, (correct / n, honest)


# ---------------------------------------------------------------- learning-rate schedules


def test_schedules_by_hand():
    assert lr_at(1.0, "constant", 10, 7, 3, 4) == 1.0
    assert lr_at(1.0, "cosine", 10, 0, 0, 4) == pytest.approx(1.0)
    assert lr_at(1.0, "cosine", 10, 5, 0, 4) == pytest.approx(0.5)
    assert lr_at(1.0, "cosine", 10, 9, 3, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9.75 / 10)))
    assert default_milestones(10) == (5, 8) and default_milestones(1) == ()
    assert [lr_at(1.0, "step", 10, e, 0, 4) for e in (4, 5, 7, 8)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert lr_at(1.0, "step", 100, 30, 0, 4, milestones=(10, 30, 50)) == pytest.approx(0.01)  # the authors' 'when' list
    assert lr_at(1.0, "constant", 10, 0, 0, 4, warmup=2) == pytest.approx(1 / 8)  # first of 8 warm-up batches
    assert lr_at(1.0, "constant", 10, 1, 3, 4, warmup=2) == pytest.approx(1.0)


class Crash(Exception):
    pass


@pytest.mark.parametrize("schedule", [{"schedule": "cosine", "warmup": 1.0}, {"schedule": "step", "milestones": (1, 2)},
                                      {"schedule": "cosine", "oracle": True}])  # the oracle's soft-target table resumes too
def test_the_schedule_resumes_exactly_mid_epoch(tmp_path, monkeypatch, schedule):
    train, test = _data(40, 0), _data(12, 1)
    cfg = TrainConfig(method="fptt", epochs=3, batch_size=8, checkpoint_interval=1e-9, **schedule)
    original = FPTTTrainer.train_batch

    def run(out, crash_at=None, resume=False):
        lrs = []

        def recorded(self, *a, **k):
            if crash_at is not None and len(lrs) + 1 == crash_at:
                raise Crash
            lrs.append(self.optimizer.param_groups[0]["lr"])
            return original(self, *a, **k)

        monkeypatch.setattr(FPTTTrainer, "train_batch", recorded)
        try:
            loop.fit(_config(), cfg, train, test, out, resume=resume, progress=False)
        except Crash:
            pass
        monkeypatch.setattr(FPTTTrainer, "train_batch", original)
        return lrs

    full = run(tmp_path / "full")
    assert len(full) == 15 and len(set(full)) >= 3, full  # 3 epochs x 5 batches; the rate really changes
    before = run(tmp_path / "cut", crash_at=8)
    after = run(tmp_path / "cut", resume=True)
    assert before + after == full
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["trainer"]["optimizer"]["param_groups"][0]["lr"] == b["trainer"]["optimizer"]["param_groups"][0]["lr"]
    if cfg.oracle:
        assert float(a["trainer"]["oracle"]["table"].abs().sum()) > 0, "vacuous: an empty soft-target table"
        assert torch.equal(a["trainer"]["oracle"]["table"], b["trainer"]["oracle"]["table"])


def test_resume_refuses_other_epochs_under_a_schedule_that_spans_the_run(tmp_path):
    train, test = _data(40, 0), _data(12, 1)
    loop.fit(_config(), TrainConfig(method="bptt", epochs=1, batch_size=8, schedule="cosine"), train, test, tmp_path, progress=False)
    with pytest.raises(loop.TrainingError, match="cosine learning-rate schedule spans"):
        loop.fit(_config(), TrainConfig(method="bptt", epochs=2, batch_size=8, schedule="cosine"), train, test, tmp_path, resume=True,
                 progress=False)
