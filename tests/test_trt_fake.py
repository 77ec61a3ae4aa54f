"""The TensorRT / CUDA / ONNX Runtime GPU paths, run on the CPU against fake ``tensorrt`` and
``cuda.bindings.runtime`` modules (tests/fakes) that record calls and simulate device memory,
streams, CUDA graphs, engines and refits as the real libraries behave (TensorRT 10.x and 11.x,
cuda-python 12/13). The real-GPU counterparts are in tests/test_trt_gpu.py (skipped without a GPU).

Numbered as issue 11's findings: 1 graph capture, 2 TF32, 3 TensorRT 11, 4 FP16 constraints,
5 return values / timing cache / engine+contract pair, 6 verify at a static batch, 7 refit,
8 lifetimes, 9 ONNX Runtime fall-backs, 10 DLA, 11 build targets; then install/doctor.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import install
from fakes.fake_cuda import FakeCudaRuntime
from fakes.models import counter_model

from fptt_edge.cli import main
from fptt_edge.devices import load_profile
from fptt_edge.runtime import BackendUnavailable, RuntimeInputError, open_session
from fptt_edge.runtime.trt_build import BuildError, build_engine, load_engine_contract, plan_build, trtexec_command, write_build_script

ORIN = load_profile("orin-nano-8gb")
ZERO = np.zeros((1, 2), np.float32)


@pytest.fixture
def model(tmp_path):
    return counter_model(tmp_path / "c.onnx", fp16_variant=True)


@pytest.fixture
def gpu(monkeypatch):
    """Fake TensorRT 10.3 + fake CUDA (a Jetson Orin: compute capability 8.7)."""
    return install(monkeypatch, "10.3.0")


def engine_for(model, precision="fp32", refit=True, tensorrt="10.3", **kw):
    plan, contract = plan_build(model, precision, refit, tensorrt=tensorrt, **kw)
    return build_engine(plan, contract, ORIN)


def steps(sess, n, x=ZERO):
    return [float(sess.step(x)[0, 0]) for _ in range(n)]


# 1 -- CUDA-graph capture must not advance the live state ---------------------------------------------

@pytest.mark.parametrize("cuda_graph", [False, True])
def test_first_steps_and_steps_after_a_refit_advance_once(gpu, model, cuda_graph):
    _, rt = gpu
    engine = engine_for(model)
    with open_session(engine, "tensorrt", cuda_graph=cuda_graph) as sess, open_session(model, "ort") as ref:
        assert steps(sess, 3) == steps(ref, 3) == [1.0, 2.0, 3.0]  # the old capture gave [3, 4, 5]
        sess.backend.refit({"readout.fc.weight": 2 * np.eye(2)})
        assert steps(sess, 2) == [8.0, 10.0]  # state 4, 5 through the new weights: no extra advance, no stale graph
        sess.reset()
        assert steps(sess, 2) == [2.0, 4.0]
        assert rt.live()["graph_execs"] == (2 if cuda_graph else 0) and rt.live()["graphs"] == 0
    assert rt.launches == (7 if cuda_graph else 0)  # one launch per step


def test_capture_never_uses_a_synchronous_copy_or_a_pending_shape_update(monkeypatch, tmp_path):
    """The dynamic-batch engine: set_input_shape leaves deferred work that must be flushed before a capture."""
    trt, rt = install(monkeypatch, "10.3.0")
    dyn = counter_model(tmp_path / "d.onnx", batch="N")
    engine = engine_for(dyn)
    with open_session(engine, "tensorrt", streams=3, cuda_graph=True) as sess:
        x = np.zeros((3, 2), np.float32)
        x[1] = 1.0
        logits = [sess.step(x).copy() for _ in range(2)]
    np.testing.assert_array_equal(logits[1], [[2, 2], [4, 4], [2, 2]])
    assert not [m for m in trt.log if "capture" in m]


# 2 -- TF32 off unless asked for ------------------------------------------------------------------------

def test_tf32_is_cleared_in_builds_and_the_cuda_provider(gpu, model, monkeypatch):
    trt, _ = gpu
    engine = engine_for(model)
    assert ("clear_flag", "TF32") in trt.calls and not json.loads(Path(str(engine) + ".json").read_text())["build"]["tf32"]
    plan, _ = plan_build(model, tensorrt="10.3")
    assert "--noTF32" in trtexec_command(plan)
    plan, contract = plan_build(model, tensorrt="10.3", tf32=True)
    assert "--noTF32" not in trtexec_command(plan)
    build_engine(plan, contract, ORIN)
    assert ("set_flag", "TF32") in trt.calls and json.loads(Path(str(engine) + ".json").read_text())["build"]["tf32"]

    from fptt_edge.runtime.ort_backend import provider_options, tf32_in_effect

    cuda = dict(provider_options("ort-cuda", None, False)[0][1])
    assert cuda["use_tf32"] == "0" and dict(provider_options("ort-cuda", None, False, tf32=True)[0][1])["use_tf32"] == "1"
    assert dict(provider_options("ort-trt", None, False)[1][1])["use_tf32"] == "0"  # the CUDA fall-back of the TensorRT provider
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert tf32_in_effect("ort-trt", False) is True  # the TensorRT provider has no option: only the environment switch
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert tf32_in_effect("ort-trt", False) is False and tf32_in_effect("ort", True) is False


# 3 -- TensorRT 11: strongly typed, from the FP16 variant; 12 refused -------------------------------------

def test_tensorrt_11_builds_fp16_from_the_fp16_variant(monkeypatch, model, tmp_path):
    trt, _ = install(monkeypatch, "11.1.0")
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
    plan, contract = plan_build(model, "fp16", refit=True, tensorrt="11.1")
    assert plan.onnx.name == "c.fp16.onnx" and plan.strongly_typed and not plan.fp32_layers
    cmd = trtexec_command(plan)
    assert "--onnx=c.fp16.onnx" in cmd and "--noTF32" in cmd
    assert not [c for c in cmd if c.startswith(("--fp16", "--precisionConstraints", "--layerPrecisions", "--layerOutputTypes"))]
    engine = build_engine(plan, contract, ORIN)  # the fake has no layer.precision on 11: setting one would fail
    assert ("parse", "c.fp16.onnx") in trt.calls and not [c for c in trt.calls if c[0] in ("precision", "output_type")]
    build = json.loads(Path(str(engine) + ".json").read_text())["build"]
    assert build["strongly_typed"] and build["onnx"] == "c.fp16.onnx" and build["model"] == "c.onnx"
    with open_session(engine, "tensorrt", cuda_graph=True) as sess:
        assert steps(sess, 3) == [1.0, 2.0, 3.0]
        sess.backend.refit_initializers({"readout.fc.weight": np.eye(2, dtype=np.float32) * 3})  # cast to the engine's FP16
        assert steps(sess, 1) == [12.0]
    bare = counter_model(tmp_path / "bare.onnx")
    with pytest.raises(BuildError, match="--fp16-variant"):
        plan_build(bare, "fp16", tensorrt="11.1")
    assert plan_build(bare, "fp32", tensorrt="11.0")[0].onnx.name == "bare.onnx"


def test_unsupported_tensorrt_versions_are_refused_clearly(monkeypatch, model):
    with pytest.raises(BuildError, match="10.x and 11.x only.*tensorrt>=10,<12"):
        plan_build(model, tensorrt="12.0")
    with pytest.raises(BuildError, match="ort-trt"):
        plan_build(model, tensorrt="8.5.2")
    install(monkeypatch, "12.0.1")
    from fptt_edge.runtime.trt_backend import import_tensorrt

    with pytest.raises(BackendUnavailable, match="tensorrt>=10,<12"):
        import_tensorrt()


# 4 -- one FP16 constraint rule, exact names, no BOOL outputs or Casts ------------------------------------

def test_fp16_constraints_skip_bool_outputs_and_casts_and_match_trtexec(gpu, model):
    trt, _ = gpu
    plan, contract = plan_build(model, "fp16", tensorrt="10.3")
    assert plan.fp32_layers == ["node_add", "node_add_1", "node_mul", "node_add_2"]  # not node_gt (BOOL), node__to_copy (Cast), Gemm
    cmd = trtexec_command(plan)
    names = ",".join(f"{n}:fp32" for n in plan.fp32_layers)
    assert f"--layerPrecisions={names}" in cmd and f"--layerOutputTypes={names}" in cmd and "--precisionConstraints=obey" in cmd
    build_engine(plan, contract, ORIN)  # under OBEY the fake fails the build on a constraint it cannot obey
    built = next(c[1] for c in trt.calls if c[0] == "build")
    assert built["fp16"] and built["constrained"] == plan.fp32_layers
    assert sorted({c[1] for c in trt.calls if c[0] == "precision"}) == sorted(plan.fp32_layers)
    assert {c[1] for c in trt.calls if c[0] == "output_type"} == set(plan.fp32_layers)

    import onnx

    from fptt_edge.precision_rules import constrained_layers, fp32_nodes

    m = onnx.load(str(model))
    assert "node_gt" in fp32_nodes(m) and "node_gt" not in constrained_layers(m)  # the report still lists it


# 5 -- return values, timing cache, engine + contract as a pair -------------------------------------------

def test_stale_or_corrupt_timing_cache_is_replaced_and_engine_contract_pair_is_checked(gpu, model):
    trt, _ = gpu
    plan, contract = plan_build(model, tensorrt="10.3")
    warnings = []
    for blob in (b"FAKECACHE STALE from another GPU", b"\x00garbage"):
        plan.timing_cache.write_bytes(blob)
        build_engine(plan, contract, ORIN, warn=warnings.append)
        assert plan.timing_cache.read_bytes().startswith(b"FAKECACHE:fresh")  # rewritten, not a crash after the engine
    assert sum("stale or corrupt timing cache" in w for w in warnings) == 2
    data = json.loads(Path(str(plan.engine) + ".json").read_text())
    assert len(data["build"]["engine_sha256"]) == 64 and data["build"]["portable"] is False
    load_engine_contract(plan.engine)
    assert len(data["build"]["metadata_sha256"]) == 64
    edited = {**data, "metadata": {**data["metadata"], "fptt_edge.class_names": json.dumps([f"x{i}" for i in range(10)])}}
    Path(str(plan.engine) + ".json").write_text(json.dumps(edited))  # a hand edit of the contract's metadata
    with pytest.raises(BackendUnavailable, match="metadata changed since the build"):
        load_engine_contract(plan.engine)
    Path(str(plan.engine) + ".json").write_text(json.dumps(data))
    plan.engine.write_bytes(plan.engine.read_bytes() + b" ")  # an engine replaced without its contract
    with pytest.raises(BackendUnavailable, match="not a pair"):
        load_engine_contract(plan.engine)


def test_a_failed_engine_write_leaves_no_mismatched_pair(gpu, model, monkeypatch):
    plan, contract = plan_build(model, tensorrt="10.3")
    build_engine(plan, contract, ORIN)
    import fptt_edge.runtime.trt_build as tb

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(tb, "write_bytes_atomic", full_disk)
    with pytest.raises(OSError):
        build_engine(plan, contract, ORIN)
    assert not Path(str(plan.engine) + ".json").exists()  # the old contract never describes a new engine


def test_parser_errors_and_refused_calls_are_reported(monkeypatch, model, tmp_path):
    install(monkeypatch, "10.3.0", bad_parse=True)
    plan, contract = plan_build(model, tensorrt="10.3")
    with pytest.raises(RuntimeError, match="UNSUPPORTED_NODE"):
        build_engine(plan, contract, ORIN)
    assert not plan.engine.exists()
    trt, rt = install(monkeypatch, "10.3.0")
    dyn = counter_model(tmp_path / "d.onnx", batch="N")
    plan, contract = plan_build(dyn, tensorrt="10.3", streams=4)
    engine = build_engine(plan, contract, ORIN)
    with pytest.raises(RuntimeInputError, match="outside the engine's optimisation profile"):
        open_session(engine, "tensorrt", streams=65)  # max 64: set_input_shape returns False
    assert rt.live()["allocations"] == 0 and rt.live()["streams"] == 0  # a failed open frees what it took
    with open_session(engine, "tensorrt", streams=2) as sess:
        sess.backend.context.execute_async_v3 = lambda stream: False
        with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
            sess.step(np.zeros((2, 2), np.float32))
        sess.backend.context.set_tensor_address = lambda name, ptr: False
        with pytest.raises(RuntimeError, match="refused the address"):
            sess.step(np.zeros((2, 2), np.float32))
    rt.fail["cudaMemcpyAsync"] = rt.cudaError_t.cudaErrorInvalidValue
    with open_session(engine, "tensorrt", streams=2) as sess, pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        sess.step(np.zeros((2, 2), np.float32))


# 6 -- verify at the engine's own (static) batch ------------------------------------------------------------

def test_verify_engine_steps_a_static_batch_engine_at_its_batch(gpu, tmp_path):
    from fptt_edge.runtime.verify import verify_engine

    m = counter_model(tmp_path / "b3.onnx", batch=3)
    engine = engine_for(m)
    report = verify_engine(m, engine, steps=12)
    assert report["passed"] and report["streams"] == 3 and report["steps"] == 12 and report["max_abs_logits"] == 0.0
    assert report["tf32"] is False and report["precision"] == "fp32" and report["tensorrt"] == "10.3.0"
    npz = tmp_path / "f.npz"
    np.savez(npz, x=np.random.default_rng(0).random((4, 5, 2)).astype(np.float32), y=np.arange(4) % 2)
    assert verify_engine(m, engine, npz=npz, steps=20)["passed"]


# 7 -- refit: all or nothing, companions supplied, rolled back, verified -------------------------------------

def engine_weights(sess):
    return {k: v.copy() for k, v in sess.backend.engine.weights.items()}


def test_refit_supplies_companion_weights_and_refuses_bad_input_without_changes(gpu, model):
    trt, _ = gpu
    with open_session(engine_for(model), "tensorrt") as sess:
        before = engine_weights(sess)
        with pytest.raises(KeyError, match="not refittable"):
            sess.backend.refit_initializers({"readout.fc.weight": np.eye(2), "nope": np.zeros(2)})
        with pytest.raises(ValueError, match="3 values given"):
            sess.backend.refit_initializers({"readout.fc.weight": np.eye(2), "readout.fc.bias": np.zeros(3)})
        with pytest.raises(ValueError, match="finite"):
            sess.backend.refit_initializers({"readout.fc.bias": np.array([np.nan, 0.0])})
        assert all(np.array_equal(before[k], v) for k, v in engine_weights(sess).items())
        assert sess.backend.set_initializers({"readout.fc.bias": np.array([0.5, -0.5], np.float32)}) == "refit"
        assert sess.backend.last_refit["companions"] == ["readout.fc.weight"]  # TensorRT#4299: the Gemm's weight was "missing"
        assert sess.backend.last_refit["verified"]["max_abs_logits"] < 1e-6
        np.testing.assert_allclose(sess.step(ZERO), [[1.5, 0.5]])
    from fptt_edge.runtime.trt_backend import RefitError

    with open_session(engine_for(model, refit=False), "tensorrt") as sess, pytest.raises(RefitError, match="build --refit"):
        sess.backend.set_initializers({"readout.fc.bias": np.zeros(2)})


def test_a_failed_refit_is_rolled_back(monkeypatch, model):
    trt, _ = install(monkeypatch, "10.3.0", fail_refit=1)
    with open_session(engine_for(model), "tensorrt", cuda_graph=True) as sess:
        steps(sess, 1)
        before = engine_weights(sess)
        from fptt_edge.runtime.trt_backend import RefitError

        with pytest.raises(RefitError, match="refit_cuda_engine failed; the previous weights were restored"):
            sess.backend.refit_initializers({"readout.fc.weight": 5 * np.eye(2), "readout.fc.bias": np.ones(2)})
        assert all(np.array_equal(before[k], v) for k, v in engine_weights(sess).items())  # the fake had applied a subset
        assert steps(sess, 1) == [2.0]  # and it keeps running, graphs re-captured


def test_a_refit_that_disagrees_with_onnx_runtime_is_rolled_back(gpu, model):
    """TensorRT 11.3's release notes report REFIT dropping a GEMM bias: the probe step catches such a refit."""
    trt, _ = gpu
    from fptt_edge.runtime.trt_backend import RefitError

    with open_session(engine_for(model), "tensorrt") as sess:
        real = trt.Refitter.refit_cuda_engine

        def drops_bias(self):  # reports success, but the bias keeps its old value
            old = self.engine.weights["readout.fc.bias"].copy()
            ok = real(self)
            self.engine.weights["readout.fc.bias"] = old
            return ok

        trt.Refitter.refit_cuda_engine = drops_bias
        with pytest.raises(RefitError, match="disagrees with ONNX Runtime.*restored"):
            sess.backend.refit_initializers({"readout.fc.bias": np.array([3.0, 3.0], np.float32)})
        trt.Refitter.refit_cuda_engine = real
        assert steps(sess, 1) == [1.0]


