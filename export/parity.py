"""PyTorch vs ONNX Runtime, step by step over real streams, each backend carrying its own state.

fp32 must agree exactly on spikes. Two fp32 backends still round differently (their Gemm
and Conv kernels sum in different orders), so a neuron whose membrane lands within a few ulps
of its threshold can fire in one and not the other. Such a flip is a *rounding tie*: the
reference margin ``|v - theta|`` is at most ``tie_tolerance``. A tie is counted and reported,
and the ONNX state is re-synchronised to PyTorch's so that one tie does not cascade into
thousands of downstream differences. A flip with a larger margin is a real mismatch and
fails the check (``strict=True`` fails on ties too).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..contract import OUTPUT_SUFFIX
from ..model import LTCNetwork, NetState, flatten_state
from .onnx_build import INPUT_NAME, LOGITS_NAME

TIE_TOLERANCE = 1e-5


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
    ties: list[dict] = field(default_factory=list)  # rounding ties: stream, step, state, neurons, reference margin
    tie_tolerance: float = TIE_TOLERANCE
    strict: bool = False
    backend: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """Every spike identical, with no re-synchronisation."""
        return not self.ties and all(v == 0 for v in self.spike_mismatches.values())

    @property
    def passed(self) -> bool:
        return self.exact if self.strict else all(v == 0 for v in self.spike_mismatches.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "exact": self.exact}


@torch.no_grad()
def spike_margins(net: LTCNetwork, x: torch.Tensor, state: NetState) -> list[torch.Tensor]:
    """``v_t - theta_t`` of every LTC layer for one step from ``state`` (the reference's distance to firing)."""
    margins: list[torch.Tensor] = []
    net.step(x, state, margins=margins)
    return margins


def ort_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    from ..runtime.ort_backend import session_options

    opts = session_options(ort, threads)
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def check_parity(net: LTCNetwork, session, streams: np.ndarray, batch: int | None, input_name: str = INPUT_NAME,
                 tie_tolerance: float = TIE_TOLERANCE, strict: bool = False) -> ParityResult:
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
    agree, first, ties, tie_flips = 0, None, [], dict.fromkeys(spike_names, 0)
    out_names = [o.name for o in session.get_outputs()]
    for g0 in range(0, usable, group):
        xs = streams[g0:g0 + group]
        tstate = net.initial_state(group)
        ostate = {n: t.numpy().copy() for n, t in zip(names, flatten_state(tstate))}
        for t in range(n_steps):
            before = tstate
            with torch.no_grad():
                tlogits, tstate = net.step(torch.from_numpy(xs[:, t]), tstate)
            result = dict(zip(out_names, session.run(None, {input_name: xs[:, t], **ostate})))
            ologits = result[LOGITS_NAME]
            ostate = {n: result[n + OUTPUT_SUFFIX] for n in names}
            tflat = dict(zip(names, (s.numpy() for s in flatten_state(tstate))))
            max_logits = max(max_logits, float(np.abs(ologits - tlogits.numpy()).max()))
            for n in names:
                max_state[n] = max(max_state[n], float(np.abs(ostate[n] - tflat[n]).max()))
            margins = None
            resync = False
            for li, n in enumerate(spike_names):
                diff = ostate[n] != tflat[n]
                totals[n] += ostate[n].size
                fired[n] += float(ostate[n].sum())
                if not diff.any():
                    continue
                if margins is None:
                    margins = [m.numpy() for m in spike_margins(net, torch.from_numpy(xs[:, t]), before)]
                where = {"stream": g0 + int(np.argwhere(diff.reshape(group, -1).any(1))[0, 0]), "step": t, "state": n,
                         "count": int(diff.sum()), "max_margin": float(np.abs(margins[li][diff]).max())}
                if where["max_margin"] <= tie_tolerance and first is None:  # after a real mismatch, flips are not ties
                    # later layers see the flipped spike within this same step: part of the tie
                    where["downstream"] = {m: int((ostate[m] != tflat[m]).sum()) for m in spike_names[li + 1:]}
                    ties.append(where)
                    tie_flips[n] += where["count"]
                    resync = True
                    break
                mismatches[n] += where["count"]
                first = first or where
            if resync:  # continue from the reference state: a tie must not cascade
                ostate = {k: v.copy() for k, v in tflat.items()}
            agree += int((ologits.argmax(1) == tlogits.numpy().argmax(1)).sum())
    layer = lambda n: n[: -len(".s")]
    return ParityResult(
        streams=usable, steps=n_steps, max_abs_logits=max_logits, max_abs_state=max_state,
        spike_agreement={layer(n): 1.0 - (mismatches[n] + tie_flips[n]) / totals[n] for n in spike_names},
        spike_mismatches={layer(n): mismatches[n] for n in spike_names},
        spike_rate={layer(n): fired[n] / totals[n] for n in spike_names},
        prediction_agreement=agree / (usable * n_steps), first_mismatch=first, ties=ties, tie_tolerance=tie_tolerance, strict=strict,
        backend={"reference": f"torch {torch.__version__} (eval, fp32)", "onnxruntime": _ort_version(), "provider": "CPUExecutionProvider"},
    )


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__

