"""Training time per FPTT update and per sequence, side by side in one run (variants interleaved,
medians), eager and compiled.

    python benchmarks/time_per_sequence.py                     # both parts, one thread
    python benchmarks/time_per_sequence.py --part update --batches 1,8,64
    python benchmarks/time_per_sequence.py --part update --authors-code ~/src/sFPTT   # + the authors' own code
    python benchmarks/time_per_sequence.py --part sequence --mode row --hidden 128 --batch 64

Part ``update`` (the spec's setting: LTC-SNN with 1 input, hidden 256x2, 10 classes; sequences
``[B, 50, 1]``; ms per update = one ``train_batch`` / 50), at batch 1, 8 and 64:
- ``fptt_eager``: :class:`FPTTTrainer` as it runs without a compiler (flat buffers, fused ops);
- ``fptt_compiled``: the same update as one compiled graph (:mod:`fptt_edge.training.compiled`);
- ``plain_eager`` / ``plain_compiled``: a plain per-step update (forward, backward, Adamax; no
  regulariser, clipping or traces), the yardstick;
- ``fptt_unclipped``: the compiled FPTT update without its clipping (not a training option): the
  floor that reading and writing the two trace tensors alone sets over ``plain_compiled``;
- ``reference``: FPTT structured as the authors' code is (a Python loop over the named
  parameters: the regulariser built into the loss, per-tensor clipping, Adamax, the trace
  update), re-implemented here so it runs side by side on the same machine;
- ``authors`` (only with ``--authors-code DIR``): the authors' own code
  (github.com/byin-cwi/sFPTT, ``fptt/fptt_mnist``), see below.
Compile time is measured apart (the first batches) and kept out of the per-update figures.
With one thread, ``ms_per_update`` is the thread's CPU time per update (what the update costs,
also on a machine shared with other processes); ``wall_ms_per_update`` is beside it.

``--authors-code DIR``: DIR is a checkout or export of github.com/byin-cwi/sFPTT (the repository
root) or its folder ``fptt/fptt_mnist`` (the one holding ``snn_models_LIF4_save4_l2.py`` and
``train_mnist_snn_v2.py``); nothing of it is copied here, it is read from DIR at run time. Their
model class ``SeqModel`` (2 layers, the one their S-MNIST script trains) is imported from
``snn_models_LIF4_save4_l2``. Their training script cannot be imported (it parses arguments, loads
data and trains at module level), so its FPTT helpers ``get_stats_named_params``,
``get_regularizer_named_params`` and ``post_optimizer_updates`` are taken from it by parsing the
file and executing only those ``def`` statements, unchanged. Their per-step loop body
(``train()``, k = 1, parts = T, epoch >= 1) is a function of the script, not importable either, so
:class:`Authors` below is the minimal driver that calls their pieces in the order of that loop:
detach the state, ``model.network.forward`` of one step, ``log_softmax``, ``zero_grad``, the
weighted NLL, their regulariser, backward, ``clip_grad_norm_``, Adamax (their README's
``--optim Adamax --lr 3e-3 --alpha 0.1 --beta 0.5 --clip 1``), ``post_optimizer_updates``.
The rest of their loop body (an auxiliary "oracle" loss from a per-class output estimate, loss
logging) is left out: the driver does the steps our FPTT update does (with those extras their
loop measured a few per cent slower). At batch 1 their per-time-step batch norms run on running
statistics (training-mode batch norm cannot take a batch of 1).

Part ``sequence``: ms per training sequence on real S-MNIST (row by row T = 28, or pixel by
pixel T = 784): FPTT eager, FPTT compiled (also with the reference's oracle term, ``--oracle``),
FPTT-K4 eager and compiled (one graph per chunk of T/4 steps), and BPTT, same model and data.

Goals (issue 12): FPTT update <= 2 ms at batch 8 on one thread and <= 1.25x the compiled plain
step; FPTT time per sequence <= 1.2x BPTT.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch.nn import functional as F

from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork, detach_state
from fptt_edge.training.compiled import CompiledFPTTUpdate
from fptt_edge.training.trainers import FPTTTrainer, TrainConfig, make_trainer


class PlainEager:
    """Forward one step, weighted CE, backward, Adamax (foreach) over the model's own parameters."""

    def __init__(self, model: LTCNetwork, lr: float = 3e-3):
        self.model = model
        self.optimizer = torch.optim.Adamax(model.parameters(), lr=lr, foreach=True)

    def train_batch(self, x, y):
        self.model.train()
        state = self.model.initial_state(x.shape[0])
        steps = x.shape[1]
        for t in range(steps):
            logits, state = self.model.step(x[:, t], state)
            loss = (t + 1) / steps * F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
            self.optimizer.step()
            state = detach_state(state)