def test_refit_without_the_model_beside_the_engine(gpu, model, tmp_path):
    trt, _ = gpu
    from fptt_edge.runtime.trt_backend import RefitError

    engine = engine_for(model)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in (engine, Path(str(engine) + ".json")):
        shutil.copy(f, moved / f.name)
    with open_session(moved / engine.name, "tensorrt") as sess:
        with pytest.raises(RefitError, match="also needs.*nothing was changed"):
            sess.backend.refit_initializers({"readout.fc.bias": np.ones(2)})  # the weight's current value is unknown
        sess.backend.refit_initializers({"readout.fc.bias": np.ones(2), "readout.fc.weight": np.eye(2)})
        assert "skipped" in sess.backend.last_refit["verified"]
        trt.knobs["fail_refit"] = 1  # the values are known now (the last refit): a failure is rolled back
        with pytest.raises(RefitError, match="previous weights were restored"):
            sess.backend.refit_initializers({"readout.fc.bias": np.zeros(2), "readout.fc.weight": np.eye(2)})
        assert steps(sess, 1) == [2.0]
    with open_session(moved / engine.name, "tensorrt") as sess:
        trt.knobs["fail_refit"] = 1  # a first refit fails, the old values unknown: the backend refuses to go on
        with pytest.raises(RefitError, match="could not be restored"):
            sess.backend.refit_initializers({"readout.fc.bias": np.zeros(2), "readout.fc.weight": np.eye(2)})
        with pytest.raises(RuntimeError, match="reopen the session"):
            sess.step(ZERO)


