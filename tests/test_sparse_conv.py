"""The event-driven conv front end (runtime/sparse_conv.py) against the dense conv and the dense graph."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from export_helpers import make_checkpoint

from fptt_edge.config import ModelConfig
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.runtime import RuntimeInputError, open_session
from fptt_edge.runtime.sparse_conv import ConvScatter, JitConvScatter, SparseConvSession

try:
    import numba  # noqa: F401

    ENGINES = ["numpy", "numba"]
except ImportError:  # the compiled scatter is the [events] extra; the numpy one is tested everywhere
    ENGINES = ["numpy", pytest.param("numba", marks=pytest.mark.skip(reason="numba not installed (pip install 'fptt-edge[events]')"))]

SPEC = {"task": "dvsgesture", "sensor_size": [128, 128, 2], "binning": {"by": "time", "steps": 20}, "downsample": 8, "normalisation": "binary"}
SHAPE = (2, 16, 16)


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sconv")
    net = make_checkpoint(tmp / "c.pt", ModelConfig(input_shape=SHAPE, num_classes=11, hidden=(32,), conv_channels=(8,)), SPEC, seed=1,
                          input_gain=3.0)
    export_checkpoint(tmp / "c.pt", tmp / "c.onnx", batch=None, check=False, log=lambda m: None)
    return tmp / "c.onnx", net


def persistent_frames(rng, n: int, density: float, persist: float = 0.8, shape=SHAPE) -> np.ndarray:
    """Binary frames; each keeps ``persist`` of the previous frame's active pixels (moving edges)."""
    size = int(np.prod(shape))
    k = int(size * density)
    active = rng.choice(size, k, replace=False)
    out = np.zeros((n, size), np.float32)
    for i in range(n):
        if i:
            keep = rng.choice(active, int(k * persist), replace=False)
            active = np.concatenate([keep, rng.choice(np.setdiff1d(np.arange(size), keep), k - len(keep), replace=False)])
        out[i, active] = 1.0
    return out.reshape(n, *shape)


def reference_conv(net, frames: np.ndarray) -> np.ndarray:
    """The first layer's conv + batch norm (eval) in float64."""
    layer = net.layers[0]
    conv, bn = layer.conv, layer.bn
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double()
    with torch.no_grad():
        y = torch.nn.functional.conv2d(torch.from_numpy(frames).double(), conv.weight.double(), conv.bias.double(), padding=conv.padding)
        return ((y - bn.running_mean.double()[:, None, None]) * g[:, None, None] + bn.bias.double()[:, None, None]).numpy()


@pytest.mark.parametrize("kernel,shape,scatter_kind", [(3, (2, 7, 9), "tables"), (5, (2, 4, 4), "no tables"), (3, (2, 7, 9), "numba"),
                                                      (5, (3, 6, 5), "numba"), (1, (2, 3, 4), "numba")])
