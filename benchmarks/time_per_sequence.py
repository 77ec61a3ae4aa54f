"""Training time per sequence, FPTT vs BPTT (and FPTT-K), same model and data, side by side in one run.

    python benchmarks/time_per_sequence.py [--mode row|pixel] [--hidden 128] [--batch 64] [--batches 6]

Data: real S-MNIST sequences (row by row: T = 28; pixel by pixel: T = 784). Methods are
interleaved batch by batch so machine noise hits all of them alike; the median is reported.
Target: FPTT <= 1.5x BPTT on CPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fptt_edge.config import ModelConfig
from fptt_edge.data.digits import load_smnist
from fptt_edge.model import LTCNetwork
from fptt_edge.training.trainers import TrainConfig, make_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="row", choices=["row", "pixel"])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_smnist("train", mode=args.mode)
    variants = {"fptt": TrainConfig(method="fptt"), "fptt_k4": TrainConfig(method="fptt", parts=4), "bptt": TrainConfig(method="bptt")}
    trainers = {}
    for name, cfg in variants.items():
        torch.manual_seed(0)
        model = LTCNetwork(ModelConfig(input_shape=data.input_shape, num_classes=10, hidden=(args.hidden,) * args.layers)).to(args.device)
        trainers[name] = make_trainer(model, cfg)
    times = {name: [] for name in variants}
    for b in range(args.batches + 1):  # batch 0 warms up
        x = data.x[b * args.batch : (b + 1) * args.batch].to(args.device)
        y = data.y[b * args.batch : (b + 1) * args.batch].to(args.device)
        for name, trainer in trainers.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_batch(x, y)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if b > 0:
                times[name].append((time.perf_counter() - t0) / args.batch)
    ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    print(json.dumps({
        "task": f"smnist-{args.mode}", "steps": data.steps, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
        "threads": args.threads, "device": args.device, "batches_timed": args.batches,
        "ms_per_sequence": ms,
        "fptt_over_bptt": ms["fptt"] / ms["bptt"],
        "fptt_k4_over_bptt": ms["fptt_k4"] / ms["bptt"],
        "target_fptt_over_bptt_max": 1.5,
    }, indent=2))


if __name__ == "__main__":
    main()
