"""PyTorch vs ONNX Runtime, step by step over real streams, each backend carrying its own state.

fp32 must agree exactly on spikes: one flipped spike changes the state and, from then on,
the whole trajectory. Logits and state are compared by their largest absolute difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..model import LTCNetwork, flatten_state


@dataclass
class ParityResult:
    streams: int
    steps: int
    max_abs_logits: float
    max_abs_state: dict[str, float]
    spike_agreement: dict[str, float]  # per layer: fraction of spike values that agree
    spike_mismatches: dict[str, int]
    spike_rate: dict[str, float]  # per layer: fraction of neuron-steps that spiked (ONNX Runtime)
    prediction_agreement: float  # fraction of (stream, step) whose argmax logits agree
    first_mismatch: dict | None = None
    backend: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v == 0 for v in self.spike_mismatches.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def ort_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def check_parity(net: LTCNetwork, session, streams: np.ndarray, batch: int | None, input_name: str = "x") -> ParityResult:
    """Run ``streams`` ``[S, T, *frame]`` through ``net`` (eval) and ``session`` with the same batching.

    ``batch`` is the exported batch size (streams go through in groups of it; ``None``: all at once).
    """
    names = net.state_names()
    spike_names = [n for n in names if n.endswith(".s")]
    group = batch or len(streams)
    usable = len(streams) - len(streams) % group
    if usable == 0:
        raise ValueError(f"need at least {group} streams for batch {group}")
    n_steps = streams.shape[1]
    max_logits, max_state = 0.0, dict.fromkeys(names, 0.0)
    mismatches, totals, fired = dict.fromkeys(spike_names, 0), dict.fromkeys(spike_names, 0), dict.fromkeys(spike_names, 0.0)
    agree, first = 0, None
    out_names = [o.name for o in session.get_outputs()]
    for g0 in range(0, usable, group):
        xs = streams[g0:g0 + group]
        tstate = net.initial_state(group)
        ostate = {n: t.numpy().copy() for n, t in zip(names, flatten_state(tstate))}
        for t in range(n_steps):
            with torch.no_grad():
                tlogits, tstate = net.step(torch.from_numpy(xs[:, t]), tstate)
            result = dict(zip(out_names, session.run(None, {input_name: xs[:, t], **ostate})))
            ologits = result["logits"]
            ostate = {n: result[n + "_out"] for n in names}
            tflat = dict(zip(names, (s.numpy() for s in flatten_state(tstate))))
            max_logits = max(max_logits, float(np.abs(ologits - tlogits.numpy()).max()))
            for n in names:
                max_state[n] = max(max_state[n], float(np.abs(ostate[n] - tflat[n]).max()))
            for n in spike_names:
                bad = int((ostate[n] != tflat[n]).sum())
                mismatches[n] += bad
                totals[n] += ostate[n].size
                fired[n] += float(ostate[n].sum())
                if bad and first is None:
                    first = {"stream": g0 + int(np.argwhere((ostate[n] != tflat[n]).reshape(group, -1).any(1))[0, 0]),
                             "step": t, "state": n, "count": bad}
            agree += int((ologits.argmax(1) == tlogits.numpy().argmax(1)).sum())
    layer = lambda n: n[: -len(".s")]  # noqa: E731
    return ParityResult(
        streams=usable, steps=n_steps, max_abs_logits=max_logits, max_abs_state=max_state,
        spike_agreement={layer(n): 1.0 - mismatches[n] / totals[n] for n in spike_names},
        spike_mismatches={layer(n): mismatches[n] for n in spike_names},
        spike_rate={layer(n): fired[n] / totals[n] for n in spike_names},
        prediction_agreement=agree / (usable * n_steps), first_mismatch=first,
        backend={"reference": f"torch {torch.__version__} (eval, fp32)", "onnxruntime": _ort_version(), "provider": "CPUExecutionProvider"},
    )


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__

