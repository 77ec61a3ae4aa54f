"""Clean-up passes over the exported ONNX step graph (onnx-graphsurgeon + onnx's own tools)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter


def rename_initializers(model: onnx.ModelProto, prefix: str) -> None:
    """Strip the wrapper's ``prefix`` from initializer names, so they equal the model's parameter names."""
    renames = {i.name: i.name[len(prefix):] for i in model.graph.initializer if i.name.startswith(prefix)}
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]


def name_outputs(model: onnx.ModelProto, expected: list[str]) -> None:
    """Give every graph output its expected name.

    The exporter gives one tensor one name: ``logits`` and ``readout.m_out`` are the same
    value, so one of them comes out under the other's name. An ``Identity`` restores the pair.
    """
    outputs = list(model.graph.output)
    if len(outputs) != len(expected):
        raise ValueError(f"graph has {len(outputs)} outputs, expected {len(expected)}")
    for out, want in zip(outputs, expected):
        if out.name != want:
            model.graph.node.append(onnx.helper.make_node("Identity", [out.name], [want], name=f"output_{want}"))
            out.name = want


def fold_and_clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold (onnx-graphsurgeon, evaluated with ONNX Runtime), drop dead nodes, sort."""
    graph = gs.import_onnx(model)
    graph.fold_constants(error_ok=False).cleanup(remove_unused_graph_inputs=False).toposort()
    _reshape_to_flatten(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.metadata_props.extend(model.metadata_props)
    return out


def _reshape_to_flatten(graph: gs.Graph) -> None:
    """``Reshape(x [N, *rest], -> [N, prod(rest)])`` -> ``Flatten(x, axis=1)``.

    Removes the INT64 shape tensor (and, with a dynamic batch, the Shape/Gather/Concat chain
    that computes it) from the step path.
    """
    for node in graph.nodes:
        if node.op != "Reshape":
            continue
        data, out = node.inputs[0], node.outputs[0]
        if data.shape is None or len(data.shape) < 2 or not all(isinstance(d, int) for d in data.shape[1:]):
            continue
        rest = int(np.prod(data.shape[1:]))
        if isinstance(node.inputs[1], gs.Constant):
            shape = [int(v) for v in node.inputs[1].values]
            ok = len(shape) == 2 and shape[1] in (-1, rest) and shape[0] in (0, -1, data.shape[0])
        else:
            ok = out.shape is not None and len(out.shape) == 2 and out.shape[1] == rest and out.shape[0] == data.shape[0]
        if ok:
            node.op, node.inputs, node.attrs = "Flatten", [data], {"axis": 1}


def convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Down- or up-convert the default-domain opset with onnx's version converter."""
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current == opset:
        return model
    converted = version_converter.convert_version(model, opset)
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    return converted


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def lower_for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite the static-shape ops that carry INT64 constants (TensorRT 8.x rejects them), and
    ``Reciprocal`` (not in TensorRT 8.x's table) as ``Div(1, x)``.

    With every shape known: chains of ``Reshape`` collapse, a ``Reshape`` to the input's own
    shape disappears, one to ``[1, n]``/``[N, n]`` (and an ``Unsqueeze`` to ``[N, 1]``)
    becomes ``Flatten``, one that drops a size-1 axis (``[1, n]`` -> ``[n]``) a ``Gather`` of
    INT32 index 0, a ``Slice`` becomes a ``Gather`` with INT32 indices, an ``Expand`` becomes a
    multiply by a constant of ones, a ``ReduceSum`` over one axis of a matrix a ``MatMul`` with a
    vector of ones, ``CastLike`` of a constant a constant. Values are unchanged up to summation order.
    """
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model, strict_mode=True))
    reshapes = [n for n in graph.nodes if n.op in ("Reshape", "Unsqueeze", "Squeeze") and isinstance(n.inputs[0], gs.Variable)]
    for node in reshapes:  # first, so that a reshape feeding another one is skipped rather than rewritten
        producer = node.inputs[0].inputs[0] if len(node.inputs[0].inputs) == 1 else None
        if producer is not None and producer.op == "Reshape" and _static(producer.inputs[0].shape):
            node.inputs[0] = producer.inputs[0]  # Reshape(Reshape(x)) = Reshape(x)
    for node in reshapes:
        _to_shape_free(node, node.inputs[0])
    for node in list(graph.nodes):
        if node.op == "Slice" and _static(node.inputs[0].shape) and all(isinstance(i, gs.Constant) for i in node.inputs[1:]):
            _slice_to_gather(node)
        elif node.op == "Expand" and _static(node.outputs[0].shape) and isinstance(node.inputs[1], gs.Constant):
            ones = gs.Constant(f"{node.name}_ones", np.ones(node.outputs[0].shape, dtype=np.float32))
            node.op, node.inputs, node.attrs = "Mul", [node.inputs[0], ones], {}
        elif node.op == "ReduceSum" and len(node.inputs) == 2 and isinstance(node.inputs[1], gs.Constant):
            _reduce_sum_to_matmul(node)
        elif node.op == "Reciprocal" and node.inputs[0].dtype == np.float32:  # not in TensorRT 8.x's op table
            one = gs.Constant(f"{node.name}_one", np.ones((), np.float32))
            node.op, node.inputs, node.attrs = "Div", [one, node.inputs[0]], {}
        elif node.op == "CastLike" and isinstance(node.inputs[0], gs.Constant) and node.inputs[1].dtype is not None:
            value = node.inputs[0].values.astype(node.inputs[1].dtype)
            node.op, node.inputs, node.attrs = "Identity", [gs.Constant(f"{node.name}_value", value)], {}
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.metadata_props.extend(model.metadata_props)
    return out


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _to_shape_free(node: gs.Node, src: gs.Tensor) -> None:
    """Reshape-like node -> Identity, Flatten or (dropping a size-1 axis) Gather where the static shapes allow it."""
    shape_in, shape_out = src.shape, node.outputs[0].shape
    if not (_static(shape_in) and _static(shape_out)):
        return
    if list(shape_in) == list(shape_out):
        node.op, node.inputs, node.attrs = "Identity", [src], {}
        return
    if len(shape_out) == 2 and len(shape_in) >= 1:
        for axis in range(len(shape_in) + 1):
            if [int(np.prod(shape_in[:axis])), int(np.prod(shape_in[axis:]))] == list(shape_out):
                node.op, node.inputs, node.attrs = "Flatten", [src], {"axis": axis}
                return
    for axis, size in enumerate(shape_in):  # drops one axis of size 1 (a [1, n] gradient -> [n]): Gather index 0
        if size == 1 and [*shape_in[:axis], *shape_in[axis + 1:]] == list(shape_out):
            node.op, node.attrs = "Gather", {"axis": axis}
            node.inputs = [src, gs.Constant(f"{node.name}_index", np.zeros((), np.int32))]
            return


def _slice_to_gather(node: gs.Node) -> None:
    """One-axis ``Slice`` with constant bounds -> ``Gather`` with INT32 indices (exact)."""
    data = node.inputs[0]
    starts, ends = node.inputs[1].values, node.inputs[2].values
    axes = node.inputs[3].values if len(node.inputs) > 3 else np.arange(len(starts))
    steps = node.inputs[4].values if len(node.inputs) > 4 else np.ones(len(starts), np.int64)
    if len(starts) != 1:
        return
    axis = int(axes[0]) % len(data.shape)
    index = np.arange(data.shape[axis])[slice(int(starts[0]), int(ends[0]), int(steps[0]))].astype(np.int32)
    node.op, node.attrs = "Gather", {"axis": axis}
    node.inputs = [data, gs.Constant(f"{node.name}_index", index)]


def _reduce_sum_to_matmul(node: gs.Node) -> None:
    """``ReduceSum(x [R, C], axes=[a])`` -> ``MatMul`` with ones (no INT64 axes input)."""
    data, axes = node.inputs[0], [int(a) for a in node.inputs[1].values]
    if not _static(data.shape) or len(data.shape) != 2 or len(axes) != 1 or data.dtype != np.float32:
        return
    axis, keep = axes[0] % 2, bool(node.attrs.get("keepdims", 1))
    n = data.shape[axis]
    ones = gs.Constant(f"{node.name}_ones", np.ones(((1, n) if keep else (n,)) if axis == 0 else ((n, 1) if keep else (n,)), np.float32))
    node.op, node.attrs = "MatMul", {}
    node.inputs = [ones, data] if axis == 0 else [data, ones]
