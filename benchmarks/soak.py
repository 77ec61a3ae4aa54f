"""Soak: 10^6 steps through one ONNX Runtime session on real N-MNIST frames; memory flat, state finite.

    python benchmarks/soak.py [--steps 1000000] [--every 100000]

Recordings from ../shared/data/nmnist-small (read and binned by the runtime's own numpy code,
the way a device does) are played back to back without resets, so the state runs for the
whole million steps. Every ``--every`` steps: process RSS, state finiteness, max |state|.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _models import NMNIST, NMNIST_SPEC, exported_model  # noqa: E402

from fptt_edge.runtime import open_session  # noqa: E402
from fptt_edge.runtime.events import read_nmnist  # noqa: E402
from fptt_edge.runtime.frames import FrameBinner  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    args = parser.parse_args()
    files = sorted(NMNIST.glob("*.bs2"))[:200]
    if not files:
        raise SystemExit(f"no N-MNIST recordings in {NMNIST}")
    binner = FrameBinner((34, 34, 2), 20, "time", 1, "binary")
    frames = np.concatenate([binner(read_nmnist(f)) for f in files])  # [200 * 20, 2, 34, 34]
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = exported_model(Path(tmp), (2, 34, 34), (128,), batch=1, spec=NMNIST_SPEC)
        sess = open_session(model)
        samples, t0 = [], time.perf_counter()
        for i in range(args.steps):
            sess.step(frames[i % len(frames)][None])
            if (i + 1) % args.every == 0:
                state = sess.get_state()
                samples.append({"step": i + 1, "rss_mb": round(rss_mb(), 2), "finite": bool(all(np.isfinite(v).all() for v in state.values())),
                                "max_abs_state": float(max(np.abs(v).max() for v in state.values())),
                                "spike_rate_l0": float(state["l0.s"].mean())})
        wall = time.perf_counter() - t0
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    print(json.dumps({"steps": args.steps, "wall_s": round(wall, 1), "us_per_step": wall / args.steps * 1e6, "recordings": len(files),
                      "rss_first_sample_mb": first, "rss_last_sample_mb": last, "rss_growth_mb": round(last - first, 2),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "all_finite": all(s["finite"] for s in samples),
                      "samples": samples}, indent=2))


if __name__ == "__main__":
    main()