# 8 -- lifetimes ------------------------------------------------------------------------------------------------

def test_graphs_stream_and_buffers_are_released(gpu, model):
    _, rt = gpu
    sess = open_session(engine_for(model), "tensorrt", cuda_graph=True)
    for k in range(4):
        steps(sess, 2)
        sess.backend.refit_initializers({"readout.fc.weight": (k + 1) * np.eye(2)})
        assert rt.live()["graph_execs"] == 0 and rt.live()["graphs"] == 0  # destroyed at the refit
    steps(sess, 1)
    assert rt.live()["graph_execs"] == 2 and rt.live()["streams"] == 1
    sess.close()
    assert rt.live() == {"allocations": 0, "streams": 0, "graphs": 0, "graph_execs": 0}
    with pytest.raises(RuntimeInputError, match="closed"):
        sess.step(ZERO)


# 9 -- ONNX Runtime's silent CPU fall-back ---------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Specified provider")
def test_ort_gpu_backends_refuse_a_session_that_fell_back_to_the_cpu(model, monkeypatch):
    import onnxruntime as ort

    from fptt_edge.runtime.benchmark import bench_matrix

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    for backend in ("ort-cuda", "ort-trt"):  # listed, but this onnxruntime cannot load them: the session gets the CPU
        with pytest.raises(BackendUnavailable, match="fell back to \\['CPUExecutionProvider'\\]"):
            open_session(model, backend)
    rows = bench_matrix(model, [1], ["ort", "ort-cuda"], 5)
    assert "p50_us" in rows[0] and rows[0]["providers"] == ["CPUExecutionProvider"]
    assert "fell back" in rows[1]["unavailable"]  # the row says so instead of timing the CPU
    import os

    assert os.environ.get("NVIDIA_TF32_OVERRIDE") == "0"  # ort-trt without tf32: the provider's only switch


