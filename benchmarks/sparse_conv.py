"""Event-driven (scatter) vs dense first conv at 1 %, 5 % and 20 % active inputs, DVS-like frames.

    python benchmarks/sparse_conv.py [--steps 1000] [--sizes 32,128] [--channels 16] [--persist 0.8,0.95] [--engines numba,numpy]
                                     [--nmnist-bins 20,60]

A conv LTC model (first layer ``Conv(2 -> C, 3x3)`` + BN folded + 2x2 max-pool, then a dense LTC
layer of 64 and the readout), batch 1, one thread, exported to ONNX. Frames are binary 2xSxS
(S = 32: DVS128 downsampled by 4, the gesture default; S = 128: the full sensor), and
``persist`` of each frame's active pixels stay active in the next (moving edges), the rest
move elsewhere. And real event frames: 100 N-MNIST recordings (34x34, ``../shared/data``; skipped
when absent) binned into 20 or 60 frames each (15 or 5 ms), played back to back, with their
measured active fraction and persistence (real event frames persist far less than the synthetic
ones: there the front end rebuilds from the active inputs instead of scattering changes).
Times (p50, µs):

- ``dense_conv``: ONNX Runtime's Conv alone on the frame (the dense graph's own kernel);
- ``scatter_changes_<engine>``: the scatter of the changed inputs alone (changes known, e.g. from events);
- ``sparse_conv_from_frames_<engine>``: the front end from a dense frame (counting changed and
  active inputs, then scattering the changes or rebuilding from the active ones, never the dense conv);
- ``dense_step`` / ``sparse_step_<engine>``: a whole step, the full graph vs the split graph behind the
  event-driven front end (with its crossover measured at load: above it the step takes the dense conv).

Engines: ``numba`` (compiled kernels, the ``[events]`` extra) and ``numpy`` (index tables and
``np.add.at``), side by side in one run.

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


def frame_stats(frames: np.ndarray) -> dict:
    """Active and changed fractions of inputs per step, and the fraction of active inputs still active in the next frame."""
    flat = frames.reshape(len(frames), -1) != 0
    inter, before = (flat[1:] & flat[:-1]).sum(1), flat[:-1].sum(1)
    return {"active_inputs": float(flat.sum(1).mean()), "changed_inputs": float((frames[1:] != frames[:-1]).reshape(len(frames) - 1, -1).sum(1).mean()),
            "active_fraction": float(flat.mean()), "persistence": float((inter[before > 0] / before[before > 0]).mean())}


def measure(model: Path, frame_sets: dict[str, np.ndarray], steps: int, engines: list[str]) -> dict:
    """Per frame set: p50 times of the dense conv, the scatter paths and whole steps, per engine, and agreement with the dense graph."""
    from fptt_edge.runtime import open_session
    from fptt_edge.runtime.benchmark import latency
    from fptt_edge.runtime.sparse_conv import SparseConvSession

    dense = open_session(model)
    ref = SparseConvSession(model, crossover=0.0, engine="numpy")  # its dense path: ONNX Runtime's Conv alone
    auto = {e: SparseConvSession(model, engine=e) for e in engines}  # crossover and rebuild cost measured here
    forced = {e: SparseConvSession(model, crossover=1.0, refresh=10**9, engine=e) for e in engines}  # never the dense conv
    out: dict = {"calibration": {e: a.calibrate() for e, a in auto.items()}, "p50_us": {}}
    for label, frames in frame_sets.items():
        n = len(frames)
        flat = frames.reshape(n, -1)
        changes = [np.flatnonzero(flat[i] != flat[i - 1]) for i in range(n)]
        deltas = [flat[i, c] - flat[i - 1, c] for i, c in enumerate(changes)]
        k = [0]

        def nxt() -> int:
            k[0] += 1
            return k[0] % n

        def dense_conv():
            ref._frame[0] = frames[nxt()]
            ref._conv_only()

        def dense_step():
            dense.step(frames[nxt()][None])

        fns = [("dense_conv", dense_conv), ("dense_step", dense_step)]
        for e in engines:
            scratch = np.zeros(forced[e].scatter.out_size, np.float32)

            def scatter_changes(e=e, scratch=scratch):
                i = nxt()
                forced[e].scatter.add(scratch, changes[i], deltas[i])

            def sparse_from_frames(e=e):
                forced[e].convolve(frames[nxt()][None])

            def sparse_step(e=e):
                auto[e].step(frames[nxt()][None])

            fns += [(f"scatter_changes_{e}", scatter_changes), (f"sparse_conv_from_frames_{e}", sparse_from_frames), (f"sparse_step_{e}", sparse_step)]
        r = {name: latency(fn, steps)["p50_us"] for name, fn in fns}
        r |= frame_stats(frames)
        for e in engines:
            # agreement over 200 steps from a reset: the sparse front end (changes and rebuilds, no dense conv) against the dense graph
            check = SparseConvSession(model, crossover=1.0, refresh=10**9, engine=e)
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
            r |= {f"scatter_speedup_vs_dense_conv_{e}": r["dense_conv"] / r[f"scatter_changes_{e}"],
                  f"from_frames_speedup_vs_dense_conv_{e}": r["dense_conv"] / r[f"sparse_conv_from_frames_{e}"],
                  f"step_speedup_{e}": r["dense_step"] / r[f"sparse_step_{e}"], f"max_abs_conv_{e}": max_conv, f"max_abs_logits_{e}": max_logits,
                  f"spike_agreement_{e}": agree / total, f"rebuilt_streams_{e}": check.counts["rebuilds"]}
            check.close()
        out["p50_us"][label] = r
    out["auto_session_paths"] = {e: dict(a.counts) for e, a in auto.items()}
    for sess in (dense, ref, *auto.values(), *forced.values()):
        sess.close()
    return out


def bench_size(tmp: Path, size: int, channels: int, persist: float, steps: int, engines: list[str]) -> dict:
    rng = np.random.default_rng(0)
    shape = (2, size, size)
    sets = {f"{int(d * 100)}%": dvs_frames(rng, shape, d, persist, 64) for d in (0.01, 0.05, 0.20)}
    out = {"input": list(shape), "conv_channels": channels, "persist": persist, **measure(conv_model(tmp, size, channels), sets, steps, engines)}
    out["target_5x_at_5pct"] = {e: out["p50_us"]["5%"][f"scatter_speedup_vs_dense_conv_{e}"] >= 5 for e in engines}
    return out


def bench_nmnist(tmp: Path, channels: int, steps: int, engines: list[str], bins: list[int], recordings: int = 100) -> dict | None:
    """Real event frames: N-MNIST recordings (34x34, ON/OFF; ``../shared/data/nmnist-small``) binned into ``bins`` frames each, played back to back."""
    from fptt_edge.data.nmnist import events_to_frames, read_nmnist

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-small"
    files = sorted(folder.glob("*.bs2"))[:recordings]
    if not files:
        return None
    events = [read_nmnist(f) for f in files]
    sets = {f"{b} bins ({300 // b} ms)": np.concatenate([events_to_frames(ev, b, "time", 1, "binary") for ev in events]).astype(np.float32)
            for b in bins}
    return {"input": [2, 34, 34], "conv_channels": channels, "recordings": len(files), **measure(conv_model(tmp, 34, channels), sets, steps, engines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sizes", default="32,128", help="frame sizes S (2xSxS inputs), comma separated")
    parser.add_argument("--channels", type=int, default=16, help="output channels of the first conv")
    parser.add_argument("--persist", default="0.8,0.95", help="fractions of active pixels that stay active in the next frame, comma separated")
    parser.add_argument("--engines", default="numba,numpy", help="scatter engines to compare (numba: the [events] extra)")
    parser.add_argument("--nmnist-bins", default="20,60", help="real N-MNIST frames: bins per ~300 ms recording, comma separated ('' to skip)")
    args = parser.parse_args()
    engines = args.engines.split(",")
    import onnxruntime

    results = {"persist": args.persist, "steps": args.steps, "threads": 1, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",") if s):
            for persist in (float(p) for p in args.persist.split(",")):
                results[f"{size}x{size}@{persist}"] = bench_size(Path(tmp), size, args.channels, persist, args.steps, engines)
        if args.nmnist_bins:
            results["nmnist"] = bench_nmnist(Path(tmp), args.channels, args.steps, engines, [int(b) for b in args.nmnist_bins.split(",")])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
