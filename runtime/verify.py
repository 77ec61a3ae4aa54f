"""Check a TensorRT engine against ONNX Runtime on the same frames, step by step."""
from __future__ import annotations

import numpy as np

from .benchmark import random_frames
from .session import open_session


def verify_engine(onnx_path, engine_path, npz=None, steps: int = 200) -> dict:
    ref = open_session(onnx_path, "ort")
    trt = open_session(engine_path, "tensorrt", contract=ref.contract)
    from .inputs import from_npz

    # Only data the user names: a data path recorded in the model's metadata is never opened.
    if npz:
        xs, source = np.concatenate([r.frames for r in from_npz(npz, ref.contract)])[:steps], npz
    else:
        xs, source = random_frames(ref.frame_shape, density=0.05, n=steps), "random event frames (5 % active; pass --verify-npz for real data)"
    spikes = [s.name for s in ref.contract.states if s.name.endswith(".s")]
    max_logits, flips, total = 0.0, 0, 0
    for x in xs:
        a, b = ref.step(x[None]).copy(), trt.step(x[None]).copy()
        max_logits = max(max_logits, float(np.abs(a - b).max()))
        sa, sb = ref.get_state(), trt.get_state()
        flips += sum(int((sa[n] != sb[n]).sum()) for n in spikes)
        total += sum(sa[n].size for n in spikes)
    return {"inputs": str(source), "steps": len(xs), "max_abs_logits": max_logits, "spike_flip_rate": flips / max(total, 1),
            "passed": flips / max(total, 1) < 1e-3}
