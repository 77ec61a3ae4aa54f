"""Branches of training and loading that no other test reaches, each checked against an
independent computation (explicit per-sequence loops on a tiny model), so a planted bug fails:
FPTT and BPTT loss weighting with ``lengths``, FPTT's final logits with ``lengths``, the
data-order and draw generators on a mid-epoch resume, what ``--resume`` refuses, and the
refusal of a newer contract version."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from fptt_edge.config import ModelConfig
from fptt_edge.contract import CONTRACT_VERSION, ContractError, StepContract
from fptt_edge.data.dataset import SequenceDataset
from fptt_edge.model import LTCNetwork, detach_state
from fptt_edge.training import loop, trainers
from fptt_edge.training.trainers import BPTTTrainer, FPTTTrainer, TrainConfig

B, T, C, K = 5, 7, 3, 4
LENGTHS = torch.tensor([7, 3, 1, 5, 4])


def tiny(seed: int = 0, initial_u: str = "zero") -> LTCNetwork:
    torch.manual_seed(seed)
    return LTCNetwork(ModelConfig(input_shape=(C,), num_classes=K, hidden=(6,), initial_u=initial_u))


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, T, C, generator=g) < 0.5).float() * 2.0
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def flat_grad(model: LTCNetwork) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


# ---------------------------------------------------------------- FPTT


def _fptt_updates(parts: int, lengths):
    """Run one FPTT batch with the update replaced by a recorder: the loss of every update and
    its gradient (weights never change, so a plain forward of a copy sees the same logits)."""
    model = tiny()
    ref = copy.deepcopy(model)
    trainer = FPTTTrainer(model, TrainConfig(method="fptt", parts=parts))
    seen = []

    def record(loss):
        trainer.flat.flat.grad.zero_()
        loss.backward()
        seen.append((float(loss.detach()), trainer.flat.flat.grad.clone()))

    trainer.apply_update = record
    x, y = batch()
    loss_sum, correct = trainer.train_batch(x, y, lengths)
    return ref, x, y, seen, float(loss_sum), int(correct)


def _expected_fptt(ref: LTCNetwork, x, y, parts: int, lengths):
    """Hand-computed FPTT losses: for chunk [t0, t1) and sequence i of length L, the CE at step
    t = min(t1, L) - 1 weighted (t + 1) / L, zero once the sequence has ended, summed over the
    batch and divided by B; the state is detached between chunks."""
    lens = [T] * B if lengths is None else [int(v) for v in lengths]
    chunk = 1 if parts == 0 else math.ceil(T / parts)
    ref.train()
    state = ref.initial_state(B)
    out = []
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        for p in ref.parameters():
            p.grad = torch.zeros_like(p)
        logits, state = ref(x[:, t0:t1], state)
        loss = torch.zeros(())
        for i in range(B):
            if lens[i] - 1 < t0:
                continue
            t = min(t1, lens[i]) - 1
            loss = loss + (t + 1) / lens[i] * F.cross_entropy(logits[i, t - t0][None], y[i][None])
        loss = loss / B
        loss.backward()
        out.append((float(loss.detach()), flat_grad(ref)))
        state = detach_state(state)
    with torch.no_grad():
        full, _ = ref(x, ref.initial_state(B))
    final = torch.stack([full[i, lens[i] - 1] for i in range(B)])
    return out, float(F.cross_entropy(final, y, reduction="sum")), int((final.argmax(1) == y).sum())


@pytest.mark.parametrize("parts", [0, 3, 1])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_fptt_loss_weighting_and_final_logits(parts, with_lengths):
    lengths = LENGTHS if with_lengths else None
    ref, x, y, seen, loss_sum, correct = _fptt_updates(parts, lengths)
    expected, final_ce, final_correct = _expected_fptt(ref, x, y, parts, lengths)
    assert len(seen) == len(expected) == math.ceil(T / (1 if parts == 0 else math.ceil(T / parts)))
    for n, ((loss, grad), (want, want_grad)) in enumerate(zip(seen, expected)):
        assert loss == pytest.approx(want, rel=1e-5, abs=1e-7), f"update {n}"
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6, msg=f"gradient of update {n}")
    assert any(float(g.abs().max()) > 0 for _, g in seen), "vacuous: no gradient"
    # the reported loss and accuracy are at each sequence's own last valid step
    assert loss_sum == pytest.approx(final_ce, rel=1e-5)
    assert correct == final_correct


def test_fptt_full_lengths_equal_no_lengths():
    a = _fptt_updates(3, torch.full((B,), T))
    b = _fptt_updates(3, None)
    assert [v for v, _ in a[3]] == pytest.approx([v for v, _ in b[3]], rel=1e-6)
    assert a[4] == pytest.approx(b[4], rel=1e-6)


def test_fptt_final_logits_are_not_the_last_chunk_s():
    """With lengths, the reported loss differs from the CE at step T (the planted bug's answer)."""
    ref, x, y, _, loss_sum, _ = _fptt_updates(0, LENGTHS)
    with torch.no_grad():
        full, _ = ref.train()(x, ref.initial_state(B))
    assert abs(loss_sum - float(F.cross_entropy(full[:, -1], y, reduction="sum"))) > 1e-3


# ---------------------------------------------------------------- BPTT


@pytest.mark.parametrize("bptt_loss", ["weighted", "last"])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_bptt_loss_weighting_with_lengths(bptt_loss, with_lengths):
    lengths = LENGTHS if with_lengths else None
    lens = [T] * B if lengths is None else [int(v) for v in lengths]
    model = tiny()
    ref = copy.deepcopy(model)
    trainer = BPTTTrainer(model, TrainConfig(method="bptt", bptt_loss=bptt_loss, clip=1e9))
    trainer.optimizer.step = lambda *a, **k: None  # keep the weights: compare the gradient
    x, y = batch()
    loss_sum, correct = trainer.train_batch(x, y, lengths)
    got = flat_grad(model)

    ref.train()
    logits, _ = ref(x, ref.initial_state(B))
    loss = torch.zeros(())
    for i in range(B):
        L = lens[i]
        if bptt_loss == "last":
            loss = loss + F.cross_entropy(logits[i, L - 1][None], y[i][None]) / B
        else:  # the mean over the sequence's own L steps of ((t + 1) / L) CE_t, then over the batch
            per = sum((t + 1) / L * F.cross_entropy(logits[i, t][None], y[i][None]) for t in range(L)) / L
            loss = loss + per / B
    loss.backward()
    torch.testing.assert_close(got, flat_grad(ref), rtol=1e-4, atol=1e-7)
    assert float(got.abs().max()) > 0
    final = torch.stack([logits[i, lens[i] - 1] for i in range(B)]).detach()
    assert float(loss_sum) == pytest.approx(float(F.cross_entropy(final, y, reduction="sum")), rel=1e-5)
    assert int(correct) == int((final.argmax(1) == y).sum())


# ---------------------------------------------------------------- resume


def _data(n: int, seed: int) -> SequenceDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = (torch.rand(n, T, C, generator=g) < 0.2 + 0.5 * (y[:, None, None] % C == torch.arange(C))).float()
    return SequenceDataset(x, y, [str(i) for i in range(K)], {"task": "test-data", "seed": seed})


class Crash(Exception):
    pass


def _recording_run(monkeypatch, out, crash_at=None, resume=False, compile="off"):
    """fit() with every batch recorded: its labels, inputs and the draw generator's state."""
    calls = []
    original = FPTTTrainer.train_batch

    def recorded(self, x, y, lengths=None, generator=None):
        if crash_at is not None and len(calls) + 1 == crash_at:
            raise Crash
        calls.append((y.tolist(), float(x.sum()), bytes(generator.get_state().numpy())))
        return original(self, x, y, lengths, generator)

    monkeypatch.setattr(FPTTTrainer, "train_batch", recorded)
    cfg = TrainConfig(method="fptt", epochs=2, batch_size=8, checkpoint_interval=1e-9, compile=compile)
    train, test = _data(40, 0), _data(12, 1)
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(6,), initial_u="uniform")
    try:
        loop.fit(config, cfg, train, test, out, resume=resume, progress=False)
    except Crash:
        pass
    monkeypatch.setattr(FPTTTrainer, "train_batch", original)
    return calls


