"""FP16 emulation of the step in PyTorch (ONNX Runtime's CPU provider computes FP16 in FP32).

Two reduced-precision schemes are compared against FP32 over real labelled sequences:

* ``fp16``: everything in half precision, state included (what ``--fp16`` alone gives).
* ``fp16_state_fp32``: the affine maps (Gemm/Conv, pooling) in half precision; the neuron
  dynamics (gates' sigmoid, adaptation, threshold compare, reset) and the state in FP32.

Per scheme: the spike flip rate per layer (spikes that differ from FP32 at the same step),
accuracy at the last step, prediction agreement with FP32 and the largest logit difference.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch

from ..model import LTCNetwork
from ..precision_rules import fp32_nodes

SCHEMES = {"fp32": (torch.float32, torch.float32), "fp16": (torch.float16, torch.float16),
           "fp16_state_fp32": (torch.float16, torch.float32)}


@dataclass
class PrecisionResult:
    sequences: int
    steps: int
    accuracy: dict[str, float]
    flip_rate: dict[str, dict[str, float]]  # scheme -> layer -> fraction of flipped spikes
    prediction_agreement: dict[str, float]
    max_abs_logits: dict[str, float]
    fp32_nodes: list[str]  # ONNX nodes on the threshold/state path: keep them in FP32
    recommendation: str

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def run_scheme(net: LTCNetwork, xs: torch.Tensor, affine: torch.dtype, state_dtype: torch.dtype):
    """Step ``xs`` ``[N, T, ...]`` through :meth:`LTCNetwork.step` with weights in ``affine`` and that
    precision policy; returns per-step logits ``[N, T, C]`` (fp32) and spikes per layer ``[T, N, ...]``."""
    low = copy.deepcopy(net).to(affine).eval()
    state = net.initial_state(xs.shape[0]).map(lambda t: t.to(state_dtype))
    logits, spikes = [], []
    for t in range(xs.shape[1]):
        lg, state = low.step(xs[:, t], state, affine_dtype=affine, state_dtype=state_dtype)
        logits.append(lg.float())
        spikes.append([st.s.float() for st in state.layers])
    return torch.stack(logits, 1), [torch.stack(s) for s in zip(*spikes)]


def emulate_fp16(net: LTCNetwork, xs: torch.Tensor, ys: torch.Tensor, lengths: torch.Tensor | None, model: onnx.ModelProto) -> PrecisionResult:
    last = (torch.full((len(ys),), xs.shape[1] - 1) if lengths is None else lengths.long() - 1)
    results = {name: run_scheme(net, xs, *dtypes) for name, dtypes in SCHEMES.items()}
    ref_logits, ref_spikes = results["fp32"]
    final = lambda lg: lg[torch.arange(len(ys)), last]
    ref_pred = final(ref_logits).argmax(1)
    acc, flips, agree, dlog = {}, {}, {}, {}
    for name, (lg, sp) in results.items():
        pred = final(lg).argmax(1)
        acc[name] = float((pred == ys).float().mean())
        if name == "fp32":
            continue
        flips[name] = {f"l{i}": float((a != b).float().mean()) for i, (a, b) in enumerate(zip(sp, ref_spikes))}
        agree[name] = float((pred == ref_pred).float().mean())
        dlog[name] = float((lg - ref_logits).abs().max())
    mixed, full = np.mean(list(flips["fp16_state_fp32"].values())), np.mean(list(flips["fp16"].values()))
    rec = (f"build FP16 with the threshold/state path in FP32 (mean flip rate {mixed:.2e} vs {full:.2e} all-FP16)"
           if mixed <= full else
           f"all-FP16 flips no more spikes than the mixed scheme here ({full:.2e} vs {mixed:.2e}); the state path in FP32 is still the safe choice")
    return PrecisionResult(sequences=len(ys), steps=int(xs.shape[1]), accuracy=acc, flip_rate=flips, prediction_agreement=agree,
                           max_abs_logits=dlog, fp32_nodes=fp32_nodes(model), recommendation=rec)


def fp16_variant(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ``fp16_state_fp32`` scheme as a graph: Gemm/Conv/MatMul in FP16 (weights stored in
    FP16 under their original names, so the parameter map still holds), everything else (the
    neuron dynamics, threshold, reset, state I/O) in FP32, with Casts at the boundaries."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    for node in [n for n in graph.nodes if n.op in ("Gemm", "Conv", "MatMul")]:
        new_inputs = []
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant):
                tensor.values = tensor.values.astype(np.float16)
                new_inputs.append(tensor)
            else:
                half = gs.Variable(f"{tensor.name}_fp16_for_{node.name}", dtype=np.float16)
                graph.nodes.append(gs.Node("Cast", f"{node.name}_in{i}_fp16", {"to": onnx.TensorProto.FLOAT16}, [tensor], [half]))
                new_inputs.append(half)
        node.inputs = new_inputs
        out = node.outputs[0]
        half_out = gs.Variable(f"{out.name}_fp16", dtype=np.float16)
        node.outputs = [half_out]
        graph.nodes.append(gs.Node("Cast", f"{node.name}_out_fp32", {"to": onnx.TensorProto.FLOAT}, [half_out], [out]))
    graph.cleanup().toposort()
    out_model = gs.export_onnx(graph)
    out_model.metadata_props.extend(model.metadata_props)
    out_model.metadata_props.add(key="fptt_edge.precision", value="fp16 affine maps, fp32 neuron dynamics and state")
    out_model = onnx.shape_inference.infer_shapes(out_model)
    onnx.checker.check_model(out_model)
    return out_model
