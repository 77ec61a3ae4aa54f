"""Trace an :class:`LTCNetwork` step into an ONNX ``ModelProto`` with PyTorch's dynamo exporter.

Graphs for opsets below the exporter's lowest (18; TensorRT 8.x on JetPack 4/5 takes at most
13/17) are made by onnx's version converter. The TorchScript exporter is not used: it merges
initializers that hold equal values (e.g. two zero biases), which would make a refit of one
parameter silently change another.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch

from ..contract import OUTPUT_SUFFIX
from ..model import LTCNetwork, flatten_state
from .errors import ExportError
from .graph_passes import convert_opset, default_opset, fold_and_clean, name_outputs, rename_initializers
from .step_graph import StepGraph, fold_batch_norm

INPUT_NAME, LOGITS_NAME = "x", "logits"
DYNAMO_MIN_OPSET = 18  # the dynamo exporter's lowest native opset; lower targets are converted


def io_names(net: LTCNetwork) -> tuple[list[str], list[str]]:
    states = net.state_names()
    return [INPUT_NAME, *states], [LOGITS_NAME, *[n + OUTPUT_SUFFIX for n in states]]


def trace_step(net: LTCNetwork, batch: int | None, opset: int | None) -> tuple[onnx.ModelProto, dict]:
    """Export one step; ``batch=None`` makes the batch axis dynamic.

    Returns the cleaned graph and the map from each model parameter to its initializer
    (BN-folded conv weights carry the per-channel scale/shift a refit must apply).
    """
    folded, transforms = fold_batch_norm(net)
    step = StepGraph(folded)
    b = batch or 2
    x = torch.zeros(b, *net.config.input_shape)
    args = (x, *flatten_state(folded.initial_state(b)))
    inputs, outputs = io_names(net)
    dim = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = None if batch else {"x": {0: dim}, "state": ({0: dim},) * (len(args) - 1)}
    # optimize=False: the exporter's optimiser drops or merges initializers (a zero bias, a
    # slope of 1), which breaks the parameter -> initializer map; we fold constants ourselves.
    with quiet_exporter("the dynamo exporter"):
        model = dynamo_export(step, args, inputs, outputs, opset, dynamic_shapes)
    rename_initializers(model, "net.")
    name_outputs(model, outputs)
    model = finish_graph(fold_and_clean(model), opset, "the graph")
    pmap = parameter_map(folded, model, transforms)
    for name in dict(net.named_parameters()).keys() - pmap.keys():  # batch-norm affine parameters
        conv = name.rsplit(".bn.", 1)[0] + ".conv"
        pmap[name] = {"initializer": None, "transform": "folded", "into": [f"{conv}.weight", f"{conv}.bias"]}
    return model, pmap


@contextlib.contextmanager
def quiet_exporter(what: str):
    """Silence the exporter's logging, warnings and prints; a failure inside becomes one
    :class:`ExportError` naming ``what``, with the tail of what the exporter printed."""
    log = io.StringIO()
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    try:
        onnx_logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            yield
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - make_fx and the exporter raise many types
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ExportError(f"{what} failed: {type(exc).__name__}: {detail}\n{log.getvalue()[-2000:]}") from exc
    finally:
        onnx_logger.setLevel(level)


def dynamo_export(module, args, inputs: list[str], outputs: list[str], opset: int | None, dynamic_shapes=None) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True, optimize=False)`` (at least the exporter's lowest opset)."""
    program = torch.onnx.export(module, args, dynamo=True, optimize=False, verbose=False, input_names=inputs, output_names=outputs,
                                dynamic_shapes=dynamic_shapes, opset_version=max(opset, DYNAMO_MIN_OPSET) if opset else None)
    if program is None:
        raise ExportError("the exporter returned no program")
    return program.model_proto


def finish_graph(model: onnx.ModelProto, opset: int | None, what: str) -> onnx.ModelProto:
    """Convert to ``opset`` where the exporter could not target it, infer shapes, run onnx's full check."""
    if opset is not None and opset != default_opset(model):
        try:
            model = convert_opset(model, opset)
        except Exception as exc:  # noqa: BLE001 - onnx's converter raises RuntimeError/ValueError
            raise ExportError(f"cannot convert {what} to opset {opset}: {str(exc).splitlines()[0]}") from exc
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def parameter_map(net: LTCNetwork, model: onnx.ModelProto, transforms: dict[str, dict]) -> dict[str, dict]:
    """``{parameter: {"initializer", "shape", "transform", ...}}`` for every parameter of ``net``.

    Batch-norm parameters folded into a conv are added by the caller with ``initializer: None``.
    """
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    mapping, missing = {}, []
    for name, param in net.named_parameters():
        if name not in inits or inits[name] != list(param.shape):
            missing.append(name)
            continue
        mapping[name] = {"initializer": name, "shape": list(param.shape), **transforms.get(name, {"transform": "identity"})}
    if missing:
        raise ExportError(f"parameters without a matching initializer after export (refit would be impossible): {missing}")
    return mapping
