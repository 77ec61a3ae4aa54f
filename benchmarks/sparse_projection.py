"""Event-driven (sparse) vs dense input projection at 1 %, 5 % and 20 % active inputs.

    python benchmarks/sparse_projection.py [--steps 2000]

DVS128-sized frames (2x128x128 = 32,768 inputs), one dense LTC layer of 256, batch 1, one
thread. Two kinds of frames: independent random frames (every step touches new weight rows:
the cache-cold worst case) and DVS-like ones where 80 % of the active inputs persist from the
previous frame (moving edges), as event cameras produce. Times (p50, µs): the input projection alone (dense: W_x x as a numpy matmul; sparse:
gather-sum of the active columns) and the whole step (dense: the full ONNX graph in ONNX
Runtime; sparse: gather-sum + the graph with the projection split off). Also checks the two
paths agree (max |delta logits|, spike agreement). Target: >= 5x faster at 5 %.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _models import exported_model  # noqa: E402

from fptt_edge.runtime import open_session  # noqa: E402
from fptt_edge.runtime.benchmark import latency  # noqa: E402
from fptt_edge.runtime.sparse import SparseInputSession  # noqa: E402


def make_frames(rng, shape, density: float, kind: str, n: int = 64, persist: float = 0.8) -> np.ndarray:
    """``n`` binary frames; "dvs-like": each keeps ``persist`` of the previous frame's active inputs."""
    size = int(np.prod(shape))
    k = int(size * density)
    frames = np.zeros((n, size), np.float32)
    active = rng.choice(size, k, replace=False)
    for i in range(n):
        if kind == "random" or i == 0:
            active = rng.choice(size, k, replace=False)
        else:
            keep = rng.choice(active, int(k * persist), replace=False)
            fresh = rng.choice(np.setdiff1d(np.arange(size), keep), k - len(keep), replace=False)
            active = np.concatenate([keep, fresh])
        frames[i, active] = 1.0
    return frames.reshape(n, *shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    shape = (2, 128, 128)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = exported_model(Path(tmp), shape, (args.hidden,), batch=1)
        dense, sparse = open_session(model), SparseInputSession(model)
        wt = sparse.wt  # [D, H]
        w = np.ascontiguousarray(wt.T)
        proj_out = np.empty(args.hidden, np.float32)
        rng = np.random.default_rng(0)
        for density, kind in [(d, k) for k in ("random", "dvs-like") for d in (0.01, 0.05, 0.20)]:
            frames = make_frames(rng, shape, density, kind)
            flat = frames.reshape(64, -1)
            active = [np.flatnonzero(f) for f in flat]
            k = [0]

            def dense_proj():
                np.matmul(w, flat[k[0] % 64], out=proj_out)
                k[0] += 1

            def sparse_proj():
                sparse.project([active[k[0] % 64]])
                k[0] += 1

            def dense_step():
                dense.step(frames[k[0] % 64][None])
                k[0] += 1

            def sparse_step():
                sparse.step_active([active[k[0] % 64]])
                k[0] += 1

            r = {name: latency(fn, args.steps)["p50_us"] for name, fn in
                 [("dense_projection", dense_proj), ("sparse_projection", sparse_proj), ("dense_step", dense_step), ("sparse_step", sparse_step)]}
            dense.reset(), sparse.reset()
            max_d, agree, total = 0.0, 0, 0
            for i in range(200):
                a, b = dense.step(frames[i % 64][None]).copy(), sparse.step_active([active[i % 64]]).copy()
                max_d = max(max_d, float(np.abs(a - b).max()))
                sa, sb = dense.get_state()["l0.s"], sparse.get_state()["l0.s"]
                agree, total = agree + int((sa == sb).sum()), total + sa.size
            r |= {"active_inputs": int(np.mean([len(a) for a in active])), "projection_speedup": r["dense_projection"] / r["sparse_projection"],
                  "step_speedup": r["dense_step"] / r["sparse_step"], "max_abs_logits": max_d, "spike_agreement": agree / total}
            out[f"{kind} {int(density * 100)}%"] = r
    out["target_5x_at_5pct"] = {k: out[f"{k} 5%"]["step_speedup"] >= 5 for k in ("random", "dvs-like")}
    print(json.dumps({"inputs": int(np.prod(shape)), "hidden": args.hidden, "p50_us": out}, indent=2))


if __name__ == "__main__":
    main()
