"""Per-step latency of the backends and a numpy/BLAS lower bound, side by side (no torch here).

``bench_matrix`` is what ``fptt-edge bench`` runs; reference engines such as PyTorch eager
(:mod:`fptt_edge.torch_bench`) come in as callables.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from ..contract import read_contract, verify_checksum
from .errors import BackendUnavailable


def latency(step, steps: int, warmup: int = 50) -> dict:
    """p50/p99/mean per-step latency (µs) and steps/s of ``step()`` over ``steps`` calls."""
    for _ in range(warmup):
        step()
    times = np.empty(steps)
    for i in range(steps):
        t0 = time.perf_counter_ns()
        step()
        times[i] = time.perf_counter_ns() - t0
    times /= 1e3
    return {"p50_us": float(np.percentile(times, 50)), "p99_us": float(np.percentile(times, 99)), "mean_us": float(times.mean()),
            "steps_per_s": float(1e6 / times.mean())}


def random_frames(shape, density: float = 0.05, n: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` binary event frames with ``density`` active inputs (content does not change dense compute time)."""
    return (np.random.default_rng(seed).random((n, *shape)) < density).astype(np.float32)


def bench_session(model, backend: str, streams: int, steps: int, threads: int = 1, verify: bool = True, raw: bool = False) -> dict:
    """:func:`latency` of one backend's session stepping random event frames (``raw``: random raw samples through
    ``step_raw``, the input encoding included), with the ONNX Runtime providers the session really got (a GPU
    backend that fell back to the CPU is refused, not timed)."""
    from .session import open_session

    with open_session(model, backend, streams=streams, threads=threads, verify=verify) as sess:
        if raw:
            xs = np.random.default_rng(0).standard_normal((64, streams, *sess.raw_shape)).astype(np.float32)
        else:
            xs = random_frames((streams, *sess.frame_shape))
        i = [0]
        take = sess.step_raw if raw else sess.step

        def step():
            take(xs[i[0] % len(xs)])
            i[0] += 1

        providers = getattr(sess.backend, "providers", None)
        return {**latency(step, steps), **({"providers": list(providers)} if providers else {})}


def bench_blas_floor(model_path, streams: int, steps: int) -> dict | None:
    """The step's Gemms alone as numpy matmuls into preallocated outputs: a floor for any backend.
    None for graphs with convolutions (no numpy equivalent worth timing) or with a Gemm whose weight is not a 2-D
    initializer (a graph edited by hand)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    if any(n.op_type == "Conv" for n in model.graph.node):
        return None
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ops = []
    for n in model.graph.node:
        if n.op_type == "Gemm":
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            if w is None or w.ndim != 2:
                return None
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            w = np.ascontiguousarray(w.T) if trans_b else w
            ops.append((np.random.default_rng(0).random((streams, w.shape[0]), dtype=np.float32), w, np.empty((streams, w.shape[1]), np.float32)))

    def step():
        for a, w, out in ops:
            np.matmul(a, w, out=out)

    return latency(step, steps)


def find_checkpoint(model_path) -> Path | None:
    """A checkpoint beside the model whose SHA-256 is the one the model was exported from."""
    from ..io import file_with_sha256

    return file_with_sha256(Path(model_path).parent, "*.pt", read_contract(model_path).checkpoint_sha256)


def bench_matrix(model_path, streams: Iterable[int], backends: Iterable[str], steps: int, *,
                 references: Mapping[str, Callable[[int], dict]] | None = None, verify: bool = True,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (stream count, engine): each backend (for a model with an input encoding, also ``<backend>
    step_raw``: raw samples, encoding included), each reference engine, the BLAS floor.

    ``references``: engine name -> ``fn(streams)`` returning :func:`latency`'s dict (e.g. PyTorch
    eager). A backend or reference that raises :class:`BackendUnavailable` gets a row with
    ``unavailable`` (the reason) instead of timings. A model with a static batch is timed at that
    batch only (``log`` says so). ``verify``: check the model's checksum once, first."""
    contract = read_contract(model_path)
    if verify:
        verify_checksum(model_path)
    counts = list(streams)
    if isinstance(contract.batch, int) and counts != [contract.batch]:
        if log is not None:
            log(f"{model_path} has a static batch of {contract.batch}: timing {contract.batch} stream(s) only "
                "(export with --batch dynamic for more)")
        counts = [contract.batch]
    encoded = (contract.input.encoding or {}).get("kind", "none") != "none"  # each backend also with its input encoding (step_raw)
    engines: list[tuple[str, Callable[[int], dict]]] = [
        (name, partial(bench_session, model_path, b, steps=steps, verify=False, raw=raw))
        for b in backends for name, raw in ((b, False), (f"{b} step_raw", True))[:2 if encoded else 1]]
    engines += (references or {}).items()
    rows = []
    for n in counts:
        for name, run in engines:
            try:
                rows.append({"engine": name, "streams": n, **run(n)})
            except BackendUnavailable as exc:
                rows.append({"engine": name, "streams": n, "unavailable": str(exc).splitlines()[0]})
        floor = bench_blas_floor(model_path, n, steps)
        if floor:
            rows.append({"engine": "numpy-blas-floor", "streams": n, **floor})
    return rows


def format_table(rows: list[dict]) -> str:
    """``bench_matrix``'s rows as a fixed-width table."""
    lines = [f"{'engine':18} {'streams':>7} {'p50 us':>9} {'p99 us':>9} {'steps/s':>10}"]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"{r['engine']:18} {r['streams']:>7}  unavailable: {r['unavailable']}")
        else:
            lines.append(f"{r['engine']:18} {r['streams']:>7} {r['p50_us']:9.1f} {r['p99_us']:9.1f} {r['steps_per_s']:10.0f}")
    return "\n".join(lines)
