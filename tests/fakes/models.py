"""A tiny hand-made step model with a valid fptt-edge contract, for the fake-GPU tests (no torch, milliseconds).

A counter: ``l0.c_out = l0.c + x + 1 + 0 * l0.s``, spike ``l0.s_out = Cast(l0.c_out > 2.5)``,
``logits = Gemm(l0.c_out, readout.fc.weight, readout.fc.bias, transB=1)`` (identity and zero at
export). From the zero initial state with ``x = 0`` the logits of step ``t`` are ``[t, t]``.
Node names follow the dynamo exporter's (``node_add``, ``node_add_1``, ``node_gt``, ...).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fptt_edge.contract import InputSpec, StateSpec, StepContract, stamp_checksum


def counter_model(path: Path, batch=1, fp16_variant: bool = False) -> Path:
    """Write the counter model to ``path`` (``batch``: an int, or ``"N"`` for a dynamic batch); with
    ``fp16_variant`` also ``path.with_suffix('.fp16.onnx')``: the Gemm in FP16 (Casts around it),
    the rest in FP32, as ``export --fp16-variant`` writes it."""
    f = TensorProto.FLOAT
    io = lambda name: helper.make_tensor_value_info(name, f, [batch, 2])  # noqa: E731
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"), numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(2.5, np.float32), "thr"),
             numpy_helper.from_array(np.eye(2, dtype=np.float32), "readout.fc.weight"),
             numpy_helper.from_array(np.zeros(2, np.float32), "readout.fc.bias")]
    nodes = [helper.make_node("Add", ["l0.c", "x"], ["t"], name="node_add"),
             helper.make_node("Add", ["t", "one"], ["u"], name="node_add_1"),
             helper.make_node("Mul", ["l0.s", "zero"], ["z"], name="node_mul"),
             helper.make_node("Add", ["u", "z"], ["l0.c_out"], name="node_add_2"),
             helper.make_node("Greater", ["l0.c_out", "thr"], ["gt"], name="node_gt"),
             helper.make_node("Cast", ["gt"], ["l0.s_out"], name="node__to_copy", to=f),
             helper.make_node("Gemm", ["l0.c_out", "readout.fc.weight", "readout.fc.bias"], ["logits"], name="node_linear", transB=1)]
    graph = helper.make_graph(nodes, "counter", [io("x"), io("l0.c"), io("l0.s")], [io("logits"), io("l0.c_out"), io("l0.s_out")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    shape = [batch, 2]
    contract = StepContract(input=InputSpec("x", tuple(shape), source={"task": "npz"}), logits="logits",
                            states=(StateSpec("l0.c", "l0.c_out", tuple(shape), 0.0), StateSpec("l0.s", "l0.s_out", tuple(shape), 0.0)),
                            class_names=("a", "b"), model_config={}, checkpoint_sha256="0" * 64, exporter={"name": "test"}, opset=17,
                            parameter_map={"readout.fc.weight": {"initializer": "readout.fc.weight", "transform": "none"},
                                           "readout.fc.bias": {"initializer": "readout.fc.bias", "transform": "none"}})
    for k, v in contract.to_metadata().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    stamp_checksum(model)
    onnx.save(model, str(path))
    if fp16_variant:
        half = onnx.ModelProto()
        half.CopyFrom(model)
        g = half.graph
        gemm = next(n for n in g.node if n.op_type == "Gemm")
        for init in g.initializer:
            if init.name in ("readout.fc.weight", "readout.fc.bias"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
        gemm.input[0], gemm.output[0] = "c_fp16", "logits_fp16"
        idx = list(g.node).index(gemm)
        g.node.insert(idx, helper.make_node("Cast", ["l0.c_out"], ["c_fp16"], name="node_linear_in0_fp16", to=TensorProto.FLOAT16))
        g.node.append(helper.make_node("Cast", ["logits_fp16"], ["logits"], name="node_linear_out_fp32", to=f))
        onnx.checker.check_model(half)
        stamp_checksum(half)
        onnx.save(half, str(path.with_suffix(".fp16.onnx")))
    return path
