"""Which nodes of the step graph may run in reduced precision (shared by export and build; no torch).

The affine maps (Gemm/MatMul/Conv) and pure data movement tolerate FP16. The neuron dynamics
(gate sigmoids, adaptation trace, threshold compare, reset) and the state they write must stay
FP32: a membrane within ~1e-3 of the threshold can flip a spike in FP16, and low-precision
state drifts when fed back over many steps.

:func:`fp32_nodes` lists those nodes (the FP16 report shows them). :func:`constrained_layers`
is the subset that takes a TensorRT per-layer precision constraint (``layer.precision`` and
output types FP32; trtexec ``--layerPrecisions``/``--layerOutputTypes``): one rule for the
Python build and the trtexec plan. A constraint is meaningful, and accepted, only for a layer
that computes in floating point, so it is not put on layers with a non-float output (the
threshold compare's BOOL), on Casts (their output type is their ``to`` type) or on Constants,
the layers trtexec and Polygraphy skip too. The ONNX parser names each node's layer after the
node, so the names are exact (no prefixes: ``node_mul`` is not ``node_mul_1``).
"""
from __future__ import annotations

AFFINE_OPS = frozenset({"Gemm", "MatMul", "Conv", "MaxPool", "Concat", "Flatten", "Reshape", "Identity"})
UNCONSTRAINED_OPS = frozenset({"Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size"})
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def fp32_nodes(model) -> list[str]:
    """Names of the nodes of an ``onnx.ModelProto`` to keep in FP32."""
    return [n.name for n in model.graph.node if n.op_type not in AFFINE_OPS]


def output_types(model) -> dict[str, int]:
    """Element type of every typed tensor of ``model`` (after ONNX shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def constrained_layers(model) -> list[str]:
    """The FP32 nodes that take a TensorRT precision constraint: floating-point outputs only, no Casts/Constants."""
    types = output_types(model)
    keep = set(fp32_nodes(model))
    return [n.name for n in model.graph.node
            if n.name in keep and n.op_type not in UNCONSTRAINED_OPS and n.output
            and all(types.get(o) in FLOAT_TYPES for o in n.output if o)]
