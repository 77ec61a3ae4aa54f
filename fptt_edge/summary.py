"""What a checkpoint or an exported model holds, as a JSON-ready dict (``fptt-edge info``).

The summary of an exported model (``.onnx``, or ``.engine`` with its contract beside it) is
torch-free; only a checkpoint's summary imports torch.
"""
from __future__ import annotations

from .contract import StepContract, read_contract

EXPORTED_SUFFIXES = (".onnx", ".engine")


def summarize(path) -> dict:
    """:func:`train_summary` for ``.train.onnx``, :func:`contract_summary` for ``.onnx``/``.engine``
    files, else :func:`checkpoint_summary`."""
    name = str(path).lower()
    if name.endswith(".train.onnx"):
        from .contract import ContractError

        try:
            return train_summary(path)
        except ContractError as exc:
            if "not an fptt-edge train-step model" not in str(exc):
                raise
            return contract_summary(path)  # an inference graph under a train graph's name
    return contract_summary(path) if name.endswith(EXPORTED_SUFFIXES) else checkpoint_summary(path)


def train_summary(path) -> dict:
    """An FPTT train-step graph's contract: batch, trainable tensors, hyper-parameters, pairing. No torch."""
    from dataclasses import asdict

    from .train_contract import read_train_contract

    c = read_train_contract(path)
    return {
        "file": str(path), "model_type": c.model_type, "contract_version": c.contract_version, "batch": c.batch,
        "frame_shape": list(c.frame_shape), "chunk": c.chunk, "classes": c.num_classes, "trainable": c.trainable, "weights": c.size,
        "tensors": {t.name: {"shape": list(t.shape), "offset": t.offset} for t in c.tensors}, "hyper": asdict(c.hyper),
        "state": {n: list(s) for n, s in c.states}, "opset": c.opset, "checkpoint_sha256": c.checkpoint_sha256,
        "inference_model_sha256": c.inference_sha256,
    }


def contract_summary(path, contract: StepContract | None = None) -> dict:
    """An exported step model's I/O contract (input, logits, state pairs with shapes and initial
    values), its metadata and its parameter -> initializer map. No torch."""
    if contract is None:
        if str(path).lower().endswith(".engine"):
            from .runtime.trt_build import load_engine_contract

            contract = load_engine_contract(path)
        else:
            contract = read_contract(path)
    return {
        "file": str(path),
        "model_type": contract.model_type,
        "contract_version": contract.contract_version,
        "input": {"name": contract.input.name, "shape": list(contract.input.shape), "dtype": contract.input.dtype, "source": contract.input.source},
        "logits": {"name": contract.logits, "classes": list(contract.class_names)},
        "state": [{"input": s.name, "output": s.output, "shape": list(s.shape), "dtype": s.dtype, "initial_value": s.init} for s in contract.states],
        "model_config": contract.model_config,
        "opset": contract.opset,
        "exporter": contract.exporter,
        "producer": contract.producer,
        "checkpoint_sha256": contract.checkpoint_sha256,
        "parameters": {k: f"{v['initializer'] or '-'}" + ("" if v["transform"] == "identity" else f" ({v['transform']})")
                       for k, v in contract.parameter_map.items()},
    }


def checkpoint_summary(path) -> dict:
    """A checkpoint's format, model, parameter count, state shapes, training, classes, input spec
    and metrics (imports torch)."""
    from .checkpoint import load_model

    model, payload = load_model(path)
    metrics = payload.get("metrics") or {}
    return {
        "file": str(path),
        "format": payload["format"],
        "format_version": payload["format_version"],
        "kind": payload["kind"],
        "model_config": payload["model_config"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "state": dict(zip(model.state_names(), [list(s) for s in model.state_shapes(1)])),
        "training": payload.get("training"),
        "class_names": payload.get("class_names"),
        "input_spec": payload.get("input_spec"),
        "test_accuracy": metrics.get("test_accuracy"),
        "epochs_trained": len(metrics.get("epochs", [])) or len(payload.get("history", [])),
    }