class Reference:
    """FPTT as the authors' code structures it: ``named_params`` of (param, Wbar, lam), the
    regulariser ``sum 0.5 alpha ||W - Wbar||^2 - <W, lam>`` inside the loss, ``clip_grad_norm_``,
    Adamax, then the per-tensor trace update."""

    def __init__(self, model: LTCNetwork, cfg: TrainConfig):
        self.model, self.cfg = model, cfg
        self.named = {n: (p, p.detach().clone(), torch.zeros_like(p)) for n, p in model.named_parameters()}
        self.optimizer = torch.optim.Adamax(model.parameters(), lr=cfg.lr)

    def train_batch(self, x, y):
        a, b = self.cfg.alpha, self.cfg.beta
        self.model.train()
        state = self.model.initial_state(x.shape[0])
        steps = x.shape[1]
        for t in range(steps):
            logits, state = self.model.step(x[:, t], state)
            reg = torch.zeros(())
            for p, sm, lm in self.named.values():
                reg = reg + 0.5 * a * torch.sum(torch.square(p - sm)) - torch.sum(p * lm)
            loss = (t + 1) / steps * F.cross_entropy(logits, y) + reg
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
            self.optimizer.step()
            with torch.no_grad():
                for p, sm, lm in self.named.values():
                    lm.add_(-a * (p - sm))
                    sm.mul_(1.0 - b)
                    sm.add_(b * p - (b / a) * lm)
            state = detach_state(state)


AUTHORS_MODEL_FILE = "snn_models_LIF4_save4_l2.py"
AUTHORS_TRAIN_FILE = "train_mnist_snn_v2.py"
AUTHORS_HELPERS = ("get_stats_named_params", "get_regularizer_named_params", "post_optimizer_updates")


def load_authors(path: str) -> dict:
    """Their model module and FPTT helpers from ``path`` (repository root or ``fptt/fptt_mnist``);
    any failure is one line on stderr and exit 2."""
    root = Path(path).expanduser().resolve()
    folder = next((d for d in (root, root / "fptt" / "fptt_mnist") if (d / AUTHORS_MODEL_FILE).is_file()), None)
    try:
        if folder is None:
            raise FileNotFoundError(f"no {AUTHORS_MODEL_FILE} in {root} or {root / 'fptt' / 'fptt_mnist'}")
        sys.path.insert(0, str(folder))
        module = importlib.import_module(AUTHORS_MODEL_FILE[:-3])
        for name in ("SeqModel", "SeparatedBatchNorm1d", "count_parameters"):
            if not hasattr(module, name):
                raise ImportError(f"{AUTHORS_MODEL_FILE} has no {name}")
        train_file = folder / AUTHORS_TRAIN_FILE
        tree = ast.parse(train_file.read_text(), str(train_file))
        defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in AUTHORS_HELPERS]
        missing = set(AUTHORS_HELPERS) - {d.name for d in defs}
        if missing:
            raise ImportError(f"{AUTHORS_TRAIN_FILE} has no {', '.join(sorted(missing))}")
        helpers: dict = {"torch": torch}
        exec(compile(ast.Module(body=defs, type_ignores=[]), str(train_file), "exec"), helpers)  # their defs only
    except Exception as e:  # whatever their code raises: one clear line
        print(f"--authors-code {path}: cannot load the authors' code: {type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:  # the commit only when DIR is their own checkout (not an export inside some other repository)
        top, commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"],
                                     capture_output=True, text=True, timeout=10).stdout.split()
        commit = commit if Path(top).resolve() / "fptt" / "fptt_mnist" == folder else ""
    except (OSError, subprocess.SubprocessError, ValueError):
        commit = ""
    files = {f"fptt/fptt_mnist/{name}": hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]
             for name in (AUTHORS_MODEL_FILE, AUTHORS_TRAIN_FILE)}
    return {"module": module, "helpers": types.SimpleNamespace(**{n: helpers[n] for n in AUTHORS_HELPERS}),
            "folder": str(folder), "commit": commit or "unknown (not a git checkout)", "sha256_16": files}


