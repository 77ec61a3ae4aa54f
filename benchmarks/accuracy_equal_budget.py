"""Accuracy at equal budget, FPTT vs BPTT: same model, data, epochs, batch size and optimiser.

    python benchmarks/accuracy_equal_budget.py [--epochs 8] [--out runs/bench-accuracy]

Tasks: S-MNIST row by row on the shipped MNIST subset (fixed 4,000 / 1,000 split) and
N-MNIST (1,000 train / 100 test from ../shared/data/nmnist-small; skipped when absent),
20 frames binned by time, 2x downsampled. Runs the real CLI (``fptt-edge train``) so the
figures are what users get. Target: FPTT >= BPTT.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

NMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--out", default="runs/bench-accuracy")
    args = parser.parse_args()
    tasks = {"smnist_row": ["--task", "smnist", "--mode", "row", "--batch-size", "32"]}
    if (NMNIST / "train1K.txt").is_file():
        tasks["nmnist"] = ["--task", "nmnist", "--train", str(NMNIST / "train1K.txt"), "--test", str(NMNIST / "test100.txt"),
                           "--steps", "20", "--downsample", "2", "--batch-size", "32"]
    results = {}
    for task, task_args in tasks.items():
        for method in ("fptt", "bptt"):
            out = Path(args.out) / f"{task}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "fptt_edge", "train", *task_args, "--method", method, "--epochs", str(args.epochs),
                   "--hidden", str(args.hidden), "--out", str(out), "--quiet", "--checkpoint-interval", "0"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            m = json.loads((out / "metrics.json").read_text())
            results[f"{task}/{method}"] = {"test_accuracy": m["test_accuracy"], "best_test_accuracy": max(e["test_accuracy"] for e in m["epochs"]),
                                           "train_time_s": round(sum(e["train_time_s"] for e in m["epochs"]), 1),
                                           "curve": [round(e["test_accuracy"], 4) for e in m["epochs"]]}
            print(json.dumps({task + "/" + method: results[f"{task}/{method}"]}), file=sys.stderr)
    summary = {"epochs": args.epochs, "hidden": args.hidden, "results": results,
               "fptt_minus_bptt": {t: results[f"{t}/fptt"]["test_accuracy"] - results[f"{t}/bptt"]["test_accuracy"] for t in tasks}}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