def test_scatter_equals_a_dense_convolution_at_every_border(kernel, shape, scatter_kind):
    if scatter_kind == "numba" and "numba" not in ENGINES:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(kernel)
    w = rng.standard_normal((5, shape[0], kernel, kernel)).astype(np.float32)
    scatter = JitConvScatter(w, shape) if scatter_kind == "numba" else ConvScatter(w, shape, table_bytes=16 << 20 if scatter_kind == "tables" else 0)
    x = np.zeros(shape, np.float32)
    size = int(np.prod(shape))
    q = np.unique(np.r_[0, shape[2] - 1, size - 1, size // 2 - 1, rng.integers(0, size, 12)])  # corners, edges, both channels
    x.reshape(-1)[q] = rng.standard_normal(len(q))
    acc = np.zeros(5 * shape[1] * shape[2], np.float32)
    scatter.add(acc, q, x.reshape(-1)[q].copy())
    ref = torch.nn.functional.conv2d(torch.from_numpy(x[None]).double(), torch.from_numpy(w).double(), padding=kernel // 2)[0].numpy()
    np.testing.assert_allclose(acc.reshape(ref.shape), ref, atol=1e-5)
    if scatter_kind == "numba":  # the compiled kernel does not bounds-check: add does
        for bad_q, bad_acc in ((np.array([size]), acc), (np.array([-1]), acc), (q, acc[:-1]), (q, acc.astype(np.float64))):
            with pytest.raises(RuntimeInputError):
                scatter.add(bad_acc, bad_q)
        frame = np.zeros(size, np.float32)
        for call in (lambda: scatter.front(acc, frame, frame[:-1], np.zeros(5, np.float32), 1.0, 0.0),
                     lambda: scatter.update(acc[:-1], frame, frame, 1), lambda: scatter.rebuild(acc, frame[:-1], frame, np.zeros(5, np.float32)),
                     lambda: scatter.rebuild(acc, frame, frame.copy(), np.zeros(6, np.float32))):
            with pytest.raises(RuntimeInputError, match="accumulator"):
                call()
    scatter.add(acc, q)  # values 1: adds the conv of the 0/1 mask
    mask = (x != 0).astype(np.float64)
    ref += torch.nn.functional.conv2d(torch.from_numpy(mask[None]), torch.from_numpy(w).double(), padding=kernel // 2)[0].numpy()
    np.testing.assert_allclose(acc.reshape(ref.shape), ref, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rebuild_cost", [1e9, 0.0])
def test_front_end_equals_the_dense_conv_over_a_stream(conv_model, engine, rebuild_cost):
    """Changes scattered step after step (no refresh) stay equal to the conv of each frame; so do rebuilds
    from the active inputs (taken where fewer inputs are active than changed: an empty frame, frames that do not persist)."""
    path, net = conv_model
    sess = SparseConvSession(path, crossover=1.0, refresh=10**9, engine=engine, rebuild_cost=rebuild_cost)
    assert sess.engine == engine
    rng = np.random.default_rng(2)
    frames = persistent_frames(rng, 150, 0.08)
    frames[50:60] *= rng.choice(np.float32([0.5, 2.0, 3.0]), frames[50:60].shape)  # counts, not only 0/1
    frames[70] = 0.0  # an empty frame
    frames[100:110] = persistent_frames(rng, 10, 0.08, persist=0.0)  # active pixels that do not persist
    ref = reference_conv(net, frames)
    for t, frame in enumerate(frames):
        out = sess.convolve(frame[None]) if t % 2 else sess.step_events([np.flatnonzero(frame)], [frame.reshape(-1)[np.flatnonzero(frame)]])
        if t % 2 == 0:
            out = sess.conv_out
        np.testing.assert_allclose(out[0], ref[t], atol=2e-5, err_msg=f"step {t}")
    assert sess.counts["sparse"] == 150 and sess.counts["dense"] == 0
    assert sess.counts["rebuilds"] == 0 if rebuild_cost == 1e9 else 10 <= sess.counts["rebuilds"] <= 20


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("crossover,refresh", [(1.0, 10**9), (0.0, 100), (None, 7), (0.17, 10**9)])
def test_steps_equal_the_dense_graph(conv_model, crossover, refresh, engine):
    """Logits and every spike equal the full graph's, with the scatter only, the dense conv only, the measured crossover,
    and a crossover that the busier stream exceeds on some steps only, after the other stream was scattered."""
    path, _ = conv_model
    dense, sparse = open_session(path, streams=2), SparseConvSession(path, streams=2, crossover=crossover, refresh=refresh, engine=engine)
    rng = np.random.default_rng(3)
    xs = np.stack([persistent_frames(rng, 60, 0.05), persistent_frames(rng, 60, 0.2, persist=0.5)], 1)  # [T, 2 streams, ...]
    fired = 0.0
    for t, x in enumerate(xs):
        if t == 30:
            dense.reset(stream=1), sparse.reset(stream=1)
        a = dense.step(x).copy()
        b = sparse.step_events([np.flatnonzero(s) for s in x]).copy() if t % 3 == 0 else sparse.step(x).copy()
        np.testing.assert_allclose(a, b, atol=1e-5)
        sd, ss = dense.get_state(), sparse.get_state()
        for name in sd:
            assert np.array_equal(sd[name], ss[name]) if name.endswith(".s") else np.allclose(sd[name], ss[name], atol=1e-5), (t, name)
        fired += float(sd["l0.s"].sum())
    assert fired > 0, "vacuous: the conv layer never spiked"
    if crossover == 1.0:
        assert sparse.counts["dense"] == 0
    if crossover == 0.0:
        assert sparse.counts["sparse"] == 0
    if refresh == 7:
        assert sparse.counts["dense"] >= 60 // 7
    if crossover == 0.17:  # stream 1 changes 80-98 of 512 inputs per step: some steps scatter, some go dense after stream 0 was scattered
        assert sparse.counts["sparse"] > 0 and sparse.counts["dense"] > 0


def test_engine_choice(conv_model, monkeypatch):
    path, _ = conv_model
    with pytest.raises(RuntimeInputError, match="engine must be one of"):
        SparseConvSession(path, crossover=1.0, engine="cuda")
    monkeypatch.setitem(sys.modules, "numba", None)  # numba absent: auto falls back to numpy, an explicit request says what to install
    monkeypatch.delitem(sys.modules, "fptt_edge.runtime.conv_scatter_jit", raising=False)
    monkeypatch.delattr(sys.modules["fptt_edge.runtime"], "conv_scatter_jit", raising=False)
    assert SparseConvSession(path, crossover=1.0).engine == "numpy"
    with pytest.raises(RuntimeInputError, match=r"fptt-edge\[events\]"):
        SparseConvSession(path, crossover=1.0, engine="numba")


def test_crossover_is_measured_and_bad_input_is_refused(conv_model, tmp_path):
    path, _ = conv_model
    sess = SparseConvSession(path)
    calib = sess.calibrate(repeats=5)
    assert 0 <= sess.crossover <= 1 and calib["dense_us"] > 0 and calib["scatter_us_per_input"] > 0 and calib["rebuild_inputs"] > 0
    sess.step(np.zeros((1, *SHAPE), np.float32))
    before = sess.get_state()
    for active, values, match in (([np.array([0, 512])], None, r"lie in \[0, 512\)"), ([np.array([1.5])], None, "integer"),
                                  ([np.array([1])], [np.array([np.nan])], "finite"), (np.array([1]), None, "one per stream")):
        with pytest.raises(RuntimeInputError, match=match):
            sess.step_events(active, values)
    with pytest.raises(RuntimeInputError, match="input shape"):
        sess.step(np.zeros((1, 2, 8, 8), np.float32))
    assert all(np.array_equal(before[k], v) for k, v in sess.get_state().items())
    huge = np.full((1, *SHAPE), 3e38, np.float32)
    with pytest.raises(RuntimeInputError, match="NaN or Inf"):
        for _ in range(5):
            sess.step(huge)
    frame = persistent_frames(np.random.default_rng(4), 1, 0.1)
    sess.reset()
    with open_session(path) as dense:
        np.testing.assert_allclose(sess.step(frame), dense.step(frame), atol=1e-5)  # huge values left nothing behind
        np.testing.assert_allclose(sess.step(frame * 0), dense.step(frame * 0), atol=1e-5)
    with pytest.raises(RuntimeInputError, match="crossover"):
        SparseConvSession(path, crossover=1.5)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(RuntimeInputError, match="rebuild_cost"):
            SparseConvSession(path, crossover=1.0, rebuild_cost=bad)
    make_checkpoint(tmp_path / "d.pt", ModelConfig(input_shape=SHAPE, num_classes=3, hidden=(8,)), SPEC)
    export_checkpoint(tmp_path / "d.pt", tmp_path / "d.onnx", check=False, log=lambda m: None)
    with pytest.raises(RuntimeInputError, match="conv first layer"):
        SparseConvSession(tmp_path / "d.onnx")