class Authors:
    """The authors' FPTT update (their model, regulariser, trace update), driven per time step in the
    order of their ``train()`` loop body. See the module docstring."""

    def __init__(self, authors: dict, steps: int, batch: int, hidden: int = 256, classes: int = 10):
        self.mod, self.h, self.classes = authors["module"], authors["helpers"], classes
        torch.manual_seed(0)
        with contextlib.redirect_stdout(sys.stderr):  # their constructor prints
            self.model = self.mod.SeqModel(ninp=1, nhid=hidden, nout=classes, n_timesteps=steps, parts=steps)
        self.args = types.SimpleNamespace(alpha=0.1, beta=0.5, rho=0.0, debias=False, clip=1.0, parts=steps, device=torch.device("cpu"))
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=3e-3, weight_decay=0.0)
        self.named_params = self.h.get_stats_named_params(self.model)
        self.bn_running_stats = batch == 1  # training-mode batch norm needs more than one example

    def train_batch(self, x, y):
        args, model, optimizer, named_params = self.args, self.model, self.optimizer, self.named_params
        model.train()
        if self.bn_running_stats:
            for m in model.modules():
                if isinstance(m, self.mod.SeparatedBatchNorm1d):
                    m.eval()
        data = x.reshape(-1, 1, x.shape[1])  # their layout [B, channels, T]
        steps = data.shape[2]
        h = None
        for t in range(steps):
            h = model.init_hidden(y.size(0)) if t == 0 else tuple(v.detach() for v in h)
            _, h, _ = model.network.forward(data[:, 0, t:t + 1].view(-1, 1, 1), h, t)
            optimizer.zero_grad()
            loss = ((t + 1) / steps * F.nll_loss(F.log_softmax(h[-1], dim=1), y, reduction="none")).mean()
            loss = loss + self.h.get_regularizer_named_params(named_params, args, _lambda=1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            self.h.post_optimizer_updates(named_params, args, 1)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed2(fn) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds): with one thread the CPU time is what the update
    costs even on a machine shared with other processes (the wall time then includes waiting)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def per_update(args, authors: dict | None = None) -> dict:
    config = ModelConfig(input_shape=(1,), num_classes=10, hidden=(args.update_hidden,) * args.update_layers)
    steps = 50
    out = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator().manual_seed(batch)
        x, y = torch.rand(batch, steps, 1, generator=g), torch.randint(0, 10, (batch,), generator=g)

        def fresh():
            torch.manual_seed(0)
            return LTCNetwork(config)

        variants: dict = {"fptt_eager": FPTTTrainer(fresh(), TrainConfig(batch_size=batch)).train_batch}
        compile_s = {}
        if not args.no_compile:
            fc = FPTTTrainer(fresh(), TrainConfig(batch_size=batch), compile=True)
            compile_s["fptt_compiled"] = _timed(lambda: fc.train_batch(x, y))
            if fc.compiled is None:
                raise SystemExit(f"no compiled update here: {fc.compile_note}")
            variants["fptt_compiled"] = fc.train_batch
            pc = FPTTTrainer(fresh(), TrainConfig(batch_size=batch))
            plain = CompiledFPTTUpdate(pc, batch, fptt=False)
            compile_s["plain_compiled"] = _timed(lambda: pc._train_batch_compiled(plain, x, y, None, None))
            variants["plain_compiled"] = lambda x, y, pc=pc, plain=plain: pc._train_batch_compiled(plain, x, y, None, None)
            uc = FPTTTrainer(fresh(), TrainConfig(batch_size=batch))
            unclipped = CompiledFPTTUpdate(uc, batch, clipped=False)
            compile_s["fptt_unclipped"] = _timed(lambda: uc._train_batch_compiled(unclipped, x, y, None, None))
            variants["fptt_unclipped"] = lambda x, y, uc=uc, unclipped=unclipped: uc._train_batch_compiled(unclipped, x, y, None, None)
        variants["plain_eager"] = PlainEager(fresh()).train_batch
        if not args.no_reference:
            variants["reference"] = Reference(fresh(), TrainConfig()).train_batch
        if authors is not None:
            variants["authors"] = Authors(authors, steps, batch, hidden=args.update_hidden).train_batch
        for fn in variants.values():  # warm-up (and the compiled graphs' first calls after compiling)
            fn(x, y)
        times: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                wall, busy = _timed2(lambda fn=fn: fn(x, y))
                times[name].append(wall / steps * 1e3)
                cpu[name].append(busy / steps * 1e3)
        wall_ms = {k: round(statistics.median(v), 3) for k, v in times.items()}
        cpu_ms = {k: round(statistics.median(v), 3) for k, v in cpu.items()}
        ms = cpu_ms if args.threads == 1 else wall_ms
        row: dict = {"ms_per_update": ms, "wall_ms_per_update": wall_ms, "cpu_ms_per_update": cpu_ms,
                     "compile_s": {k: round(v, 1) for k, v in compile_s.items()}}
        if "fptt_compiled" in ms:
            row["fptt_compiled_over_plain_compiled"] = round(ms["fptt_compiled"] / ms["plain_compiled"], 3)
            row["fptt_unclipped_over_plain_compiled"] = round(ms["fptt_unclipped"] / ms["plain_compiled"], 3)
            row["fptt_eager_over_fptt_compiled"] = round(ms["fptt_eager"] / ms["fptt_compiled"], 2)
            if "reference" in ms:
                row["reference_over_fptt_compiled"] = round(ms["reference"] / ms["fptt_compiled"], 2)
        for name in ("authors",) if authors is not None else ():
            for ours in ("fptt_compiled", "fptt_eager"):
                if ours in ms:
                    row[f"{name}_over_{ours}"] = round(ms[name] / ms[ours], 2)
        if authors is not None and batch == 1:
            row["authors_note"] = "batch 1: their per-time-step batch norms on running statistics (training mode needs > 1 example)"
        out[f"batch_{batch}"] = row
    result = {"model": {"input": 1, "hidden": [args.update_hidden] * args.update_layers, "classes": 10,
                        "parameters": sum(p.numel() for p in LTCNetwork(config).parameters())},
              "steps_per_sequence": steps, "rounds": args.rounds, "per_batch": out,
              "goals": {"fptt_compiled_ms_at_batch_8_max": 2.0, "fptt_compiled_over_plain_compiled_max": 1.25}}
    if authors is not None:
        theirs = Authors(authors, steps, 2, hidden=args.update_hidden).model
        result["authors_model"] = {
            "source": "github.com/byin-cwi/sFPTT", "commit": authors["commit"], "folder": authors["folder"],
            "files_sha256_16": authors["sha256_16"], "model": f"{AUTHORS_MODEL_FILE[:-3]}.SeqModel(ninp=1, nhid={args.update_hidden}, nout=10)",
            "layers": "2 adaptive LIF layers (LTC gates Linear(2H -> H)) + leaky readout, per-time-step batch norm on every current",
            "parameters": authors["module"].count_parameters(theirs), "parameters_ours": result["model"]["parameters"],
            "settings": "Adamax lr 3e-3, alpha 0.1, beta 0.5, rho 0, clip 1, parts = T, k = 1, epoch >= 1",
        }
        if args.update_layers != 2:
            result["authors_model"]["note"] = "their model has 2 hidden layers whatever --update-layers says"
    return result


