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
