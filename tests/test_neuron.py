"""One LTC step against a hand-written numpy step."""
import copy

import numpy as np
import pytest
import torch

from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork, NetState, detach_state, flatten_state, unflatten_state


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_network_step(model, x, state):
    """The spec's equations written out in numpy for a dense network (one LTC layer + readout)."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    u, s, b, m = state
    cur = x @ p["layers.0.fc_x.weight"].T + p["layers.0.fc_x.bias"] + s @ p["layers.0.fc_r.weight"].T + p["layers.0.fc_r.bias"]
    alpha = sigmoid(p["layers.0.a_m"] * (np.concatenate([cur, u], 1) @ p["layers.0.gate_m.weight"].T + p["layers.0.gate_m.bias"]))
    rho = sigmoid(p["layers.0.a_a"] * (np.concatenate([cur, b], 1) @ p["layers.0.gate_a.weight"].T + p["layers.0.gate_a.bias"]))
    b_new = rho * b + (1 - rho) * s
    theta = 0.1 + 1.8 * b_new
    v = u + alpha * (cur - u)
    s_new = (v - theta > 0).astype(np.float64)
    u_new = (1 - s_new) * v
    o = s_new @ p["readout.fc.weight"].T + p["readout.fc.bias"]
    gam = sigmoid(p["readout.a_o"] * (np.concatenate([o, m], 1) @ p["readout.gate.weight"].T + p["readout.gate.bias"]))
    m_new = (1 - gam) * m + gam * o
    return m_new, (u_new, s_new, b_new, m_new)


@pytest.mark.parametrize("training", [False, True])
def test_dense_step_matches_numpy(training):
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=(7,), num_classes=3, hidden=(16,))).double()
    with torch.no_grad():  # non-trivial slopes and biases
        for name, p in model.named_parameters():
            if p.ndim <= 1:
                p.uniform_(0.5, 1.5) if name.endswith(("a_m", "a_a", "a_o")) else p.normal_(0, 0.3)
    model.train(training)
    rng = np.random.default_rng(1)
    state = model.initial_state(4, torch.device("cpu"))
    state = unflatten_state(model, [t.double() for t in flatten_state(state)])
    np_state = tuple(t.numpy().copy() for t in flatten_state(state))
    spikes = 0
    for _ in range(30):
        x = rng.random((4, 7))
        logits, state = model.step(torch.from_numpy(x), state)
        ref_logits, np_state = numpy_network_step(model, x, np_state)
        np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-10, atol=1e-12)
        for got, want in zip(flatten_state(state), np_state):
            np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
        spikes += np_state[1].sum()
    assert spikes > 0, "the check is vacuous without spikes"


def test_initial_state_follows_spec():
    model = LTCNetwork(ModelConfig(input_shape=(2, 8, 8), num_classes=4, hidden=(5,), conv_channels=(3,), b_j0=0.25))
    state = model.initial_state(2, torch.device("cpu"))
    names = model.state_names()
    assert names == ["l0.u", "l0.s", "l0.b", "l1.u", "l1.s", "l1.b", "readout.m"]
    for name, tensor, shape in zip(names, flatten_state(state), model.state_shapes(2)):
        assert tuple(tensor.shape) == shape
        expected = 0.25 if name.endswith(".b") else 0.0
        assert torch.all(tensor == expected), name
    assert model.state_shapes(1)[0] == (1, 3, 4, 4)


def test_uniform_initial_u_only_with_a_generator():
    model = LTCNetwork(ModelConfig(input_shape=(3,), num_classes=2, hidden=(50,), initial_u="uniform"))
    det = model.initial_state(4, torch.device("cpu"))
    assert torch.all(det.layers[0].u == 0)  # evaluation and export: deterministic
    rnd = model.initial_state(4, torch.device("cpu"), torch.Generator().manual_seed(0))
    u = rnd.layers[0].u
    assert u.min() >= 0 and u.max() < 1 and u.std() > 0.1


def test_conv_step_runs_and_sequence_equals_repeated_steps():
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=(2, 16, 16), num_classes=5, hidden=(12,), conv_channels=(4, 6))).eval()
    xs = (torch.rand(3, 9, 2, 16, 16) > 0.7).float()
    logits, final = model(xs)
    state = model.initial_state(3, torch.device("cpu"))
    for t in range(9):
        step_logits, state = model.step(xs[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=0)
    for a, b in zip(flatten_state(state), flatten_state(final)):
        assert torch.equal(a, b)


def test_state_is_a_named_structure_that_round_trips():
    model = LTCNetwork(ModelConfig(input_shape=(2, 8, 8), num_classes=4, hidden=(5,), conv_channels=(3,)))
    state = model.initial_state(2)
    assert isinstance(state, NetState) and len(state.layers) == 2 and state.readout.m.shape == (2, 4)
    flat = flatten_state(state)
    assert [tuple(t.shape) for t in flat] == model.state_shapes(2) and len(flat) == len(model.state_names())
    again = unflatten_state(model, flat)
    assert isinstance(again, NetState) and all(a is b for a, b in zip(flatten_state(again), flat))
    _, new = model.step(torch.rand(2, 2, 8, 8), state)
    assert all(not t.requires_grad for t in flatten_state(detach_state(new))) and any(t.requires_grad for t in flatten_state(new))


def test_one_step_serves_fp16_emulation_and_the_tie_checker():
    """The precision policy and the margins are options of the same step, not other copies of it."""
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=(2, 8, 8), num_classes=4, hidden=(6,), conv_channels=(3,))).eval()
    state = model.initial_state(3)
    x = torch.rand(3, 2, 8, 8) * 3
    margins: list[torch.Tensor] = []
    with torch.no_grad():
        logits, new = model.step(x, state, margins=margins)
        plain, _ = model.step(x, state)
        assert torch.equal(logits, plain) and len(margins) == len(model.layers)
        for m, st in zip(margins, new.layers):
            assert torch.equal((m > 0).to(m.dtype), st.s)  # s_t = H(v_t - theta_t)
        assert any(st.s.any() for st in new.layers)
        half = copy.deepcopy(model).half()
        lg, st16 = half.step(x, state, affine_dtype=torch.float16, state_dtype=torch.float32)
        assert lg.dtype == torch.float32 and all(t.dtype == torch.float32 for t in flatten_state(st16))
        assert 0 < (lg - logits).abs().max() < 0.1  # FP16 affine maps: close, not equal


def test_config_json_round_trip_and_validation():
    cfg = ModelConfig(input_shape=(2, 34, 34), num_classes=10, hidden=(32, 32), conv_channels=(8,))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    for bad in (dict(input_shape=(3, 3), num_classes=2), dict(input_shape=(3,), num_classes=1),
                dict(input_shape=(3,), num_classes=2, conv_channels=(4,)), dict(input_shape=(3,), num_classes=2, initial_u="x")):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "evil": 1})
