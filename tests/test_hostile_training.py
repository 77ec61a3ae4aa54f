"""Training against crashes at the worst moments, results it must not overwrite, and crafted inputs it must refuse; the
writers' file permissions."""
from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_hostile import RESUMABLE, TINY, refused_cli

from fptt_edge.checkpoint import save_checkpoint
from fptt_edge.cli import main
from fptt_edge.training import loop


class Killed(BaseException):
    """What a kill -9 at that point leaves: the process stops, nothing after it runs."""


def _train(out: Path, *extra) -> None:
    res = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "2", "--selection", "last", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output


def _killed_at(monkeypatch, out: Path, writer: str, name: str, nth: int) -> None:
    """Train into ``out`` and stop the process at the ``nth`` write of ``name`` by ``writer`` (before it happens)."""
    real = getattr(loop, writer)
    seen = []

    def write(path, *a, **k):
        if Path(path).name == name:
            seen.append(path)
            if len(seen) == nth:
                raise Killed
        return real(path, *a, **k)

    monkeypatch.setattr(loop, writer, write)
    with pytest.raises(Killed):
        CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "2", "--selection", "last", "--out", str(out)], catch_exceptions=False)
    monkeypatch.setattr(loop, writer, real)


def _results(out: Path) -> tuple[dict, dict]:
    metrics = json.loads((out / "metrics.json").read_text())
    return torch.load(out / "model.pt", weights_only=True)["state_dict"], {k: metrics[k] for k in ("test_accuracy", "selected_epoch")}


@pytest.mark.parametrize("writer,name,nth", [("save_checkpoint", "model.pt", 2),  # after the last epoch's checkpoint.pt
                                             ("save_checkpoint", "model.pt", 1),  # after the first epoch's checkpoint.pt
                                             ("write_json_atomic", "metrics.json", 2)])  # after the last model.pt
def test_a_kill_between_the_epoch_end_writes_resumes_to_the_same_results(tmp_path, monkeypatch, writer, name, nth):
    _train(tmp_path / "whole")
    _killed_at(monkeypatch, tmp_path / "killed", writer, name, nth)
    res = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "2", "--selection", "last", "--out", str(tmp_path / "killed"),
                                    "--resume"])
    assert res.exit_code == 0, res.output
    (want_w, want_m), (got_w, got_m) = _results(tmp_path / "whole"), _results(tmp_path / "killed")
    assert got_m == want_m and want_w.keys() == got_w.keys() and all(torch.equal(want_w[k], got_w[k]) for k in want_w)
    assert (tmp_path / "killed" / "curves.png").is_file()


def test_results_without_a_resume_checkpoint_are_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"my precious model")
    (out / "metrics.json").write_text("{}")
    for extra in ([], ["--resume"]):
        text = refused_cli(["train", *TINY, "--epochs", "1", "--out", out, *extra], tmp_path)
        assert "already holds results" in text


def test_an_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused_cli(["train", *TINY, "--epochs", "1", "--out", ""], tmp_path, usage=True)
    assert not list(tmp_path.iterdir())


SPLIT_LISTS = {  # an N-MNIST split list, crafted; refused before any recording is read
    "empty": b"#header\n",
    "binary": bytes(range(256)) * 2,
    "class-beyond-9": b"#h\nrec1\t5\nrec2\t12\n",
    "class-huge": b"#h\nrec1\t99999999999999999999999\n",
    "class-unicode-digit": "#h\nrec1\t\u00b2\n".encode(),
    "leaves-the-folder": b"#h\n../../etc/rec\t3\n",
}


@pytest.mark.parametrize("name", list(SPLIT_LISTS))
def test_hostile_split_list(tmp_path, name):
    lst = tmp_path / "list.txt"
    lst.write_bytes(SPLIT_LISTS[name])
    refused_cli(["train", "--task", "nmnist", "--train", lst, "--test", lst, "--hidden", "8", "--epochs", "1", "--steps", "5",
                 "--out", tmp_path / "o", "--quiet"], tmp_path)


