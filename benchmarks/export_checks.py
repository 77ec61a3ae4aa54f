"""Export figures: time, model size, parity vs PyTorch and FP16 emulation, for trained models.

    python benchmarks/export_checks.py [--epochs 2] [--out runs/bench-export]

Trains (with the real CLI) a dense model on row S-MNIST and a conv model on N-MNIST
(../shared/data/nmnist-small; skipped when absent), then runs ``fptt-edge export --json``
for each against two device profiles (JetPack 6 / opset 20 and JetPack 5 / opset 17) and
prints one JSON object with the figures side by side.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

NMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-export")
    parser.add_argument("--parity-steps", type=int, default=1000)
    args = parser.parse_args()
    models = {"dense_smnist_row": ["--task", "smnist", "--mode", "row", "--hidden", "128", "--max-train-samples", "2000"]}
    if (NMNIST / "train1K.txt").is_file():
        models["conv_nmnist"] = ["--task", "nmnist", "--train", str(NMNIST / "train1K.txt"), "--test", str(NMNIST / "test100.txt"),
                                 "--steps", "20", "--downsample", "2", "--conv", "16", "--hidden", "128"]
    results = {}
    for name, train_args in models.items():
        out = Path(args.out) / name
        subprocess.run([sys.executable, "-m", "fptt_edge", "train", *train_args, "--epochs", str(args.epochs), "--batch-size", "32",
                        "--out", str(out), "--quiet", "--checkpoint-interval", "0"], check=True, stdout=subprocess.DEVNULL)
        for device in ("orin-nano-8gb", "xavier-nx"):
            onnx_path = out / f"model-{device}.onnx"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "fptt_edge", "export", str(out / "model.pt"), "-o", str(onnx_path), "--device", device,
                                   "--parity-steps", str(args.parity_steps), "--json"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode not in (0, 1):
                raise SystemExit(proc.stderr)
            r = json.loads(proc.stdout)
            par, prec = r["parity"], r["precision"]
            results[f"{name}@{device}"] = {
                "opset": r["opset"], "model_kib": round(r["model_bytes"] / 1024, 1), "trace_seconds": round(r["export_seconds"], 2),
                "command_seconds": round(wall, 1), "parity_steps": par["streams"] * par["steps"], "parity_passed": par["passed"],
                "parity_exact": par["exact"], "rounding_ties": len(par["ties"]),
                "spike_agreement": par["spike_agreement"], "spike_rate": {k: round(v, 4) for k, v in par["spike_rate"].items()},
                "max_abs_logits": par["max_abs_logits"], "prediction_agreement": par["prediction_agreement"],
                "fp16_accuracy": prec["accuracy"], "fp16_flip_rate": prec["flip_rate"], "lint": r["lint"]["verdict"],
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