def per_sequence(args) -> dict:
    from fptt_edge.data.digits import load_smnist

    data = load_smnist("train", mode=args.mode)
    variants = {"fptt_eager": TrainConfig(method="fptt", batch_size=args.batch),
                "fptt_k4": TrainConfig(method="fptt", parts=4, batch_size=args.batch),
                "bptt": TrainConfig(method="bptt", batch_size=args.batch)}
    if not args.no_compile:
        variants["fptt_compiled"] = TrainConfig(method="fptt", batch_size=args.batch, compile="on")
        variants["fptt_compiled_oracle"] = TrainConfig(method="fptt", batch_size=args.batch, compile="on", oracle=True)
        variants["fptt_k4_compiled"] = TrainConfig(method="fptt", parts=4, batch_size=args.batch, compile="on")
    trainers = {}
    for name, cfg in variants.items():
        torch.manual_seed(0)
        model = LTCNetwork(ModelConfig(input_shape=data.input_shape, num_classes=10, hidden=(args.hidden,) * args.layers)).to(args.device)
        trainers[name] = make_trainer(model, cfg)
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    compile_s: dict[str, float] = {}
    for b in range(args.seq_batches + 1):  # batch 0 warms up (and compiles)
        x = data.x[b * args.batch : (b + 1) * args.batch].to(args.device)
        y = data.y[b * args.batch : (b + 1) * args.batch].to(args.device)
        for name, trainer in trainers.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.thread_time()
            trainer.train_batch(x, y)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if b > 0:
                times[name].append((time.perf_counter() - t0) / args.batch)
                cpu[name].append((time.thread_time() - c0) / args.batch)
            elif "compiled" in name:
                compile_s[name] = round(time.perf_counter() - t0, 1)
    use_cpu = args.threads == 1 and args.device == "cpu"
    ms = {name: round(1e3 * statistics.median((cpu if use_cpu else times)[name]), 3) for name in variants}
    best_fptt = ms.get("fptt_compiled", ms["fptt_eager"])
    return {"task": f"smnist-{args.mode}", "steps": data.steps, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
            "batches_timed": args.seq_batches, "ms_per_sequence": ms, "clock": "thread CPU time" if use_cpu else "wall",
            "wall_ms_per_sequence": {name: round(1e3 * statistics.median(v), 3) for name, v in times.items()}, "compile_s": compile_s,
            "fptt_over_bptt": round(best_fptt / ms["bptt"], 3), "fptt_eager_over_bptt": round(ms["fptt_eager"] / ms["bptt"], 3),
            "fptt_k4_over_bptt": round(ms["fptt_k4"] / ms["bptt"], 3), "goal_fptt_over_bptt_max": 1.2,
            **({"fptt_k4_compiled_over_bptt": round(ms["fptt_k4_compiled"] / ms["bptt"], 3)} if "fptt_k4_compiled" in ms else {}),
            **({"fptt_oracle_over_bptt": round(ms["fptt_compiled_oracle"] / ms["bptt"], 3)} if "fptt_compiled_oracle" in ms else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["update", "sequence", "both"], default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="Eager variants only.")
    parser.add_argument("--no-reference", action="store_true", help="Skip the authors'-structure reference (slow at batch 64).")
    parser.add_argument("--authors-code", metavar="DIR", default=None,
                        help="update: also time the authors' own FPTT (DIR: a checkout of github.com/byin-cwi/sFPTT or its fptt/fptt_mnist folder).")
    parser.add_argument("--batches", default="1,8,64", help="update: batch sizes.")
    parser.add_argument("--update-hidden", type=int, default=256)
    parser.add_argument("--update-layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="update: timed rounds (interleaved; the median is reported).")
    parser.add_argument("--mode", default="row", choices=["row", "pixel"])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-batches", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    authors = load_authors(args.authors_code) if args.authors_code and args.part in ("update", "both") else None
    result: dict = {"threads": args.threads, "torch": torch.__version__, "cpu": _cpu(),
                    "malloc": os.environ.get("GLIBC_TUNABLES", "glibc defaults (the compiled update raises mmap/trim thresholds)")}
    if args.part in ("update", "both"):
        result["per_update"] = per_update(args, authors)
    if args.part in ("sequence", "both"):
        result["per_sequence"] = per_sequence(args)
    print(json.dumps(result, indent=2))


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