# 10 -- DLA ---------------------------------------------------------------------------------------------------

def test_dla_plans_fp16_prefer_static_and_gpu_pinned_fp32_layers(monkeypatch, model, tmp_path):
    with pytest.raises(BuildError, match="FP16 and INT8 only"):
        plan_build(model, "fp32", dla=True, tensorrt="10.3")
    with pytest.raises(BuildError, match="static shapes"):
        plan_build(counter_model(tmp_path / "d.onnx", batch="N"), "fp16", dla=True, tensorrt="10.3")
    with pytest.raises(BuildError, match="no DLA support"):
        plan_build(model, "fp16", dla=True, tensorrt="11.1")
    plan, contract = plan_build(model, "fp16", dla=True, tensorrt="10.3")
    cmd = trtexec_command(plan)
    assert "--precisionConstraints=prefer" in cmd and "--precisionConstraints=obey" not in cmd  # trtexec sets PREFER for DLA
    assert "--layerDeviceTypes=" + ",".join(f"{n}:GPU" for n in plan.fp32_layers) in cmd and "--useDLACore=0" in cmd
    trt, _ = install(monkeypatch, "10.3.0", dla_cores=2)
    engine = build_engine(plan, contract, load_profile("agx-orin-64gb"))
    built = next(c[1] for c in trt.calls if c[0] == "build")
    assert ("set_flag", "PREFER_PRECISION_CONSTRAINTS") in trt.calls and ("set_flag", "OBEY_PRECISION_CONSTRAINTS") not in trt.calls
    assert built["dla_layers"] == ["node_linear"]  # the FP32 layers stay on the GPU
    with pytest.raises(RuntimeInputError, match="CUDA graphs cannot capture DLA"):
        open_session(engine, "tensorrt", cuda_graph=True)
    with open_session(engine, "tensorrt") as sess:
        assert steps(sess, 2) == [1.0, 2.0]
    install(monkeypatch, "10.3.0", dla_cores=0)
    with pytest.raises(BackendUnavailable, match="no DLA core"):
        build_engine(plan, contract, load_profile("agx-orin-64gb"))


