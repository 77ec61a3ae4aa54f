"""The FPTT train step as one static ONNX graph: ``fptt-edge export model.pt --adapt``.

The gradient comes from the training code's own step: :meth:`LTCNetwork.step` in training
mode (surrogate spike) is called through ``torch.func.functional_call`` with each trainable
weight as a leaf, ``torch.autograd.grad`` differentiates it, and ``make_fx`` traces the
forward, the backward and the update below into one graph that the dynamo exporter turns
into ONNX (``optimize=False``: onnxscript's optimiser folds Adamax's ``+ 1e-8`` away). A chunk
of L steps (FPTT-K) is traced as one step and unrolled in ONNX (:mod:`.unroll`): tracing and
exporting all L steps took seconds per step, as the exporter re-traces and decomposes the graph.

The update (``g`` the gradient of ``sum_b w_b CE_b / B``, flat over all trainable tensors)::

    g  = mask * (g + alpha W - (alpha Wbar + lam))          # FPTT regulariser
    g *= min(1, clip / (||g|| + 1e-6))                       # clip_grad_norm_
    m  = lerp(m, g, 1 - beta1);  u = max(beta2 u, |g| + eps) # Adamax
    W -= lr / (1 - beta1^step) * m / u
    lam -= alpha (W - Wbar);  Wbar = lerp(Wbar, W, beta) - (beta / alpha) lam

Masked-off elements keep every value bit for bit. The element-wise chain runs once
over the concatenated flat buffers instead of once per tensor (the fusion that makes the step
cheap); the weights enter as separate tensors and leave as one flat ``fptt.weights_out``.
"""
from __future__ import annotations

import onnx
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..layers import ConvLTC, DenseLTC
from ..model import LTCNetwork, flatten_state
from ..train_contract import FLAT_IO, LR, MASK, STEP, TRAINABLE_CHOICES, WEIGHTS_OUT, Hyper, TrainTensor, W, X, Y
from .errors import ExportError
from .graph_passes import fold_and_clean, lower_for_tensorrt, name_outputs
from .onnx_build import LOGITS_NAME, dynamo_export, finish_graph, quiet_exporter
from .step_graph import StepGraph, fold_batch_norm
from .unroll import PartsLayout, unroll

OUTPUT_SUFFIX = "_out"