def _resume_payload(out: Path, edit) -> None:
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("format", "format_version"):
        payload.pop(key)
    edit(payload)
    save_checkpoint(out / "checkpoint.pt", payload)


@pytest.mark.parametrize("field,value", [("betas", "ab"), ("betas", [0.9]), ("betas", [0.9, 1.5]), ("betas", [0.9, float("nan")]),
                                         ("betas", [True, 0.9]), ("differentiable", True), ("maximize", True), ("foreach", "x"),
                                         ("capturable", 1)])
def test_a_resume_checkpoint_with_malformed_optimiser_options_is_refused(tmp_path, field, value):
    out = tmp_path / "run"
    CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--out", str(out)])
    _resume_payload(out, lambda p: p["trainer"]["optimizer"]["param_groups"][0].update({field: value}))
    text = refused_cli(["train", *RESUMABLE, "--epochs", "2", "--out", out, "--resume"], tmp_path)
    assert field in text


@pytest.mark.parametrize("field", ["training", "input_spec", "metrics"])
def test_a_checkpoint_holding_tensors_where_plain_values_belong_is_refused(tmp_path, field):
    out = tmp_path / "run"
    CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--out", str(out)])
    payload = torch.load(out / "model.pt", weights_only=True)
    for key in ("format", "format_version"):
        payload.pop(key)
    payload[field] = {**payload.get(field, {}), "lr": torch.zeros(2)}
    save_checkpoint(tmp_path / "t.pt", payload)
    for cmd in (["info", tmp_path / "t.pt"], ["card", tmp_path / "t.pt", "-o", tmp_path / "c"]):
        assert "plain values" in refused_cli(cmd, tmp_path)


@pytest.mark.parametrize("metrics", ['{"epochs": 5}', '{"input_spec": "x"}', '{"method": {"a": 1}}', '{"test_accuracy": "high"}', "[1, 2]",
                                     '{"test_accuracy": 1e999}', '{"test_accuracy": 7}', '{"train_accuracy": -0.5}'])
def test_card_refuses_malformed_metrics_to_compare(tmp_path, metrics):
    out = tmp_path / "run"
    CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--out", str(out)])
    (tmp_path / "other.json").write_text(metrics)
    refused_cli(["card", out / "model.pt", "--compare", tmp_path / "other.json", "-o", tmp_path / "c"], tmp_path)


def test_sizes_beyond_memory_are_one_line(tmp_path):
    text = refused_cli(["train", *TINY, "--epochs", "1", "--hidden", "10000000", "--out", tmp_path / "o"], tmp_path)
    assert "not enough memory" in text


def test_built_in_tasks_refuse_data_files(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"x")
    refused_cli(["train", *TINY, "--epochs", "1", "--test", tmp_path / "d.npz", "--out", tmp_path / "o"], tmp_path)


def test_divergence_before_any_save_does_not_name_a_missing_checkpoint(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.full((40, 5, 3), 3e38, np.float32), y=np.arange(40) % 3)
    np.savez(tmp_path / "ok.npz", x=np.random.default_rng(0).random((40, 5, 3), np.float32), y=np.arange(40) % 3)
    text = refused_cli(["train", "--task", "npz", "--train", tmp_path / "big.npz", "--test", tmp_path / "ok.npz", "--hidden", "8",
                        "--batch-size", "8", "--epochs", "1", "--val-fraction", "0", "--out", tmp_path / "o", "--quiet"], tmp_path)
    assert "diverged" in text and "checkpoint.pt" not in text and "no state was saved yet" in text


