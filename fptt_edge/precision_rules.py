"""Which nodes of the step graph may run in reduced precision (shared by export and build; no torch).

The affine maps (Gemm/MatMul/Conv) and pure data movement tolerate FP16. The neuron dynamics
(gate sigmoids, adaptation trace, threshold compare, reset) and the state they write must stay
FP32: a membrane within ~1e-3 of the threshold can flip a spike in FP16, and low-precision
state drifts when fed back over many steps.
"""
from __future__ import annotations

AFFINE_OPS = frozenset({"Gemm", "MatMul", "Conv", "MaxPool", "Concat", "Flatten", "Reshape", "Identity"})


def fp32_nodes(model) -> list[str]:
    """Names of the nodes of an ``onnx.ModelProto`` to keep in FP32."""
    return [n.name for n in model.graph.node if n.op_type not in AFFINE_OPS]