# 11 -- build targets the profile's GPU and TensorRT, or says it does not ----------------------------------------

def test_build_refuses_another_gpu_unless_here(monkeypatch, model):
    desktop = FakeCudaRuntime(devices=[{"name": b"NVIDIA GeForce RTX 4090", "major": 8, "minor": 9, "totalGlobalMem": 24 << 30, "integrated": 0}])
    install(monkeypatch, "10.3.0", cuda=desktop)
    runner = CliRunner()
    res = runner.invoke(main, ["build", str(model), "--device", "orin-nano-8gb"])
    assert res.exit_code == 2 and "not a orin-nano-8gb" in res.output and "RTX 4090" in res.output and "--here" in res.output
    assert model.with_suffix(".build.sh").is_file() and not model.with_suffix(".engine").exists()
    res = runner.invoke(main, ["build", str(model), "--device", "orin-nano-8gb", "--here"])
    assert res.exit_code == 0, res.output
    assert "not for orin-nano-8gb" in res.output and "not portable" in res.output and '"passed": true' in res.output
    build = json.loads(model.with_suffix(".engine.json").read_text())["build"]
    assert build["device_profile"] is None and build["built_on"]["name"] == "NVIDIA GeForce RTX 4090"
    assert build["built_on"]["compute_capability"] == "8.9" and build["portable"] is False
    install(monkeypatch, "10.7.0")  # an Orin, but another TensorRT than the profile's
    res = runner.invoke(main, ["build", str(model), "--device", "orin-nano-8gb"])
    assert res.exit_code == 2 and "this TensorRT is 10.7.0" in res.output
    install(monkeypatch, "10.3.0")
    res = runner.invoke(main, ["build", str(model), "--device", "orin-nano-8gb", "--precision", "fp16", "--refit"])
    assert res.exit_code == 0, res.output
    build = json.loads(model.with_suffix(".engine.json").read_text())["build"]
    assert build["device_profile"] == "orin-nano-8gb" and build["built_on"]["name"] == "Fake Orin (nvgpu)" and build["fp32_layers"] == 4