def test_artefacts_get_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path):
    from fptt_edge.io import write_bytes_atomic

    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "new.bin", b"x")
        (tmp_path / "kept.bin").write_bytes(b"old")
        os.chmod(tmp_path / "kept.bin", 0o604)
        write_bytes_atomic(tmp_path / "kept.bin", b"new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "kept.bin").stat().st_mode) == 0o604 and (tmp_path / "kept.bin").read_bytes() == b"new"


def test_looking_for_a_checkpoint_beside_a_model_never_opens_what_is_not_a_regular_file(tmp_path):
    from fptt_edge.io import file_sha256, file_with_sha256

    os.mkfifo(tmp_path / "a.pt")  # opening it would block for ever
    (tmp_path / "b.pt").mkdir()
    (tmp_path / "c.pt").write_bytes(b"the checkpoint")
    found = []
    t = threading.Thread(target=lambda: found.append(file_with_sha256(tmp_path, "*.pt", file_sha256(tmp_path / "c.pt"))), daemon=True)
    t.start()
    t.join(timeout=30)
    assert found == [tmp_path / "c.pt"]


def test_card_claims_the_same_model_and_task_only_with_evidence(tmp_path):
    out = tmp_path / "run"
    CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--out", str(out)])
    (tmp_path / "bare.json").write_text('{"method": "bptt", "test_accuracy": 0.99}')
    res = CliRunner().invoke(main, ["card", str(out / "model.pt"), "--compare", str(out / "metrics.json"), "--compare",
                                    str(tmp_path / "bare.json"), "-o", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    runs = {Path(r["from"]).name: r["same_model_and_task"] for r in json.loads(res.output)["accuracy"]["runs"]}
    assert runs == {"model.pt": True, "metrics.json": True, "bare.json": False}


def test_an_npz_given_as_a_checkpoint_is_named_for_what_it_is(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 4), np.float32), y=np.arange(2))
    for cmd in ("info", "eval"):
        assert "a numpy .npz archive" in refused_cli([cmd, tmp_path / "d.npz"], tmp_path)


def test_compile_auto_decides_on_the_whole_run_so_a_resumed_run_decides_alike(tmp_path, monkeypatch):
    planned: list = []
    real = loop.make_trainer

    def spy(*a, **k):
        planned.append(k["updates_planned"])
        return real(*a, **k)
    monkeypatch.setattr(loop, "make_trainer", spy)
    _killed_at(monkeypatch, tmp_path / "killed", "save_checkpoint", "model.pt", 1)  # after epoch 1 of 2
    res = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "2", "--selection", "last", "--out", str(tmp_path / "killed"),
                                    "--resume"])
    assert res.exit_code == 0, res.output
    assert len(planned) == 2 and planned[0] == planned[1] == 2 * 2 * 8  # 2 epochs of 2 batches of 8 row steps


def test_resume_refuses_fewer_epochs_than_the_run_has_trained(tmp_path):
    out = tmp_path / "run"
    _train(out)
    text = refused_cli(["train", *RESUMABLE, "--epochs", "1", "--selection", "last", "--out", out, "--resume"], tmp_path)
    assert "has trained 2 epochs" in text and "may only grow" in text


