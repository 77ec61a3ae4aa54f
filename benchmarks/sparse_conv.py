"""Event-driven (scatter) vs dense first conv at 1 %, 5 % and 20 % active inputs, DVS-like frames.

    python benchmarks/sparse_conv.py [--steps 1000] [--sizes 32,128] [--channels 16] [--persist 0.8]

A conv LTC model (first layer ``Conv(2 -> C, 3x3)`` + BN folded + 2x2 max-pool, then a dense LTC
layer of 64 and the readout), batch 1, one thread, exported to ONNX. Frames are binary 2xSxS
(S = 32: DVS128 downsampled by 4, the gesture default; S = 128: the full sensor), and
``persist`` of each frame's active pixels stay active in the next (moving edges), the rest
move elsewhere. Times (p50, µs):

- ``dense_conv``: ONNX Runtime's Conv alone on the frame (the dense graph's own kernel);
- ``scatter_changes``: the scatter of the changed inputs alone (changes known, e.g. from events);
- ``sparse_conv_from_frames``: finding the changes in a dense frame + the scatter;
- ``dense_step`` / ``sparse_step``: a whole step, the full graph vs the split graph behind the
  event-driven front end (with its crossover measured at load: above it the step takes the dense conv).

Also checks that the paths agree (max |delta conv output|, max |delta logits|, spikes) and prints
the measured crossover. Goal of the issue: >= 5x faster than the dense conv at 5 % active.
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


def conv_model(out: Path, size: int, channels: int, seed: int = 0) -> Path:
    """An initialised conv LTC model exported without checks (weights as at the start of training)."""
    import torch

    from fptt_edge.checkpoint import save_checkpoint
    from fptt_edge.config import ModelConfig
    from fptt_edge.export.pipeline import export_checkpoint
    from fptt_edge.model import LTCNetwork

    torch.manual_seed(seed)
    config = ModelConfig(input_shape=(2, size, size), num_classes=11, hidden=(64,), conv_channels=(channels,))
    net = LTCNetwork(config)
    ckpt = out / f"conv{size}.pt"
    spec = {"task": "dvsgesture", "sensor_size": [128, 128, 2], "binning": {"by": "time", "steps": 20}, "downsample": 128 // size,
            "normalisation": "binary"}
    save_checkpoint(ckpt, {"kind": "model", "model_config": config.to_dict(), "state_dict": net.state_dict(),
                           "class_names": [str(i) for i in range(11)], "input_spec": spec})
    export_checkpoint(ckpt, ckpt.with_suffix(".onnx"), batch=1, check=False, log=lambda m: None)
    return ckpt.with_suffix(".onnx")


def dvs_frames(rng, shape, density: float, persist: float, n: int) -> np.ndarray:
    """``n`` binary frames; each keeps ``persist`` of the previous frame's active inputs."""
    size = int(np.prod(shape))
    k = max(1, int(size * density))
    frames = np.zeros((n, size), np.float32)
    active = rng.choice(size, k, replace=False)
    for i in range(n):
        if i:
            keep = rng.choice(active, int(k * persist), replace=False)
            free = np.ones(size, bool)
            free[keep] = False
            active = np.concatenate([keep, rng.choice(np.flatnonzero(free), k - len(keep), replace=False)])
        frames[i, active] = 1.0
    return frames.reshape(n, *shape)


def bench_size(tmp: Path, size: int, channels: int, persist: float, steps: int) -> dict:
    from fptt_edge.runtime import open_session
    from fptt_edge.runtime.benchmark import latency
    from fptt_edge.runtime.sparse_conv import SparseConvSession

    model = conv_model(tmp, size, channels)
    shape = (2, size, size)
    dense = open_session(model)
    auto = SparseConvSession(model)  # crossover measured here
    calib = auto.calibrate()
    ref = SparseConvSession(model, crossover=0.0)  # its dense path: ONNX Runtime's Conv alone
    forced = SparseConvSession(model, crossover=1.0, refresh=10**9)  # always the scatter: times the scatter itself
    rng = np.random.default_rng(0)
    n = 64
    out = {"input": list(shape), "conv_channels": channels, "crossover": auto.crossover, "calibration": calib, "p50_us": {}}
    for density in (0.01, 0.05, 0.20):
        frames = dvs_frames(rng, shape, density, persist, n)
        flat = frames.reshape(n, -1)
        changes = [np.flatnonzero(flat[i] != flat[i - 1]) for i in range(n)]
        deltas = [flat[i, c] - flat[i - 1, c] for i, c in enumerate(changes)]
        k = [0]
        scratch = np.zeros(forced.scatter.out_size, np.float32)

        def nxt() -> int:
            k[0] += 1
            return k[0] % n

        def dense_conv():
            ref._frame[0] = frames[nxt()]
            ref._conv_only()

        def scatter_changes():
            i = nxt()
            forced.scatter.add(scratch, changes[i], deltas[i])

        def sparse_from_frames():
            forced.convolve(frames[nxt()][None])

        def dense_step():
            dense.step(frames[nxt()][None])

        def sparse_step():
            auto.step(frames[nxt()][None])

        r = {name: latency(fn, steps)["p50_us"] for name, fn in
             [("dense_conv", dense_conv), ("scatter_changes", scatter_changes), ("sparse_conv_from_frames", sparse_from_frames),
              ("dense_step", dense_step), ("sparse_step", sparse_step)]}
        # agreement over 200 steps from a reset: the scatter path against the dense conv and the full dense graph
        check = SparseConvSession(model, crossover=1.0, refresh=10**9)
        dense.reset()
        max_conv = max_logits = 0.0
        agree = total = 0
        for i in range(200):
            f = frames[i % n][None]
            a, b = dense.step(f).copy(), check.step(f).copy()
            ref._frame[0] = f[0]
            ref._conv_only()
            max_conv = max(max_conv, float(np.abs(ref.conv_out - check.conv_out).max()))
            max_logits = max(max_logits, float(np.abs(a - b).max()))
            sa, sb = dense.get_state(), check.get_state()
            for name in sa:
                if name.endswith(".s"):
                    agree, total = agree + int((sa[name] == sb[name]).sum()), total + sa[name].size
        check.close()
        active = int(flat.sum(1).mean())
        r |= {"active_inputs": active, "changed_inputs": int(np.mean([len(c) for c in changes[1:]])),
              "scatter_speedup_vs_dense_conv": r["dense_conv"] / r["scatter_changes"],
              "from_frames_speedup_vs_dense_conv": r["dense_conv"] / r["sparse_conv_from_frames"],
              "step_speedup": r["dense_step"] / r["sparse_step"], "max_abs_conv": max_conv, "max_abs_logits": max_logits,
              "spike_agreement": agree / total}
        out["p50_us"][f"{int(density * 100)}%"] = r
    out["auto_session_paths"] = dict(auto.counts)
    out["target_5x_at_5pct"] = out["p50_us"]["5%"]["scatter_speedup_vs_dense_conv"] >= 5
    for s in (dense, auto, ref, forced):
        s.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sizes", default="32,128", help="frame sizes S (2xSxS inputs), comma separated")
    parser.add_argument("--channels", type=int, default=16, help="output channels of the first conv")
    parser.add_argument("--persist", type=float, default=0.8, help="fraction of active pixels that stay active in the next frame")
    args = parser.parse_args()
    import onnxruntime

    results = {"persist": args.persist, "steps": args.steps, "threads": 1, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            results[f"{size}x{size}"] = bench_size(Path(tmp), size, args.channels, args.persist, args.steps)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