def _files(folder: Path) -> dict:
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


@pytest.mark.parametrize("tensorrt", ["10.3.0", None])
def test_build_never_writes_over_its_input(monkeypatch, model, tmp_path, tensorrt):
    install(monkeypatch, tensorrt)
    named = tmp_path / "m.engine"  # the engine path (MODEL with .engine) would be the input itself
    shutil.copy(model, named)
    before = _files(tmp_path)
    res = CliRunner().invoke(main, ["build", str(named), "--device", "orin-nano-8gb"])
    assert res.exit_code == 2 and res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1 and "write over its input" in res.output
    assert _files(tmp_path) == before


def test_tensorrt_11_refuses_a_stale_fp16_variant(monkeypatch, model, tmp_path):
    import onnx

    other = counter_model(tmp_path / "other.onnx")
    m = onnx.load(str(other))
    for p in m.metadata_props:
        if p.key == "fptt_edge.checkpoint_sha256":
            p.value = "1" * 64  # another checkpoint exported over c.onnx, without --fp16-variant
    onnx.save(m, str(model))
    with pytest.raises(BuildError, match="not the FP16 variant.*--fp16-variant again"):
        plan_build(model, "fp16", tensorrt="11.1")
    install(monkeypatch, "11.1.0")
    res = CliRunner().invoke(main, ["build", str(model), "--device", "orin-nano-8gb", "--precision", "fp16", "--here"])
    assert res.exit_code == 2 and "not the FP16 variant" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert plan_build(model, "fp32", tensorrt="11.1")[0].onnx == model  # FP32 does not read the variant


