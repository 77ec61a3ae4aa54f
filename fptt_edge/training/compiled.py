"""One FPTT update as one compiled program (``torch.compile``), with the eager trainer as the fallback.

The graph holds the whole update of :class:`~fptt_edge.training.trainers.FPTTTrainer`, per step
or per FPTT-K chunk: the forward through the chunk's steps (``torch.func.functional_call`` on per-parameter views of
the flat weight buffer), the weighted cross-entropy, its gradient (``torch.func.grad``; the
views' gradients concatenated into one flat gradient), the FPTT regulariser's gradient
``alpha W - A`` (the anchor ``A = alpha Wbar + lam``), clipping to ``clip`` over the flat
gradient, Adamax (the same arithmetic as ``torch.optim.Adamax``; its state tensors are the
optimiser's own, so checkpoints, resume and the eager path share them) and the trace update,
carried as ``(A, lam)`` (see :mod:`~fptt_edge.training.fptt`: the norm then reads one trace
tensor, not two; ``Wbar`` is rebuilt when read). Every buffer is updated in place.

What keeps it one graph that never recompiles (see ``../shared/spec/compiled-fptt-update.md``):
values that change every step (the Adamax step size ``-lr / (1 - beta1^t)``, computed in double
on the host as ``torch.optim.Adamax`` does, and the per-sequence loss weights) are tensors
filled in place; shapes are static, so one graph serves one batch size (the trainer pads a shorter
batch, an epoch's last, with sequences of loss weight 0) and one chunk length (FPTT-K's shorter
last chunk, where K does not divide T, compiles a second graph). On CPU inductor's C++ wrapper
is used, and a call shape that :meth:`CompiledFPTTUpdate.prepare` compiled runs its graph directly,
without dynamo's frame, cache lookup and guards (``_DirectGraph``; on a Zen 3, one thread: the
default 64-neuron model at batch 32 0.55 -> 0.37 ms per update, the benchmark's 256x2 at batch 8
2.32 -> 2.08 ms); other call shapes run through dynamo, guards skipped once a shape has met them
twice (dtypes and the module never change inside one trainer). glibc's malloc
trim/mmap thresholds are raised (the graph's temporaries otherwise cost page faults on every update).

Agreement with the eager update: within float32 rounding (the compiled backward rounds
differently by about one ulp; Adamax amplifies that in near-zero gradients), spikes identical;
``tests/test_compiled_fptt.py`` checks both.
"""
from __future__ import annotations

import contextlib
import ctypes
import shutil
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch.nn import functional as F

from .gradstats import record
from .oracle import OracleTargets

# The graph unrolls an FPTT-K chunk: compiling took 23 s for 7 steps and 170 s for 28 (a 64-neuron layer, a loaded
# 2-core AMD EPYC); longer chunks take the eager path.
MAX_COMPILED_CHUNK = 32
AUTO_MIN_UPDATES = 20_000  # "auto": compile only when the run has this many FPTT updates (compiling takes ~10-40 s)
AUTO_MAX_CHUNK = 8  # "auto" compiles FPTT-K chunks of up to this many steps (compiling grows with the chunk)


def auto_compiles(batch_steps: int, chunk: int | None) -> bool:
    """``--compile auto``: whether a run of ``batch_steps`` (batches x sequence steps), updating every ``chunk`` steps,
    repays compiling.

    Per step (``chunk`` 1) from ``AUTO_MIN_UPDATES``: compiling took 7-40 s and saved ~0.7 ms per batch-step (S-MNIST row,
    128 neurons, batch 32: 0.96 -> 0.31 ms per sequence). FPTT-K compiles a graph that unrolls the chunk: 15-23 s for 7
    steps, 170 s for 28, saving ~0.45 ms per batch-step at 7 (0.61 -> 0.22 ms per sequence), so chunks of up to
    ``AUTO_MAX_CHUNK`` steps need ``chunk / 2.5`` times as many batch-steps (56k at 7) and longer ones stay eager, as does
    a chunk not known (``None``). Measured again with the graph run directly (a Zen 3, one thread, batch 32, no inductor
    cache): per step compiling took 7-14 s and cut 1.9-2.7 ms to 0.29-0.73 ms per batch-step (break-even 3.8k-8.7k
    batch-steps); FPTT-K4 on S-MNIST row 26 s, 1.52 -> 0.39 ms (break-even 23k). The thresholds keep a margin for the
    40 s compiles of a loaded machine."""
    if chunk is None or chunk > AUTO_MAX_CHUNK:
        return False
    return batch_steps >= AUTO_MIN_UPDATES * max(1.0, chunk / 2.5)


