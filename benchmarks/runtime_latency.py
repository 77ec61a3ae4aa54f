"""Per-step latency and throughput: ONNX Runtime vs PyTorch eager vs a numpy/BLAS floor, in one run.

    python benchmarks/runtime_latency.py [--steps 5000] [--hidden 128]

One thread everywhere (ORT intra-op 1, torch.set_num_threads(1), OPENBLAS/MKL 1 thread).
Model: N-MNIST-sized input (2x34x34 event frames), one dense LTC layer, dynamic batch.
Targets: ORT >= 3x faster than PyTorch eager at batch 1; ORT within 2x of the BLAS floor
(the step's matrix products alone, as numpy matmuls into preallocated outputs).
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from _models import exported_model  # noqa: E402

from fptt_edge.runtime.benchmark import bench_blas_floor, bench_session  # noqa: E402
from fptt_edge.torch_bench import bench_torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--streams", default="1,4,16,64")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, ckpt = exported_model(Path(tmp), (2, 34, 34), (args.hidden,))
        rows = {}
        for n in [int(s) for s in args.streams.split(",")]:
            steps = max(args.steps // n, 200)
            ort_r, torch_r, floor_r = bench_session(model, "ort", n, steps), bench_torch(ckpt, n, steps), bench_blas_floor(model, n, steps)
            rows[n] = {"ort": ort_r, "torch_eager": torch_r, "numpy_blas_floor": floor_r,
                       "ort_stream_steps_per_s": ort_r["steps_per_s"] * n, "torch_stream_steps_per_s": torch_r["steps_per_s"] * n,
                       "speedup_ort_vs_torch_p50": torch_r["p50_us"] / ort_r["p50_us"], "ort_over_floor_p50": ort_r["p50_us"] / floor_r["p50_us"]}
    b1 = rows[1]
    print(json.dumps({"model": {"input": [2, 34, 34], "hidden": args.hidden}, "per_streams": rows,
                      "batch1": {"ort_p50_us": b1["ort"]["p50_us"], "torch_p50_us": b1["torch_eager"]["p50_us"],
                                 "floor_p50_us": b1["numpy_blas_floor"]["p50_us"],
                                 "ort_vs_torch": b1["speedup_ort_vs_torch_p50"], "ort_over_floor": b1["ort_over_floor_p50"],
                                 "target_ort_3x_torch": b1["speedup_ort_vs_torch_p50"] >= 3, "target_ort_within_2x_floor": b1["ort_over_floor_p50"] <= 2}},
                     indent=2))


if __name__ == "__main__":
    main()