@pytest.mark.parametrize("seed", [2 ** 63 - 1, 20_000_000_000_000])
def test_every_seed_the_option_takes_trains(tmp_path, seed):
    res = CliRunner().invoke(main, ["train", *TINY, "--epochs", "1", "--seed", str(seed), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output


def test_derived_seeds_keep_their_values_below_the_wrap():
    from fptt_edge.seeding import derived_seed

    assert derived_seed(7, 1_000_003, 5) == 7 * 1_000_003 + 5
    assert derived_seed(2 ** 63 - 1, 1_000_003, 5) == ((2 ** 63 - 1) * 1_000_003 + 5) % 2 ** 64


@pytest.mark.parametrize("kind", ["file", "link", "fifo"])
def test_a_curves_png_already_there_is_refused_before_training(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    if kind == "file":
        (out / "curves.png").write_text("mine")
    elif kind == "link":
        (out / "curves.png").symlink_to(victim)
    else:
        os.mkfifo(out / "curves.png")
    text = refused_cli(["train", *TINY, "--epochs", "1", "--out", out], tmp_path)
    assert "curves.png" in text and victim.read_text() == "mine" and not (out / "checkpoint.pt").exists()


def test_an_artefact_path_that_is_a_fifo_is_refused_before_training_on_resume_too(tmp_path):
    out = tmp_path / "run"
    _train(out)
    os.unlink(out / "curves.png")
    os.mkfifo(out / "curves.png")
    text = refused_cli(["train", *RESUMABLE, "--epochs", "3", "--selection", "last", "--out", out, "--resume"], tmp_path)
    assert "curves.png" in text and "not a regular file" in text


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_not_waited_on(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    if kind == "fifo":
        os.mkfifo(out / ".lock")
    elif kind == "link":
        (out / ".lock").symlink_to(tmp_path / "elsewhere")
    else:
        (out / ".lock").mkdir()
    done: list = []  # a regression would block in open(); the thread then never finishes and the test fails, not hangs
    worker = threading.Thread(target=lambda: done.append(CliRunner().invoke(main, ["train", *TINY, "--epochs", "1", "--out", str(out)])),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert done, "train blocked on the lock file"
    res = done[0]
    assert res.exit_code == 2 and ".lock: not a regular file" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "elsewhere").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra,expect", [(["--val", "v.npz", "--val-fraction", "0.2"], "give one"),
                                          (["--val-fraction", "0", "--patience", "2"], "never stop")])
def test_options_that_contradict_each_other_are_refused(tmp_path, extra, expect):
    text = refused_cli(["train", *TINY, "--epochs", "2", "--out", tmp_path / "run", *[str(tmp_path / e) if e.endswith(".npz") else e
                                                                                      for e in extra]], tmp_path)
    assert expect in text


def test_unbounded_float_options_describe_their_range_in_help():
    out = CliRunner().invoke(main, ["train", "--help"]).output
    assert "None" not in out and "--b-j0" in out


@pytest.mark.parametrize("extra", [["--lr", "1e39"], ["--lr", "3e38"], ["--alpha", "1e39"], ["--alpha", "1e-300"],
                                   ["--method", "bptt", "--lr", "1e300"]])
def test_settings_that_take_an_update_beyond_float32_are_one_line(tmp_path, extra):
    text = refused_cli(["train", *TINY, "--epochs", "1", "--out", tmp_path / "run", *extra], tmp_path)
    assert "beyond float32's range" in text


def test_a_fresh_run_refused_before_training_leaves_no_folder_behind(tmp_path):
    """The lock's folder (and the parents the run made) go when the run ends before writing anything; a folder that was
    there stays, with what it held."""
    bad = ["--patience", "1", "--val-fraction", "0"]  # refused after the lock is taken (no validation data to stop on)
    refused_cli(["train", *RESUMABLE, "--epochs", "2", *bad, "--out", tmp_path / "new" / "deep"], tmp_path, tmp_path)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    refused_cli(["train", *RESUMABLE, "--epochs", "2", *bad, "--out", kept / "run"], tmp_path, tmp_path)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_resume_without_a_checkpoint_says_that_a_new_run_starts(tmp_path):
    res = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--out", str(tmp_path / "typo"), "--resume"])
    assert res.exit_code == 0 and "no checkpoint.pt in" in res.output and "a new run starts" in res.output, res.output


def test_a_refused_run_keeps_a_folder_it_reached_through_dotdot(tmp_path):
    """--out missing/../there names the folder 'there' that was already there (empty): a refused run leaves it."""
    bad = ["--patience", "1", "--val-fraction", "0"]
    (tmp_path / "there").mkdir()
    refused_cli(["train", *RESUMABLE, "--epochs", "2", *bad, "--out", tmp_path / "missing" / ".." / "there"], tmp_path, tmp_path)
    assert (tmp_path / "there").is_dir()


def test_a_run_whose_folder_went_ends_with_its_own_error(tmp_path):
    """The run folder removed while the run ran: the error that ended the run is raised, not the clean-up's FileNotFoundError."""
    import shutil

    from fptt_edge.training.loop import TrainingError, _run_lock

    out = tmp_path / "new" / "run"
    with pytest.raises(TrainingError, match="refused"), _run_lock(out, True):
        shutil.rmtree(out)
        raise TrainingError("refused")
