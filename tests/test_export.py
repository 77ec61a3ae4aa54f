"""Export -> ONNX Runtime: parity on real data, metadata contract, opset 17, FP16 emulation, bad input."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from export_helpers import check_data, frame_spec, make_checkpoint, real_spec

from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.contract import read_contract
from fptt_edge.data.tasks import test_set_from_spec as load_check_set
from fptt_edge.export.errors import ExportError
from fptt_edge.export.parity import check_parity, ort_session
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.export.precision import run_scheme
from fptt_edge.export.report import summary
from fptt_edge.export.streams import make_streams
from fptt_edge.model import flatten_state


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dense and a conv (batch norm with non-trivial statistics) model, exported with the checks on."""
    tmp = tmp_path_factory.mktemp("export")
    spec, shape = real_spec()
    fspec, fshape = frame_spec(tmp)
    models = {}
    for name, cfg, sp in [("dense", ModelConfig(input_shape=shape, num_classes=10, hidden=(64,)), spec),
                          ("conv", ModelConfig(input_shape=fshape, num_classes=10, hidden=(32,), conv_channels=(8,)), fspec)]:
        net = make_checkpoint(tmp / f"{name}.pt", cfg, sp)
        report = export_checkpoint(tmp / f"{name}.pt", tmp / f"{name}.onnx", streams=2, steps=500, precision_samples=40, data=check_data(sp),
                                   log=lambda m: None)
        models[name] = (net, tmp / f"{name}.onnx", report, sp)
    return models


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_parity_over_500_real_steps(exported, kind):
    net, path, report, spec = exported[kind]
    par = report.parity
    assert par.passed and par.exact and not par.ties and par.steps >= 500 and par.streams == 2
    assert all(v == 1.0 for v in par.spike_agreement.values())
    assert all(0.01 < v < 0.9 for v in par.spike_rate.values()), "a vacuous check: the layers barely spike"
    assert par.max_abs_logits < 1e-4 and par.prediction_agreement == 1.0
    # independent of the pipeline's checker: the written file, stepped with state built from metadata alone
    ds = load_check_set(spec, check_data(spec), num_classes=10)
    xs = make_streams(ds, 1, 500)
    contract = read_contract(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = contract.initial_state()
    spikes_onnx = []
    for t in range(xs.shape[1]):
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {contract.input.name: xs[:, t], **state})))
        state = {s.name: out[s.output] for s in contract.states}
        spikes_onnx.append(np.concatenate([state[s.name].reshape(-1) for s in contract.states if s.name.endswith(".s")]))
    with torch.no_grad():
        logits, final = net(torch.from_numpy(xs))
    np.testing.assert_allclose(out[contract.logits], logits[:, -1].numpy(), atol=1e-4)
    final_spikes = np.concatenate([t.reshape(-1).numpy() for n, t in zip(net.state_names(), flatten_state(final)) if n.endswith(".s")])
    np.testing.assert_array_equal(spikes_onnx[-1], final_spikes)


def test_metadata_round_trip(exported):
    net, path, report, spec = exported["conv"]
    contract = read_contract(path)
    assert contract.class_names == tuple(f"class-{i}" for i in range(10))
    assert contract.input.shape == (1, *net.config.input_shape) and contract.input.source["task"] == spec["task"]
    assert [s.name for s in contract.states] == net.state_names()
    assert [s.output for s in contract.states] == [n + "_out" for n in net.state_names()]
    init = contract.initial_state(3)
    for name, tensor in zip(net.state_names(), flatten_state(net.initial_state(3))):
        np.testing.assert_array_equal(init[name], tensor.numpy())
    assert init["l0.b"].min() == pytest.approx(net.config.b_j0) and net.config.b_j0 != 0
    assert contract.checkpoint_sha256 == report.checkpoint_sha256 and contract.opset == report.opset
    model = onnx.load(str(path))
    graph_io = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    assert graph_io == (["x", *net.state_names()], ["logits", *[n + "_out" for n in net.state_names()]])
    # every parameter maps to an initializer holding its value (BN-folded conv through the recorded scale/shift)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    params = dict(net.named_parameters())
    assert set(contract.parameter_map) == set(params)
    for name, entry in contract.parameter_map.items():
        if entry["transform"] == "folded":
            assert ".bn." in name and entry["initializer"] is None
            continue
        value, w = inits[entry["initializer"]], params[name].detach().numpy()
        if entry["transform"] == "bn_fold_weight":
            w = w * np.asarray(entry["scale"], dtype=np.float32).reshape(-1, 1, 1, 1)
        elif entry["transform"] == "bn_fold_bias":
            w = w * np.asarray(entry["scale"], dtype=np.float32) + np.asarray(entry["shift"], dtype=np.float32)
        np.testing.assert_allclose(value, w, rtol=1e-6, atol=1e-7, err_msg=name)
    assert not {"BatchNormalization", "Dropout"} & {n.op_type for n in model.graph.node}
    types = {i.data_type for i in model.graph.initializer} | {v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert onnx.TensorProto.INT64 not in types


def test_parity_check_detects_a_changed_spike_path(exported):
    """The checker can fail: a graph whose threshold is nudged disagrees on spikes."""
    net, path, report, spec = exported["dense"]
    model = onnx.load(str(path))
    greater = next(n for n in model.graph.node if n.op_type == "Greater")
    shifted = onnx.helper.make_node("Add", [greater.input[0], "nudge"], ["nudged"])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.05, dtype=np.float32), "nudge"))
    greater.input[0] = "nudged"
    model.graph.node.insert(list(model.graph.node).index(greater), shifted)
    xs = make_streams(load_check_set(spec, check_data(spec), num_classes=10), 1, 100)
    result = check_parity(net, ort_session(model.SerializeToString()), xs, batch=1)
    assert not result.passed and result.first_mismatch["state"] == "l0.s" and result.first_mismatch["max_margin"] > 1e-5


