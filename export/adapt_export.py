"""``fptt-edge export --adapt``: write ``MODEL.train.onnx`` beside the inference graph, checked.

The train-step graph (:mod:`.train_graph`) gets its contract in metadata (trainable tensors,
hyper-parameters, the checkpoint's and the inference graph's hashes), the device lint, an
``eps``-survival check and, on real labelled sequences, the update-by-update comparison with
the PyTorch FPTT trainer (:mod:`.train_check`). A failed comparison writes nothing but the
report, as the inference parity does.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from ..contract import stamp_checksum
from ..devices import DeviceProfile
from ..io import file_sha256
from ..model import LTCNetwork
from ..train_contract import MAX_CHUNK, Hyper, TrainContract
from .errors import ExportError
from .graph_passes import default_opset
from .lint import lint
from .parity import ort_session
from .train_check import check_train_parity
from .train_graph import trace_train_step


def train_path_for(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.train.onnx``."""
    return model_path.with_suffix(".train.onnx")


def hyper_from_payload(payload: dict) -> Hyper:
    """The FPTT hyper-parameters the checkpoint was trained with (defaults where it has none)."""
    training = payload.get("training") or {}
    known = {k: float(training[k]) for k in ("lr", "alpha", "beta", "clip") if isinstance(training.get(k), (int, float))}
    return Hyper(**known)


def eps_survives(model: onnx.ModelProto, session, contract: TrainContract) -> bool:
    """A zero gradient with zero moments must leave every weight finite (``u = max(0, 0 + eps) > 0``).

    Frames of zeros, a zero loss weight and ``Wbar = W``, ``lam = 0`` make the gradient exactly 0;
    without eps the update divides 0 by 0.
    """
    feeds = zero_feeds(session, contract)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return bool(np.isfinite(out["fptt.weights_out"]).all()) and bool((out["adamax.u_out"] > 0).all())


def zero_feeds(session, contract: TrainContract) -> dict[str, np.ndarray]:
    """Inputs of the right shapes: zeros, weights and ``Wbar`` from the graph's own initial weights, mask 1."""
    feeds = {}
    for inp in session.get_inputs():
        shape = [int(d) for d in inp.shape]
        feeds[inp.name] = np.zeros(shape, np.float32)
    feeds["fptt.mask"][:] = 1.0
    feeds["lr"][:] = contract.hyper.lr
    feeds["y"][:, 0] = 1.0
    rng = np.random.default_rng(0)
    for t in contract.tensors:
        feeds[t.name] = np.asarray(rng.standard_normal(t.shape) * 0.1, np.float32)
        feeds["fptt.wbar"][0, t.offset:t.offset + t.size] = feeds[t.name].reshape(-1)
    return feeds


def export_train_step(net: LTCNetwork, payload: dict, checkpoint: Path, model_path: Path, model_sha256: str, profile: DeviceProfile,
                      opset: int, trainable: str, batch: int, check_data, updates: int, strict: bool, log, guard_samples: int = 100,
                      chunk: int = 1) -> tuple[dict, list[tuple[Path, bytes]]]:
    """``model.train.onnx`` (paired with the inference graph of SHA-256 ``model_sha256`` that will be written to
    ``model_path``) and ``model.guard.npz``: the report section and the files to write, nothing written here.
    ``chunk`` L > 1: one FPTT-K update per L steps (backprop through them)."""
    if not 1 <= chunk <= MAX_CHUNK:
        raise ExportError(f"--adapt-chunk must be 1..{MAX_CHUNK} steps, got {chunk}")
    hyper = hyper_from_payload(payload)
    t0 = time.perf_counter()
    model, tensors, folded = trace_train_step(net, trainable, hyper, batch, opset, chunk)
    contract = TrainContract(batch=batch, frame_shape=tuple(net.config.input_shape), num_classes=net.config.num_classes,
                             states=tuple((n, tuple(s[1:])) for n, s in zip(net.state_names(), net.state_shapes(1))),
                             tensors=tensors, trainable=trainable, hyper=hyper, checkpoint_sha256=file_sha256(checkpoint),
                             inference_sha256=model_sha256, opset=default_opset(model), chunk=chunk)
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "fptt-edge"
    model.doc_string = "FPTT train step: one update per call; contract in metadata_props (fptt_edge.train.*)"
    stamp_checksum(model)  # fptt_edge.graph_sha256: the learner verifies graph and weights before it trains through them
    data = model.SerializeToString()
    session = ort_session(data)
    out = train_path_for(model_path)
    report: dict = {"model": str(out), "model_bytes": len(data), "export_seconds": time.perf_counter() - t0, "trainable": trainable,
                    "tensors": [t.name for t in tensors], "parameters": contract.size, "batch": batch, "chunk": chunk,
                    "hyper": contract.hyper.__dict__,
                    "nodes": len(model.graph.node), "eps_survives": eps_survives(model, session, contract),
                    "lint": lint(model, profile).to_dict()}
    if not report["eps_survives"]:
        raise ExportError("the train-step graph lost Adamax's eps (a zero gradient gives NaN weights); not written")
    if check_data is not None:
        x, y, lengths = check_data
        log(f"train-step check: at least {updates} updates (whole sequences) at batch {batch}{f' (chunks of {chunk} steps)' if chunk > 1 else ''} through "
            "PyTorch's FPTT trainer and ONNX Runtime ...")
        parity = check_train_parity(folded, tensors, hyper, session, x, y, lengths, batch, min_updates=updates, strict=strict, chunk=chunk)
        report["parity"] = parity.to_dict()
        if not parity.passed:
            bad = [k for k in parity.max_rel if not parity.buffer_ok(k)]
            what = f"first spike mismatch {parity.first_mismatch}" if not parity.spikes_ok else f"buffers beyond tolerance: {bad}"
            report["passed"] = False
            raise _TrainCheckFailed(report, f"the train-step graph disagrees with PyTorch's FPTT trainer ({what}); {out} not written")
    report["passed"] = True
    files = [(out, data)]
    if check_data is not None and guard_samples:
        report["guard"], guard = guard_file(model_path, check_data, guard_samples)
        files.append(guard)
    return report, files


def guard_file(model_path: Path, check_data, samples: int) -> tuple[dict, tuple[Path, bytes]]:
    """``model.guard.npz``: labelled sequences of the original domain that the learner's guard scores (with their
    ``lengths`` where they differ). Taken from the end of the check data (the train-step check uses its start)."""
    import io

    from ..runtime.adaptation import guard_path_for

    x, y, lengths = check_data
    x, y = x[-samples:], y[-samples:]
    x, y = np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64)
    buf = io.BytesIO()
    if lengths is None:
        np.savez_compressed(buf, x=x, y=y)
    else:
        np.savez_compressed(buf, x=x, y=y, lengths=np.asarray(lengths[-samples:], np.int64))
    path = guard_path_for(model_path)
    return {"path": str(path), "sequences": len(y), "bytes": buf.tell()}, (path, buf.getvalue())


class _TrainCheckFailed(ExportError):
    """The train-step comparison failed; carries the report section for the written report."""

    def __init__(self, report: dict, message: str):
        super().__init__(message)
        self.report = report