@pytest.mark.parametrize("crash_at,compile", [(4, "off"), (8, "off"), (8, "on")])  # dies at batch 4 of epoch 1, or 3 of epoch 2
def test_mid_epoch_resume_replays_the_same_batches_and_draws(tmp_path, monkeypatch, crash_at, compile):
    """... and ends with the same weights, bit for bit, also with the compiled update (whose trace state is saved as
    it runs, not rebuilt)."""
    if compile == "on":
        from fptt_edge.training.compiled import why_not_compiled

        if why_not_compiled(torch.nn.Linear(1, 1), torch.device("cpu"), 1, False) is not None:
            pytest.skip("no compiler for torch.compile here")
    full = _recording_run(monkeypatch, tmp_path / "full", compile=compile)
    assert len(full) == 10  # 2 epochs x 5 batches
    assert len({c[2] for c in full}) == 10 and len({tuple(c[0]) for c in full[:5]}) == 5, "vacuous: draws or batches repeat"
    assert [c[0] for c in full[:5]] != [c[0] for c in full[5:]], "vacuous: both epochs in one order"
    before = _recording_run(monkeypatch, tmp_path / "cut", crash_at=crash_at, compile=compile)
    progress = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["progress"]
    assert (progress["epoch"], progress["batch"]) == divmod(crash_at - 1, 5)
    after = _recording_run(monkeypatch, tmp_path / "cut", resume=True, compile=compile)
    assert before == full[:crash_at - 1]
    assert after == full[crash_at - 1:], "the resumed run saw other batches or other random draws"
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # the epochs' gradient-norm figures, the one cut too (its first part restored from the checkpoint)
    assert [e["grad_norm"] for e in a["history"]] == [e["grad_norm"] for e in b["history"]]
    assert [e["grad_norm"]["updates"] for e in a["history"]] == [5 * T] * 2


