"""Device runtime: sessions vs PyTorch, stream resets, bad input, no torch, sparse input, build without TensorRT."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_helpers import check_data, make_checkpoint, nmnist_spec, real_spec

from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.contract import read_contract
from fptt_edge.data.tasks import test_set_from_spec as load_check_set
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.export.streams import make_streams
from fptt_edge.model import flatten_state
from fptt_edge.runtime import RuntimeInputError, open_session
from fptt_edge.runtime.sparse import SparseInputSession


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    spec, shape = real_spec()
    net = make_checkpoint(tmp / "m.pt", ModelConfig(input_shape=shape, num_classes=10, hidden=(48,)), spec, seed=3)
    export_checkpoint(tmp / "m.pt", tmp / "m.onnx", check=False, log=lambda m: None)
    export_checkpoint(tmp / "m.pt", tmp / "dyn.onnx", batch=None, check=False, log=lambda m: None)
    xs = make_streams(load_check_set(spec, check_data(spec), num_classes=10), 3, 120)
    return {"net": net, "static": tmp / "m.onnx", "dynamic": tmp / "dyn.onnx", "ckpt": tmp / "m.pt", "xs": xs, "tmp": tmp, "spec": spec}


def test_streams_with_independent_resets_match_pytorch(models):
    net, xs = models["net"], models["xs"]
    sess = open_session(models["dynamic"], streams=3)
    reset_at = {1: 40, 2: 77}  # stream -> step at which it is reset
    torch_states = [net.initial_state(1) for _ in range(3)]
    for t in range(xs.shape[1]):
        for s, when in reset_at.items():
            if t == when:
                sess.reset(stream=s)
                torch_states[s] = net.initial_state(1)
        logits = sess.step(xs[:, t]).copy()
        for s in range(3):
            with torch.no_grad():
                ref, torch_states[s] = net.step(torch.from_numpy(xs[s:s + 1, t]), torch_states[s])
            np.testing.assert_allclose(logits[s], ref[0].numpy(), atol=1e-5)
    state = sess.get_state()
    for s in range(3):
        for name, tensor in zip(net.state_names(), flatten_state(torch_states[s])):
            if name.endswith(".s"):
                np.testing.assert_array_equal(state[name][s], tensor[0].numpy())


@pytest.mark.parametrize("bad", ["shape", "dtype", "nan", "inf", "list"])
def test_bad_input_leaves_state_unchanged(models, bad):
    sess = open_session(models["static"])
    for t in range(10):
        sess.step(models["xs"][:1, t])
    before = sess.get_state()
    x = models["xs"][:1, 10].copy()
    x = {"shape": x[:, :-1] if x.ndim == 2 else x[:, :, :-1], "dtype": x.astype(np.float64), "nan": np.where(x == x, np.nan, x).astype(np.float32),
         "inf": np.full_like(x, np.inf), "list": x.tolist()}[bad]
    with pytest.raises(RuntimeInputError):
        sess.step(x)
    after = sess.get_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_state_get_set_and_validation(models):
    sess = open_session(models["static"])
    xs = models["xs"]
    for t in range(20):
        sess.step(xs[:1, t])
    saved = sess.get_state()
    a = [sess.step(xs[:1, t]).copy() for t in range(20, 40)]
    sess.set_state(saved)
    b = [sess.step(xs[:1, t]).copy() for t in range(20, 40)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    with pytest.raises(RuntimeInputError, match="state names"):
        sess.set_state({"l0.u": saved["l0.u"]})
    with pytest.raises(RuntimeInputError, match="finite float32"):
        sess.set_state({**saved, "l0.b": saved["l0.b"] * np.nan})
    with pytest.raises(RuntimeInputError, match="exported for batch 1"):
        open_session(models["static"], streams=4)
    sess.reset()
    init = read_contract(models["static"]).initial_state()
    assert all(np.array_equal(sess.get_state()[k], init[k]) for k in init)


def test_no_python_allocations_per_step(models):
    sess = open_session(models["static"])
    x = models["xs"][:1, 0].copy()
    for _ in range(50):
        sess.step(x)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for _ in range(2000):
        sess.step(x)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    assert grown < 16_384, f"{grown} bytes retained over 2000 steps"


def test_runtime_works_with_torch_unimportable(models, tmp_path):
    npz = tmp_path / "x.npz"
    np.savez(npz, x=models["xs"][:2, :30], y=np.array([1, 2]))
    code = f"""
