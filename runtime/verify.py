"""Check a TensorRT engine against ONNX Runtime (CPU, exact FP32) on the same frames, step by step.

The engine is stepped at its own batch: a static batch of N is verified with N streams (each its
own frames), a dynamic one with one stream. The report says how the engine was built
(precision, TF32), since both set how close it can be.
"""
from __future__ import annotations

import numpy as np

from ..contract import read_contract
from .benchmark import random_frames
from .session import open_session
from .trt_build import read_engine_build


def verify_engine(onnx_path, engine_path, npz=None, steps: int = 200) -> dict:
    build = read_engine_build(engine_path)
    contract = read_contract(onnx_path)
    streams = contract.batch if isinstance(contract.batch, int) else 1
    from .inputs import from_npz

    # Only data the user names: a data path recorded in the model's metadata is never opened.
    if npz:
        frames = np.concatenate([r.frames for r in from_npz(npz, contract)])[:steps]
        # stream k starts k/streams of the way into the data, so the streams see different frames
        xs = np.stack([np.roll(frames, -((k * len(frames)) // streams), axis=0) for k in range(streams)], axis=1)
        source = npz
    else:
        xs = random_frames((streams, *contract.input.frame_shape), density=0.05, n=steps)
        source = "random event frames (5 % active; pass --verify-npz for real data)"
    spikes = [s.name for s in contract.states if s.name.endswith(".s")]
    max_logits, flips, total = 0.0, 0, 0
    # a static batch opens at that batch, a dynamic one at one stream (open_session's default)
    with open_session(onnx_path, "ort") as ref, open_session(engine_path, "tensorrt", contract=contract) as trt:
        for x in xs:
            a, b = ref.step(x).copy(), trt.step(x).copy()
            max_logits = max(max_logits, float(np.abs(a - b).max()))
            sa, sb = ref.get_state(), trt.get_state()
            flips += sum(int((sa[n] != sb[n]).sum()) for n in spikes)
            total += sum(sa[n].size for n in spikes)
    rate = flips / max(total, 1)
    return {"inputs": str(source), "steps": len(xs), "streams": streams, "precision": build.get("precision"),
            "tf32": build.get("tf32"), "tensorrt": build.get("tensorrt"), "max_abs_logits": max_logits,
            "spike_flip_rate": rate, "passed": rate < 1e-3}
