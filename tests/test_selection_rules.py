"""The epoch a run keeps (``--selection``): the rules against a brute-force reading of their
definitions, the property the trainer relies on (a choice only stays or moves to the newest epoch),
``one-se`` end to end through ``fit`` (the weights in ``model.pt``), and resume across the setting."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from click.testing import CliRunner
from test_training_selection import _config, _data, _scripted_fit

from fptt_edge.checkpoint import load_model
from fptt_edge.cli import main
from fptt_edge.training import loop
from fptt_edge.training.selection import SELECTIONS, selected_index, standard_error
from fptt_edge.training.trainers import TrainConfig


def _history(accs, losses=None):
    losses = losses or [1.0] * len(accs)
    return [{"epoch": i + 1, "val_accuracy": a, "val_loss": v} for i, (a, v) in enumerate(zip(accs, losses))]


def _by_definition(accs, losses, rule, n):
    """Each rule read off its definition, written independently of the module."""
    if rule == "last":
        return len(accs) - 1
    top = max(accs)
    tied = [i for i, a in enumerate(accs) if a == top]
    best = sorted(tied, key=lambda i: (losses[i], i))[0]
    if rule == "best":
        return best
    band = top - math.sqrt(top * (1 - top) / n)
    return [i for i, a in enumerate(accs) if a >= band - 1e-12][-1]


def test_the_standard_error_is_the_binomial_one():
    assert standard_error(0.85, 400) == pytest.approx(0.017854, abs=1e-6)
    assert standard_error(1.0, 10) == 0.0 == standard_error(0.0, 10)
    with pytest.raises(ValueError):
        standard_error(0.5, 0)


def test_one_se_keeps_the_latest_epoch_within_the_band_of_the_best():
    n = 400  # SE(0.88) = 0.01625
    assert selected_index(_history([0.80, 0.88, 0.87, 0.865]), "one-se", n) == 3  # 0.865 >= 0.8638
    assert selected_index(_history([0.80, 0.88, 0.87, 0.865]), "best", n) == 1
    assert selected_index(_history([0.80, 0.88, 0.87, 0.86]), "one-se", n) == 2  # 0.86 is out, 0.87 is in
    assert selected_index(_history([0.80, 0.88, 0.87, 0.86]), "last", n) == 3
    # accuracies are counts over n: an epoch exactly on the band's edge is in it
    top, edge = 0.9, 0.9 - math.sqrt(0.9 * 0.1 / 100)
    assert selected_index(_history([top, edge]), "one-se", 100) == 1
    with pytest.raises(ValueError, match="selection must be one of"):
        selected_index(_history([0.5]), "median", n)


@pytest.mark.parametrize("rule", SELECTIONS)
def test_every_rule_matches_its_definition_and_only_ever_moves_to_the_newest_epoch(rule):
    rng = random.Random(rule)
    for _ in range(300):
        n = rng.choice([10, 40, 100, 400])
        epochs = rng.randint(1, 9)
        accs = [rng.randint(0, n) / n for _ in range(epochs)]  # counts over n, with ties
        losses = [rng.choice([0.5, 0.7, 0.9]) for _ in range(epochs)]
        history = _history(accs, losses)
        assert selected_index(history, rule, n) == _by_definition(accs, losses, rule, n)
        for k in range(1, epochs):  # the trainer saves weights only when the newest epoch is selected
            before, after = selected_index(history[:k], rule, n), selected_index(history[:k + 1], rule, n)
            assert after in (before, k), (rule, accs[: k + 1], losses[: k + 1])


def test_one_se_through_fit_keeps_the_later_epoch_in_model_pt(tmp_path, monkeypatch):
    # 15 validation samples: SE(0.7) = 0.118, so 0.6 (epoch 4) is within the band and 0.5 (epoch 3) is not
    metrics, seen = _scripted_fit(tmp_path, monkeypatch, [0.3, 0.7, 0.5, 0.6, 0.4], selection="one-se")
    assert metrics["selected_epoch"] == 4 and metrics["val_accuracy"] == 0.6
    assert metrics["selection"].startswith("the latest epoch whose validation accuracy is within one standard error")
    model, payload = load_model(tmp_path / "model.pt")
    assert payload["metrics"]["selected_epoch"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[3][k]), k
    assert not all(torch.equal(seen[3][k], seen[4][k]) for k in seen[3]), "vacuous: the weights did not change after epoch 4"


def test_patience_counts_from_the_selected_epoch(tmp_path, monkeypatch):
    # one-se keeps epoch 3 (0.65 is within 0.118 of 0.7); two more epochs outside the band stop the run
    metrics, seen = _scripted_fit(tmp_path, monkeypatch, [0.3, 0.7, 0.65, 0.5, 0.5, 0.9], method="bptt", selection="one-se", patience=2)
    assert len(seen) == 5 and metrics["stopped_early"] and metrics["selected_epoch"] == 3
    with pytest.raises(ValueError, match="never stop"):
        TrainConfig(selection="last", patience=1)


def _resume(tmp_path, first: str, then: str, drop_key: bool = False):
    train, test = _data(40, 0), _data(12, 1)
    out = tmp_path / f"{first}-{then}-{drop_key}"
    loop.fit(_config(), TrainConfig(method="bptt", epochs=1, batch_size=8, selection=first, schedule="constant"), train, test, out,
             progress=False)
    if drop_key:  # a run written before --selection existed (it selected like 'best')
        payload = torch.load(out / "checkpoint.pt", weights_only=True)
        del payload["training_config"]["selection"]
        torch.save(payload, out / "checkpoint.pt")
    return loop.fit(_config(), TrainConfig(method="bptt", epochs=2, batch_size=8, selection=then, schedule="constant"), train, test,
                    out, resume=True, progress=False)


def test_resume_keeps_the_selection_rule_and_older_runs_count_as_best(tmp_path):
    assert len(_resume(tmp_path, "one-se", "one-se")["epochs"]) == 2
    assert len(_resume(tmp_path, "best", "best", drop_key=True)["epochs"]) == 2
    for first, then, dropped in (("one-se", "best", False), ("best", "one-se", True)):
        with pytest.raises(loop.TrainingError, match=f"selection: '{first}' then, '{then}' now"):
            _resume(tmp_path, first, then, drop_key=dropped)


def test_the_cli_refuses_patience_with_the_last_epoch_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--task", "smnist", "--selection", "last", "--patience", "2", "--epochs", "1",
                                       "--max-train-samples", "40", "--max-test-samples", "10", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "never stop" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "r").exists()


def test_rules_read_only_the_validation_record():
    """Guard against a rule that reads anything but the validation record: the test figures are ignored."""
    accs = [0.5, 0.8, 0.79, 0.6]
    for rule in SELECTIONS:
        plain = selected_index(_history(accs), rule, 200)
        with_test = [dict(r, test_accuracy=t) for r, t in zip(_history(accs), itertools.cycle([0.99, 0.1]))]
        assert selected_index(with_test, rule, 200) == plain