def test_opset17_for_jetpack5_and_dynamic_batch(tmp_path):
    spec, shape = real_spec()
    make_checkpoint(tmp_path / "m.pt", ModelConfig(input_shape=shape, num_classes=10, hidden=(32, 32)), spec, seed=1)
    report = export_checkpoint(tmp_path / "m.pt", tmp_path / "m17.onnx", device="xavier-nx", streams=1, steps=100, precision_samples=10,
                               data=check_data(spec), log=lambda m: None)
    assert onnx.load(str(tmp_path / "m17.onnx")).opset_import[0].version == 17 == report.opset
    assert report.parity.passed and report.lint.verdict != "fail"
    report = export_checkpoint(tmp_path / "m.pt", tmp_path / "dyn.onnx", batch=None, streams=3, steps=60, precision_samples=10,
                               data=check_data(spec), log=lambda m: None)
    assert report.parity.passed and report.parity.streams == 3
    assert any(f.check == "static-shapes" for f in report.lint.findings)
    assert read_contract(tmp_path / "dyn.onnx").batch == "batch"


def test_fp16_emulation_reference_and_variant(exported, tmp_path):
    net, path, report, spec = exported["conv"]
    ds = load_check_set(spec, check_data(spec), num_classes=10).take(8)
    with torch.no_grad():
        ref, _ = net(ds.x)
    logits32, _ = run_scheme(net, ds.x, torch.float32, torch.float32)
    torch.testing.assert_close(logits32, ref, rtol=0, atol=0)  # the emulator's FP32 scheme is the model itself
    logits16, _ = run_scheme(net, ds.x, torch.float16, torch.float16)
    assert 0 < (logits16 - ref).abs().max() < 1.0
    prec = report.precision
    assert set(prec.flip_rate) == {"fp16", "fp16_state_fp32"} and all(0 <= r < 0.5 for v in prec.flip_rate.values() for r in v.values())
    assert "Greater" in {n.split("_")[1] if "_" in n else n for n in prec.fp32_nodes} or any("gt" in n.lower() for n in prec.fp32_nodes)
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(path.with_suffix(".pt")), "-o", str(tmp_path / "v.onnx"), "--no-check", "--fp16-variant"])
    assert res.exit_code == 0, res.output
    v = onnx.load(str(tmp_path / "v.onnx").replace(".onnx", ".fp16.onnx"))
    assert {i.type.tensor_type.elem_type for i in v.graph.input} == {onnx.TensorProto.FLOAT}
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in v.graph.initializer}
    sess = ort.InferenceSession(v.SerializeToString(), providers=["CPUExecutionProvider"])
    contract = read_contract(path)
    full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"x": ds.x[:1, 3].numpy(), **contract.initial_state()}
    out16, out32 = sess.run(None, feed), full.run(None, feed)
    assert np.isfinite(out16[0]).all() and 0 < np.abs(out16[0] - out32[0]).max() < 1e-2  # FP16 weights: close, not equal
    greater = next(n for n in v.graph.node if n.op_type == "Greater")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(v).graph.value_info}
    assert types[greater.input[0]] == onnx.TensorProto.FLOAT  # the threshold compare stays FP32


def test_cli_export_info_and_devices(exported, tmp_path):
    net, path, report, spec = exported["dense"]
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(path.with_suffix(".pt")), "-o", str(tmp_path / "c.onnx"), "--parity-steps", "50",
                               "--parity-streams", "1", "--precision-samples", "5", "--device", "orin-nx-16gb",
                               *(["--data", check_data(spec)] if check_data(spec) else [])])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and "dla" in res.output
    saved = json.loads((tmp_path / "c.report.json").read_text())
    assert saved["parity"]["passed"] and saved["lint"]["device"] == "orin-nx-16gb"
    info = json.loads(runner.invoke(main, ["info", str(tmp_path / "c.onnx")]).output)
    assert info["state"][2] == {"input": "l0.b", "output": "l0.b_out", "shape": [1, 64], "dtype": "float32", "initial_value": pytest.approx(0.1)}
    res = runner.invoke(main, ["devices"])
    assert res.exit_code == 0 and "orin-nano-8gb*" in res.output and "jetson-nano" in res.output