import sys, json
sys.modules['torch'] = None
import numpy as np
from fptt_edge.runtime import open_session
s = open_session({str(models['static'])!r})
x = np.load({str(npz)!r})['x']
out = [s.step(x[0, t:t+1]).copy() for t in range(30)]
from fptt_edge.cli import main
main(['run', {str(models['static'])!r}, '--npz', {str(npz)!r}, '--json'], standalone_mode=False)
np.save({str(tmp_path / 'out.npy')!r}, np.stack(out))
assert 'torch' not in {{m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}}
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["recordings"] == 2 and summary["steps"] == 60
    with torch.no_grad():
        ref, _ = models["net"](torch.from_numpy(models["xs"][:1, :30]))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy")[:, 0], ref[0].numpy(), atol=1e-5)


def test_sparse_input_projection_matches_dense(models):
    dense, sparse = open_session(models["static"]), SparseInputSession(models["static"])
    xs, fired = models["xs"], 0.0
    for t in range(xs.shape[1]):
        a, b = dense.step(xs[:1, t]).copy(), sparse.step(xs[:1, t]).copy()
        np.testing.assert_allclose(a, b, atol=1e-5)
        sd, ss = dense.get_state(), sparse.get_state()
        assert np.array_equal(sd["l0.s"], ss["l0.s"]), t
        fired += float(sd["l0.s"].sum())
    assert fired > 0, "vacuous: the layer never spiked"
    busy = (np.random.default_rng(1).random((1, *dense.frame_shape)) < 0.5).astype(np.float32)  # above the crossover: dense gemv
    np.testing.assert_allclose(dense.step(busy), sparse.step(busy), atol=1e-5)
    flat = xs[0, 5].reshape(-1)
    idx = np.flatnonzero(flat)
    direct = SparseInputSession(models["static"]).project([idx], [flat[idx]])
    w = models["net"].layers[0].fc_x
    np.testing.assert_allclose(direct[0], (w.weight.detach().numpy() @ flat + w.bias.detach().numpy()), atol=1e-5)