class CompileUnavailable(RuntimeError):
    """Why the compiled update cannot be used here (the trainer then stays eager)."""


def why_not_compiled(model: torch.nn.Module, device: torch.device, chunk: int, distributed: bool) -> str | None:
    """``None`` when the compiled update applies, else the reason it does not."""
    if chunk > MAX_COMPILED_CHUNK:
        return f"FPTT-K chunks of more than {MAX_COMPILED_CHUNK} steps run eagerly (the graph unrolls the chunk: {chunk} steps)"
    if distributed:
        return "data-parallel training runs eagerly"
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "batch norm (running statistics updated in training) runs eagerly"
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler found for inductor's CPU backend"
    if device.type not in ("cpu", "cuda"):
        return f"no compiled update for device {device.type}"
    if not hasattr(torch, "compile") or not hasattr(torch, "func"):
        return "this PyTorch has no torch.compile"
    return None


NORM_ROW = 2048  # elements per partial sum in the clip's norm (inductor keeps sums up to 4096 in registers)


def blocked_norm(g: torch.Tensor, row: int = NORM_ROW) -> torch.Tensor:
    """``||g||_2`` of a flat tensor as the root of partial sums of ``row`` elements each, then their sum.

    The same value as ``torch.linalg.vector_norm`` within float rounding (pairwise, so closer to the
    exact sum than one running sum). Inside a compiled graph on CPU inductor turns one reduction over
    more than 4,096 elements into a cascade sum whose accumulator lives in memory (about twice the
    time of these register-held row sums over 726k weights).
    """
    sq = g * g
    whole = g.numel() // row * row
    return (sq[:whole].view(-1, row).sum(1).sum() + sq[whole:].sum()).sqrt()


def _tune_malloc() -> None:
    """Raise glibc's mmap/trim thresholds (the compiled graph's multi-MB temporaries otherwise page-fault every update)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


class _CapturingInductor:
    """``torch.compile``'s inductor backend (``compile_fx`` with ``config_patches``, as ``backend="inductor"`` runs it) that
    also keeps, for each graph compiled during a call whose arguments it was told (``call_args``), the compiled function,
    which of those arguments are its inputs (by identity) and the outputs it last returned."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.call_args: tuple | None = None
        self.compiled: list[_Captured] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        fn = cast(Callable, compile_fx(gm, example_inputs, config_patches=self.options))  # a callable outside AOT export
        if self.call_args is None:
            return fn
        captured = _Captured(fn, _positions(example_inputs, self.call_args))
        self.compiled.append(captured)
        return captured.recording


class _Captured:
    """One compiled graph: ``fn``, its inputs' positions among the call's arguments (``None``: not all of them are), and
    ``recording``, what dynamo calls instead of ``fn`` (it keeps the outputs, to tell which of them the frame returns)."""

    def __init__(self, fn: Callable, inputs: list[int] | None):
        self.fn, self.inputs = fn, inputs
        self.last_outputs: Sequence[Any] = ()

    def recording(self, *args: Any) -> Any:
        out = self.fn(*args)
        self.last_outputs = out
        return out


def _positions(items: Sequence[Any], among: tuple) -> list[int] | None:
    """For each of ``items`` the index of the same object in ``among``; ``None`` when one is not there."""
    found = []
    for item in items:
        index = next((i for i, a in enumerate(among) if a is item), None)
        if index is None:
            return None
        found.append(index)
    return found


def _signature(args: tuple) -> tuple:
    """What a compiled graph assumes of its tensor arguments (dynamo's tensor guards): shape, strides, dtype, device,
    ``requires_grad``; ``None`` stays ``None``."""
    return tuple(None if a is None else (a.shape, a.stride(), a.dtype, a.device, a.requires_grad) for a in args)


class _DirectGraph:
    """A compiled graph called without dynamo: its inputs taken from the call's arguments by position, the frame's
    return value picked from its outputs by position. Built by :meth:`CompiledFPTTUpdate.prepare` only after a run
    through dynamo and a direct run, on equal copies, gave the same outputs and the same updated buffers."""

    def __init__(self, fn: Callable, inputs: list[int], outputs: list[int]):
        self.fn, self.inputs, self.outputs = fn, inputs, outputs
        self.calls = 0

    def __call__(self, args: tuple) -> tuple:
        self.calls += 1
        out = self.fn(*[args[i] for i in self.inputs])
        return tuple(out[i] for i in self.outputs)


