"""The GPU paths on a real GPU: TensorRT 10/11 builds and runs, CUDA graphs, refits, TF32, ONNX
Runtime's GPU providers. Each test skips cleanly where its libraries or a GPU are missing; the same
logic runs everywhere against fakes in tests/test_trt_fake.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes.models import counter_model

from fptt_edge.runtime import open_session


def _trt_ready() -> bool:
    try:
        from fptt_edge.runtime.trt_build import tensorrt_status

        return tensorrt_status() is None
    except Exception:  # noqa: BLE001 - a broken install is "not ready"
        return False


def _provider_works(provider: str) -> bool:
    try:
        import onnxruntime as ort

        from fptt_edge.runtime.doctor import _probe_provider

        return provider in ort.get_available_providers() and _probe_provider(ort, provider)[0]
    except Exception:  # noqa: BLE001
        return False


needs_trt = pytest.mark.skipif(not _trt_ready(), reason="needs TensorRT 10/11, cuda-python and a CUDA GPU")
ZERO = np.zeros((1, 2), np.float32)


def _build(model, precision="fp32", refit=True, **kw):
    from fptt_edge.runtime.trt_build import build_engine, plan_build

    plan, contract = plan_build(model, precision, refit, **kw)
    return build_engine(plan, contract, None)


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_first_steps_refit_and_close(tmp_path, cuda_graph):
    model = counter_model(tmp_path / "c.onnx")
    engine = _build(model)
    build = json.loads(Path(str(engine) + ".json").read_text())["build"]
    assert build["tf32"] is False and build["built_on"]["compute_capability"]
    with open_session(engine, "tensorrt", cuda_graph=cuda_graph) as sess:
        assert [float(sess.step(ZERO)[0, 0]) for _ in range(3)] == [1.0, 2.0, 3.0]
        sess.backend.refit({"readout.fc.weight": 2 * np.eye(2)})  # the bias is a companion weight TensorRT may ask for
        assert sess.backend.last_refit["verified"]["max_abs_logits"] < 1e-5
        assert [float(sess.step(ZERO)[0, 0]) for _ in range(2)] == [8.0, 10.0]


@pytest.mark.gpu
@needs_trt
def test_gpu_fp16_build_and_static_batch_verify(tmp_path):
    from fptt_edge.runtime.verify import verify_engine

    model = counter_model(tmp_path / "b3.onnx", batch=3, fp16_variant=True)
    engine = _build(model, "fp16")
    report = verify_engine(model, engine, steps=30)
    assert report["streams"] == 3 and report["passed"], report


@pytest.mark.gpu
@needs_trt
def test_gpu_doctor_sees_the_gpu():
    from fptt_edge.runtime.doctor import diagnose

    r = diagnose(probe=False)
    assert r["cuda"]["gpu"] and r["backends"]["tensorrt"]["ok"], r


@pytest.mark.gpu
@pytest.mark.skipif(not _provider_works("CUDAExecutionProvider"), reason="needs onnxruntime-gpu whose CUDA provider loads")
def test_gpu_ort_cuda_really_runs_on_cuda_with_tf32_off(tmp_path):
    model = counter_model(tmp_path / "c.onnx")
    with open_session(model, "ort-cuda") as gpu, open_session(model, "ort") as cpu:
        assert gpu.backend.providers[0] == "CUDAExecutionProvider" and gpu.backend.tf32 is False
        for _ in range(4):
            np.testing.assert_array_equal(gpu.step(ZERO), cpu.step(ZERO))
