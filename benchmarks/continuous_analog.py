"""Continuous recognition on an analog (IMU-like) stream: train, export, then `run --npz REC --continuous`.

    python benchmarks/continuous_analog.py [--out runs/continuous-analog] [--epochs 8] [--thresholds 0.5 0.6 0.7]

A model learns the synthetic accelerometer gestures (`fptt_edge.data.gestures`: one channel,
4 classes, 96 isolated training sequences of 28-40 steps) through `--encoding standardize+delta`
with FPTT, is exported, and then recognises the gestures of a separate continuous recording
(`synthetic_gesture_stream`: `--gestures` movements with 10-40 still samples before each, one
tilt of gravity, 10 ms sample period with jitter), never reset, one raw sample per step through
the session's `step_raw`. Prints, per decision threshold, the score against the labelled windows
(segment accuracy, missed, false alarms per minute, detection delay) beside the isolated test
accuracy, and the per-step latency (encoding included). Each step goes through the CLI, as a
user runs it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fptt_edge.data.gestures import synthetic_gesture_stream, synthetic_gestures, write_npz


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fptt_edge", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fptt-edge {args[0]} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/continuous-analog"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--gestures", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_npz(out / "train.npz", synthetic_gestures(96, steps=40, classes=4, seed=args.seed), period_us=10_000)  # 100 Hz, as the recording
    write_npz(out / "test.npz", synthetic_gestures(96, steps=40, classes=4, seed=args.seed, split="test"), period_us=10_000)
    stream = synthetic_gesture_stream(args.gestures, steps=40, classes=4, seed=args.seed + 1)
    np.savez(out / "recording.npz", x=stream["x"], t=stream["t"])
    (out / "labels.csv").write_text("class,startTime_usec,endTime_usec\n" + "".join(f"{c},{a},{b}\n" for c, a, b in stream["segments"]))
    run = out / "run"
    cli("train", "--task", "npz", "--train", str(out / "train.npz"), "--test", str(out / "test.npz"), "--hidden", str(args.hidden),
        "--epochs", str(args.epochs), "--batch-size", "16", "--lr", "1e-2", "--schedule", "cosine", "--encoding", "standardize+delta",
        "--seed", str(args.seed), "--out", str(run), "--quiet")
    test_accuracy = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    cli("export", str(run / "model.pt"), "--no-check")
    rows = {}
    for threshold in args.thresholds:
        result = json.loads(cli("run", str(run / "model.onnx"), "--npz", str(out / "recording.npz"), "--continuous",
                                "--labels", str(out / "labels.csv"), "--threshold", str(threshold), "--json"))
        rows[str(threshold)] = {"score": result["score"], "latency_us": result["latency_us"], "emitted": len(result["gestures"]),
                                "warnings": result["warnings"]}
    print(json.dumps({"isolated_test_accuracy": test_accuracy, "chance": 0.25, "recording": {
        "samples": len(stream["x"]), "gestures": args.gestures, "seconds": round(float(stream["t"][-1]) / 1e6, 2)},
        "per_threshold": rows}, indent=2))


if __name__ == "__main__":
    main()