class CompiledFPTTUpdate:
    """The update of an :class:`~fptt_edge.training.trainers.FPTTTrainer` as one graph: per step, or per chunk of
    FPTT-K (backprop through the chunk's steps).

    ``__call__(x, y, w, state, pick=None) -> (logits, new_state)`` does one update from the chunk's input
    ``x`` ``[B, L, ...]``, labels ``y`` and per-sequence loss weights ``w`` ``[B]`` (the loss is
    ``sum_i w_i CE_i / B`` on the logits of each sequence's step ``pick_i`` of the chunk, the last one when
    ``pick`` is ``None``), starting from ``state`` (a :class:`~fptt_edge.model.NetState`); ``logits``
    are those picked. One graph per chunk length (a shorter last chunk compiles once more).

    With the trainer's oracle on (``cfg.oracle``), ``__call__`` takes ``extra`` = (soft targets
    ``q`` ``[B, C]``, weights ``1 - w`` ``[B]``) and the loss adds :meth:`OracleTargets.term`.

    ``fptt=False`` leaves out the regulariser, the clipping, the traces and the oracle: a plain
    per-step Adamax update, the yardstick ``benchmarks/time_per_sequence.py`` compares with;
    ``clipped=False`` (that benchmark's floor, not a training option) leaves out only the clipping.
    """

    def __init__(self, trainer: Any, batch: int, fptt: bool = True, clipped: bool = True):
        self.trainer, self.batch, self.fptt, self.clipped = trainer, batch, fptt, fptt and clipped
        self.with_oracle = fptt and getattr(trainer, "oracle", None) is not None  # the soft-target term (training/oracle.py)
        model = trainer.model
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if len(named) != len(list(model.parameters())):
            raise CompileUnavailable("frozen parameters: the compiled update trains every tensor")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        flat = trainer.flat.flat
        self.weights = flat.detach()  # shares storage with the parameters
        group = trainer.optimizer.param_groups[0]
        self.beta1, self.beta2 = (float(b) for b in group["betas"])
        self.eps = float(group["eps"])
        if group.get("weight_decay", 0) or group.get("maximize", False):
            raise CompileUnavailable("Adamax with weight decay or maximize is not compiled")
        self.step_size = torch.zeros((), dtype=flat.dtype, device=flat.device)
        traces = trainer.traces
        self.alpha, self.beta, self.clip = traces.alpha, traces.beta, float(trainer.cfg.clip)
        device = flat.device
        options: dict[str, Any] = {}
        mode = None
        if device.type == "cpu":
            options["cpp_wrapper"] = True
            _tune_malloc()
        else:
            mode = "reduce-overhead"  # CUDA graphs (cudagraph trees; see _ready)
        self.cuda_graphs = device.type == "cuda"
        # On CPU the backend keeps what it compiles, so that prepared call shapes run without dynamo (_DirectGraph); on
        # CUDA dynamo stays in the call (its cudagraph trees replay the CUDA graphs).
        self._backend = _CapturingInductor(options) if device.type == "cpu" else None
        self._fn = torch.compile(_own_code(self._update), fullgraph=True, dynamic=False,
                                 **({"backend": self._backend} if self._backend is not None else {"mode": mode}))
        self._calls_by_shape: dict[tuple, int] = {}  # guards are skipped only for a call shape already run twice
        self._updated = False  # an update has run (directly or through dynamo): a failure from now on is not a compile failure
        self._direct: dict[tuple, _DirectGraph] = {}  # by _signature of the call's arguments
        self.n_state = len(model.state_names())

    # the traced function: no Python value in it may change between calls
    def _update(self, weights, exp_avg, exp_inf, anchor, lam, step_size, grad_stats, x, y, w, pick, *rest):
        from ..model import unflatten_state

        model, names, shapes, sizes = self.model, self.names, self.shapes, self.sizes
        (q, ow), state = (rest[:2], rest[2:]) if self.with_oracle else ((None, None), rest)

        def loss_fn(views):
            params = dict(zip(names, views))
            st = unflatten_state(model, list(state))
            logits, new = torch.func.functional_call(model, params, (x, st))
            picked = logits[:, -1] if pick is None else logits[torch.arange(x.shape[0], device=x.device), pick]
            ce = F.cross_entropy(picked, y, reduction="none")
            loss = (w * ce).sum() / x.shape[0]
            if q is not None:
                loss = loss + OracleTargets.term(picked, q, ow)
            return loss, (picked.detach(), [t.detach() for t in new.tensors()])

        views = [v.view(s) for v, s in zip(torch.split(weights, sizes), shapes)]
        grads, (logits, new_state) = torch.func.grad(loss_fn, has_aux=True)(views)
        g = torch.cat([t.reshape(-1) for t in grads])
        alpha, beta = self.alpha, self.beta
        if self.fptt:
            g = g + (alpha * weights - anchor)  # + dR/dW
        coef = None
        if self.clipped:
            norm = blocked_norm(g)
            record(grad_stats, norm, self.clip)
            coef = torch.clamp(self.clip / (norm + 1e-6), max=1.0)
            g = g * coef
        exp_avg.lerp_(g, 1.0 - self.beta1)
        exp_inf.copy_(torch.maximum(exp_inf * self.beta2, g.abs() + self.eps))
        weights.add_(step_size * exp_avg / exp_inf)
        if self.fptt:  # (A, lam) <- ((1 - beta) (2 A - lam) + alpha (2 beta - 1) W, A - alpha W), W the new weights
            new_anchor = (1.0 - beta) * (2.0 * anchor - lam)
            if 2.0 * beta != 1.0:  # the default beta 0.5 drops the term
                new_anchor = new_anchor + alpha * (2.0 * beta - 1.0) * weights
            lam.copy_(anchor - alpha * weights)
            anchor.copy_(new_anchor)
        # The clip's coefficient is an output so that inductor keeps it in a buffer that the fused clip/Adamax/trace loop
        # reads once per vector; inlined there, its square root and division ran on every vector of 8 (the C++ compiler
        # cannot hoist them past that loop's in-place stores, which may alias the norm): 1.28x -> 1.15-1.20x the plain step.
        return (logits, *new_state) if coef is None else (logits, *new_state, coef)

    def prepare(self, x, y, w, state, extra: tuple = (), pick: torch.Tensor | None = None) -> None:
        """Compile the graph of this call shape by running it on copies of the buffers and ``state`` (nothing of the
        trainer changes), so that a compiler failure raises :class:`CompileUnavailable` before a batch's first update,
        not halfway through it (FPTT-K's shorter last chunk compiles a graph of its own). On CPU the graph just compiled
        is then run directly on a second set of equal copies; where that gives dynamo's outputs and buffers bit for bit,
        later calls with this call's argument signature run it directly (:class:`_DirectGraph`)."""
        anchor, lam = self.trainer.traces.anchor_and_lam()
        states = [t.clone() for t in state.tensors()]

        def copies() -> tuple:
            return (*self._ready((self.weights.clone(), torch.zeros_like(self.weights), torch.zeros_like(self.weights), anchor.clone(),
                                  lam.clone(), torch.full_like(self.step_size, -1e-3), torch.zeros_like(self.trainer.grad_stats))),
                    x, y, w, pick, *extra, *states)

        args = copies()
        backend = self._backend
        if backend is not None:
            backend.call_args, backend.compiled = args, []
        try:
            out = self._fn(*args)
        except Exception as exc:  # noqa: BLE001 - compiler failures vary (no compiler, unsupported op, ...)
            raise _compile_failed(exc) from exc
        finally:
            if backend is not None:
                backend.call_args = None
        if backend is not None and len(backend.compiled) == 1:  # this call compiled one graph: try it without dynamo
            direct = _direct_graph(backend.compiled[0], args, out, copies())
            if direct is not None:
                self._direct[_signature(args)] = direct

    def __call__(self, x, y, w, state, extra: tuple = (), pick: torch.Tensor | None = None):
        """``extra``: with the oracle term, (soft targets ``[B, C]``, their weights ``[B]``)."""
        if len(extra) != (2 if self.with_oracle else 0):
            raise ValueError("the oracle term needs (targets, weights), and only with the oracle on")
        from ..model import unflatten_state

        opt = self.trainer.optimizer
        group = opt.param_groups[0]
        st = opt.state[self.trainer.flat.flat]  # looked up each time: load_state_dict replaces the optimiser's state
        if not st:  # what torch.optim.Adamax creates at its first step
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(self.weights, memory_format=torch.preserve_format)
            st["exp_inf"] = torch.zeros_like(self.weights, memory_format=torch.preserve_format)
        step = st["step"]
        t = float(step) + 1.0
        step.fill_(t)  # as step.add_(1.0), at a tenth of the cost
        self.step_size.fill_(-(float(group["lr"]) / (1.0 - self.beta1 ** t)))
        traces = self.trainer.traces
        anchor, lam = traces.anchor_and_lam()
        args = (*self._ready((self.weights, st["exp_avg"], st["exp_inf"], anchor, lam, self.step_size, self.trainer.grad_stats)), x, y, w,
                pick, *extra,
                *state.tensors())
        direct = self._direct.get(_signature(args)) if self._direct else None
        out = direct(args) if direct is not None else self._through_dynamo(args, (tuple(x.shape), pick is None), step)
        self._updated = True
        if self.fptt:
            traces.moved_on()  # Wbar is rebuilt from (A, lam) when next read
        if self.clipped:
            out = out[:-1]  # the clip's coefficient (see _update)
        if self.cuda_graphs:  # a CUDA graph's outputs live in its pool and the next replay overwrites them
            out = tuple(t.clone() for t in out)
        return out[0], unflatten_state(self.model, list(out[1:]))

    def _through_dynamo(self, args: tuple, shape: tuple, step: torch.Tensor) -> tuple:
        """The graph's outputs for ``args`` through dynamo. A call before any update has run that fails raises
        :class:`CompileUnavailable` (nothing changed; ``step`` is counted back)."""
        first = not self._updated  # no update has run yet: a compiler failure now has changed nothing
        seen = self._calls_by_shape.get(shape, 0)
        self._calls_by_shape[shape] = seen + 1
        # A new call shape (FPTT-K's shorter last chunk) meets the full guards, and compiles its graph, before any call of
        # it runs with them skipped (then only the guards that tell the cached graphs apart run).
        if seen >= 2 and self.weights.device.type == "cpu":
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return self._fn(*args)
            except RuntimeError as exc:  # a guard failed after all (e.g. grad mode changed): evaluate guards again
                if "skip_guard_eval_unsafe" not in str(exc):
                    raise
        if not first:
            return self._fn(*args)
        try:
            return self._fn(*args)
        except Exception as exc:  # noqa: BLE001 - compiler failures vary (no compiler, unsupported op, ...)
            self._calls_by_shape.clear()
            step.sub_(1.0)  # nothing was updated
            raise _compile_failed(exc) from exc

    def _ready(self, buffers: tuple) -> tuple:
        """The buffers the graph updates in place, ready for the call. On CUDA they are marked static addresses (without a
        guard: another address re-records the CUDA graph, it does not recompile); cudagraph trees run a graph that mutates
        any other input without CUDA graphs. A new step begins, so the previous call's outputs (cloned) may be overwritten."""
        if self.cuda_graphs:
            for t in buffers:
                torch._dynamo.mark_static_address(t)
            torch.compiler.cudagraph_mark_step_begin()
        return buffers


