"""The equal-budget benchmark's statistics (``benchmarks/accuracy_equal_budget.py``) against closed forms."""
from __future__ import annotations

import importlib.util
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
    text = bench.markdown({"t": row})
    assert "mean met; spread not met" in text and "F-test p =" in text and "95 % CI" in text
