"""Data-parallel FPTT under torchrun (2 gloo processes on CPU) against one process on the same global batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

ARGS = ["train", "--task", "smnist", "--source", "digits8x8", "--mode", "row", "--hidden", "16", "--batch-size", "32",
        "--max-train-samples", "96", "--max-test-samples", "50", "--epochs", "2", "--method", "fptt", "--quiet",
        "--val-fraction", "0"]  # all 96 samples train: 3 full batches of 32 in both runs (ranks drop a short last batch)
# Summation order differs between one process and an all-reduce over two, so weights agree to
# float32 rounding amplified over 48 updates, not bit for bit; ranks among themselves agree exactly.
TOLERANCE = 1e-4


def _run(cmd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_two_gloo_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    dist_out, single_out = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fptt_edge", *ARGS,
          "--out", str(dist_out)])
    _run([sys.executable, "-m", "fptt_edge", *ARGS, "--out", str(single_out)])
    metrics = json.loads((dist_out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # parameters and FPTT traces (Wbar, lambda) are identical on both ranks after every epoch
    assert [e["rank_divergence"] for e in metrics["epochs"]] == [0.0, 0.0]
    a = torch.load(dist_out / "checkpoint.pt", weights_only=True)
    b = torch.load(single_out / "checkpoint.pt", weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=TOLERANCE, msg=k)
    for x, y in zip(a["trainer"]["traces"]["lam"], b["trainer"]["traces"]["lam"]):
        torch.testing.assert_close(x, y, rtol=0, atol=TOLERANCE)
    assert max(float(lam.abs().max()) for lam in b["trainer"]["traces"]["lam"]) > 1e-6  # training really moved


@pytest.mark.slow
def test_the_oracle_is_refused_under_torchrun_with_one_line(tmp_path):
    """Each rank would fill its own soft-target table from its shard: refused, not silently inexact."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fptt_edge",
                           *ARGS, "--oracle", "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "--oracle trains in one process only" in line]
    assert lines == ["Error: --oracle trains in one process only (data-parallel ranks would each keep their own soft-target table)"] * 2, \
        proc.stderr[-2000:]  # one line per rank (torchrun adds its own report), each rank's exit status 2
    assert proc.stderr.count("exitcode  : 2") + proc.stderr.count("(exitcode: 2)") >= 1, proc.stderr[-2000:]
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()