def _direct_graph(captured: _Captured, args: tuple, out: tuple, again: tuple) -> _DirectGraph | None:
    """``captured`` as a :class:`_DirectGraph`, or ``None`` where that would not be the same update: some input is not one
    of the call's arguments, some returned tensor is not one of the graph's outputs, or run directly on ``again`` (copies
    equal to what ``args`` were before dynamo's run) it gives other outputs or other updated buffers than dynamo's run."""
    if captured.inputs is None:
        return None
    outputs = _positions(out, tuple(captured.last_outputs))
    if outputs is None:
        return None
    direct = _DirectGraph(captured.fn, captured.inputs, outputs)
    try:
        got = direct(again)
    except Exception:  # noqa: BLE001 - whatever fails here, dynamo's path stays
        return None
    same = all(_same(a, b) for a, b in zip((*out, *args), (*got, *again), strict=True))
    direct.calls = 0  # updates only
    return direct if same else None


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, torch.Tensor):
        return a is b or a == b
    return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _own_code(method: Any) -> Any:
    """``method`` bound to a copy of its code object. Dynamo keeps compiled graphs, and counts them against its recompile
    limit (8), per code object: with one shared ``_update``, a process that trains models of 8 shapes (a sweep, a
    notebook) would get ``FailOnRecompileLimitHit`` and an eager update from the ninth on. A copy per instance gives each
    trainer its own graphs and limit (they go when the trainer goes); inductor's on-disk cache still serves them."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def _compile_failed(exc: Exception) -> CompileUnavailable:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return CompileUnavailable(f"torch.compile failed ({type(exc).__name__}: {first})")


def try_compile(trainer: Any, batch: int) -> CompiledFPTTUpdate | None:
    """The compiled update, or ``None`` (with a warning saying why) when it cannot be built."""
    try:
        return CompiledFPTTUpdate(trainer, batch)
    except CompileUnavailable as exc:
        warnings.warn(f"FPTT update not compiled: {exc}", stacklevel=2)
        return None
