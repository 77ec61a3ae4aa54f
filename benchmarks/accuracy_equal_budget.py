"""Accuracy at equal budget, FPTT vs BPTT: same model, data, epochs, batch size, optimiser and schedule, 3 seeds.

    python benchmarks/accuracy_equal_budget.py                      # the full table (hours on 2 CPU cores)
    python benchmarks/accuracy_equal_budget.py --tasks nmnist --seeds 0 --epochs-scale 0.5   # a subset
    python benchmarks/accuracy_equal_budget.py --jobs 2             # two runs at a time (one thread each)
    python benchmarks/accuracy_equal_budget.py --jobs 2 --extra --oracle   # both methods with the reference's oracle term

Tasks (real data, nothing downloaded):
- ``smnist_row``: S-MNIST row by row (T = 28, 28 channels), the shipped 4,000 / 1,000 MNIST digits.
- ``psmnist``: PS-MNIST pixel by pixel (T = 784, one analog channel), a subset: the first 1,000
  training and 500 test digits (``--psmnist-train``/``--psmnist-test``), the pixel encoded as
  ``standardize+delta`` (``--psmnist-encoding``; raw pixels stay near chance for both methods here).
- ``nmnist``: N-MNIST, the shared 1,000 / 100 subset (``../shared/data/nmnist-small``, skipped
  when absent), 20 frames binned by time, 2x downsampled.

Every run is the real CLI (``fptt-edge train``), so the figures are what users get: 10 % of the
training data held out (stratified) for model selection, ``model.pt`` the best-on-validation
epoch, its test accuracy reported (the test set selects nothing). Per task and method: mean and
sample standard deviation over the seeds of the selected model's test accuracy, and of the last
epoch's; the honest train accuracy; time; and FPTT - BPTT paired by seed (same split, order and
initial draw), mean and std. Goal: FPTT mean >= BPTT mean on every task, and FPTT's
seed-to-seed spread no larger than BPTT's; each task's verdict is printed with a 95 % interval of
the paired difference and two-sided tests of equal variances beside it (scipy; with 3 to 5
seeds a spread ratio of 2 is well within chance): the F-test, and the Pitman-Morgan test, which
allows for the pairing by seed.

Learning rates (``--lr-grid``): by default both methods train at one rate (3e-3, the authors'), although
BPTT makes T times fewer updates than FPTT. ``--lr-grid 1e-3 3e-3 1e-2 3e-2`` gives each method its own:
per task and method, every rate of the grid is trained on the tuning seeds (``--tune-seeds``, default
100 101 102, apart from the reported seeds), the rate with the best mean validation accuracy is kept
(the test set chooses nothing), and the reported seeds are trained at it. The tuning runs are listed
beside the table. ``--parts-grid 0 7 4`` adds FPTT's ``K`` (``--parts``; 0 is K = T, an update every step) to FPTT's grid,
chosen the same way; BPTT has no K.

Results go to ``--out``/results.json (every run as it finishes, so an interrupted benchmark keeps
what it measured and ``--resume`` skips finished runs) and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fptt_edge.training.selection import SELECTIONS, selected_index

NMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "nmnist-small"


def task_args(args) -> dict[str, dict]:
    """Per task: the CLI arguments and the epochs (both methods get the same)."""
    e = lambda n: max(1, round(n * args.epochs_scale))  # noqa: E731
    tasks = {
        "smnist_row": {"args": ["--task", "smnist", "--mode", "row", "--hidden", "128", "--batch-size", "32"], "epochs": e(12)},
        "psmnist": {"args": ["--task", "psmnist", "--mode", "pixel", "--hidden", "64", "--batch-size", "32",
                             "--max-train-samples", str(args.psmnist_train), "--max-test-samples", str(args.psmnist_test),
                             "--train-eval-samples", "300", "--encoding", args.psmnist_encoding], "epochs": e(12)},
    }
    if (NMNIST / "train1K.txt").is_file():
        tasks["nmnist"] = {"args": ["--task", "nmnist", "--train", str(NMNIST / "train1K.txt"), "--test", str(NMNIST / "test100.txt"),
                                    "--steps", "20", "--downsample", "2", "--hidden", "128", "--batch-size", "32"], "epochs": e(15)}
    return {k: v for k, v in tasks.items() if k in args.tasks}


def run_folder(task: str, method: str, seed: int, args, lr: float | None = None, parts: int | None = None) -> Path:
    rate = "" if lr is None else f"-lr{lr!r}"  # repr: distinct rates, distinct folders (``:g`` keeps 6 digits)
    k = f"-K{parts}" if parts else ""  # K = T (0) is the default run, shared with a benchmark without --parts-grid
    return Path(args.out) / f"{task}-{method}{rate}{k}-s{seed}"


def setting_name(lr: float | None, parts: int | None) -> str:
    """A grid point's key in results.json: the rate (``str``, as JSON writes a float key), and FPTT's K where one is set."""
    return f"{lr}" + (f" K{parts}" if parts else "")


class TrainFailed(RuntimeError):
    """A ``fptt-edge train`` run exited with an error (e.g. it diverged at a learning rate of ``--lr-grid``)."""

    def __init__(self, cmd: list[str], stderr: str):
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        self.reason = lines[-1] if lines else "no message"
        super().__init__(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")


class MixedResults(Exception):
    """``--resume`` found a run in ``--out`` that was trained with other options."""


def train_options(task: str, spec: dict, method: str, seed: int, args, lr: float | None = None, parts: int | None = None) -> list[str]:
    """The ``fptt-edge train`` options of one run, but for its ``--out`` (the run's folder)."""
    rate = [] if lr is None else ["--lr", repr(lr)]  # the rate itself, not rounded to 6 digits
    k = ["--parts", str(parts)] if parts else []
    return [*spec["args"], "--method", method, "--epochs", str(spec["epochs"]), "--seed", str(seed), "--quiet",
            "--checkpoint-interval", "0", *rate, *k, *args.extra]


def kept_run(task: str, spec: dict, method: str, seed: int, args, lr: float | None = None, parts: int | None = None) -> bool:
    """With ``--resume``: whether this run's finished result is in ``--out``. Its ``DONE`` marker holds the options it
    was trained with; a result made with other options (another ``--extra``, epochs, subset) is refused, not mixed in."""
    out = run_folder(task, method, seed, args, lr, parts)
    done, marker = out / "metrics.json", out / "DONE"
    if not (args.resume and done.is_file() and marker.is_file()):
        return False
    try:
        made_with = json.loads(marker.read_text() or "null")
        finished = bool(json.loads(done.read_text()).get("epochs"))
    except (OSError, ValueError, AttributeError):
        made_with, finished = None, False
    if made_with != train_options(task, spec, method, seed, args, lr, parts):
        described = " ".join(map(str, made_with)) if isinstance(made_with, list) else "unknown"
        raise MixedResults(f"{out} was trained with other options ({described}); "
                           "use another --out, or leave out --resume to train it again")
    return finished


def run_one(task: str, spec: dict, method: str, seed: int, args, lr: float | None = None, parts: int | None = None) -> dict:
    out = run_folder(task, method, seed, args, lr, parts)
    done = out / "metrics.json"
    if kept_run(task, spec, method, seed, args, lr, parts):
        m = json.loads(done.read_text())
    else:
        shutil.rmtree(out, ignore_errors=True)
        options = train_options(task, spec, method, seed, args, lr, parts)
        cmd = [sys.executable, "-m", "fptt_edge", "train", *options, "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if proc.returncode != 0:
            raise TrainFailed(cmd, proc.stderr)
        m = json.loads(done.read_text())
        m["wall_s"] = round(time.perf_counter() - t0, 1)
        done.write_text(json.dumps(m, indent=2))
        (out / "DONE").write_text(json.dumps(options))
    return {"task": task, "method": method, "seed": seed, "lr": lr, "parts": parts, "epochs": spec["epochs"], "test_accuracy": m["test_accuracy"],
            "val_accuracy": m["val_accuracy"], "train_accuracy": m["train_accuracy"], "selected_epoch": m["selected_epoch"],
            "last_test_accuracy": m["last_epoch"]["test_accuracy"], "last_train_accuracy": m["last_epoch"]["train_accuracy"],
            "online_accuracy": m["last_epoch"]["online_accuracy"],
            "train_time_s": round(sum(e["train_time_s"] for e in m["epochs"]), 1), "wall_s": m.get("wall_s"),
            "test_curve": [round(e["test_accuracy"], 4) for e in m["epochs"]], "val_curve": [round(e["val_accuracy"], 4) for e in m["epochs"]],
            "test_by_selection": replayed_selections(m)}


def replayed_selections(metrics: dict) -> dict[str, float]:
    """The test accuracy each selection rule (``--selection``) would have kept, replayed on the run's per-epoch record
    (the rules read only the validation figures, so one run answers for all of them)."""
    history, n = metrics["epochs"], metrics.get("val_samples") or 0
    if n < 1 or not history:
        return {}
    return {rule: history[selected_index(history, rule, n)]["test_accuracy"] for rule in SELECTIONS}


def _scipy_stats():
    """``scipy.stats``, or ``None`` where scipy is not installed (the intervals and tests are then left out)."""
    try:
        from scipy import stats
    except ImportError:
        return None
    return stats


def paired_interval(diffs: list[float]) -> dict:
    """95 % confidence interval of the mean paired difference (Student's t), where scipy is installed."""
    stats, n = _scipy_stats(), len(diffs)
    if stats is None or n < 2:
        return {}
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / n ** 0.5
    mean = statistics.fmean(diffs)
    return {"ci95": [mean - half, mean + half]}


def spread_test(fptt: list[float], bptt: list[float]) -> dict:
    """FPTT's sample std over BPTT's, and two-sided p-values of equal variances (scipy): with 3 to 5 seeds a ratio of 2
    is well within chance, so the spread goal is read with these beside it.

    ``spread_p``: the F-test, which takes the two samples as independent. ``spread_p_paired``: the Pitman-Morgan test,
    for runs paired by seed (the same split, initialisation and data order), whose accuracies may be correlated: the
    variances are equal exactly when ``corr(f + b, f - b) = 0``, tested with ``t = r sqrt(n - 2) / sqrt(1 - r^2)`` on
    ``n - 2`` degrees of freedom (needs three pairs; ``fptt[i]`` and ``bptt[i]`` from the same seed)."""
    if len(fptt) < 2 or len(bptt) < 2:
        return {}
    sf, sb = statistics.stdev(fptt), statistics.stdev(bptt)
    out: dict = {"spread_ratio": sf / sb if sb > 0 else 1.0 if sf == 0 else float("inf")}
    stats = _scipy_stats()
    if stats is not None and sb > 0 and sf > 0:
        f, d1, d2 = sf ** 2 / sb ** 2, len(fptt) - 1, len(bptt) - 1
        out["spread_p"] = float(min(1.0, 2 * min(stats.f.cdf(f, d1, d2), stats.f.sf(f, d1, d2))))
        n = len(fptt)
        if n == len(bptt) and n >= 3:
            sums = [a + b for a, b in zip(fptt, bptt)]
            diffs = [a - b for a, b in zip(fptt, bptt)]
            if statistics.pstdev(sums) > 0 and statistics.pstdev(diffs) > 0:
                r = max(-1.0, min(1.0, statistics.correlation(sums, diffs)))
                t = r * (n - 2) ** 0.5 / max(1e-300, 1 - r * r) ** 0.5
                out["spread_p_paired"] = float(min(1.0, 2 * stats.t.sf(abs(t), n - 2)))
    return out


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
    table = {}
    for task, by_method in out.items():
        row = {}
        for method, rs in by_method.items():
            def ms(key):
                return _mean_std([r[key] for r in rs])
            row[method] = {"seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"], "lr": rs[0].get("lr"), "parts": rs[0].get("parts"),
                           "test": ms("test_accuracy"),
                           "last_test": ms("last_test_accuracy"), "train": ms("train_accuracy"), "train_time_s": ms("train_time_s")}
        if "fptt" in row and "bptt" in row:
            acc = {m: {r["seed"]: r["test_accuracy"] for r in by_method[m]} for m in ("fptt", "bptt")}
            row.update(comparison(acc["fptt"], acc["bptt"]))
            row["by_selection"] = by_selection(by_method["fptt"], by_method["bptt"])
        table[task] = row
    return table


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


TIE = 1e-9  # accuracies are counts over the same test set: equal up to float rounding is a tie


def comparison(fptt: dict[int, float], bptt: dict[int, float]) -> dict:
    """FPTT against BPTT from per-seed test accuracies, on the seeds both methods ran (a seed one method failed on is
    left out of both, and counted in ``unpaired_seeds``): the goals (means, sample stds; equal up to float rounding
    meets them), the difference paired by seed (same data split and order, which the seed-to-seed spread does not
    blur) with its interval and the seeds on which FPTT is ahead, tied or behind, and the spread test."""
    seeds = sorted(fptt.keys() & bptt.keys())
    f, b = [fptt[sd] for sd in seeds], [bptt[sd] for sd in seeds]
    out: dict = {"unpaired_seeds": len(fptt.keys() ^ bptt.keys())}
    if not seeds:
        return out
    out["goal_mean"] = statistics.fmean(f) >= statistics.fmean(b) - TIE
    if len(seeds) > 1:  # a spread needs two seeds per method
        out["goal_spread"] = _mean_std(f)["std"] <= _mean_std(b)["std"] * (1 + TIE) + TIE
    diffs = [a - c for a, c in zip(f, b)]
    if diffs:
        sides = {"ahead": sum(d > TIE for d in diffs), "tied": sum(abs(d) <= TIE for d in diffs), "behind": sum(d < -TIE for d in diffs)}
        out["paired_difference"] = {**_mean_std(diffs), **paired_interval(diffs), "seeds": sides}
    return {**out, **spread_test(f, b)}


def by_selection(fptt: list[dict], bptt: list[dict]) -> dict:
    """Per selection rule, replayed on the same runs: both methods' mean and std of the kept epoch's test accuracy,
    the goals, and the paired difference (seeds both methods ran)."""
    out = {}
    for rule in SELECTIONS:
        acc = {m: {r["seed"]: r["test_by_selection"][rule] for r in rs if rule in r.get("test_by_selection", {})}
               for m, rs in (("fptt", fptt), ("bptt", bptt))}
        seeds = sorted(acc["fptt"].keys() & acc["bptt"].keys())
        if len(seeds) < 2:
            continue
        f, b = ({sd: acc[m][sd] for sd in seeds} for m in ("fptt", "bptt"))
        out[rule] = {"seeds": seeds, "fptt": _mean_std(list(f.values())), "bptt": _mean_std(list(b.values())), **comparison(f, b)}
    return out


def markdown(table: dict) -> str:
    lines = ["| task | epochs | method | test acc (selected) mean +- std | last-epoch test acc | train acc (selected) | seeds | "
             "train time / run |", "|---|---|---|---|---|---|---|---|"]
    f = lambda d: f"{d['mean']:.3f} +- {d['std']:.3f}"  # noqa: E731
    for task, row in table.items():
        for method in ("fptt", "bptt"):
            if method in row:
                r = row[method]
                chosen = ([] if r.get("lr") is None else [f"lr {r['lr']:g}"]) + ([f"K {r['parts']}"] if r.get("parts") else [])
                name = method.upper() + (f" ({', '.join(chosen)})" if chosen else "")
                lines.append(f"| {task} | {r['epochs']} | {name} | {f(r['test'])} | {f(r['last_test'])} | {f(r['train'])} | "
                             f"{len(r['seeds'])} | {r['train_time_s']['mean']:.0f} s |")
        if "paired_difference" in row:
            pd = row["paired_difference"]
            ci = f" (95 % CI {pd['ci95'][0]:+.3f} .. {pd['ci95'][1]:+.3f})" if "ci95" in pd else ""
            sides = pd.get("seeds")
            won = f"; FPTT ahead on {sides['ahead']}, tied on {sides['tied']}, behind on {sides['behind']}" if sides else ""
            lines.append(f"| {task} | | FPTT - BPTT, paired by seed | {f(pd)}{ci}{won} | | | | |")
        if "goal_mean" in row:
            p = f", F-test p = {row['spread_p']:.2f}" if "spread_p" in row else ""
            p += f", paired (Pitman-Morgan) p = {row['spread_p_paired']:.2f}" if "spread_p_paired" in row else ""
            spread = (f"{'met' if row['goal_spread'] else 'not met'} (FPTT / BPTT std {row['spread_ratio']:.2f}{p})"
                      if "goal_spread" in row else "needs two seeds per method")
            apart = f" (on the {len(row['paired_difference']['values'])} seeds both ran)" if row.get("unpaired_seeds") else ""
            lines.append(f"| {task} | | goals{apart} | mean {'met' if row['goal_mean'] else 'not met'}; spread {spread} | | | | |")
    rules = [(task, rule, r) for task, row in table.items() for rule, r in row.get("by_selection", {}).items()]
    if rules:
        lines += ["", "Selection rules replayed on the same runs (`--selection`; the runs' own rule is the table's above):", "",
                  "| task | selection | FPTT | BPTT | FPTT - BPTT, paired | goals: mean, spread (FPTT / BPTT std, F-test p, Pitman-Morgan p) |",
                  "|---|---|---|---|---|---|"]
        for task, rule, r in rules:
            p = f", p = {r['spread_p']:.2f}" if "spread_p" in r else ""
            p += f", paired p = {r['spread_p_paired']:.2f}" if "spread_p_paired" in r else ""
            lines.append(f"| {task} | {rule} | {f(r['fptt'])} | {f(r['bptt'])} | {f(r['paired_difference'])} | "
                         f"{'met' if r['goal_mean'] else 'not met'}, {'met' if r['goal_spread'] else 'not met'} "
                         f"({r['spread_ratio']:.2f}{p}) |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["smnist_row", "psmnist", "nmnist"])
    parser.add_argument("--methods", nargs="+", default=["fptt", "bptt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="Multiply every task's epochs (a shorter, clearly labelled run).")
    parser.add_argument("--psmnist-train", type=int, default=1000)
    parser.add_argument("--psmnist-test", type=int, default=500)
    parser.add_argument("--psmnist-encoding", default="standardize+delta",
                        help="PS-MNIST's one analog channel: raw pixels stay at chance for both methods at this budget.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time.")
    parser.add_argument("--threads", type=int, default=1, help="Threads per run.")
    parser.add_argument("--out", default="runs/bench-accuracy")
    parser.add_argument("--resume", action="store_true", help="Keep finished runs in --out (refused when made with other options).")
    parser.add_argument("--lr-grid", nargs="+", type=float, default=[],
                        help="Give each method its own learning rate: the one of these with the best validation accuracy on --tune-seeds.")
    parser.add_argument("--parts-grid", nargs="+", type=int, default=[],
                        help="FPTT's K (--parts; 0 = T) to choose from with the rate, on the same validation figures.")
    parser.add_argument("--tune-seeds", nargs="+", type=int, default=[100, 101, 102], help="The seeds the grids choose on.")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More fptt-edge train options for every run (last).")
    return parser.parse_args(argv)


def choose_rates(runs: list[dict], order: list[str] | None = None) -> dict:
    """Per task and method, every tried grid point's (rate, and FPTT's K with ``--parts-grid``) validation (and, for the
    record, test) accuracy over the tuning seeds, and the point kept: the best mean validation accuracy (on a tie the
    first in ``order``, the grid's ``setting_name``s, whatever order the runs finished in; without ``order``, the first
    run's). Keys are ``setting_name``s; each point records its ``lr`` and ``parts``."""
    out: dict = {}
    for r in runs:
        entry = out.setdefault(r["task"], {}).setdefault(r["method"], {"rates": {}, "failed": {}})
        if not r.get("failed") and r["val_accuracy"] is None:
            raise ValueError(f"{r['task']} {r['method']} seed {r['seed']} has no validation accuracy: the grids need a validation split")
        entry["failed" if r.get("failed") else "rates"].setdefault(setting_name(r["lr"], r.get("parts")), []).append(r)
    for task, by_method in out.items():
        for method, entry in by_method.items():
            failed = entry["failed"]  # a point with a failed (diverged) run is out
            point = lambda rs: {"lr": rs[0]["lr"], "parts": rs[0].get("parts"), "seeds": [r["seed"] for r in rs]}  # noqa: E731
            entry["failed"] = {k: {**point(rs), "reason": rs[0]["failed"]} for k, rs in failed.items()}
            entry["rates"] = {k: {**point(rs), "val": _mean_std([r["val_accuracy"] for r in rs]),
                                  "test": _mean_std([r["test_accuracy"] for r in rs])} for k, rs in entry["rates"].items()}
            usable = [k for k in entry["rates"] if k not in failed]
            if not usable:
                raise ValueError(f"{task} {method}: every point of the grid failed ({next(iter(entry['failed'].values()))['reason']})")
            rank = {k: i for i, k in enumerate(order or [])}
            usable.sort(key=lambda k: rank.get(k, len(rank)))  # stable: without ``order`` the runs' own order
            entry["chosen"] = max(usable, key=lambda k: entry["rates"][k]["val"]["mean"])  # max keeps the first of equals
    return out


def tuning_markdown(tuning: dict) -> str:
    lines = ["| task | method | lr | val acc (tuning seeds) | test acc (tuning seeds) | kept |", "|---|---|---|---|---|---|"]
    label = lambda r: ("shared" if r["lr"] is None else f"{r['lr']:g}") + (f", K {r['parts']}" if r.get("parts") else "")  # noqa: E731
    for task, by_method in tuning.items():
        for method, entry in by_method.items():
            for key, r in entry["rates"].items():
                lines.append(f"| {task} | {method.upper()} | {label(r)} | {r['val']['mean']:.3f} +- {r['val']['std']:.3f} | "
                             f"{r['test']['mean']:.3f} +- {r['test']['std']:.3f} | {'yes' if key == entry['chosen'] else ''} |")
            for r in entry["failed"].values():
                lines.append(f"| {task} | {method.upper()} | {label(r)} | failed, seeds {' '.join(map(str, r['seeds']))}: {r['reason']} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.lr_grid and any(a == "--lr" or a.startswith("--lr=") for a in args.extra):
        print("error: --lr-grid chooses each method's rate; leave --lr out of --extra", file=sys.stderr)
        sys.exit(2)
    if not all(0 < lr < float("inf") for lr in args.lr_grid) or len(set(args.lr_grid)) != len(args.lr_grid):
        print(f"error: --lr-grid takes distinct positive rates, got {' '.join(map(str, args.lr_grid))}", file=sys.stderr)
        sys.exit(2)
    if args.parts_grid and ({"--parts", "-K"} & set(args.extra) or any(a.startswith(("--parts=", "-K")) for a in args.extra)):
        print("error: --parts-grid chooses FPTT's K; leave --parts out of --extra", file=sys.stderr)
        sys.exit(2)
    if not all(0 <= k <= 100_000 for k in args.parts_grid) or len(set(args.parts_grid)) != len(args.parts_grid):
        print(f"error: --parts-grid takes distinct K >= 0 (0 = T), got {' '.join(map(str, args.parts_grid))}", file=sys.stderr)
        sys.exit(2)
    tasks = task_args(args)
    tuned = bool(args.lr_grid or args.parts_grid)
    if tuned and set(args.tune_seeds) & set(args.seeds):
        both = " ".join(map(str, sorted(set(args.tune_seeds) & set(args.seeds))))
        print(f"error: --tune-seeds and --seeds share seeds {both}: the grids choose on seeds apart from the reported ones", file=sys.stderr)
        sys.exit(2)

    def grid(method: str) -> list[tuple[float | None, int | None]]:
        return [(lr, k) for lr in args.lr_grid or [None] for k in (args.parts_grid if method == "fptt" and args.parts_grid else [None])]
    tune_jobs = [(t, spec, m, s, *g) for t, spec in tasks.items() for m in args.methods for g in grid(m) for s in args.tune_seeds] if tuned else []
    jobs = [(t, spec, m, s, *g) for t, spec in tasks.items() for s in args.seeds for m in args.methods for g in grid(m)]
    try:  # refuse a mixed --out before anything runs (every grid point a reported seed might be trained at)
        for job in tune_jobs + jobs:
            kept_run(*job[:4], args, *job[4:])
    except MixedResults as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    results_path = Path(args.out) / "results.json"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    tuning_runs: list[dict] = []
    failed: list[dict] = []  # reported runs whose training failed (e.g. diverged): listed, left out of the table
    tuning: dict = {}

    def save() -> None:
        results_path.write_text(json.dumps({"settings": vars(args), "tuning": tuning, "tuning_runs": tuning_runs, "runs": runs,
                                            "failed_runs": failed, "table": summarise(runs)}, indent=2))

    def one(job, into: list[dict], tuning_run: bool = False):
        try:
            r = run_one(*job[:4], args, *job[4:])
        except TrainFailed as exc:
            if not (tuning_run or tuned):
                raise  # at one shared setting a failed run is a broken benchmark, not a result
            r = {"task": job[0], "method": job[2], "seed": job[3], "lr": job[4], "parts": job[5], "failed": exc.reason, "test_accuracy": None,
                 "last_test_accuracy": None, "selected_epoch": None, "train_time_s": None}
            into = into if tuning_run else failed
        into.append(r)
        save()
        print(json.dumps({k: r.get(k) for k in ("task", "method", "seed", "lr", "parts", "test_accuracy", "last_test_accuracy",
                                            "selected_epoch", "train_time_s")}), file=sys.stderr, flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        if tune_jobs:
            list(pool.map(lambda j: one(j, tuning_runs, tuning_run=True), tune_jobs))
            try:
                order = list(dict.fromkeys(setting_name(j[4], j[5]) for j in tune_jobs))  # the grid's order
                tuning = choose_rates(tuning_runs, order)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)
            jobs = [j for j in jobs if setting_name(j[4], j[5]) == tuning[j[0]][j[2]]["chosen"]]
        list(pool.map(lambda j: one(j, runs), jobs))
    save()
    table = summarise(runs)
    print(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"}, "tuning": tuning, "table": table}, indent=2))
    print(markdown(table))
    for r in failed:
        at = ", ".join(([] if r["lr"] is None else [f"lr {r['lr']:g}"]) + ([f"K {r['parts']}"] if r.get("parts") else []))
        print(f"\nleft out: {r['task']} {r['method'].upper()} seed {r['seed']}{' at ' + at if at else ''} failed: {r['failed']}")
    if tuning:
        print("\nSettings tried on the tuning seeds (`--lr-grid`, `--parts-grid`), the kept one by mean validation accuracy:\n")
        print(tuning_markdown(tuning))


if __name__ == "__main__":
    main()
