"""The CLI through click's test runner: train -> eval -> info, resume, and clear errors."""
import json

import pytest
import torch
from click.testing import CliRunner

from fptt_edge.cli import main

TINY = ["--task", "smnist", "--source", "digits8x8", "--mode", "row", "--hidden", "16", "--batch-size", "32",
        "--max-train-samples", "256", "--max-test-samples", "100", "--quiet"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_every_help_is_useful():
    for cmd in ([], ["train"], ["eval"], ["info"]):
        out = run(*cmd, "--help")
        assert out.exit_code == 0 and "Usage" in out.output
    train_help = run("train", "--help").output
    for opt in ("--task", "--method", "--parts", "--hidden", "--layers", "--epochs", "--batch-size", "--lr", "--alpha",
                "--beta", "--seed", "--max-train-samples", "--out", "--resume", "--device", "--train", "--test"):
        assert opt in train_help


def test_train_eval_info(tmp_path):
    out = tmp_path / "run"
    result = run("train", *TINY, "--epochs", "2", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and 0 <= metrics["test_accuracy"] <= 1
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    evaluated = json.loads(run("eval", out / "model.pt", "--max-samples", "100").output)
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"]) and "weights" not in evaluated
    latest = json.loads(run("eval", out / "checkpoint.pt", "--max-samples", "100").output)  # where training stopped: said so
    assert "model.pt holds the selected epoch" in latest["weights"]
    info = json.loads(run("info", out / "model.pt").output)
    assert info["training"]["method"] == "fptt" and info["state"]["l0.u"] == [1, 16] and info["epochs_trained"] == 2
    # the run folder is not overwritten by accident
    again = run("train", *TINY, "--epochs", "2", "--out", out)
    assert again.exit_code == 2 and "--resume" in again.output


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    # --epochs may grow on --resume where the learning-rate schedule does not span the run (constant here)
    args = [*TINY, "--method", "fptt", "--initial-u", "uniform", "--schedule", "constant"]
    assert run("train", *args, "--epochs", "3", "--out", full).exit_code == 0
    assert run("train", *args, "--epochs", "1", "--out", part).exit_code == 0
    assert run("train", *args, "--epochs", "3", "--out", part, "--resume").exit_code == 0
    a, b = torch.load(full / "checkpoint.pt", weights_only=True), torch.load(part / "checkpoint.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for x, y in zip(a["trainer"]["traces"]["wbar"], b["trainer"]["traces"]["wbar"]):
        assert torch.equal(x, y)
    ma, mb = json.loads((full / "metrics.json").read_text()), json.loads((part / "metrics.json").read_text())
    assert [e["test_accuracy"] for e in ma["epochs"]] == [e["test_accuracy"] for e in mb["epochs"]]
    changed = run("train", *TINY, "--method", "fptt", "--initial-u", "uniform", "--lr", "0.1", "--epochs", "4", "--out", part, "--resume")
    assert changed.exit_code == 2 and "lr" in changed.output


class Crash(Exception):
    pass


def test_resume_after_a_crash_mid_epoch(tmp_path, monkeypatch):
    from fptt_edge.training import trainers

    full, crashed = tmp_path / "full", tmp_path / "crashed"
    args = [*TINY, "--method", "bptt", "--epochs", "2", "--checkpoint-interval", "1e-9"]
    assert run("train", *args, "--out", full).exit_code == 0
    original = trainers.BPTTTrainer.train_batch
    calls = {"n": 0}

    def crash_on_sixth(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 1, batch 6 of 8: the process dies mid-epoch
            raise Crash
        return original(self, *a, **k)

    monkeypatch.setattr(trainers.BPTTTrainer, "train_batch", crash_on_sixth)
    with pytest.raises(Crash):
        run("train", *args, "--out", crashed)
    progress = torch.load(crashed / "checkpoint.pt", weights_only=True)["progress"]
    assert (progress["epoch"], progress["batch"]) == (0, 5)  # saved after every batch (interval ~0)
    monkeypatch.setattr(trainers.BPTTTrainer, "train_batch", original)
    assert run("train", *args, "--out", crashed, "--resume").exit_code == 0
    a = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(crashed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    for cmd in ("eval", "info"):
        result = run(cmd, bad)
        assert result.exit_code == 2 and "not a fptt-edge checkpoint" in result.output
    result = run("train", "--task", "npz", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--train" in result.output
    result = run("train", *TINY, "--conv", "a,b", "--out", tmp_path / "y")
    assert result.exit_code == 2 and "--conv" in result.output


def test_npz_and_nmnist_tasks(tmp_path, nmnist_fixture):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        y = rng.integers(0, 3, n)
        x = (rng.random((n, 12, 3)) < 0.1 + 0.2 * (y[:, None, None] == np.arange(3))).astype(np.float32)
        np.savez(tmp_path / f"{split}.npz", x=x, y=y, lengths=rng.integers(6, 13, n))
    out = tmp_path / "npz"
    result = run("train", "--task", "npz", "--train", tmp_path / "train.npz", "--test", tmp_path / "test.npz", "--epochs", "1",
                 "--hidden", "8", "--batch-size", "16", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    refused = run("eval", out / "model.pt")  # a recorded data path is never opened: the user names the data
    assert refused.exit_code == 2 and "pass --data" in refused.output and str(tmp_path / "test.npz") in refused.output
    assert json.loads(run("eval", out / "model.pt", "--data", tmp_path / "test.npz").output)["samples"] == 32
    out = tmp_path / "nm"
    result = run("train", "--task", "nmnist", "--train", nmnist_fixture / "train.txt", "--test", nmnist_fixture / "test.txt",
                 "--steps", "5", "--downsample", "2", "--conv", "4", "--hidden", "8", "--batch-size", "4", "--epochs", "1",
                 "--method", "bptt", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(run("info", out / "model.pt").output)["model_config"]["conv_channels"] == [4]
    assert json.loads(run("eval", out / "model.pt", "--data", nmnist_fixture / "test.txt").output)["samples"] == 6


def test_progress_bar_only_on_a_terminal(tmp_path):
    """Training output that goes to a log (not a terminal) gets the epoch lines, not a progress bar redrawn per batch."""
    args = [a for a in TINY if a != "--quiet"]
    result = run("train", *args, "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: online loss" in result.output and "it/s" not in result.output and "\r" not in result.output, result.output