def test_cli_run_bench_build(models, tmp_path):
    runner = CliRunner()
    npz = tmp_path / "x.npz"
    np.savez(npz, x=models["xs"][:1, :25])
    res = runner.invoke(main, ["run", str(models["static"]), "--npz", str(npz), "--every", "10"])
    assert res.exit_code == 0, res.output
    assert "step   10" in res.output and "final prediction" in res.output and '"p99"' in res.output
    res = runner.invoke(main, ["bench", str(models["dynamic"]), "--streams", "1,4", "--steps", "20", "--backends", "ort,tensorrt", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    engines = {(r["engine"], r["streams"]) for r in rows}
    assert {("ort", 1), ("ort", 4), ("torch-eager", 1), ("numpy-blas-floor", 4)} <= engines  # the checkpoint beside it is found by hash
    assert all(r["p50_us"] > 0 for r in rows if "unavailable" not in r)
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    if not has_trt:
        res = runner.invoke(main, ["build", str(models["static"]), "--device", "orin-nano-8gb", "--precision", "fp16", "--refit"])
        assert res.exit_code == 0, res.output
        assert "TensorRT cannot build here" in res.output and "trtexec --onnx=m.onnx" in res.output
        script = models["static"].with_suffix(".build.sh").read_text()
        assert "--noTF32 --fp16 --precisionConstraints=obey --layerPrecisions=" in script and "--refit" in script
        assert "node_gt:fp32" not in script and "node_sigmoid:fp32" in script  # the BOOL compare takes no constraint
        contract = json.loads(script.split("<<'CONTRACT'\n")[1].split("\nCONTRACT")[0])
        assert contract["build"]["precision"] == "fp16" and "fptt_edge.state" in contract["metadata"]
    res = runner.invoke(main, ["build", str(models["static"]), "--device", "orin-nano-8gb", "--dla"])
    assert res.exit_code == 2 and "no DLA" in res.output


def test_stream_recordings_library_call(models):
    """The run loop as a library function: predictions, per-recording results, callbacks, accuracy, latency."""
    from fptt_edge.runtime.inputs import Recording
    from fptt_edge.runtime.streaming import stream_recordings

    xs = models["xs"][:2, :20]
    recs = [Recording("a", xs[0], 1), Recording("b", xs[1], None)]
    classes = read_contract(models["static"]).class_names
    with open_session(models["static"]) as sess:
        expected = []
        for rec in recs:
            sess.reset()
            expected.append(classes[int([sess.step(f[None]) for f in rec.frames][-1][0].argmax())])
        seen = []
        out = stream_recordings(sess, recs, on_step=lambda rec, t, logits: seen.append((rec.name, t, logits.shape)))
        assert out["predictions"] == expected == [r["prediction"] for r in out["results"]]
        assert seen == [(r.name, t, (1, len(classes))) for r in recs for t in range(20)]
        assert (out["recordings"], out["steps"]) == (2, 40) and [r["label"] for r in out["results"]] == [classes[1], None]
        assert out["accuracy"] == float(expected[0] == classes[1]) and 0 < out["latency_us"]["p50"] <= out["latency_us"]["p99"]
        carried = stream_recordings(sess, recs, reset=False)  # the state runs on into the second recording
        sess.reset()
        for f in np.concatenate([xs[0], xs[1]]):
            last = sess.step(f[None])
        assert carried["predictions"][1] == classes[int(last[0].argmax())]
        with pytest.raises(RuntimeInputError, match="nothing to stream"):
            stream_recordings(sess, [Recording("empty", xs[0][:0])])
    with open_session(models["dynamic"], streams=2) as sess, pytest.raises(RuntimeInputError, match="one-stream"):
        stream_recordings(sess, recs)


def test_bench_matrix_summaries_and_torch_bench_library_calls(models):
    """The bench matrix, the info summaries and the PyTorch comparison, called without the CLI."""
    from fptt_edge.runtime.benchmark import bench_matrix, format_table
    from fptt_edge.runtime.errors import BackendUnavailable
    from fptt_edge.summary import checkpoint_summary, contract_summary, summarize
    from fptt_edge.torch_bench import bench_torch

    def gone(n):
        raise BackendUnavailable("not here\nsecond line")

    notes = []
    rows = bench_matrix(models["static"], [1, 4], ["ort", "tensorrt"], 20, log=notes.append,
                        references={"torch-eager": lambda n: bench_torch(models["ckpt"], n, 20), "gone": gone})
    assert len(notes) == 1 and "static batch of 1" in notes[0]  # timed at its own batch only
    assert [r["engine"] for r in rows] == ["ort", "tensorrt", "torch-eager", "gone", "numpy-blas-floor"]
    assert {r["streams"] for r in rows} == {1} and rows[1]["unavailable"] and rows[3]["unavailable"] == "not here"
    assert all(r["p50_us"] > 0 for r in rows if "unavailable" not in r)
    table = format_table(rows)
    assert table.splitlines()[0].split()[:2] == ["engine", "streams"] and "unavailable: not here" in table
    rows = bench_matrix(models["dynamic"], [1, 3], ["ort"], 20)
    assert [(r["engine"], r["streams"]) for r in rows] == [("ort", 1), ("numpy-blas-floor", 1), ("ort", 3), ("numpy-blas-floor", 3)]
    # info: the library's summaries are what the CLI prints
    info = json.loads(CliRunner().invoke(main, ["info", str(models["static"])]).output)
    assert info == json.loads(json.dumps(contract_summary(str(models["static"])))) == json.loads(json.dumps(summarize(str(models["static"]))))
    ckpt = summarize(models["ckpt"])
    assert ckpt == checkpoint_summary(models["ckpt"]) and ckpt["parameters"] == sum(p.numel() for p in models["net"].parameters())


def test_backends_follow_the_step_protocol(models):
    """OrtBackend (also inside the sparse session) and TensorRTBackend offer what StreamSession uses."""
    from fptt_edge.runtime.backend import AdaptableBackend, StepBackend
    from fptt_edge.runtime.ort_backend import OrtBackend
    from fptt_edge.runtime.trt_backend import TensorRTBackend

    methods = ["step", "read_state", "write_state", "set_initializers"]
    assert {*methods, "close"} <= set(dir(AdaptableBackend)) and "set_initializers" not in dir(StepBackend)
    with open_session(models["static"]) as dense, SparseInputSession(models["static"]) as sparse:
        for backend in (dense.backend, sparse.session.backend):
            assert isinstance(backend, OrtBackend) and backend.streams == 1
            assert backend.x.shape[0] == backend.logits.shape[0] == 1 and all(callable(getattr(backend, m)) for m in methods)
    assert all(callable(getattr(TensorRTBackend, m)) for m in methods)


def _gpu_ready() -> bool:
    try:
        import tensorrt  # noqa: F401

        from fptt_edge.runtime.trt_build import tensorrt_status
    except ImportError:
        return False
    return tensorrt_status() is None


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT >= 10 and a CUDA GPU")
def test_tensorrt_engine_matches_ort_and_refits(models):
    from fptt_edge.devices import load_profile
    from fptt_edge.runtime.trt_build import build_engine, plan_build

    plan, contract = plan_build(models["static"], "fp32", refit=True)
    engine = build_engine(plan, contract, load_profile("orin-nano-8gb"))
    ort_s = open_session(models["static"], "ort")
    for graph in (False, True):
        trt_s = open_session(engine, "tensorrt", cuda_graph=graph)
        ort_s.reset()
        for t in range(models["xs"].shape[1]):
            x = models["xs"][:1, t]
            np.testing.assert_allclose(trt_s.step(x), ort_s.step(x), atol=1e-4)
    w = models["net"].readout.fc.weight.detach().numpy() * 0.5
    trt_s.backend.refit({"readout.fc.weight": w})
    trt_s.reset()
    assert np.isfinite(trt_s.step(models["xs"][:1, 0])).all()


def test_foreign_and_corrupt_onnx_files_are_refused(models, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])]))
    onnx.save(plain, tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    good = models["static"].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 3])
    runner = CliRunner()
    for name, expected in [("plain", "not an fptt-edge step model"), ("junk", "not an ONNX model"), ("cut", "not an ONNX model")]:
        for args in (["info"], ["run", "--npz", "x.npz"]):
            res = runner.invoke(main, [args[0], str(tmp_path / f"{name}.onnx"), *args[1:]])
            assert res.exit_code == 2 and expected in res.output, (name, args, res.output)