def _fit(out, train, test, resume=False, **changes):
    cfg = TrainConfig(method="fptt", epochs=changes.pop("epochs", 1), batch_size=8, lr=changes.pop("lr", 3e-3))
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(changes.pop("hidden", 6),))
    return loop.fit(config, cfg, train, test, out, resume=resume, progress=False)


@pytest.mark.parametrize("change,expect", [
    ("other-train-data", "train samples: the loaded data differ"),
    ("fewer-train-samples", "train samples: 40 then, 32 now"),
    ("other-test-spec", "test data seed: 1 then, 2 now"),
    ("model", "model hidden"),
    ("lr", "lr: 0.003 then, 0.01 now"),
])
def test_resume_refuses_other_data_model_or_settings(tmp_path, change, expect):
    train, test = _data(40, 0), _data(12, 1)
    _fit(tmp_path, train, test)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    kwargs = {"epochs": 2}
    if change == "other-train-data":
        train = SequenceDataset(1 - train.x, train.y, train.class_names, dict(train.input_spec))
    elif change == "fewer-train-samples":
        train = train.take(32)
    elif change == "other-test-spec":
        test = _data(12, 2)
    elif change == "model":
        kwargs["hidden"] = 7
    elif change == "lr":
        kwargs["lr"] = 0.01
    with pytest.raises(loop.TrainingError, match="these differ") as info:
        _fit(tmp_path, train, test, resume=True, **kwargs)
    assert expect in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    _fit(tmp_path, _data(40, 0), _data(12, 1), resume=True, epochs=2)  # the same data and settings: continues


def test_resume_refuses_a_checkpoint_without_data_identity(tmp_path):
    train, test = _data(40, 0), _data(12, 1)
    _fit(tmp_path, train, test)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for bad in ({k: v for k, v in payload.items() if k != "data"}, {**payload, "data": {"train": torch.zeros(3), "test": {}}},
                {**payload, "data": {"train": {"samples": torch.zeros(2)}, "test": {}}}):
        torch.save(bad, tmp_path / "checkpoint.pt")
        with pytest.raises(loop.TrainingError, match="identity of its training data|these differ"):
            _fit(tmp_path, train, test, resume=True, epochs=2)


