"""On-device adaptation: train-step cost, learner memory and accuracy recovered after a domain shift, in one run.

    python benchmarks/adaptation.py [--sections latency,memory,recovery,chunks] [--smnist runs/demo/model.pt]

latency   train step vs inference step (ONNX Runtime CPU, batch 1, 1 thread) for the demo model
          (S-MNIST rows, 128 hidden) and a 256x2 model, readout-only and all-weights graphs, and
          the train step vs PyTorch's eager FPTT update on the same model. Goals: <= 3x inference
          (readout), <= 10x (all weights); >= 3x faster than PyTorch eager.
memory    peak RSS of a process streaming 100 vs 10,000 frames through the learner, labelling
          every 28-frame segment (it trains as it goes). Goal: flat (<= 1.05x). Also the push of
          Wbar into the live session: in place (user-owned initializers) vs a session rebuild.
recovery  R = (acc_after - acc_shifted) / (acc_original - acc_shifted) on the shifted test data
          and forgetting F = acc_original_before - acc_original_after, after adapting on 10 / 50 /
          200 labelled shifted samples (disjoint from the scored ones), per --trainable choice,
          guard on and off: S-MNIST gain drift (x0.4) and spatial shift (3 columns), N-MNIST
          ON/OFF polarity swap. Goal: R >= 0.8 with 200 samples on two shifts, F <= 0.02 with the
          guard on. Models are trained here unless given (--smnist / --nmnist checkpoints).
chunks    FPTT-K on the device (`export --adapt-chunk L`) against an update every step, on the
          S-MNIST row model (28 steps): learner time per labelled sequence and R / F after
          adapting all weights on 200 samples of the 3-column shift, guard on and off.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NMNIST = ROOT.parent / "shared" / "data" / "nmnist-small"
LABELLED = (10, 50, 200)


def p50(fn, n: int, warm: int = 50) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times) / 1e3)


def latency(steps: int) -> dict:
    import torch
    from torch.nn import functional as F

    from fptt_edge.config import ModelConfig
    from fptt_edge.export.onnx_build import trace_step
    from fptt_edge.export.train_graph import trace_train_step
    from fptt_edge.model import LTCNetwork, detach_state
    from fptt_edge.runtime.train_backend import TrainStepBackend
    from fptt_edge.train_contract import Hyper, TrainContract
    from fptt_edge.training.trainers import FPTTTrainer, TrainConfig

    torch.set_num_threads(1)
    out = {}
    for name, hidden in (("demo_128", (128,)), ("dense_256x2", (256, 256))):
        torch.manual_seed(0)
        net = LTCNetwork(ModelConfig(input_shape=(28,), num_classes=10, hidden=hidden))
        inference = _inference_p50(trace_step(net, 1, None)[0], steps)
        row = {"parameters": sum(p.numel() for p in net.parameters()), "inference_us": inference}
        with tempfile.TemporaryDirectory() as tmp:
            for choice in ("readout", "all"):
                model, tensors, _ = trace_train_step(net, choice, Hyper(), 1, None)
                path = Path(tmp) / f"{choice}.train.onnx"
                path.write_bytes(model.SerializeToString())
                contract = TrainContract(batch=1, frame_shape=(28,), num_classes=10, tensors=tensors, trainable=choice, hyper=Hyper(),
                                         states=tuple((n, tuple(s[1:])) for n, s in zip(net.state_names(), net.state_shapes(1))),
                                         checkpoint_sha256="", inference_sha256="", opset=20)
                backend = TrainStepBackend(path, contract)
                backend.x[:] = np.random.default_rng(0).random(backend.x.shape, dtype=np.float32)
                backend.y[0, 3], backend.w[:] = 1.0, 0.5
                backend.load({"weights": np.zeros((1, contract.size), np.float32) + 0.01, "wbar": np.zeros((1, contract.size), np.float32) + 0.01})
                row[f"train_{choice}_us"] = p50(backend.step, max(steps // 4, 200))
                row[f"train_{choice}_over_inference"] = row[f"train_{choice}_us"] / inference
        trainer = FPTTTrainer(net, TrainConfig())
        net.train()
        x, y = torch.rand(1, 28), torch.tensor([3])
        state = [net.initial_state(1)]

        def eager_update() -> None:
            logits, new = net.step(x, state[0])
            trainer.apply_update(0.5 * F.cross_entropy(logits, y))
            state[0] = detach_state(new)

        row["torch_eager_update_us"] = p50(eager_update, max(steps // 10, 100))
        row["ort_all_speedup_vs_torch"] = row["torch_eager_update_us"] / row["train_all_us"]
        row["goals"] = {"readout_le_3x": row["train_readout_over_inference"] <= 3, "all_le_10x": row["train_all_over_inference"] <= 10,
                        "ort_ge_3x_torch": row["ort_all_speedup_vs_torch"] >= 3}
        out[name] = row
    return out


def _inference_p50(model, steps: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    keep = []
    for i in sess.get_inputs():
        arr = np.zeros([int(d) for d in i.shape], np.float32)
        keep.append(arr)
        binding.bind_cpu_input(i.name, arr)
    for o in sess.get_outputs():
        arr = np.zeros([int(d) for d in o.shape], np.float32)
        keep.append(arr)
        binding.bind_output(o.name, "cpu", 0, np.float32, arr.shape, arr.ctypes.data)
    return p50(lambda: sess.run_with_iobinding(binding), steps)


MEMORY_CHILD = """
import resource, sys, numpy as np
sys.modules["torch"] = None
from fptt_edge.runtime.learner import open_learner
model, frames = sys.argv[1], int(sys.argv[2])
learner = open_learner(model, store=False, ring=64)
rng = np.random.default_rng(0)
x = np.zeros((1, learner.frame_shape[0]), np.float32)
for t in range(frames):
    x[0] = rng.random(learner.frame_shape[0], dtype=np.float32)
    learner.step(x)
    if (t + 1) % 28 == 0:
        learner.label(0, int(t // 28) % 10, t + 1 - 28, t + 1)
learner.flush()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, learner.memory_bytes(), learner.events.updates)
"""


def memory(model: Path) -> dict:
    out = {}
    for frames in (100, 10_000):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(model), str(frames)], capture_output=True, text=True, check=True)
        rss, own, updates = (int(v) for v in res.stdout.split())
        out[str(frames)] = {"peak_rss_bytes": rss, "learner_buffers_bytes": own, "updates": updates}
    out["rss_ratio_10000_vs_100"] = out["10000"]["peak_rss_bytes"] / out["100"]["peak_rss_bytes"]
    out["goal_flat_le_1.05"] = out["rss_ratio_10000_vs_100"] <= 1.05
    return out


def push(model: Path) -> dict:
    """Wbar into the live session: in place (user-owned initializers, CPU) vs rebuilding the session."""
    from fptt_edge.runtime.learner import open_learner
    from fptt_edge.runtime.ort_backend import OrtBackend

    with open_learner(model, store=False) as learner:
        inplace = p50(learner.push, 500)
        views = learner.backend.views(learner.backend.buffers()["wbar"])
        rebuild = p50(lambda: OrtBackend(str(model), learner.contract, 1, "ort", 1, initializers=views), 30, warm=3)
        step = p50(lambda: learner.session.step(np.zeros((1, *learner.frame_shape), np.float32)), 2000)
    return {"inplace_us": inplace, "rebuild_us": rebuild, "rebuild_over_inplace": rebuild / inplace, "inference_step_us": step}


def train_model(out: Path, args: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "fptt_edge", "train", *args, "--out", str(out), "--quiet"], check=True, capture_output=True)
    return out / "model.pt"


def export_adapt(ckpt: Path, data: str | None = None) -> Path:
    cmd = [sys.executable, "-m", "fptt_edge", "export", str(ckpt), "--adapt", "--parity-steps", "100"] + (["--data", data] if data else [])
    subprocess.run(cmd, check=True, capture_output=True)
    return ckpt.with_suffix(".onnx")


def recovery(model: Path, shift, x_adapt, y_adapt, x_test, y_test, guard, lr: float, epochs: int) -> dict:
    from fptt_edge.runtime.learner import open_learner

    rows = {}
    for choice in ("readout", "last", "input", "all"):
        for guard_on in (True, False):
            for n in LABELLED:
                learner = open_learner(model, store=False, trainable=choice, lr=lr, guard=guard if guard_on else None, check_every=200)
                with learner:
                    shifted_before = learner.evaluate(shift(x_test), y_test).accuracy
                    original_before = learner.evaluate(x_test, y_test).accuracy
                    learner.train(shift(x_adapt[:n]), y_adapt[:n], epochs=epochs)
                    learner.check()  # the final guard check (a commit without saving)
                    shifted_after = learner.evaluate(shift(x_test), y_test).accuracy
                    original_after = learner.evaluate(x_test, y_test).accuracy
                lost = original_before - shifted_before
                rows[f"{choice}/{'guard' if guard_on else 'no-guard'}/{n}"] = {
                    "shifted_before": shifted_before, "shifted_after": shifted_after, "original_before": original_before,
                    "original_after": original_after, "recovered": (shifted_after - shifted_before) / lost if lost > 0 else None,
                    "forgetting": original_before - original_after, "rollbacks": learner.events.rollbacks}
    return rows


def recovery_section(args) -> dict:
    from fptt_edge.data.digits import load_smnist

    work = Path(tempfile.mkdtemp(prefix="fptt-adapt-"))
    out = {}
    smnist = Path(args.smnist) if args.smnist else train_model(work / "smnist", ["--task", "smnist", "--mode", "row", "--hidden", "128",
                                                                                  "--epochs", "8", "--batch-size", "32"])
    model = smnist.with_suffix(".onnx")
    if not smnist.with_suffix(".train.onnx").is_file():
        model = export_adapt(smnist)
    test, train = load_smnist("test", mode="row"), load_smnist("train", mode="row")
    xt, yt = test.x.numpy()[:500].astype(np.float32), test.y.numpy()[:500]
    guard = (test.x.numpy()[900:1000].astype(np.float32), test.y.numpy()[900:1000])
    xa, ya = train.x.numpy()[:max(LABELLED)].astype(np.float32), train.y.numpy()[:max(LABELLED)]
    for name, shift in (("smnist_gain_x0.4", lambda a: a * 0.4), ("smnist_shift_3_columns", lambda a: np.roll(a, 3, axis=2))):
        out[name] = recovery(model, shift, xa, ya, xt, yt, guard, args.lr, args.epochs)
    if (NMNIST / "train1K.txt").is_file():
        from fptt_edge.data.tasks import load_task

        nmnist = Path(args.nmnist) if args.nmnist else train_model(work / "nmnist", [
            "--task", "nmnist", "--train", str(NMNIST / "train1K.txt"), "--test", str(NMNIST / "test100.txt"), "--downsample", "2",
            "--hidden", "128", "--epochs", "6", "--batch-size", "32"])
        model = nmnist.with_suffix(".onnx")
        if not nmnist.with_suffix(".train.onnx").is_file():
            model = export_adapt(nmnist, str(NMNIST / "test100.txt"))
        opts = dict(steps=20, binning="time", downsample=2, normalisation="binary")
        test = load_task("nmnist", "test", str(NMNIST / "test100.txt"), **opts)
        train = load_task("nmnist", "train", str(NMNIST / "train1K.txt"), **opts)
        xt, yt = test.x.numpy().astype(np.float32), test.y.numpy()
        guard = (train.x.numpy()[-100:].astype(np.float32), train.y.numpy()[-100:])
        xa, ya = train.x.numpy()[:max(LABELLED)].astype(np.float32), train.y.numpy()[:max(LABELLED)]
        out["nmnist_polarity_swap"] = recovery(model, lambda a: a[:, :, ::-1].copy(), xa, ya, xt, yt, guard, args.lr, args.epochs)
    best = {}
    for shift, rows in out.items():
        r200 = {k: v for k, v in rows.items() if k.endswith("/guard/200")}
        k, v = max(r200.items(), key=lambda kv: kv[1]["recovered"] or -1)
        best[shift] = {"choice": k.split("/")[0], "recovered": v["recovered"], "forgetting": v["forgetting"]}
    met = sum(1 for b in best.values() if (b["recovered"] or 0) >= 0.8 and b["forgetting"] <= 0.02)
    return {"lr": args.lr, "epochs": args.epochs, "shifts": out, "best_with_guard_200": best, "goal_met_on_shifts": met,
            "goal_r_ge_0.8_two_shifts_f_le_0.02": met >= 2}


def chunk_section(args) -> dict:
    """The learner with one update per step against one per ``L`` steps (``--chunks``), same model, data and seed."""
    import shutil

    from fptt_edge.data.digits import load_smnist
    from fptt_edge.runtime.learner import open_learner

    work = Path(tempfile.mkdtemp(prefix="fptt-chunk-"))
    smnist = Path(args.smnist) if args.smnist else train_model(work / "smnist", ["--task", "smnist", "--mode", "row", "--hidden", "128",
                                                                                  "--epochs", "8", "--batch-size", "32"])
    test, train = load_smnist("test", mode="row"), load_smnist("train", mode="row")
    xt, yt = test.x.numpy()[:500].astype(np.float32), test.y.numpy()[:500]
    guard = (test.x.numpy()[900:1000].astype(np.float32), test.y.numpy()[900:1000])
    xa, ya = train.x.numpy()[:200].astype(np.float32), train.y.numpy()[:200]
    shift = lambda a: np.roll(a, 3, axis=2)  # noqa: E731
    out = {}
    for chunk in args.chunks:
        folder = work / f"chunk{chunk}"
        folder.mkdir()
        shutil.copy(smnist, folder / "model.pt")
        cmd = [sys.executable, "-m", "fptt_edge", "export", str(folder / "model.pt"), "--adapt", "--adapt-chunk", str(chunk),
               "--parity-steps", "100", "--guard-samples", "0"]
        subprocess.run(cmd, check=True, capture_output=True)
        report = json.loads((folder / "model.report.json").read_text())["train_step"]
        row: dict = {"train_graph_nodes": report["nodes"], "check_passed": report["passed"]}
        for guard_on in (True, False):
            with open_learner(folder / "model.onnx", store=False, trainable="all", lr=args.lr, guard=guard if guard_on else None,
                              check_every=200) as learner:
                shifted_before = learner.evaluate(shift(xt), yt).accuracy
                original_before = learner.evaluate(xt, yt).accuracy
                t0 = time.perf_counter()
                learner.train(shift(xa), ya, epochs=args.epochs)
                seconds = time.perf_counter() - t0
                learner.check()
                shifted_after, original_after = learner.evaluate(shift(xt), yt).accuracy, learner.evaluate(xt, yt).accuracy
            lost = original_before - shifted_before
            row["guard" if guard_on else "no-guard"] = {
                "ms_per_sequence": 1e3 * seconds / (len(xa) * args.epochs), "updates": learner.events.updates,
                "shifted": [shifted_before, shifted_after], "original": [original_before, original_after],
                "recovered": (shifted_after - shifted_before) / lost if lost > 0 else None, "forgetting": original_before - original_after,
                "rollbacks": learner.events.rollbacks}
        out[f"chunk_{chunk}"] = row
    base = out[f"chunk_{args.chunks[0]}"]["no-guard"]["ms_per_sequence"]
    for row in out.values():
        row["time_vs_first"] = row["no-guard"]["ms_per_sequence"] / base
    return {"lr": args.lr, "epochs": args.epochs, "samples": len(xa), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="latency,memory,recovery")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--smnist", help="S-MNIST row checkpoint (128 hidden) to adapt instead of training one")
    parser.add_argument("--nmnist", help="N-MNIST checkpoint (downsample 2) to adapt instead of training one")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 7], help="chunks section: steps per update to compare (first = base)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    result: dict = {}
    if "latency" in sections:
        result["latency"] = latency(args.steps)
    if "memory" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            sys.path.insert(0, str(Path(__file__).parent))
            from _models import exported_model

            from fptt_edge.export.pipeline import export_checkpoint

            _, ckpt = exported_model(Path(tmp), (28,), (128,), batch=1)
            export_checkpoint(ckpt, check=False, adapt=True, log=lambda m: None)
            result["memory"] = memory(ckpt.with_suffix(".onnx"))
            result["push"] = push(ckpt.with_suffix(".onnx"))
    if "recovery" in sections:
        result["recovery"] = recovery_section(args)
    if "chunks" in sections:
        result["chunks"] = chunk_section(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