def test_recordings_binned_with_the_models_own_metadata(models):
    from fptt_edge.runtime.inputs import from_contract_source

    spec, _ = nmnist_spec()  # real N-MNIST or a skip: on other data this test would check nothing
    contract = read_contract(models["static"])
    recs = from_contract_source(contract, check_data(spec), limit=5)
    ds = load_check_set(spec, check_data(spec), num_classes=10).take(5)
    assert [r.label for r in recs] == ds.y.tolist()
    for r, x in zip(recs, ds.x.numpy()):
        np.testing.assert_array_equal(r.frames, x)  # runtime binning == training binning, through the metadata


def _has_provider(name: str) -> bool:
    import onnxruntime as ort

    return name in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_provider("CUDAExecutionProvider"), reason="needs onnxruntime-gpu and a CUDA GPU")
def test_ort_cuda_session_matches_cpu(models):
    cpu, gpu = open_session(models["dynamic"], "ort", streams=3), open_session(models["dynamic"], "ort-cuda", streams=3)
    for t in range(models["xs"].shape[1]):
        if t == 30:
            cpu.reset(stream=1), gpu.reset(stream=1)
        np.testing.assert_allclose(gpu.step(models["xs"][:, t]), cpu.step(models["xs"][:, t]), atol=1e-4)
