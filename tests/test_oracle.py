"""FPTT's optional oracle term (``training/oracle.py``) against an independent loop written the way
the authors' code is (per-tensor regulariser in the loss, a Python loop filling the soft-target
table), eager and compiled; the table's update rule by hand; a bad or missing table refused."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork, detach_state
from fptt_edge.training import loop
from fptt_edge.training.compiled import why_not_compiled
from fptt_edge.training.oracle import OracleTargets
from fptt_edge.training.trainers import FPTTTrainer, TrainConfig

B, T, C, K = 6, 7, 3, 4


def _net(seed: int = 0) -> LTCNetwork:
    torch.manual_seed(seed)
    return LTCNetwork(ModelConfig(input_shape=(C,), num_classes=K, hidden=(10,)))


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(5)
    return [((torch.rand(B, T, C, generator=g) < 0.5).float() * 1.5, torch.randint(0, K, (B,), generator=g)) for _ in range(n)]


def _reference(model: LTCNetwork, batches, cfg: TrainConfig, oracle: bool = True, chunk: int = 1, lengths=None) -> torch.Tensor:
    """The authors' loop body (``train_mnist_snn_v2.py``: parts = T, no lengths), written per sequence so it also
    covers FPTT-K (``chunk`` steps per update, the update at the chunk's last step) and variable lengths (a sequence
    is updated at its own last step, weight ``(end + 1) / len``, and neither fills nor reads the table after it).
    Returns the table."""
    a, b = cfg.alpha, cfg.beta
    named = {n: (p, p.detach().clone(), torch.zeros_like(p)) for n, p in model.named_parameters()}
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg.lr)
    parts = -(-T // chunk)
    table = torch.zeros(K, parts, K)
    lens = [T] * B if lengths is None else [int(n) for n in lengths]
    model.train()
    for x, y in batches:
        state = model.initial_state(B)
        for p in range(parts):
            t0, t1 = p * chunk, min(T, (p + 1) * chunk)
            oracle_prob = table[y, p].clone()
            outs = []
            for t in range(t0, t1):
                logits, state = model.step(x[:, t], state)
                outs.append(logits)
            alive = [lens[j] - 1 >= t0 for j in range(B)]
            ends = [min(lens[j] - 1, t1 - 1) if alive[j] else t1 - 1 for j in range(B)]
            picked = torch.stack([outs[ends[j] - t0][j] for j in range(B)])
            prob, out = F.softmax(picked, dim=1), F.log_softmax(picked, dim=1)
            if p < parts - 1:
                with torch.no_grad():
                    filled, n_filled = [0] * K, 0
                    for j in range(B):
                        if n_filled == K:
                            break
                        c = int(y[j])
                        if alive[j] and filled[c] == 0 and int(torch.argmax(prob[j])) != c:
                            filled[c] = 1
                            table[c, p] = prob[j].detach()
                            n_filled += 1
            loss = torch.zeros(())
            for j in range(B):
                if alive[j]:
                    w = (ends[j] + 1) / lens[j]
                    loss = loss + w * F.nll_loss(out[j:j + 1], y[j:j + 1]) / B
                    if oracle:
                        loss = loss + (1 - w) * torch.sum(-oracle_prob[j] * out[j]) / (B * K)
            for w_, sm, lm in named.values():
                loss = loss - torch.sum(w_ * lm) + 0.5 * a * torch.sum(torch.square(w_ - sm))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            with torch.no_grad():
                for w_, sm, lm in named.values():
                    lm.add_(-a * (w_ - sm))
                    sm.mul_(1.0 - b)
                    sm.add_(b * w_ - (b / a) * lm)
            state = detach_state(state)
    return table


def _flat(model: LTCNetwork) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _assert_close(got: torch.Tensor, want: torch.Tensor, lr: float) -> None:
    """Equal within float32 rounding, but for the few elements where Adamax amplifies a ~1 ulp gradient difference."""
    diff = (got - want).abs()
    assert float((diff <= 1e-5).float().mean()) >= 0.99, int((diff > 1e-5).sum())
    assert float(diff.max()) <= 0.1 * lr * T


LENGTHS = torch.tensor([7, 3, 1, 5, 4, 6])


@pytest.mark.parametrize("parts,with_lengths", [(0, False), (3, False), (0, True), (3, True)])  # (0, False): the authors' case
def test_eager_oracle_equals_the_authors_loop(parts, with_lengths):
    cfg = TrainConfig(batch_size=B, oracle=True, parts=parts)
    chunk = 1 if parts == 0 else -(-T // parts)
    lengths = LENGTHS if with_lengths else None
    batches = _batches()
    trainer, ref, plain = FPTTTrainer(_net(), cfg), _net(), _net()
    for x, y in batches:
        trainer.train_batch(x, y, lengths)
    table = _reference(ref, batches, cfg, chunk=chunk, lengths=lengths)
    _reference(plain, batches, cfg, oracle=False, chunk=chunk, lengths=lengths)
    assert trainer.oracle is not None and trainer.oracle.table is not None
    assert torch.allclose(trainer.oracle.table, table, atol=1e-6), "the soft-target tables differ"
    assert float(table.abs().sum()) > 0, "vacuous: no misclassified example filled the table"
    _assert_close(trainer.flat.flat.detach(), _flat(ref), cfg.lr)
    assert float((_flat(ref) - _flat(plain)).abs().max()) > 1e-4, "vacuous: the oracle term changed nothing"


def test_the_table_keeps_the_first_misclassified_sequence_per_class_and_ignores_ended_ones():
    oracle = OracleTargets(3)
    y = torch.tensor([0, 0, 1, 2, 2, 1])
    logits = torch.tensor([[5.0, 0, 0],  # class 0, right
                           [0, 4.0, 0],  # class 0, wrong: first for class 0
                           [0, 3.0, 0],  # class 1, right
                           [1.0, 0, 0],  # class 2, wrong, but ended (alive False)
                           [0, 2.0, 0],  # class 2, wrong: first live one for class 2
                           [0, 0, 1.0]])  # class 1, wrong: first for class 1
    alive = torch.tensor([True, True, True, False, True, True])
    oracle.observe(logits, y, 2, 3)  # the last update point: nothing to learn there
    assert oracle.table is not None and float(oracle.table.abs().sum()) == 0.0
    oracle.observe(logits, y, 1, 3, alive)
    table = oracle.table
    assert table is not None and table.shape == (3, 3, 3)
    for cls, row in ((0, 1), (1, 5), (2, 4)):
        assert torch.allclose(table[cls, 1], torch.softmax(logits[row], 0)), cls
    assert float(table[:, [0, 2]].abs().sum()) == 0.0, "only the observed update point changes"
    kept = table.clone()
    oracle.observe(logits[[0, 2]], y[[0, 2]], 1, 3)  # all right: nothing changes
    assert torch.equal(oracle.table, kept)
    q = oracle.targets(y, 1, 3)
    q.zero_()
    assert torch.equal(oracle.table, kept), "targets must be a copy"
    with pytest.raises(ValueError, match="update points per sequence"):
        oracle.targets(y, 0, 4)


def test_a_bad_or_missing_table_is_refused_with_one_line(tmp_path):
    cfg = TrainConfig(batch_size=B, oracle=True)
    trainer = FPTTTrainer(_net(), cfg)
    x, y = _batches(1)[0]
    trainer.train_batch(x, y)
    state = trainer.state_dict()
    fresh = FPTTTrainer(_net(), cfg)
    fresh.load_state_dict(state)
    assert fresh.oracle is not None and trainer.oracle is not None and torch.equal(fresh.oracle.table, trainer.oracle.table)
    table = state["oracle"]["table"]
    bad = [
        {**state, "oracle": {"classes": K, "table": table.clone().fill_(float("nan"))}},
        {**state, "oracle": {"classes": K, "table": table * 3.0 + 2.0}},
        {**state, "oracle": {"classes": K, "table": table[:2]}},
        {**state, "oracle": {"classes": K + 1, "table": None}},
        {**state, "oracle": {"classes": K, "table": "not a tensor"}},
        {**state, "oracle": {"classes": K, "table": table > 0.5}},  # not probabilities: bool
        {**state, "oracle": {"classes": K, "table": torch.zeros(K, T, K, dtype=torch.int64)}},
        {**state, "oracle": {"classes": K}},  # no table entry
        {k: v for k, v in state.items() if k != "oracle"},  # the run was started without the oracle
    ]
    for case in bad:
        with pytest.raises(loop.TrainingError) as info:
            loop._load_trainer(FPTTTrainer(_net(), cfg), case, tmp_path / "checkpoint.pt")
        assert "\n" not in str(info.value) and "oracle table state does not fit" in str(info.value)


def test_a_table_loaded_on_the_cpu_follows_the_run_to_its_device():
    """Checkpoints load on the CPU; the table moves to the labels' device at first use (here the meta device)."""
    oracle = OracleTargets(K)
    oracle.load_state_dict({"classes": K, "table": torch.full((K, T, K), 1.0 / K)})
    y = torch.zeros(B, dtype=torch.long, device="meta")
    assert oracle.targets(y, 0, T).device.type == "meta"
    assert oracle.table is not None and oracle.table.device.type == "meta"