def test_build_script_checks_the_tensorrt_version_and_installs_engine_and_contract_as_a_pair(model, tmp_path):
    if not shutil.which("bash") or not shutil.which("sha256sum"):
        pytest.skip("needs bash and sha256sum")
    plan, contract = plan_build(model, "fp16", refit=True, tensorrt=ORIN.tensorrt)
    script = write_build_script(plan, ORIN, contract)
    text = script.read_text()
    assert "--noTF32" in text and "--layerOutputTypes=" in text and "node_gt" not in text
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in --saveEngine=*) echo ENGINE > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": str(fake)}
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "this plan is for TensorRT 10.3" in res.stderr and not plan.engine.exists()
    res = subprocess.run(["bash", str(script)], env={**env, "FORCE": "1"}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert plan.engine.read_text() == "ENGINE\n"
    load_engine_contract(plan.engine)  # the contract names the engine's hash
    assert json.loads(Path(str(plan.engine) + ".json").read_text())["build"]["precision"] == "fp16"


def test_build_script_runs_nothing_that_names_or_profile_fields_hold(model, tmp_path):
    """A file name or a profile field with a newline, quotes or $(...) stays text in the script."""
    import dataclasses

    if not shutil.which("bash") or not shutil.which("sha256sum"):
        pytest.skip("needs bash and sha256sum")
    work = tmp_path / "w"
    work.mkdir()
    evil = work / "a\ntouch PWNED1\n$(touch PWNED2)`touch PWNED3`.onnx"
    shutil.copy(model, evil)
    profile = dataclasses.replace(ORIN, module='Orin "$(touch PWNED4)"\ntouch PWNED5', name="orin$(touch PWNED6)")
    plan, contract = plan_build(evil, "fp32", tensorrt=ORIN.tensorrt)
    script = write_build_script(plan, profile, contract)
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in --saveEngine=*) echo ENGINE > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": str(fake)}
    mismatch = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)  # the version check's message
    built = subprocess.run(["bash", str(script)], env={**env, "FORCE": "1"}, capture_output=True, text=True, cwd=tmp_path)
    assert mismatch.returncode == 1 and "$(touch PWNED6)" in mismatch.stderr
    assert built.returncode == 0, built.stderr
    assert not [p.name for p in (*tmp_path.rglob("PWNED*"), *Path.cwd().glob("PWNED*"))]
    assert plan.engine.read_text() == "ENGINE\n"


# install, doctor, extras --------------------------------------------------------------------------------------

def test_extras_never_install_onnxruntime_and_onnxruntime_gpu_together():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in v} for k, v in extras.items()}
    for combo in (["train", "gpu"], ["runtime", "gpu"], ["gpu", "ort-gpu"], ["jetson"], ["train", "test"], ["train", "gpu", "test"]):
        got = set().union(*(names[c] for c in combo))
        assert not {"onnxruntime", "onnxruntime-gpu"} <= got, combo
    assert any(r.startswith("tensorrt>=10") and "<12" in r for r in extras["gpu"])
    assert any(r.startswith("cuda-python>=12.6") and "<13" in r for r in extras["jetson"])
    assert not [r for r in extras["jetson"] if r.startswith(("tensorrt", "onnxruntime"))]  # from JetPack / NVIDIA's index


