"""Training time per FPTT update and per sequence, side by side in one run (variants interleaved,
medians), eager and compiled.

    python benchmarks/time_per_sequence.py                     # both parts, one thread
    python benchmarks/time_per_sequence.py --part update --batches 1,8,64
    python benchmarks/time_per_sequence.py --part sequence --mode row --hidden 128 --batch 64

Part ``update`` (the spec's setting: LTC-SNN with 1 input, hidden 256x2, 10 classes; sequences
``[B, 50, 1]``; ms per update = one ``train_batch`` / 50), at batch 1, 8 and 64:
- ``fptt_eager``: :class:`FPTTTrainer` as it runs without a compiler (flat buffers, fused ops);
- ``fptt_compiled``: the same update as one compiled graph (:mod:`fptt_edge.training.compiled`);
- ``plain_eager`` / ``plain_compiled``: a plain per-step update (forward, backward, Adamax; no
  regulariser, clipping or traces), the yardstick;
- ``reference``: FPTT structured as the authors' code is (a Python loop over the named
  parameters: the regulariser built into the loss, per-tensor clipping, Adamax, the trace
  update), re-implemented here so it runs side by side on the same machine.
Compile time is measured apart (the first batches) and kept out of the per-update figures.
With one thread, ``ms_per_update`` is the thread's CPU time per update (what the update costs,
also on a machine shared with other processes); ``wall_ms_per_update`` is beside it.

Part ``sequence``: ms per training sequence on real S-MNIST (row by row T = 28, or pixel by
pixel T = 784): FPTT eager, FPTT compiled, FPTT-K4 and BPTT, same model and data.

Goals (issue 12): FPTT update <= 2 ms at batch 8 on one thread and <= 1.25x the compiled plain
step; FPTT time per sequence <= 1.2x BPTT.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

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


def per_update(args) -> dict:
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
        variants["plain_eager"] = PlainEager(fresh()).train_batch
        if not args.no_reference:
            variants["reference"] = Reference(fresh(), TrainConfig()).train_batch
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
            row["fptt_eager_over_fptt_compiled"] = round(ms["fptt_eager"] / ms["fptt_compiled"], 2)
            if "reference" in ms:
                row["reference_over_fptt_compiled"] = round(ms["reference"] / ms["fptt_compiled"], 2)
        out[f"batch_{batch}"] = row
    return {"model": {"input": 1, "hidden": [args.update_hidden] * args.update_layers, "classes": 10,
                      "parameters": sum(p.numel() for p in LTCNetwork(config).parameters())},
            "steps_per_sequence": steps, "rounds": args.rounds, "per_batch": out,
            "goals": {"fptt_compiled_ms_at_batch_8_max": 2.0, "fptt_compiled_over_plain_compiled_max": 1.25}}


def per_sequence(args) -> dict:
    from fptt_edge.data.digits import load_smnist

    data = load_smnist("train", mode=args.mode)
    variants = {"fptt_eager": TrainConfig(method="fptt", batch_size=args.batch),
                "fptt_k4": TrainConfig(method="fptt", parts=4, batch_size=args.batch),
                "bptt": TrainConfig(method="bptt", batch_size=args.batch)}
    if not args.no_compile:
        variants["fptt_compiled"] = TrainConfig(method="fptt", batch_size=args.batch, compile="on")
    trainers = {}
    for name, cfg in variants.items():
        torch.manual_seed(0)
        model = LTCNetwork(ModelConfig(input_shape=data.input_shape, num_classes=10, hidden=(args.hidden,) * args.layers)).to(args.device)
        trainers[name] = make_trainer(model, cfg)
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    compile_s = None
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
            elif name == "fptt_compiled":
                compile_s = round(time.perf_counter() - t0, 1)
    use_cpu = args.threads == 1 and args.device == "cpu"
    ms = {name: round(1e3 * statistics.median((cpu if use_cpu else times)[name]), 3) for name in variants}
    best_fptt = ms.get("fptt_compiled", ms["fptt_eager"])
    return {"task": f"smnist-{args.mode}", "steps": data.steps, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
            "batches_timed": args.seq_batches, "ms_per_sequence": ms, "clock": "thread CPU time" if use_cpu else "wall",
            "wall_ms_per_sequence": {name: round(1e3 * statistics.median(v), 3) for name, v in times.items()}, "compile_s": compile_s,
            "fptt_over_bptt": round(best_fptt / ms["bptt"], 3), "fptt_eager_over_bptt": round(ms["fptt_eager"] / ms["bptt"], 3),
            "fptt_k4_over_bptt": round(ms["fptt_k4"] / ms["bptt"], 3), "goal_fptt_over_bptt_max": 1.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["update", "sequence", "both"], default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="Eager variants only.")
    parser.add_argument("--no-reference", action="store_true", help="Skip the authors'-structure reference (slow at batch 64).")
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
    result: dict = {"threads": args.threads, "torch": torch.__version__, "cpu": _cpu(),
                    "malloc": os.environ.get("GLIBC_TUNABLES", "glibc defaults (the compiled update raises mmap/trim thresholds)")}
    if args.part in ("update", "both"):
        result["per_update"] = per_update(args)
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