def test_an_older_run_without_the_oracle_setting_resumes_and_refuses_turning_it_on(tmp_path):
    cfg = TrainConfig(method="fptt", epochs=1, batch_size=8, val_fraction=0.0)
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(6,))
    train, test = _data(24, 0), _data(8, 1)
    loop.fit(config, cfg, train, test, tmp_path, progress=False)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del payload["training_config"]["oracle"]  # written before the setting existed
    torch.save(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(loop.TrainingError, match="oracle: False then, True now"):
        loop.fit(config, TrainConfig(**{**cfg.to_dict(), "epochs": 2, "oracle": True}), train, test, tmp_path, resume=True, progress=False)
    loop.fit(config, TrainConfig(**{**cfg.to_dict(), "epochs": 2}), train, test, tmp_path, resume=True, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 2


@pytest.mark.skipif(why_not_compiled(torch.nn.Linear(1, 1), torch.device("cpu"), 1, False) is not None,
                    reason="no compiler for torch.compile here")
@pytest.mark.parametrize("parts,with_lengths", [(0, False), (0, True), (4, True)])  # K = 4: chunks of 2, 2, 2 and 1 steps
def test_compiled_oracle_equals_eager(parts, with_lengths):
    import torch._dynamo.utils as dynamo_utils

    lengths = LENGTHS if with_lengths else None
    cfg = TrainConfig(batch_size=B, oracle=True, parts=parts)
    eager, compiled = FPTTTrainer(_net(), cfg), FPTTTrainer(_net(), cfg, compile=True)
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    for x, y in _batches():
        got = compiled.train_batch(x, y, lengths)
        want = eager.train_batch(x, y, lengths)
        assert int(got[1]) == int(want[1]) and float(got[0]) == pytest.approx(float(want[0]), rel=1e-4)
    assert compiled.compiled is not None, compiled.compile_note
    want_graphs = 2 if parts else 1  # one per chunk length; each trainer has graphs of its own
    assert dynamo_utils.counters["stats"]["unique_graphs"] - frames == want_graphs, "not compiled (one graph per chunk length)"
    assert compiled.oracle is not None and eager.oracle is not None
    assert torch.allclose(compiled.oracle.table, eager.oracle.table, atol=1e-6)
    assert float(eager.oracle.table.abs().sum()) > 0
    _assert_close(compiled.flat.flat.detach(), eager.flat.flat.detach(), cfg.lr)
    with pytest.raises(ValueError, match="oracle term needs"):
        compiled.compiled(_batches(1)[0][0][:, :1], _batches(1)[0][1], torch.ones(B), compiled.model.initial_state(B))


def _data(n: int, seed: int):
    from fptt_edge.data.dataset import SequenceDataset

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = (torch.rand(n, T, C, generator=g) < 0.2 + 0.5 * (y[:, None, None] % C == torch.arange(C))).float()
    return SequenceDataset(x, y, [str(i) for i in range(K)], {"task": "test-data", "seed": seed})


def test_resume_refuses_a_crafted_table_for_other_sequences(tmp_path):
    cfg1 = TrainConfig(method="fptt", epochs=1, batch_size=8, oracle=True, val_fraction=0.0)
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(6,))
    train, test = _data(24, 0), _data(8, 1)
    loop.fit(config, cfg1, train, test, tmp_path, progress=False)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    table = payload["trainer"]["oracle"]["table"]
    assert table.shape == (K, T, K) and float(table.abs().sum()) > 0
    payload["trainer"]["oracle"]["table"] = torch.zeros(K, T + 5, K)
    torch.save(payload, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(loop.TrainingError, match=f"holds {T + 5} update points per sequence, this run has {T}") as info:
        loop.fit(config, cfg1, train, test, tmp_path, resume=True, progress=False)
    assert "\n" not in str(info.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("classes", [float("inf"), float("nan"), "ten"])
def test_resume_refuses_a_crafted_class_count_in_one_line(tmp_path, classes):
    cfg1 = TrainConfig(method="fptt", epochs=1, batch_size=8, oracle=True, val_fraction=0.0)
    config = ModelConfig(input_shape=(C,), num_classes=K, hidden=(6,))
    train, test = _data(24, 0), _data(8, 1)
    loop.fit(config, cfg1, train, test, tmp_path, progress=False)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    payload["trainer"]["oracle"]["classes"] = classes
    torch.save(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(loop.TrainingError, match="oracle table state does not fit this model"):
        loop.fit(config, cfg1, train, test, tmp_path, resume=True, progress=False)


# ---------------------------------------------------------------- BPTT with the same term


def _bptt_by_hand(model: LTCNetwork, x, y, lengths, table: torch.Tensor, cfg: TrainConfig) -> None:
    """One BPTT batch with the oracle, written step by step: sum_t [w CE + (1 - w) mean_c(-q log p)] / len per sequence."""
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg.lr)
    model.train()
    state = model.initial_state(B)
    lens = torch.full((B,), T) if lengths is None else lengths
    loss = torch.zeros(())
    for t in range(T):
        logits, state = model.step(x[:, t], state)
        for b in range(B):
            if t < int(lens[b]):
                w = (t + 1) / int(lens[b])
                logp = F.log_softmax(logits[b], dim=0)
                term = w * -logp[y[b]] + (1 - w) * (-(table[y[b], t] * logp)).mean()
                loss = loss + term / int(lens[b]) / B
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    optimizer.step()


@pytest.mark.parametrize("with_lengths", [False, True])
def test_bptt_oracle_equals_a_step_by_step_loss_and_fills_the_table_like_fptt(with_lengths):
    from fptt_edge.training.trainers import BPTTTrainer

    lengths = LENGTHS if with_lengths else None
    cfg = TrainConfig(method="bptt", batch_size=B, oracle=True)
    x, y = _batches(1)[0]
    table = torch.softmax(torch.randn(K, T, K, generator=torch.Generator().manual_seed(3)), dim=2)
    trainer, by_hand, plain = BPTTTrainer(_net(), cfg), _net(), BPTTTrainer(_net(), TrainConfig(method="bptt", batch_size=B))
    assert trainer.oracle is not None
    trainer.oracle.load_state_dict({"classes": K, "table": table})
    with torch.no_grad():  # the outputs the batch sees (before its update), for the table below
        logits, _ = _net()(x, _net().initial_state(B))
    trainer.train_batch(x, y, lengths)
    plain.train_batch(x, y, lengths)
    _bptt_by_hand(by_hand, x, y, lengths, table, cfg)
    got, want = _flat(trainer.model), _flat(by_hand)
    assert torch.allclose(got, want, atol=1e-6), float((got - want).abs().max())
    assert float((got - _flat(plain.model)).abs().max()) > 1e-4, "vacuous: the oracle term changed nothing"
    per_step = OracleTargets(K)
    per_step.load_state_dict({"classes": K, "table": table})
    alive = None if lengths is None else torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    for t in range(T):
        per_step.observe(logits[:, t], y, t, T, None if alive is None else alive[:, t])
    assert trainer.oracle.table is not None and per_step.table is not None
    assert torch.allclose(trainer.oracle.table, per_step.table, atol=1e-6)
    assert not torch.equal(per_step.table, table), "vacuous: nothing misclassified"
    resumed = BPTTTrainer(_net(), cfg)
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.oracle is not None and torch.equal(resumed.oracle.table, trainer.oracle.table)


def test_bptt_takes_the_oracle_with_the_weighted_loss_only():
    with pytest.raises(ValueError, match="weighted"):
        TrainConfig(method="bptt", bptt_loss="last", oracle=True)
    TrainConfig(method="fptt", bptt_loss="last", oracle=True)  # FPTT ignores bptt_loss
