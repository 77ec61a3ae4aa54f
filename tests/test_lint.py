"""Device lint and profiles: each check fires on a graph built to break it."""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from fptt_edge.devices import DeviceProfile, DeviceProfileError, all_profiles, load_profile, profile_names
from fptt_edge.export.lint import lint


def _graph(ops=("Sigmoid",), int64=False, opset=17, dynamic=False):
    batch = "N" if dynamic else 1
    nodes, last = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [last], [f"t{i}"]))
        last = f"t{i}"
    outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, [batch, 4])]
    if int64:
        nodes.append(helper.make_node("Shape", ["x"], ["shape"]))
        outputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])], outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _errors(result, check):
    return [f for f in result.findings if f.check == check and f.level in ("error", "warning")]


def test_profiles_load_and_are_consistent():
    profiles = all_profiles()
    assert len(profiles) == len(profile_names()) >= 8
    for p in profiles:
        assert p.min_opset <= p.max_opset and p.tensorrt_major in (8, 10)
        assert (p.max_opset <= 17) == (p.tensorrt_major == 8)
    assert load_profile("orin-nano-8gb").dla_cores == 0 and load_profile("agx-orin-64gb").dla_cores == 2


def test_clean_graph_passes():
    assert lint(_graph(("Sigmoid", "Relu")), load_profile("orin-nano-8gb")).verdict == "pass"


def test_unsupported_op_is_an_error():
    result = lint(_graph(("Sigmoid", "Hardmax")), load_profile("orin-nano-8gb"))
    assert result.verdict == "fail" and "Hardmax" in _errors(result, "ops")[0].message


def test_int64_is_a_warning_on_trt8_and_trt10():
    r8 = lint(_graph(int64=True), load_profile("xavier-nx"))
    r10 = lint(_graph(int64=True), load_profile("orin-nano-8gb"))
    # TensorRT 8.x casts INT64 down to INT32 with a warning (it builds); 9+ runs INT64 natively
    assert _errors(r8, "int64")[0].level == "warning" and "shape" in _errors(r8, "int64")[0].message
    assert "casts INT64 down" in _errors(r8, "int64")[0].message and r8.verdict != "fail"
    assert _errors(r10, "int64")[0].level == "warning"


def test_opset_dynamic_shapes_dla_and_python():
    r = lint(_graph(("Sigmoid",), opset=20, dynamic=True), load_profile("xavier-nx"))
    assert _errors(r, "opset")[0].level == "error" and "--opset 17" in _errors(r, "opset")[0].message
    assert _errors(r, "static-shapes")[0].level == "warning"
    assert _errors(r, "python")  # JetPack 5 ships Python 3.8
    dla = lint(_graph(("Sigmoid",)), load_profile("agx-orin-64gb"))
    assert not _errors(dla, "dla")
    dla = lint(_graph(("Sigmoid", "Abs")), load_profile("agx-orin-64gb"))
    assert "Abs" in _errors(dla, "dla")[0].message


def test_dla_facts():
    """DLA: FP16/INT8 only, static shapes only, Greater in INT8 only (not 'no comparisons'), none in TensorRT 11.0/11.1."""
    orin = load_profile("agx-orin-64gb")
    r = lint(_graph(("Sigmoid", "Greater")), orin)
    info = next(f.message for f in r.findings if f.check == "dla" and f.level == "info")
    assert "FP16 and INT8 only" in info and "static shapes" in info
    warn = _errors(r, "dla")[0].message
    assert "Greater runs on DLA in INT8 only" in warn and "no comparisons" not in warn
    assert any("static shapes" in f.message for f in _errors(lint(_graph(("Sigmoid",), dynamic=True), orin), "dla"))
    trt11 = DeviceProfile(**{**orin.to_dict(), "tensorrt": "11.1", "unconfirmed": ()})
    assert "no DLA support" in _errors(lint(_graph(("Sigmoid",)), trt11), "dla")[0].message


def test_thor_parses_opset_21():
    thor = load_profile("agx-thor")
    assert thor.max_opset == 21 and thor.tensorrt_major == 10  # TensorRT 10.9+ parses opset 21
    assert lint(_graph(("Sigmoid",), opset=21), thor).verdict == "pass"
    assert _errors(lint(_graph(("Sigmoid",), opset=21), load_profile("orin-nano-8gb")), "opset")  # TensorRT 10.3: up to 20


def test_bad_profiles(tmp_path):
    with pytest.raises(DeviceProfileError, match="unknown device profile"):
        load_profile("nope")
    bad = tmp_path / "x.toml"
    bad.write_text('name = "x"\n')
    with pytest.raises(DeviceProfileError, match="missing fields"):
        load_profile(str(bad))
    bad.write_text("name = [")
    with pytest.raises(DeviceProfileError, match="unreadable"):
        load_profile(str(bad))
    good = (load_profile("orin-nano-8gb").to_dict() | {"max_opset": 3})
    bad.write_text("\n".join(f"{k} = {v!r}".replace("'", '"').replace("None", '""') for k, v in good.items() if v is not None))
    with pytest.raises(DeviceProfileError, match="invalid profile"):
        load_profile(str(bad))
