"""``benchmarks/accuracy_equal_budget.py``: its statistics against closed forms, and ``--resume`` never mixing settings."""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

pytest.importorskip("scipy")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_equal_budget.py"
_SPEC = importlib.util.spec_from_file_location("accuracy_equal_budget", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


@pytest.mark.parametrize("fptt,bptt", [([0.80, 0.82, 0.86], [0.76, 0.78, 0.77]), ([0.1, 0.3, 0.2], [0.5, 0.51, 0.49])])
def test_spread_p_value_is_the_closed_form_of_f_2_2(fptt, bptt):
    # F(2, 2) has CDF f / (1 + f): the two-sided p-value of the variance ratio f is 2 min(f, 1) / (1 + f)
    f = statistics.variance(fptt) / statistics.variance(bptt)
    out = bench.spread_test(fptt, bptt)
    assert out["spread_ratio"] == pytest.approx(math.sqrt(f))
    assert out["spread_p"] == pytest.approx(2 * min(f, 1.0) / (1 + f))
    assert bench.spread_test(bptt, fptt)["spread_p"] == pytest.approx(out["spread_p"])  # symmetric


def test_equal_spreads_give_p_one_and_a_flat_baseline_an_infinite_ratio():
    assert bench.spread_test([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])["spread_p"] == pytest.approx(1.0)
    flat = bench.spread_test([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert flat["spread_ratio"] == math.inf and "spread_p" not in flat
    assert bench.spread_test([0.1], [0.2, 0.3]) == {}


@pytest.mark.parametrize("fptt,bptt", [([0.80, 0.82, 0.86, 0.81, 0.79], [0.76, 0.78, 0.77, 0.80, 0.74]),
                                       ([0.91, 0.93, 0.95, 0.94, 0.90, 0.92], [0.90, 0.93, 0.94, 0.95, 0.88, 0.93])])
def test_paired_spread_p_value_is_the_pitman_morgan_closed_form(fptt, bptt):
    # Pitman-Morgan in its textbook form: t = (F - 1) sqrt(n - 2) / (2 sqrt(F (1 - r^2))), F the variance ratio and r the
    # correlation of the paired samples themselves (not of their sums and differences, which the code uses)
    from scipy import stats
    n, f, r = len(fptt), statistics.variance(fptt) / statistics.variance(bptt), statistics.correlation(fptt, bptt)
    t = (f - 1) * math.sqrt(n - 2) / (2 * math.sqrt(f * (1 - r * r)))
    out = bench.spread_test(fptt, bptt)
    assert out["spread_p_paired"] == pytest.approx(2 * stats.t.sf(abs(t), n - 2))
    assert bench.spread_test(bptt, fptt)["spread_p_paired"] == pytest.approx(out["spread_p_paired"])  # symmetric


def test_the_paired_test_sees_a_spread_difference_that_pairing_hides_from_the_f_test():
    bptt = [0.70, 0.74, 0.78, 0.72, 0.76]
    fptt = [0.2 + 1.5 * b + e for b, e in zip(bptt, (0.001, -0.001, 0.0, 0.001, -0.001))]  # 1.5x BPTT's spread, seed by seed
    out = bench.spread_test(fptt, bptt)
    assert out["spread_p"] > 0.3 and out["spread_p_paired"] < 0.001
    assert "spread_p_paired" not in bench.spread_test(fptt[:2], bptt[:2])  # n - 2 degrees of freedom: three pairs at least
    assert "spread_p_paired" not in bench.spread_test(fptt, bptt[:4])  # not paired


def test_paired_interval_with_two_seeds_uses_the_cauchy_quantile():
    # Student's t with one degree of freedom is the Cauchy distribution: quantile tan(pi (q - 1/2))
    diffs = [0.01, 0.05]
    half = math.tan(math.pi * 0.475) * statistics.stdev(diffs) / math.sqrt(2)
    lo, hi = bench.paired_interval(diffs)["ci95"]
    assert (lo, hi) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert bench.paired_interval([0.02]) == {}


def test_summary_reports_the_goals_with_the_tests_beside_them():
    runs = [{"task": "t", "method": m, "seed": s, "epochs": 2, "test_accuracy": a, "last_test_accuracy": a, "train_accuracy": a,
             "train_time_s": 1.0} for m, accs in (("fptt", [0.8, 0.82, 0.86]), ("bptt", [0.76, 0.78, 0.77])) for s, a in enumerate(accs)]
    row = bench.summarise(runs)["t"]
    assert row["goal_mean"] and not row["goal_spread"]
    assert row["paired_difference"]["values"] == pytest.approx([0.04, 0.04, 0.09])
    assert row["paired_difference"]["seeds"] == {"ahead": 3, "tied": 0, "behind": 0}
    text = bench.markdown({"t": row})
    assert "mean met; spread not met" in text and "F-test p =" in text and "Pitman-Morgan) p =" in text and "95 % CI" in text
    assert "FPTT ahead on 3, tied on 0, behind on 0" in text


def test_seeds_ahead_tied_and_behind_are_counted_with_float_ties():
    fptt, bptt = {0: 0.8, 1: 0.7, 2: 0.9, 3: 0.1 + 0.2}, {0: 0.75, 1: 0.7, 2: 0.95, 3: 0.3}  # 0.1 + 0.2 != 0.3 in floats
    assert bench.comparison(fptt, bptt)["paired_difference"]["seeds"] == {"ahead": 1, "tied": 2, "behind": 1}


def _finished_run(folder: Path, options) -> None:
    folder.mkdir(parents=True)
    epoch = {"test_accuracy": 0.5, "val_accuracy": 0.5, "train_time_s": 1.0}
    (folder / "metrics.json").write_text(json.dumps({"epochs": [epoch], "test_accuracy": 0.5, "val_accuracy": 0.5, "train_accuracy": 0.5,
                                                       "selected_epoch": 1, "last_epoch": {"test_accuracy": 0.5, "train_accuracy": 0.5,
                                                                                           "online_accuracy": 0.5}}))
    (folder / "DONE").write_text(options if isinstance(options, str) else json.dumps(options))


def _main(monkeypatch, argv):
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a kept run was trained again"))
    bench.main(argv)


def test_resume_keeps_a_run_made_with_the_same_options(tmp_path, monkeypatch, capsys):
    argv = ["--tasks", "smnist_row", "--methods", "fptt", "--seeds", "0", "--out", str(tmp_path), "--resume", "--extra", "--oracle"]
    args = bench.parse_args(argv)
    spec = bench.task_args(args)["smnist_row"]
    _finished_run(tmp_path / "smnist_row-fptt-s0", bench.train_options("smnist_row", spec, "fptt", 0, args))
    _main(monkeypatch, argv)
    assert "| smnist_row | 12 | FPTT | 0.500 +- 0.000 |" in capsys.readouterr().out


@pytest.mark.parametrize("marker", ["other", "", "{\"a\": 1}", "[1, 2]", "not json"])
def test_resume_refuses_a_run_made_with_other_options(tmp_path, monkeypatch, capsys, marker):
    argv = ["--tasks", "smnist_row", "--methods", "fptt", "--seeds", "0", "--out", str(tmp_path), "--resume", "--extra", "--oracle"]
    args = bench.parse_args(argv)
    spec = bench.task_args(args)["smnist_row"]
    options = bench.train_options("smnist_row", spec, "fptt", 0, args)[:-1] if marker == "other" else marker  # made without --oracle
    _finished_run(tmp_path / "smnist_row-fptt-s0", options)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        _main(monkeypatch, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "trained with other options" in err and "\n" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing removed, changed or written


def _curves(val, test, n=400):
    return {"epochs": [{"epoch": i + 1, "val_accuracy": v, "val_loss": 1.0, "test_accuracy": t} for i, (v, t) in enumerate(zip(val, test))],
            "val_samples": n}


def test_selection_rules_are_replayed_on_the_runs_curves():
    # n = 400: SE(0.88) = 0.0162, so 0.865 is within one standard error of the best and 0.86 is not
    assert bench.replayed_selections(_curves([0.80, 0.88, 0.87, 0.865], [0.1, 0.2, 0.3, 0.4])) == {"best": 0.2, "one-se": 0.4, "last": 0.4}
    assert bench.replayed_selections(_curves([0.80, 0.88, 0.87, 0.86], [0.1, 0.2, 0.3, 0.4])) == {"best": 0.2, "one-se": 0.3, "last": 0.4}
    assert bench.replayed_selections({**_curves([0.5], [0.5]), "val_samples": 0}) == {}  # no validation data: nothing to replay


def test_the_summary_compares_the_methods_under_every_rule():
    picks = {("fptt", 0): {"best": 0.80, "one-se": 0.84, "last": 0.85}, ("fptt", 1): {"best": 0.86, "one-se": 0.85, "last": 0.85},
             ("bptt", 0): {"best": 0.81, "one-se": 0.81, "last": 0.80}, ("bptt", 1): {"best": 0.83, "one-se": 0.83, "last": 0.84}}
    runs = [{"task": "t", "method": m, "seed": s, "epochs": 2, "test_accuracy": p["best"], "last_test_accuracy": p["last"],
             "train_accuracy": 0.9, "train_time_s": 1.0, "test_by_selection": p} for (m, s), p in picks.items()]
    rules = bench.summarise(runs)["t"]["by_selection"]
    assert rules["best"]["fptt"]["values"] == [0.80, 0.86] and rules["best"]["goal_mean"] and not rules["best"]["goal_spread"]
    assert rules["one-se"]["fptt"]["mean"] == pytest.approx(0.845) and rules["one-se"]["goal_spread"]  # 0.0071 <= 0.0141
    assert rules["one-se"]["paired_difference"]["values"] == pytest.approx([0.03, 0.02])
    assert rules["last"]["paired_difference"]["mean"] == pytest.approx(0.03)
    text = bench.markdown(bench.summarise(runs))
    assert "| t | one-se | 0.845 +- 0.007 | 0.820 +- 0.014 | 0.025 +- 0.007 | met, met (0.50, p = " in text


def test_one_seed_reports_the_mean_goal_and_no_spread_goal():
    runs = [{"task": "t", "method": m, "seed": 0, "epochs": 2, "test_accuracy": a, "last_test_accuracy": a, "train_accuracy": 0.9,
             "train_time_s": 1.0, "test_by_selection": {"best": a}} for m, a in (("fptt", 0.82), ("bptt", 0.79))]
    row = bench.summarise(runs)["t"]
    assert row["goal_mean"] and "goal_spread" not in row and row["paired_difference"]["values"] == pytest.approx([0.03])
    assert "mean met; spread needs two seeds per method" in bench.markdown({"t": row})


def _fake_train(calls: list, val_of, test_bonus=lambda lr: 0.0):
    """``subprocess.run`` standing in for ``fptt-edge train``: writes the run's metrics, validation accuracy ``val_of(method, lr, seed)``,
    test accuracy 0.01 below it plus ``test_bonus(lr)``."""
    def run(cmd, **_):
        opt = {k: v for k, v in zip(cmd, cmd[1:]) if k.startswith("--")}
        method, lr, seed = opt["--method"], float(opt.get("--lr", 3e-3)), int(opt["--seed"])  # no --lr: the shared default
        calls.append((method, lr, seed) if "--parts" not in opt else (method, lr, seed, int(opt["--parts"])))
        out = Path(opt["--out"])
        out.mkdir(parents=True)
        val = val_of(method, lr, seed) if "--parts" not in opt else val_of(method, lr, seed, int(opt["--parts"]))
        test = val - 0.01 + test_bonus(lr)
        epoch = {"test_accuracy": test, "val_accuracy": val, "val_loss": 1.0, "train_time_s": 1.0}
        (out / "metrics.json").write_text(json.dumps({"epochs": [epoch], "test_accuracy": test, "val_accuracy": val,
                                                       "train_accuracy": val, "selected_epoch": 1, "val_samples": 100,
                                                       "last_epoch": {"test_accuracy": test, "train_accuracy": val,
                                                                      "online_accuracy": val}}))
        return bench.subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_lr_grid_gives_each_method_the_rate_best_on_validation_over_the_tuning_seeds(tmp_path, monkeypatch, capsys):
    # FPTT is best at 1e-3, BPTT at 3e-2 (on the mean: tuning seed 101 alone would pick 1e-2 for BPTT, and so would the test set)
    best = {"fptt": 1e-3, "bptt": 3e-2}
    val_of = lambda m, lr, s: (0.6 if lr == best[m] else 0.5) + (0.15 if (m, lr, s) == ("bptt", 1e-2, 101) else 0.0)  # noqa: E731
    calls: list = []
    monkeypatch.setattr(bench.subprocess, "run", _fake_train(calls, val_of, lambda lr: 0.3 if lr == 1e-2 else 0.0))
    bench.main(["--tasks", "smnist_row", "--seeds", "0", "1", "--tune-seeds", "100", "101", "--lr-grid", "1e-3", "1e-2", "3e-2",
                "--out", str(tmp_path)])
    tuned = sorted(c for c in calls if c[2] >= 100)
    assert tuned == sorted((m, lr, s) for m in ("fptt", "bptt") for lr in (1e-3, 1e-2, 3e-2) for s in (100, 101))
    assert sorted(c for c in calls if c[2] < 100) == sorted([("fptt", 1e-3, 0), ("fptt", 1e-3, 1), ("bptt", 3e-2, 0), ("bptt", 3e-2, 1)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {m: results["tuning"]["smnist_row"][m]["chosen"] for m in ("fptt", "bptt")} == {m: str(lr) for m, lr in best.items()}
    assert results["tuning"]["smnist_row"]["bptt"]["rates"]["0.01"]["val"]["mean"] == pytest.approx(0.575)
    assert {(r["method"], r["lr"], r["seed"]) for r in results["runs"]} == {("fptt", 1e-3, 0), ("fptt", 1e-3, 1), ("bptt", 3e-2, 0),
                                                                            ("bptt", 3e-2, 1)}
    out = capsys.readouterr().out
    assert "| smnist_row | 12 | FPTT (lr 0.001) | 0.590 +- 0.000 |" in out and "| smnist_row | BPTT | 0.03 | 0.600 +- 0.000 |" in out


def test_lr_grid_ties_keep_the_first_rate_and_resume_retrains_nothing(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(bench.subprocess, "run", _fake_train(calls, lambda m, lr, s: 0.5))
    argv = ["--tasks", "nmnist", "smnist_row", "--methods", "fptt", "--seeds", "0", "--tune-seeds", "100", "--lr-grid", "3e-3", "1e-3",
            "--out", str(tmp_path), "--resume"]
    bench.main(argv)
    assert json.loads((tmp_path / "results.json").read_text())["tuning"]["smnist_row"]["fptt"]["chosen"] == "0.003"
    _main(monkeypatch, argv)  # every run kept


def test_rates_that_agree_to_six_digits_train_apart_at_their_own_values(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(bench.subprocess, "run", _fake_train(calls, lambda m, lr, s: 0.6 if lr == 1e-3 else 0.5))
    bench.main(["--tasks", "smnist_row", "--methods", "fptt", "--seeds", "0", "--tune-seeds", "100", "--lr-grid", "1.0000001e-3", "1e-3",
                "--out", str(tmp_path)])
    assert sorted(calls) == [("fptt", 1e-3, 0), ("fptt", 1e-3, 100), ("fptt", 1.0000001e-3, 100)]
    assert json.loads((tmp_path / "results.json").read_text())["tuning"]["smnist_row"]["fptt"]["chosen"] == "0.001"
    assert len(list(tmp_path.glob("smnist_row-fptt-lr*-s100"))) == 2


@pytest.mark.parametrize("bad", [["--lr-grid", "1e-3", "--extra", "--lr", "1e-2"], ["--lr-grid", "0"], ["--lr-grid=-1e-3"],
                                 ["--lr-grid", "inf"], ["--lr-grid", "1e-3", "1e-3"]])
def test_lr_grid_refuses_conflicting_or_absurd_rates(tmp_path, monkeypatch, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        _main(monkeypatch, ["--tasks", "smnist_row", "--out", str(tmp_path / "o"), *bad])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: ") and not (tmp_path / "o").exists()


def test_lr_grid_without_a_validation_split_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.subprocess, "run", _fake_train([], lambda m, lr, s: 0.5))
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: {"task": "smnist_row", "method": "fptt", "seed": 100, "lr": 1e-3,
                                                          "val_accuracy": None, "test_accuracy": 0.5, "last_test_accuracy": 0.5,
                                                          "selected_epoch": 1, "train_time_s": 1.0})
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tasks", "smnist_row", "--methods", "fptt", "--tune-seeds", "100", "--lr-grid", "1e-3", "--out", str(tmp_path),
                    "--extra", "--val-fraction", "0"])
    assert exc.value.code == 2 and "need a validation split" in capsys.readouterr().err


def test_a_rate_that_fails_on_any_tuning_seed_is_left_out_and_reported(tmp_path, monkeypatch, capsys):
    calls: list = []
    fake = _fake_train(calls, lambda m, lr, s: 0.5 + lr)  # the largest rate would win ...

    def run(cmd, **kw):
        if "1.0" in cmd and "101" in cmd:  # ... but it diverges on one tuning seed
            return bench.subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nerror: training diverged (loss is nan)\n")
        return fake(cmd, **kw)
    monkeypatch.setattr(bench.subprocess, "run", run)
    argv = ["--tasks", "smnist_row", "--methods", "fptt", "--seeds", "0", "--tune-seeds", "100", "101", "--lr-grid", "1e-2", "1",
            "--out", str(tmp_path)]
    bench.main(argv)
    tuning = json.loads((tmp_path / "results.json").read_text())["tuning"]["smnist_row"]["fptt"]
    assert tuning["chosen"] == "0.01"
    assert tuning["failed"] == {"1.0": {"lr": 1.0, "parts": None, "seeds": [101], "reason": "error: training diverged (loss is nan)"}}
    assert "| smnist_row | FPTT | 1 | failed, seeds 101: error: training diverged (loss is nan) | | |" in capsys.readouterr().out
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: bench.subprocess.CompletedProcess(cmd, 1, "", "error: diverged\n"))
    with pytest.raises(SystemExit) as exc:  # no rate left
        bench.main([*argv[:-2], "--out", str(tmp_path / "all")])
    assert exc.value.code == 2 and "every point of the grid failed (error: diverged)" in capsys.readouterr().err


def test_with_lr_grid_a_reported_run_that_fails_is_listed_and_left_out(tmp_path, monkeypatch, capsys):
    fake = _fake_train([], lambda m, lr, s: 0.6)

    def run(cmd, **kw):
        if "bptt" in cmd and cmd[cmd.index("--seed") + 1] == "1":  # diverges on a reported seed at the kept rate
            return bench.subprocess.CompletedProcess(cmd, 1, "", "error: training diverged (loss is nan)\n")
        return fake(cmd, **kw)
    monkeypatch.setattr(bench.subprocess, "run", run)
    bench.main(["--tasks", "smnist_row", "--seeds", "0", "1", "2", "--tune-seeds", "100", "--lr-grid", "1e-2", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in results["failed_runs"]] == [("bptt", 1)]
    assert results["table"]["smnist_row"]["bptt"]["seeds"] == [0, 2] and results["table"]["smnist_row"]["fptt"]["seeds"] == [0, 1, 2]
    assert results["table"]["smnist_row"]["paired_difference"]["values"] == pytest.approx([0.0, 0.0])  # seeds both methods ran
    assert "left out: smnist_row BPTT seed 1 at lr 0.01 failed: error: training diverged (loss is nan)" in capsys.readouterr().out


def test_parts_grid_gives_fptt_the_rate_and_k_best_on_validation_and_bptt_no_k(tmp_path, monkeypatch, capsys):
    # FPTT best at (3e-2, K 7) on the mean validation figure; its test set would pick (1e-2, K = T); BPTT has no K
    def val_of(m, lr, s, k=0):
        return 0.7 if (m, lr, k) == ("fptt", 3e-2, 7) else 0.65 if (m, lr) == ("bptt", 1e-2) else 0.5
    calls: list = []
    monkeypatch.setattr(bench.subprocess, "run", _fake_train(calls, val_of, lambda lr: 0.4 if lr == 1e-2 else 0.0))
    argv = ["--tasks", "smnist_row", "--seeds", "0", "--tune-seeds", "100", "--lr-grid", "1e-2", "3e-2", "--parts-grid", "0", "7",
            "--out", str(tmp_path), "--resume"]
    bench.main(argv)
    assert sorted(c for c in calls if c[2] >= 100) == sorted([("fptt", 1e-2, 100), ("fptt", 1e-2, 100, 7), ("fptt", 3e-2, 100),
                                                              ("fptt", 3e-2, 100, 7), ("bptt", 1e-2, 100), ("bptt", 3e-2, 100)])
    assert sorted(c for c in calls if c[2] < 100) == [("bptt", 1e-2, 0), ("fptt", 3e-2, 0, 7)]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tuning"]["smnist_row"]["fptt"]["chosen"] == "0.03 K7" and results["tuning"]["smnist_row"]["bptt"]["chosen"] == "0.01"
    assert results["table"]["smnist_row"]["fptt"]["parts"] == 7 and results["table"]["smnist_row"]["bptt"]["parts"] is None
    assert (tmp_path / "smnist_row-fptt-lr0.03-K7-s0").is_dir() and (tmp_path / "smnist_row-fptt-lr0.01-s100").is_dir()  # K = T: no K
    out = capsys.readouterr().out
    assert "| smnist_row | 12 | FPTT (lr 0.03, K 7) | 0.690 +- 0.000 |" in out and "| smnist_row | FPTT | 0.03, K 7 | 0.700 +- 0.000 |" in out
    _main(monkeypatch, argv)  # --resume: every run kept


@pytest.mark.parametrize("bad", [["--parts-grid", "0", "7", "--extra", "--parts", "4"], ["--parts-grid", "4", "--extra", "-K", "2"],
                                 ["--parts-grid", "4", "--extra", "--parts=2"], ["--parts-grid=-1"], ["--parts-grid", "7", "7"]])
def test_parts_grid_refuses_conflicting_or_absurd_k(tmp_path, monkeypatch, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        _main(monkeypatch, ["--tasks", "smnist_row", "--out", str(tmp_path / "o"), *bad])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: ") and not (tmp_path / "o").exists()


def test_goals_meet_on_float_ties_and_compare_only_seeds_both_methods_ran():
    # equal sums over 100 test samples (mean ties), and a shift by 0.04 (equal spread), both off by float rounding
    assert bench.comparison({0: 0.6, 1: 0.9, 2: 0.82}, {0: 0.65, 1: 0.76, 2: 0.91})["goal_mean"]
    shifted = bench.comparison({0: 0.72, 1: 0.79, 2: 0.78}, {0: 0.76, 1: 0.83, 2: 0.82})
    assert shifted["goal_spread"] and not shifted["goal_mean"] and shifted["spread_ratio"] == pytest.approx(1.0)
    # BPTT's bad seed 2 is no help to FPTT when FPTT failed on it: both compare on seeds 0 and 1, where FPTT is behind
    out = bench.comparison({0: 0.80, 1: 0.80}, {0: 0.82, 1: 0.82, 2: 0.60})
    assert not out["goal_mean"] and out["unpaired_seeds"] == 1 and out["paired_difference"]["seeds"]["behind"] == 2
    assert bench.comparison({0: 0.8}, {1: 0.8}) == {"unpaired_seeds": 2}
    assert bench.spread_test([0.5, 0.5], [0.7, 0.7])["spread_ratio"] == 1.0  # both flat: equal, not infinitely wider


def test_grid_ties_keep_the_first_point_in_the_grid_whatever_order_the_runs_finished_in():
    runs = [{"task": "t", "method": "fptt", "seed": 100, "lr": lr, "parts": None, "val_accuracy": 0.8, "test_accuracy": 0.7}
            for lr in (3e-3, 1e-3)]  # 3e-3 finished first
    grid = [bench.setting_name(1e-3, None), bench.setting_name(3e-3, None)]
    assert bench.choose_rates(runs, grid)["t"]["fptt"]["chosen"] == grid[0]
    assert bench.choose_rates(runs[::-1], grid)["t"]["fptt"]["chosen"] == grid[0]
    assert bench.choose_rates(runs)["t"]["fptt"]["chosen"] == bench.setting_name(3e-3, None)  # no grid given: the first run's


def test_parts_grid_alone_reports_a_failed_run_without_a_rate(tmp_path, monkeypatch, capsys):
    fake = _fake_train([], lambda m, lr, s, k=0: 0.6)

    def run(cmd, **kw):
        if "fptt" in cmd and cmd[cmd.index("--seed") + 1] == "1":
            return bench.subprocess.CompletedProcess(cmd, 1, "", "error: training diverged (loss is nan)\n")
        return fake(cmd, **kw)
    monkeypatch.setattr(bench.subprocess, "run", run)
    bench.main(["--tasks", "smnist_row", "--seeds", "0", "1", "2", "--tune-seeds", "100", "--parts-grid", "7", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "left out: smnist_row FPTT seed 1 at K 7 failed: error: training diverged (loss is nan)" in out
    assert "| smnist_row | | goals (on the 2 seeds both ran) | mean met; spread met" in out
    assert "Settings tried on the tuning seeds" in out


@pytest.mark.parametrize("bad", [["--lr-grid", "1e-3", "--extra", "--lr=1e-2"], ["--lr-grid", "1e-3", "--seeds", "0", "100"],
                                 ["--parts-grid", "4", "--tune-seeds", "3", "--seeds", "3"]])
def test_grids_refuse_a_rate_hidden_in_extra_and_tuning_on_reported_seeds(tmp_path, monkeypatch, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        _main(monkeypatch, ["--tasks", "smnist_row", "--out", str(tmp_path / "o"), *bad])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "o").exists()
