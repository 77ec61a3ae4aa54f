"""Per-step latency of the backends, PyTorch eager and a numpy/BLAS lower bound, side by side."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..contract import read_contract


def latency(step, steps: int, warmup: int = 50) -> dict:
    """p50/p99/mean per-step latency (µs) and steps/s of ``step()`` over ``steps`` calls."""
    for _ in range(warmup):
        step()
    times = np.empty(steps)
    for i in range(steps):
        t0 = time.perf_counter_ns()
        step()
        times[i] = time.perf_counter_ns() - t0
    times /= 1e3
    return {"p50_us": float(np.percentile(times, 50)), "p99_us": float(np.percentile(times, 99)), "mean_us": float(times.mean()),
            "steps_per_s": float(1e6 / times.mean())}


def random_frames(shape, density: float = 0.05, n: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` binary event frames with ``density`` active inputs (content does not change dense compute time)."""
    return (np.random.default_rng(seed).random((n, *shape)) < density).astype(np.float32)


def bench_session(model, backend: str, streams: int, steps: int, threads: int = 1, verify: bool = True) -> dict:
    from .session import open_session

    sess = open_session(model, backend, streams=streams, threads=threads, verify=verify)
    xs = random_frames((streams, *sess.frame_shape))
    i = [0]

    def step():
        sess.step(xs[i[0] % len(xs)])
        i[0] += 1

    return latency(step, steps)


def bench_torch(checkpoint, streams: int, steps: int) -> dict:
    """PyTorch eager stepping of the same checkpoint (one thread, no grad)."""
    import torch

    from ..checkpoint import load_model

    torch.set_num_threads(1)
    net, _ = load_model(checkpoint)
    xs = torch.from_numpy(random_frames((streams, *net.config.input_shape)))
    state = [net.initial_state(streams)]
    i = [0]

    @torch.no_grad()
    def step():
        _, state[0] = net.step(xs[i[0] % len(xs)], state[0])
        i[0] += 1

    return latency(step, steps)


def bench_blas_floor(model_path, streams: int, steps: int) -> dict | None:
    """The step's Gemms alone as numpy matmuls into preallocated outputs: a floor for any backend.
    None for graphs with convolutions (no numpy equivalent worth timing)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    if any(n.op_type == "Conv" for n in model.graph.node):
        return None
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ops = []
    for n in model.graph.node:
        if n.op_type == "Gemm":
            w = inits[n.input[1]]
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            w = np.ascontiguousarray(w.T) if trans_b else w
            ops.append((np.random.default_rng(0).random((streams, w.shape[0]), dtype=np.float32), w, np.empty((streams, w.shape[1]), np.float32)))

    def step():
        for a, w, out in ops:
            np.matmul(a, w, out=out)

    return latency(step, steps)


def find_checkpoint(model_path) -> Path | None:
    """A checkpoint beside the model whose SHA-256 is the one the model was exported from."""
    from ..io import file_sha256

    want = read_contract(model_path).checkpoint_sha256
    for cand in sorted(Path(model_path).parent.glob("*.pt")):
        if file_sha256(cand) == want:
            return cand
    return None