def select_trainable(net: LTCNetwork, choice: str) -> list[str]:
    """Parameter names that learn: ``all``; ``readout``; ``last`` (last LTC layer + readout);
    ``input`` (the first layer's input projection, ``fc_x`` or ``conv``)."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if choice == "all":
        return names
    if choice == "readout":
        return [n for n in names if n.startswith("readout.")]
    last = f"layers.{len(net.layers) - 1}."
    if choice == "last":
        return [n for n in names if n.startswith((last, "readout."))]
    if choice == "input":
        first = net.layers[0]
        attr = "fc_x" if isinstance(first, DenseLTC) else "conv" if isinstance(first, ConvLTC) else None
        return [n for n in names if n.startswith(f"layers.0.{attr}.")]
    raise ExportError(f"unknown trainable set {choice!r}; choose from {TRAINABLE_CHOICES}")


def _flat(tensors) -> torch.Tensor:
    """``[1, N]``: every tensor flattened and concatenated (0-d tensors broadcast to ``[1, 1]``)."""
    return torch.cat([t.reshape(1, -1) if t.dim() else t * torch.ones(1, 1) for t in tensors], dim=1)


def fptt_adamax_update(g, W, wbar, lam, m, u, mask, step, lr, hyper: Hyper):
    """One FPTT + Adamax update over flat ``[1, N]`` buffers (equations in the module docstring).

    The mask enters as a factor of every change (``x + (c * mask) * d``), never as a ``Where``
    (ONNX Runtime's CPU ``Where`` is ~30x slower than a ``Mul``): where it is 0 each buffer keeps
    every bit (``x + 0 * d == x`` for finite ``d``; ``max(u * 1, 0) == u``); where it is 1 the
    operations are those of PyTorch's kernels, up to one rounding in the ``Wbar`` lerp.
    """
    a, b1, b2 = hyper.alpha, hyper.beta1, hyper.beta2
    g = (g + a * W - (a * wbar + lam)) * mask
    norm = torch.sqrt((g * g).sum())
    g = g * torch.clamp(hyper.clip / (norm + 1e-6), max=1.0)
    m_new = m + (mask * (1.0 - b1)) * (g - m)  # lerp(m, g, 1 - beta1) where learning
    u_new = torch.maximum(u * (1.0 - (1.0 - b2) * mask), g.abs() + hyper.eps * mask)
    step_new = step + 1.0
    # u_new >= eps where learning; the clamp only keeps frozen elements with u = 0 from 0/0
    W_new = W - ((lr / (1.0 - torch.pow(b1, step_new))) * mask) * (m_new / torch.clamp(u_new, min=hyper.eps))
    diff = W_new - wbar
    lam_new = lam - (a * mask) * diff
    wbar_new = wbar + (hyper.beta * mask) * diff - ((hyper.beta / a) * mask) * lam_new
    return W_new, wbar_new, lam_new, m_new, u_new, step_new


def make_train_step(net: LTCNetwork, names: list[str], hyper: Hyper):
    """``fn(x, y, w, *state, *weights, wbar, lam, m, u, mask, step, lr) -> (logits, *state_out, W, wbar, lam, m, u, step)``:
    one step and its update, loss ``sum_b w_b CE_b / B``.

    ``net`` must have no training-only ops left (batch norm folded); it runs in training mode.
    """
    module, frozen, n_state = _step_module(net, names)

    def fn(x, y, w, *rest):
        state, weights = rest[:n_state], rest[n_state:n_state + len(names)]
        wbar, lam, m, u, mask, step, lr = rest[n_state + len(names):]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in weights]
            params = {**frozen, **{f"net.{n}": t for n, t in zip(names, leaves)}}
            out = torch.func.functional_call(module, params, (x, *state))
            logits, new_state = out[0], out[1:]
            ce = -(y * torch.log_softmax(logits, dim=1)).sum(1)
            loss = (w * ce).sum() / x.shape[0]
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
        updated = fptt_adamax_update(_flat(grads), _flat(weights), wbar, lam, m, u, mask, step, lr, hyper)
        return (logits.detach(), *(s.detach() for s in new_state), *updated)

    return fn


def _step_module(net: LTCNetwork, names: list[str]) -> tuple[StepGraph, dict, int]:
    """The step module in training mode, the frozen parameters (constants of the graph) and the number of state tensors."""
    frozen = {f"net.{n}": p.detach() for n, p in net.named_parameters() if n not in names}
    return StepGraph(net).train(), frozen, len(net.state_names())


def make_chunk_parts(net: LTCNetwork, names: list[str], hyper: Hyper):
    """``fn(*last_in, *mid_in, *update_in) -> (*last_out, *mid_out, *update_out)``: the three parts
    :func:`.unroll.unroll` builds an L-step update from (inputs and outputs in :class:`.unroll.PartsLayout`).

    Step ``t`` of the chunk adds ``sum_b w_bt CE_bt / B`` to the loss. Its backward, seeded with the
    gradient of the state it hands on (the steps after it, whose contributions autograd would add first),
    adds in the order in which backprop through all L steps adds: the same numbers, bit for bit.
    """
    module, frozen, n_state = _step_module(net, names)
    n_in = 3 + n_state + len(names)

    def step(x, y, w, state, weights, seeds=None, later=None):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in (*weights, *state)]
            params = {**frozen, **{f"net.{n}": t for n, t in zip(names, leaves)}}
            out = torch.func.functional_call(module, params, (x, *leaves[len(names):]))
            logits, new_state = out[0], out[1:]
            loss = (w * -(y * torch.log_softmax(logits, dim=1)).sum(1)).sum() / x.shape[0]
            roots = [loss] if seeds is None else [loss, *new_state]
            grads = torch.autograd.grad(roots, leaves, grad_outputs=None if seeds is None else [None, *seeds], allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
        weight_grads = grads[:len(names)] if later is None else [a + g for a, g in zip(later, grads)]
        return (logits.detach(), *(s.detach() for s in new_state), *grads[len(names):], *weight_grads)

    def fn(*args):
        last, mid, rest = args[:n_in], args[n_in:2 * n_in + n_state + len(names)], args[2 * n_in + n_state + len(names):]
        split = lambda a: (a[0], a[1], a[2], a[3:3 + n_state], a[3 + n_state:n_in])  # noqa: E731
        grads, weights, (wbar, lam, m, u, mask, step_, lr) = rest[:len(names)], rest[len(names):2 * len(names)], rest[2 * len(names):]
        updated = fptt_adamax_update(_flat(grads), _flat(weights), wbar, lam, m, u, mask, step_, lr, hyper)
        return (*step(*split(last)), *step(*split(mid), seeds=mid[n_in:n_in + n_state], later=mid[n_in + n_state:]), *updated)

    return fn


def _conv_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, mask):
    """``aten.convolution_backward`` for the stride-1, ungrouped convs of :class:`ConvLTC`, in forward convs
    (the exporter has no ONNX function for it). Compared with autograd in the tests."""
    if list(stride) != [1, 1] or list(dilation) != [1, 1] or groups != 1 or transposed:
        raise ExportError("the train-step graph supports stride-1, ungrouped, non-transposed convolutions only")
    aten = torch.ops.aten
    grad_in = aten.convolution(grad_out, weight, None, [1, 1], padding, [1, 1], True, [0, 0], 1) if mask[0] else None
    grad_w = None
    if mask[1]:
        grad_w = aten.convolution(inp.transpose(0, 1), grad_out.transpose(0, 1), None, [1, 1], padding, [1, 1], False, [0, 0], 1)
        grad_w = grad_w.transpose(0, 1)
    grad_b = None
    if mask[2]:
        per_channel = grad_out.transpose(0, 1).reshape(grad_out.shape[1], -1)
        grad_b = per_channel @ torch.ones(per_channel.shape[1], dtype=grad_out.dtype)
    return grad_in, grad_w, grad_b


def _decompositions() -> dict:
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    table = get_decompositions([aten.max_pool2d_with_indices_backward.default])
    table[aten.convolution_backward.default] = _conv_backward
    return table


def io_names(net: LTCNetwork, names: list[str]) -> tuple[list[str], list[str]]:
    states = net.state_names()
    flat_in = [FLAT_IO[k] for k in ("wbar", "lam", "m", "u")]
    inputs = [X, Y, W, *states, *names, *flat_in, MASK, STEP, LR]
    outputs = [LOGITS_NAME, *(s + OUTPUT_SUFFIX for s in states), WEIGHTS_OUT, *(f + OUTPUT_SUFFIX for f in flat_in), STEP + OUTPUT_SUFFIX]
    return inputs, outputs


def example_inputs(net: LTCNetwork, names: list[str], batch: int, hyper: Hyper, chunk: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero-state, fresh-trace inputs of the right shapes (also what the learner starts from)."""
    params = dict(net.named_parameters())
    weights = [params[n].detach().clone() for n in names]
    n = sum(t.numel() for t in weights)
    cfg = net.config
    y = torch.zeros(batch, cfg.num_classes)
    y[:, 0] = 1.0
    steps = () if chunk == 1 else (chunk,)
    return (torch.zeros(batch, *steps, *cfg.input_shape), y, torch.ones(batch, *steps), *flatten_state(net.initial_state(batch)), *weights,
            _flat(weights).detach().clone(), torch.zeros(1, n), torch.zeros(1, n), torch.zeros(1, n), torch.ones(1, n),
            torch.zeros(1), torch.full((1,), hyper.lr))


def trace_train_step(net: LTCNetwork, choice: str, hyper: Hyper, batch: int, opset: int | None, chunk: int = 1):
    """The cleaned train-step graph and its trainable tensors (BN folded first, as in the inference graph).

    ``chunk`` L > 1: FPTT-K's update, ``x`` ``[B, L, *frame]`` run step by step from ``state`` with
    backprop through all L steps, loss ``sum_{b,l} w[b, l] CE_{b,l} / B``, logits ``[B, L, C]``; one
    step is traced (:func:`make_chunk_parts`) and unrolled in ONNX (:func:`.unroll.unroll`).
    """
    folded, _ = fold_batch_norm(net)
    names = select_trainable(folded, choice)
    if not names:
        raise ExportError(f"--trainable {choice} selects no tensors in this model")
    args = example_inputs(folded, names, batch, hyper, chunk)
    inputs, outputs = io_names(folded, names)
    if chunk == 1:
        model = _trace(make_train_step(folded, names, hyper), args, inputs, outputs, opset)
    else:
        layout = PartsLayout(len(folded.state_names()), len(names))
        part_in, part_out = ([n for p in ("last", "mid", "update") for n in io(p)] for io in (layout.inputs, layout.outputs))
        parts = _trace(make_chunk_parts(folded, names, hyper), _parts_inputs(folded, names, batch, hyper), part_in, part_out, opset)
        model = unroll(parts, layout, chunk, {n: tuple(a.shape) for n, a in zip(inputs, args)}, outputs)
        model = finish_graph(model, opset, "the train-step graph")
    params = dict(folded.named_parameters())
    tensors, offset = [], 0
    for n in names:
        shape = tuple(params[n].shape)
        tensors.append(TrainTensor(n, shape, offset))
        offset += params[n].numel()
    return model, tuple(tensors), folded


def _trace(fn, args, inputs: list[str], outputs: list[str], opset: int | None) -> onnx.ModelProto:
    """``fn`` traced with ``make_fx``, exported, cleaned and lowered, checked at ``opset``."""
    with quiet_exporter("the train-step export"):
        graph_module = make_fx(fn, decomposition_table=_decompositions(), tracing_mode="real")(*args)
        model = dynamo_export(graph_module, args, inputs, outputs, opset)
    name_outputs(model, outputs)
    _strip_node_metadata(model)
    model = fold_and_clean(lower_for_tensorrt(fold_and_clean(model)))
    return finish_graph(model, opset, "the train-step graph")


def _parts_inputs(net: LTCNetwork, names: list[str], batch: int, hyper: Hyper) -> tuple[torch.Tensor, ...]:
    """Example inputs of :func:`make_chunk_parts`, every one its own tensor (``make_fx`` would merge shared ones)."""
    n_in = 3 + len(net.state_names()) + len(names)
    last, mid, update = (example_inputs(net, names, batch, hyper) for _ in range(3))
    zeros = lambda ts: tuple(torch.zeros_like(t) for t in ts)  # noqa: E731
    return (*last[:n_in], *mid[:n_in], *zeros(mid[3:n_in]), *zeros(update[n_in - len(names):n_in]), *update[n_in - len(names):])


def _strip_node_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node stack traces and names of the traced Python (most of the raw file's bytes)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