def test_info_on_onnx_without_torch(exported):
    """`fptt-edge info model.onnx` is device-side: it must work with torch unimportable."""
    _, path, _, _ = exported["dense"]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from fptt_edge.cli import main\n"
            f"main(['info', {str(path)!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["logits"]["classes"][0] == "class-0"


def _hostile(path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'pwned'}",))

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"format": "fptt-edge-checkpoint", "x": Evil()}))
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("case", ["not-a-checkpoint", "hostile", "truncated", "future-version", "unknown-device", "missing"])
def test_bad_input_clear_error_nothing_written(exported, tmp_path, case):
    _, path, _, _ = exported["dense"]
    src = path.with_suffix(".pt")
    bad = tmp_path / "in.pt"
    args = []
    if case == "not-a-checkpoint":
        bad.write_text("hello")
    elif case == "hostile":
        _hostile(bad)
    elif case == "truncated":
        bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    elif case == "future-version":
        payload = torch.load(src, weights_only=True)
        payload["format_version"] = 99
        torch.save(payload, bad)
    elif case == "unknown-device":
        bad.write_bytes(src.read_bytes())
        args = ["--device", "jetson-warp-drive"]
    before = set(tmp_path.iterdir()) if case != "missing" else set()
    target = tmp_path / ("missing.pt" if case == "missing" else "in.pt")
    res = CliRunner().invoke(main, ["export", str(target), *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.startswith("Error:")
    expected = {"not-a-checkpoint": "not a fptt-edge checkpoint", "hostile": "refused", "truncated": "truncated",
                "future-version": "newer", "unknown-device": "unknown device profile", "missing": "no such"}[case]
    assert expected in res.output
    assert set(tmp_path.iterdir()) == before and not (tmp_path / "pwned").exists()


def test_parity_failure_fails_export_and_writes_no_model(exported, tmp_path, monkeypatch):
    _, path, _, spec = exported["dense"]
    import fptt_edge.export.onnx_build as build

    original = build.trace_step

    def sabotaged(*a, **k):
        model, pmap = original(*a, **k)
        for init in model.graph.initializer:
            if init.name == "layers.0.fc_x.weight":
                arr = onnx.numpy_helper.to_array(init) * 1.05
                init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
        return model, pmap

    monkeypatch.setattr("fptt_edge.export.pipeline.trace_step", sabotaged)
    with pytest.raises(ExportError, match="disagree on spikes"):
        export_checkpoint(path.with_suffix(".pt"), tmp_path / "s.onnx", streams=1, steps=200, precision_samples=5, data=check_data(spec),
                          log=lambda m: None)
    assert not (tmp_path / "s.onnx").exists() and json.loads((tmp_path / "s.report.json").read_text())["parity"]["passed"] is False


def test_report_json_is_the_typed_report(exported):
    """``MODEL.report.json`` is ``ExportReport.to_dict()``, in the layout it always had."""
    net, path, report, spec = exported["dense"]
    saved, as_dict = json.loads(path.with_suffix(".report.json").read_text()), report.to_dict()
    assert saved == json.loads(json.dumps(as_dict))
    assert list(as_dict) == ["checkpoint", "model", "report", "model_bytes", "export_seconds", "opset", "batch", "io", "checkpoint_sha256",
                             "exporter", "parity", "precision", "check_data", "lint"]  # the order --json prints
    assert list(as_dict["io"]) == ["input", "logits", "state"] and saved["io"]["state"] == net.state_names()
    assert saved["parity"]["passed"] is True and saved["parity"]["exact"] is True and saved["lint"]["note"].startswith("no --device")
    assert list(as_dict["lint"]) == ["device", "tensorrt", "verdict", "findings", "note"]
    text = summary(report)
    assert "parity vs PyTorch" in text and "PASS" in text and "FP16 emulation" in text and report.report in text


def test_check_streams_are_real_and_distinct():
    spec, _ = real_spec()
    ds = load_check_set(spec, check_data(spec), num_classes=10).take(10)
    xs = make_streams(ds, 3, ds.steps * 25)  # longer than the data: every stream wraps around
    assert xs.shape[:2] == (3, ds.steps * 25)
    np.testing.assert_array_equal(xs[0, : ds.steps], ds.x[0].numpy())
    assert not np.array_equal(xs[1], xs[2]) and not np.array_equal(xs[0], xs[1])
    recordings = {ds.x[i].numpy().tobytes() for i in range(len(ds))}
    assert all(xs[s, k * ds.steps:(k + 1) * ds.steps].tobytes() in recordings for s in range(3) for k in range(25))