def test_resume_refuses_changed_files(tmp_path, nmnist_fixture):
    """Task data files: a changed .npz, or a changed N-MNIST recording behind an unchanged split list."""
    import numpy as np

    from fptt_edge.data.tasks import load_task

    rng = np.random.default_rng(0)
    y = np.arange(24) % 3
    np.savez(tmp_path / "a.npz", x=(rng.random((24, 6, 3)) < 0.3).astype(np.float32), y=y)
    train = load_task("npz", "train", tmp_path / "a.npz")
    cfg = TrainConfig(method="bptt", epochs=1, batch_size=8)
    config = ModelConfig(input_shape=(3,), num_classes=3, hidden=(4,))
    loop.fit(config, cfg, train, train, tmp_path / "run", progress=False)
    np.savez(tmp_path / "a.npz", x=(rng.random((24, 6, 3)) < 0.3).astype(np.float32), y=y)
    changed = load_task("npz", "train", tmp_path / "a.npz")
    with pytest.raises(loop.TrainingError, match="train data file: .*a.npz.*then") as info:
        loop.fit(config, TrainConfig(method="bptt", epochs=2, batch_size=8), changed, changed, tmp_path / "run", resume=True, progress=False)
    assert "test data file" in str(info.value)

    opts = {"steps": 4, "downsample": 2}
    nm = load_task("nmnist", "train", nmnist_fixture / "train.txt", **opts)
    config = ModelConfig(input_shape=nm.input_shape, num_classes=10, hidden=(4,))
    loop.fit(config, cfg, nm, nm, tmp_path / "nm", progress=False)
    rec = nmnist_fixture / "train0.bs2"
    rec.write_bytes(rec.read_bytes()[:-5])  # one event fewer
    nm2 = load_task("nmnist", "train", nmnist_fixture / "train.txt", **opts)
    with pytest.raises(loop.TrainingError, match="recordings listed in"):
        loop.fit(config, TrainConfig(method="bptt", epochs=2, batch_size=8), nm2, nm2, tmp_path / "nm", resume=True, progress=False)
    nm3 = load_task("nmnist", "train", nmnist_fixture / "train.txt", steps=5, downsample=2)
    with pytest.raises(loop.TrainingError, match="steps: 4 then, 5 now"):
        loop.fit(ModelConfig(input_shape=nm3.input_shape, num_classes=10, hidden=(4,)), TrainConfig(method="bptt", epochs=2, batch_size=8),
                 nm3, nm3, tmp_path / "nm", resume=True, progress=False)


# ---------------------------------------------------------------- contract versions


def _contract() -> StepContract:
    from fptt_edge.export.pipeline import build_contract

    net = tiny()
    return build_contract(net, {"input_spec": {"task": "npz"}}, "0" * 64, 1, 18, {})


def test_contract_versions():
    meta = _contract().to_metadata()
    assert StepContract.from_metadata(meta, "m.onnx").contract_version == CONTRACT_VERSION
    with pytest.raises(ContractError, match=f"contract version {CONTRACT_VERSION + 1} is newer"):
        StepContract.from_metadata({**meta, "fptt_edge.contract_version": str(CONTRACT_VERSION + 1)}, "m.onnx")
    with pytest.raises(ContractError, match="invalid contract_version 0"):
        StepContract.from_metadata({**meta, "fptt_edge.contract_version": "0"}, "m.onnx")


def test_train_contract_versions():
    from fptt_edge.train_contract import TRAIN_CONTRACT_VERSION, Hyper, TrainContract, TrainTensor

    tc = TrainContract(batch=2, frame_shape=(C,), num_classes=K, states=(("l0.u", (6,)),), tensors=(TrainTensor("w", (K, 6), 0),),
                       trainable="all", hyper=Hyper(), checkpoint_sha256="0" * 64, inference_sha256="", opset=18)
    meta = tc.to_metadata()
    assert TrainContract.from_metadata(meta) == tc
    with pytest.raises(ContractError, match="newer"):
        TrainContract.from_metadata({**meta, "fptt_edge.train.contract_version": str(TRAIN_CONTRACT_VERSION + 1)})


def test_trainers_module_keeps_final_logits_helper():
    """final_logits (eval and BPTT) picks logits[i, len_i - 1]."""
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    picked = trainers.final_logits(logits, torch.tensor([2, 4]))
    torch.testing.assert_close(picked, torch.stack([logits[0, 1], logits[1, 3]]))
    torch.testing.assert_close(trainers.final_logits(logits, None), logits[:, -1])
