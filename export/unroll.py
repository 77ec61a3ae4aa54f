"""The chunked train-step graph, unrolled in ONNX from one traced step.

:func:`~.train_graph.make_chunk_parts` traces three graphs side by side, sharing only constants:
``last`` (the chunk's last step: forward, its loss term, backward), ``mid`` (any other step:
the same, seeded with the gradient of the state it hands on and adding its weight gradients to
the sum so far) and ``update`` (FPTT + Adamax). :func:`unroll` copies ``mid`` L - 1 times and
``last`` once, wires state forward and state gradients backward, and ends in ``update``: the
graph that tracing all L steps gives, in one step's tracing time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class PartsLayout:
    """Sizes that fix each part's positional inputs and outputs (``n_state`` state tensors, ``n_weights`` trainable ones).

    ``last``: ``(x, y, w, *state, *weights) -> (logits, *state_out, *state_grad, *grads)``;
    ``mid``: ``(x, y, w, *state, *weights, *state_seed, *grads_so_far) -> (logits, *state_out, *state_grad, *grads)``;
    ``update``: ``(*grads, *weights, wbar, lam, m, u, mask, step, lr) -> (W, wbar, lam, m, u, step)``.
    """

    n_state: int
    n_weights: int

    def inputs(self, part: str) -> list[str]:
        n = {"last": 3 + self.n_state + self.n_weights, "mid": 3 + 2 * (self.n_state + self.n_weights), "update": 2 * self.n_weights + 7}[part]
        return [f"{part}.in{k}" for k in range(n)]

    def outputs(self, part: str) -> list[str]:
        n = 6 if part == "update" else 1 + 2 * self.n_state + self.n_weights
        return [f"{part}.out{k}" for k in range(n)]


def unroll(parts: onnx.ModelProto, layout: PartsLayout, chunk: int, inputs: dict[str, tuple[int, ...]], outputs: list[str]) -> onnx.ModelProto:
    """The L-step train graph: float32 graph ``inputs`` (name -> shape) and ``outputs`` in
    :func:`~.train_graph.io_names` order; ``parts`` is cleaned and holds the three parts' graphs."""
    g = parts.graph
    nodes, inits = _step_copies(g, layout, chunk, list(inputs), outputs)
    classes = _shape(g, "last.out0")[-1]
    logits = [_out(layout, chunk, i, 0) for i in range(chunk)]
    inits.append(numpy_helper.from_array(np.arange(chunk * classes, dtype=np.int32).reshape(chunk, classes), "chunk.logits_index"))
    nodes += [helper.make_node("Concat", logits, ["chunk.logits"], axis=1, name="chunk.logits"),  # [B, L*C] -> [B, L, C]
              helper.make_node("Gather", ["chunk.logits", "chunk.logits_index"], [outputs[0]], axis=1, name="chunk.stack")]
    shapes = [(next(iter(inputs.values()))[0], chunk, classes), *(_shape(g, f"last.out{1 + k}") for k in range(layout.n_state)),
              *(_shape(g, f"update.out{k}") for k in range(6))]
    graph = helper.make_graph(_without_aliases(nodes, outputs), g.name,
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in zip(outputs, shapes)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=list(parts.opset_import), ir_version=parts.ir_version, functions=list(parts.functions))
    pruned = gs.import_onnx(model)  # the copies hold nodes no output needs (a last step's state gradient); and in any order
    pruned.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(pruned)
    model.producer_name, model.producer_version = parts.producer_name, parts.producer_version
    return model


def _out(layout: PartsLayout, chunk: int, i: int, k: int) -> str:
    """Output ``k`` of step ``i``'s copy."""
    return f"s{i}/{'last' if i == chunk - 1 else 'mid'}.out{k}"


def _step_copies(g: onnx.GraphProto, layout: PartsLayout, chunk: int, inputs: list[str],
                 outputs: list[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Step ``i``'s copy takes frame ``i`` and the state of copy ``i - 1``, and (``mid``) the state gradient and weight
    gradients of copy ``i + 1``; the last copy's state leaves the graph, copy 0's gradients go to ``update``."""
    ns, nw = layout.n_state, layout.n_weights
    x, y, w, state, weights, flat = inputs[0], inputs[1], inputs[2], inputs[3:3 + ns], inputs[3 + ns:3 + ns + nw], inputs[3 + ns + nw:]
    out = lambda i, k: _out(layout, chunk, i, k)  # noqa: E731
    nodes, inits = [], list(g.initializer)
    for i in range(chunk):
        part, index = "last" if i == chunk - 1 else "mid", f"chunk.index{i}"
        inits.append(numpy_helper.from_array(np.array(i, np.int32), index))
        nodes += [helper.make_node("Gather", [x, index], [f"chunk.x{i}"], axis=1, name=f"chunk.x{i}"),
                  helper.make_node("Gather", [w, index], [f"chunk.w{i}"], axis=1, name=f"chunk.w{i}")]
        feeds = [f"chunk.x{i}", y, f"chunk.w{i}", *(state if i == 0 else [out(i - 1, 1 + k) for k in range(ns)]), *weights]
        if part == "mid":
            feeds += [out(i + 1, 1 + ns + k) for k in range(ns + nw)]
        rename = {o: out(i, k) for k, o in enumerate(layout.outputs(part))}
        if part == "last":
            rename.update({layout.outputs(part)[1 + k]: outputs[1 + k] for k in range(ns)})
        nodes += _copy(g, layout.inputs(part), feeds, rename, f"s{i}")
    grads = [out(0, 1 + 2 * ns + k) for k in range(nw)]
    nodes += _copy(g, layout.inputs("update"), [*grads, *weights, *flat], dict(zip(layout.outputs("update"), outputs[1 + ns:])), "update")
    return nodes, inits


def _shape(g: onnx.GraphProto, name: str) -> list[int]:
    vi = next(v for v in g.output if v.name == name)
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def _copy(g: onnx.GraphProto, part_in: list[str], feeds: list[str], rename: dict[str, str], tag: str) -> list[onnx.NodeProto]:
    """The nodes that compute the outputs in ``rename`` (renamed so) from ``part_in`` (bound to ``feeds``), every other
    value prefixed with ``tag``; initializers are shared. An output that is an input passes through an ``Identity``."""
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    needed, stack = set(), list(rename)
    while stack:
        n = producer.get(stack.pop())
        if n is not None and id(n) not in needed:
            needed.add(id(n))
            stack.extend(n.input)
    names = dict(zip(part_in, feeds))
    out = []
    for n in g.node:
        if id(n) not in needed:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = f"{tag}/{n.name}"
        copy.input[:] = [v if v in inits or not v else names[v] for v in n.input]
        copy.output[:] = [rename.get(o) or (f"{tag}/{o}" if o else "") for o in n.output]
        names.update(zip(n.output, copy.output))
        out.append(copy)
    out += [helper.make_node("Identity", [names[o]], [r], name=f"{tag}/{r}") for o, r in rename.items() if o in names and o not in producer]
    return out


def _without_aliases(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """``nodes`` without the ``Identity`` nodes that name no graph output, their readers reading the source instead."""
    named = set(outputs)
    alias = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Identity" and n.output[0] not in named}
    nodes = [n for n in nodes if n.output[0] not in alias]
    for n in nodes:
        n.input[:] = [_resolve(alias, v) for v in n.input]
    return nodes


def _resolve(alias: dict[str, str], v: str) -> str:
    while v in alias:
        v = alias[v]
    return v
