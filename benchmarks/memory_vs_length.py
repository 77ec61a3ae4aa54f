"""Peak training memory vs sequence length, FPTT and BPTT on the same model, a fresh process per point.

Memory of one training batch = peak resident memory during the batch (VmHWM, reset through
/proc/self/clear_refs) minus resident memory before it (model, data, optimiser already
allocated); the process's absolute peak is reported too. On CUDA: max_memory_allocated.

    python benchmarks/memory_vs_length.py [--lengths 100,250,500,1000,2000] [--hidden 256] [--batch 64]

Targets: FPTT grows <= 5 % from T = 100 to T = 2000; BPTT / FPTT >= 10 at T = 1000.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(method: str, steps: int, hidden: int, batch: int, device: str) -> dict:
    import torch

    from fptt_edge.config import ModelConfig
    from fptt_edge.model import LTCNetwork
    from fptt_edge.training.trainers import TrainConfig, make_trainer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LTCNetwork(ModelConfig(input_shape=(16,), num_classes=10, hidden=(hidden, hidden))).to(device)
    trainer = make_trainer(model, TrainConfig(method=method))
    x = torch.rand(batch, steps, 16, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    before_kb = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    trainer.train_batch(x, y)
    point = {"method": method, "steps": steps, "hidden": hidden, "batch": batch, "device": device,
             "train_mb": (_status_kb("VmHWM") - before_kb) / 1024, "process_peak_mb": _status_kb("VmHWM") / 1024}
    if device == "cuda":
        point["cuda_train_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="100,250,500,1000,2000")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--point", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure(args.point[0], int(args.point[1]), args.hidden, args.batch, args.device)))
        return
    lengths = [int(v) for v in args.lengths.split(",")]
    points = []
    for method in ("fptt", "bptt"):
        for steps in lengths:
            out = subprocess.run([sys.executable, __file__, "--point", method, str(steps), "--hidden", str(args.hidden),
                                  "--batch", str(args.batch), "--device", args.device], capture_output=True, text=True, check=True)
            points.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(points[-1]), file=sys.stderr)
    key = "cuda_train_mb" if args.device == "cuda" else "train_mb"
    by = {(p["method"], p["steps"]): p[key] for p in points}
    lo, hi = lengths[0], lengths[-1]
    summary = {
        "points": points,
        "memory_key": key,
        "fptt_growth_first_to_last": by[("fptt", hi)] / by[("fptt", lo)] - 1,
        "bptt_over_fptt": {str(t): by[("bptt", t)] / by[("fptt", t)] for t in lengths},
        "targets": {"fptt_growth_max": 0.05, "bptt_over_fptt_at_1000_min": 10},
    }
    if 1000 in lengths:
        summary["bptt_over_fptt_at_1000"] = by[("bptt", 1000)] / by[("fptt", 1000)]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