def fake_jetson_root(tmp_path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    return tmp_path


def test_doctor_reports_what_each_backend_needs(monkeypatch, tmp_path):
    from fptt_edge.runtime.doctor import diagnose, format_report

    install(monkeypatch, None)  # no TensorRT; a fake CUDA with an Orin
    r = diagnose(root=fake_jetson_root(tmp_path), probe=False)
    assert r["jetson"] == {"l4t": "36.4.3", "jetpack": "6", "model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"}
    assert r["cuda"]["gpu"]["compute_capability"] == "8.7" and r["cuda"]["driver_cuda"] == "12.6" and r["cuda"]["error"] is None
    assert r["backends"]["ort"]["ok"] and not r["backends"]["tensorrt"]["ok"]
    assert "python3-libnvinfer" in r["backends"]["tensorrt"]["needs"] and "--system-site-packages" in r["backends"]["tensorrt"]["needs"]
    assert "pypi.jetson-ai-lab.io" in r["backends"]["ort-cuda"]["needs"]
    text = format_report(r)
    assert "jetson: NVIDIA Jetson Orin Nano" in text and "tensorrt   missing" in text

    install(monkeypatch, "10.3.0", dla_cores=2)
    r = diagnose(root=tmp_path / "nowhere", probe=False)
    assert r["jetson"] is None and r["backends"]["tensorrt"]["ok"] and r["backends"]["dla"]["ok"] and r["tensorrt"]["dla_cores"] == 2
    install(monkeypatch, "11.1.0", dla_cores=2)
    r = diagnose(root=tmp_path / "nowhere", probe=False)
    assert r["backends"]["tensorrt"]["ok"] and not r["backends"]["dla"]["ok"] and "11.0/11.1" in r["backends"]["dla"]["needs"]
    install(monkeypatch, "10.3.0", cuda=FakeCudaRuntime(driver=12060, runtime=13050))  # cuda-python 13 on a CUDA 12 driver
    r = diagnose(root=tmp_path / "nowhere", probe=False)
    assert not r["backends"]["tensorrt"]["ok"] and "cudaErrorInsufficientDriver" in r["backends"]["tensorrt"]["needs"]
    assert "cuda-python>=12.6,<13" in r["backends"]["tensorrt"]["needs"]


def test_doctor_cuda_line_says_not_installed_once(monkeypatch, tmp_path):
    """Without cuda-python the line says so once (the import error repeated it, with a pointer to doctor itself); an
    installed cuda-python's error is shown."""
    from fptt_edge.runtime import doctor

    missing = {"cuda_python": None, "driver_cuda": None, "gpu": None, "error": "cuda-python is not installed (pip install ...)"}
    monkeypatch.setattr(doctor, "_cuda", lambda: dict(missing))
    line = next(ln for ln in doctor.format_report(doctor.diagnose(root=tmp_path, probe=False)).splitlines() if ln.startswith("cuda:"))
    assert line == "cuda: driver none, cuda-python not installed"
    monkeypatch.setattr(doctor, "_cuda", lambda: {**missing, "cuda_python": "12.6.0", "error": "no NVIDIA driver"})
    line = next(ln for ln in doctor.format_report(doctor.diagnose(root=tmp_path, probe=False)).splitlines() if ln.startswith("cuda:"))
    assert line == "cuda: driver none, cuda-python 12.6.0  (no NVIDIA driver)"


def test_doctor_probes_providers_and_flags_both_onnxruntime_packages(monkeypatch):
    import importlib.metadata as md

    import onnxruntime as ort

    from fptt_edge.runtime import doctor

    install(monkeypatch, None, cuda=FakeCudaRuntime(devices=[]))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = md.version
    monkeypatch.setattr(doctor.md, "version", lambda d: "1.20.0" if d in ("onnxruntime", "onnxruntime-gpu") else real(d))
    with pytest.warns(UserWarning):
        r = doctor.diagnose(root=Path("/nonexistent"))
    assert r["onnxruntime"]["works"]["CUDAExecutionProvider"][0] is False and "fell back" in r["backends"]["ort-cuda"]["needs"]
    assert any("both installed" in p for p in r["problems"]) and r["cuda"]["gpu"] is None
    res = CliRunner().invoke(main, ["doctor", "--no-probe", "--json"])
    assert res.exit_code == 0 and set(json.loads(res.output)["backends"]) == {"ort", "ort-cuda", "ort-trt", "tensorrt", "build", "dla", "events-jit"}


def test_runtime_modules_do_not_import_torch():
    code = ("import sys; import fptt_edge.runtime.trt_backend, fptt_edge.runtime.trt_build, fptt_edge.runtime.doctor, "
            "fptt_edge.runtime.verify, fptt_edge.runtime.cuda; assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
