"""One training batch with FPTT (online, constant memory) or BPTT (the baseline).

FPTT: the state is detached between updates; an update every ``ceil(T / K)`` steps (every
step when K = T) on ``w_t CE(m_t, y) + R(W)`` with ``w_t = (t+1)/T``, gradient clipping, an
Adamax step and the trace update of :class:`~fptt_edge.training.fptt.FPTTTraces`.
BPTT: one forward over the whole sequence, one backward.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from ..model import LTCNetwork, detach_state, unflatten_state
from .flat import FlatParameters
from .fptt import FPTTTraces
from .gradstats import new_stats, record

if TYPE_CHECKING:
    from .compiled import CompiledFPTTUpdate
from .init import TAU_INITS
from .oracle import OracleTargets
from .schedule import SCHEDULES, lr_at
from .selection import SELECTIONS

METHODS = ("fptt", "bptt")
# Which weights FPTT evaluates (and saves in model.pt) after each epoch:
#   "wbar": W <- Wbar, and training continues from Wbar (the authors' code);
#   "wbar-restore": Wbar is evaluated and saved, then W is restored (evaluation does not change training);
#   "current": W itself.
EVAL_WEIGHTS = ("wbar", "wbar-restore", "current")
COMPILE_MODES = ("off", "on", "auto")


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved in every checkpoint)."""

    method: str = "fptt"
    parts: int = 0  # K for FPTT-K; 0 = T (an update every step)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    alpha: float = 0.1
    beta: float = 0.5
    clip: float = 1.0
    seed: int = 0
    bptt_loss: str = "weighted"  # "weighted": mean_t w_t CE(m_t); "last": CE(m_T)
    eval_weights: str = "wbar"  # see EVAL_WEIGHTS
    checkpoint_interval: float = 300.0  # seconds between mid-epoch checkpoints (0 = epoch ends only)
    schedule: str = "constant"  # learning-rate schedule (fptt_edge.training.schedule): constant, cosine, step
    warmup: float = 0.0  # epochs of linear warm-up
    milestones: tuple[int, ...] = ()  # step schedule: 1-based epochs after which lr *= gamma (empty: 50 % and 75 % of the run)
    gamma: float = 0.1
    val_fraction: float = 0.1  # stratified share of the training data held out for model selection (0: none)
    patience: int = 0  # stop after this many epochs after the selected one (0: never)
    selection: str = "best"  # which epoch model.pt keeps: training/selection.py (best, one-se, last)
    train_eval_samples: int = 1000  # training sequences re-scored like the test set after each epoch (0: all)
    compile: str = "off"  # FPTT update as one compiled graph: "on", "off", "auto" (on when the run is long enough to repay compiling)
    tau_init: str = "default"  # gate time constants of a fresh model: "default" (zero biases, the reference) or "spread" (training/init.py)
    oracle: bool = False  # the reference's optional soft-target term for early updates (training/oracle.py); BPTT: weighted loss
    ema_decay: float = 0.0  # evaluate, select and save a per-batch moving average of the evaluated weights (training/averaging.py); 0: off

    def __post_init__(self):
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if self.parts < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.clip <= 0:
            raise ValueError("parts >= 0, epochs >= 1, batch_size >= 1, lr > 0 and clip > 0 are required")
        if self.bptt_loss not in ("weighted", "last"):
            raise ValueError("bptt_loss must be 'weighted' or 'last'")
        if self.eval_weights not in EVAL_WEIGHTS:
            raise ValueError(f"eval_weights must be one of {EVAL_WEIGHTS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if not (0 <= self.warmup < self.epochs) or not 0 < self.gamma <= 1 or any(m < 1 for m in self.milestones):
            raise ValueError("0 <= warmup < epochs, 0 < gamma <= 1 and milestones >= 1 are required")
        if not 0 <= self.val_fraction < 1 or self.patience < 0 or self.train_eval_samples < 0:
            raise ValueError("0 <= val_fraction < 1, patience >= 0 and train_eval_samples >= 0 are required")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}")
        if self.patience and self.selection == "last":
            raise ValueError("patience stops a run some epochs after the selected one; with selection 'last' it would never stop")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}")
        if self.tau_init not in TAU_INITS:
            raise ValueError(f"tau_init must be one of {TAU_INITS}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("0 <= ema_decay < 1 is required (0: no weight average)")
        if self.oracle and self.method == "bptt" and self.bptt_loss != "weighted":
            raise ValueError("the oracle term weights the per-step loss: BPTT takes it with bptt_loss 'weighted' only")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def lr_at(self, epoch: int, batch: int, batches: int) -> float:
        """The scheduled learning rate of batch ``batch`` of epoch ``epoch`` (both 0-based)."""
        return lr_at(self.lr, self.schedule, self.epochs, epoch, batch, batches, warmup=self.warmup, milestones=self.milestones,
                     gamma=self.gamma)


def steps_per_update(steps: int, parts: int) -> int:
    """FPTT's chunk: one update every ``ceil(T / K)`` steps (every step when ``parts`` K is 0)."""
    return 1 if parts == 0 else max(1, math.ceil(steps / parts))


def final_logits(logits: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Logits at each sequence's last valid step: ``logits[i, len_i - 1]``."""
    if lengths is None:
        return logits[:, -1]
    return logits[torch.arange(logits.shape[0], device=logits.device), lengths - 1]


def picked_step_loss(logits: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor, t0: int) -> tuple[torch.Tensor, ...]:
    """FPTT's loss on a chunk's logits ``[B, L, C]`` (steps ``t0 ..``) of sequences of ``lengths``: each sequence still
    running at ``t0`` is scored at the chunk's last step it reaches, ``p``, weighted ``(p + 1) / len``; one that ended
    earlier adds nothing. Returns ``(sum_b w_b CE_b / B, picked logits, w, alive)``."""
    batch = logits.shape[0]
    idx = (lengths - 1 - t0).clamp(0, logits.shape[1] - 1)
    picked = logits[torch.arange(batch, device=logits.device), idx]
    alive = lengths - 1 >= t0
    weight = alive.to(picked.dtype) * (t0 + idx + 1).to(picked.dtype) / lengths.to(picked.dtype)
    loss = (weight * F.cross_entropy(picked, y, reduction="none")).sum() / batch
    return loss, picked, weight, alive


class FPTTTrainer:
    """Online FPTT updates over a batch of sequences.

    ``compile``: run each update (one step, or FPTT-K's chunk of steps) as one compiled graph
    (:mod:`~fptt_edge.training.compiled`) for batches of ``cfg.batch_size`` sequences; every
    other case, and any platform where it cannot be built, takes the eager path, which
    :meth:`apply_update` (the on-device learner's reference) always is.
    """

    def __init__(self, model: LTCNetwork, cfg: TrainConfig, net=None, compile: bool | None = None):
        self.model, self.cfg = model, cfg
        self.net = net if net is not None else model  # a DistributedDataParallel wrapper, when distributed
        # One flat buffer for all weights and one for all grads: every per-step update below is
        # one kernel over all weights (grads live for the whole run, zeroed in place).
        self.flat = FlatParameters(model.parameters())
        self.params = [self.flat.flat]
        self.optimizer = torch.optim.Adamax(self.params, lr=cfg.lr, foreach=True)
        self.traces = FPTTTraces(self.params, cfg.alpha, cfg.beta)
        self.oracle = OracleTargets(model.config.num_classes) if cfg.oracle else None
        self.grad_stats = new_stats(self.flat.flat.device)  # the epoch's pre-clip gradient norms (training/gradstats.py)
        self.compile = cfg.compile == "on" if compile is None else compile
        self.compiled: CompiledFPTTUpdate | None = None
        self.compile_note: str | None = None  # why the update is not compiled, when asked for and refused
        self._prepared: set[tuple] = set()  # batch shapes whose chunk lengths the compiled update has compiled

    def _compiled_update(self, x, chunk: int):
        """The compiled update for batches of ``cfg.batch_size`` sequences (a shorter one, such as an epoch's last, is padded
        to it), built on first use; ``None`` for the eager path."""
        if not self.compile or x.shape[0] > self.cfg.batch_size:
            return None
        if self.compiled is None and self.compile_note is None:
            from .compiled import try_compile, why_not_compiled

            self.compile_note = why_not_compiled(self.model, x.device, chunk, self.net is not self.model)
            if self.compile_note is None:
                self.compiled = try_compile(self, self.cfg.batch_size)
                if self.compiled is None:
                    self.compile_note = "torch.compile failed"
        return self.compiled

    def _train_batch_compiled(self, update, x, y, lengths, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager loop below, each chunk's update one call of the compiled graph (the same loss weights, picked
        steps and oracle terms, computed for all chunks at once).

        A batch of ``n`` sequences, fewer than the graph's ``B`` (an epoch's short last batch), is padded with ``B - n``
        sequences of zeros whose loss weights are 0; the real ones' weights are scaled by ``B / n``, so that the graph's
        ``sum_i w_i CE_i / B`` is the eager ``sum_i w_i CE_i / n`` (the oracle term likewise). The initial state draws
        ``n`` rows from ``generator``, as eager does; the padding starts from the deterministic state."""
        rows = x.shape[0]
        state = self.model.initial_state(rows, x.device, generator)
        if rows < update.batch:
            x, y, lengths, state = self._padded(x, y, lengths, state, update.batch)
        batch, steps = x.shape[:2]
        chunk = steps_per_update(steps, self.cfg.parts)
        starts = torch.arange(0, steps, chunk, device=x.device).unsqueeze(1)  # [P, 1]: each chunk's first step t0
        ends = (starts + chunk).clamp(max=steps)  # t1
        parts = len(starts)
        if lengths is None:
            pick = alive = ends_here = None
            weights = (ends.to(torch.float32) / steps).expand(parts, batch).contiguous()  # [P, B]
        else:
            last = lengths.unsqueeze(0) - 1  # [1, B]
            pick = torch.minimum((last - starts).clamp(min=0), ends - starts - 1)  # [P, B]: the step of the chunk in the loss
            alive = last >= starts
            ends_here = (alive & (last < ends)).unsqueeze(2)  # [P, B, 1]
            weights = alive.to(torch.float32) * (starts + pick + 1).to(torch.float32) / lengths.to(torch.float32)
        oracle = self.oracle
        oracle_w = None if oracle is None else OracleTargets.early_weights(weights, alive)
        if rows < batch:  # the padding out of the loss, the real sequences weighted as in a batch of `rows`
            for w in (weights,) if oracle_w is None else (weights, oracle_w):
                w[:, rows:] = 0.0
                w[:, :rows] *= batch / rows
        xs = x.transpose(0, 1).contiguous() if chunk == 1 else None  # [T, B, ...]: one step's input, a contiguous view

        def call(i: int) -> tuple:  # the arguments of chunk i's update
            x_i = xs[i].unsqueeze(1) if xs is not None else x[:, i * chunk : (i + 1) * chunk].contiguous()
            extra = () if oracle_w is None else (oracle.targets(y, i, parts), oracle_w[i])  # type: ignore[union-attr]
            return x_i, weights[i], extra, None if pick is None or chunk == 1 else pick[i]
        key = (tuple(x.shape), lengths is None)
        if key not in self._prepared:  # every chunk length compiled before the first update (a failure: eager, nothing changed)
            for i in {0, parts - 1}:
                x_i, w_i, extra, pick_i = call(i)
                update.prepare(x_i, y, w_i, state, extra, pick=pick_i)
            self._prepared.add(key)
        final = None
        for i in range(parts):
            x_i, w_i, extra, pick_i = call(i)
            picked, state = update(x_i, y, w_i, state, extra, pick=pick_i)
            if oracle is not None:
                oracle.observe(picked[:rows], y[:rows], i, parts, None if alive is None else alive[i, :rows])
            final = picked if ends_here is None or final is None else torch.where(ends_here[i], picked, final)
        assert final is not None  # steps >= 1
        final, y = final[:rows], y[:rows]
        return F.cross_entropy(final, y, reduction="sum"), (final.argmax(1) == y).sum()

    def _padded(self, x, y, lengths, state, batch: int) -> tuple:
        """``(x, y, lengths, state)`` of ``n`` sequences padded to ``batch`` (zeros, label 0, full length, initial state)."""
        more = batch - x.shape[0]
        x = torch.cat([x, x.new_zeros(more, *x.shape[1:])])
        y = torch.cat([y, y.new_zeros(more)])
        if lengths is not None:
            lengths = torch.cat([lengths, lengths.new_full((more,), x.shape[1])])
        pad = self.model.initial_state(more, x.device)
        return x, y, lengths, unflatten_state(self.model, [torch.cat([a, b]) for a, b in zip(state.tensors(), pad.tensors())])

    def train_batch(self, x, y, lengths=None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (summed CE at each sequence's last step, number correct there), as :class:`BPTTTrainer` does."""
        self.model.train()
        batch, steps = x.shape[:2]
        chunk = steps_per_update(steps, self.cfg.parts)
        update = self._compiled_update(x, chunk)
        if update is not None:
            from .compiled import CompileUnavailable

            drawn = None if generator is None else generator.get_state()
            try:
                return self._train_batch_compiled(update, x, y, lengths, generator)
            except CompileUnavailable as exc:  # raised by prepare() or the first call, before anything changed: stay eager
                warnings.warn(f"FPTT update not compiled, eager instead: {exc}", stacklevel=2)
                self.compiled, self.compile_note = None, str(exc)
                if generator is not None:
                    generator.set_state(drawn)
        state = self.model.initial_state(batch, x.device, generator)
        final = None
        parts = math.ceil(steps / chunk)
        for t0 in range(0, steps, chunk):
            t1 = min(steps, t0 + chunk)
            logits, state = self.net(x[:, t0:t1], state)
            alive = None
            if lengths is None:
                picked = logits[:, -1]
                loss = (t1 / steps) * F.cross_entropy(picked, y)
                weight = None
                final = picked.detach()
            else:
                loss, picked, weight, alive = picked_step_loss(logits, y, lengths, t0)
                ends_here = ((lengths - 1 >= t0) & (lengths - 1 < t1)).unsqueeze(1)
                final = picked.detach() if final is None else torch.where(ends_here, picked.detach(), final)
            if self.oracle is not None:
                part = t0 // chunk
                if weight is None:  # no lengths: every sequence has w = t1 / T here
                    weight = torch.full((batch,), t1 / steps, dtype=picked.dtype, device=x.device)
                oracle_w = OracleTargets.early_weights(weight, alive)
                loss = loss + self.oracle.term(picked, self.oracle.targets(y, part, parts), oracle_w)
                self.oracle.observe(picked.detach(), y, part, parts, alive)
            self.apply_update(loss)
            state = detach_state(state)
        assert final is not None  # steps >= 1: the loop ran
        return F.cross_entropy(final, y, reduction="sum"), (final.argmax(1) == y).sum()

    def apply_update(self, loss: torch.Tensor) -> None:
        """One FPTT update from ``loss``: gradient + regulariser gradient, clip, Adamax, trace update."""
        self.flat.flat.grad.zero_()
        loss.backward()
        self.traces.add_regularizer_grad()
        record(self.grad_stats, torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip, foreach=True), self.cfg.clip)
        self.optimizer.step()
        self.traces.update()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def update_points(self, steps: int) -> int:
        """Updates per sequence of ``steps`` steps (the oracle table's rows)."""
        return math.ceil(steps / steps_per_update(steps, self.cfg.parts))

    def evaluated_weights(self) -> Sequence[torch.Tensor]:
        """What an epoch's evaluation would use (``--ema-decay`` averages these): ``Wbar``, or ``W`` with ``eval_weights == "current"``."""
        return self.params if self.cfg.eval_weights == "current" else self.traces.wbar

    def before_eval(self) -> None:
        """Put the weights to evaluate (and save) in place: ``Wbar`` unless ``eval_weights == "current"``."""
        if self.cfg.eval_weights == "wbar-restore":
            self._kept = self.flat.flat.detach().clone()
        if self.cfg.eval_weights in ("wbar", "wbar-restore"):
            self.traces.copy_wbar_to_params()

    def after_eval(self) -> None:
        """Back to the training weights (``eval_weights == "wbar-restore"``; the other choices keep what is there)."""
        kept = getattr(self, "_kept", None)
        if kept is not None:
            with torch.no_grad():
                self.flat.flat.copy_(kept)
            self._kept = None

    def state_dict(self) -> dict:
        out = {"optimizer": self.optimizer.state_dict(), "traces": self.traces.state_dict()}
        if self.oracle is not None:
            out["oracle"] = self.oracle.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        if self.oracle is not None:
            self.oracle.load_state_dict(state["oracle"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.traces.load_state_dict(state["traces"])


class BPTTTrainer:
    """Backpropagation through the whole sequence: memory grows linearly with T."""

    def __init__(self, model: LTCNetwork, cfg: TrainConfig, net=None):
        self.model, self.cfg = model, cfg
        self.net = net if net is not None else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adamax(self.params, lr=cfg.lr, foreach=True)
        self.oracle = OracleTargets(model.config.num_classes) if cfg.oracle else None  # the same term as FPTT's, per step
        self.grad_stats = new_stats(self.params[0].device if self.params else "cpu")  # the epoch's pre-clip gradient norms

    def train_batch(self, x, y, lengths=None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        batch, steps = x.shape[:2]
        state = self.model.initial_state(batch, x.device, generator)
        logits, _ = self.net(x, state)
        last = final_logits(logits, lengths)
        if self.cfg.bptt_loss == "last":
            loss = F.cross_entropy(last, y)
        else:
            ce_t = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(steps), reduction="none").view(batch, steps)
            t = torch.arange(1, steps + 1, device=x.device, dtype=logits.dtype)
            alive, lens = None, None
            if lengths is None:
                w = t / steps
                loss = (ce_t * w).mean()
            else:
                lens = lengths.to(logits.dtype).unsqueeze(1)
                alive = t <= lens
                w = torch.where(alive, t / lens, torch.zeros((), dtype=logits.dtype, device=x.device))
                loss = ((ce_t * w).sum(1) / lens.squeeze(1)).mean()
            if self.oracle is not None:  # sum_t (1 - w_t) mean_c(-q log p) per sequence over its length, as FPTT's updates add it
                q = self.oracle.sequence_targets(y, steps)  # every row read before this batch updates any
                soft = -(q * torch.log_softmax(logits, dim=2)).sum(2) / logits.shape[2]  # [B, T]
                per_seq = (soft * OracleTargets.early_weights(w, alive)).sum(1)
                loss = loss + (per_seq / (steps if lens is None else lens.squeeze(1))).mean()
                self.oracle.observe_sequence(logits.detach(), y, alive)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        record(self.grad_stats, torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip, foreach=True), self.cfg.clip)
        self.optimizer.step()
        return F.cross_entropy(last.detach(), y, reduction="sum"), (last.detach().argmax(1) == y).sum()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def update_points(self, steps: int) -> int:
        """Steps whose loss terms the one update sums (the oracle table's rows)."""
        return steps

    def evaluated_weights(self) -> Sequence[torch.Tensor]:
        """The weights an epoch's evaluation uses (``--ema-decay`` averages these)."""
        return self.params

    def before_eval(self) -> None:
        pass

    def after_eval(self) -> None:
        pass

    def state_dict(self) -> dict:
        out = {"optimizer": self.optimizer.state_dict()}
        if self.oracle is not None:
            out["oracle"] = self.oracle.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        if self.oracle is not None:
            self.oracle.load_state_dict(state["oracle"])
        self.optimizer.load_state_dict(state["optimizer"])


def make_trainer(model: LTCNetwork, cfg: TrainConfig, net=None, updates_planned: int | None = None, steps: int | None = None):
    """The trainer for ``cfg.method``; with ``cfg.compile == "auto"`` FPTT's update is compiled when the run
    repays the compile time (:func:`~fptt_edge.training.compiled.auto_compiles`): ``updates_planned`` is the
    whole run's batch-steps (batches x sequence steps ``steps``; per-step FPTT makes one update each), also when it
    resumes, so that a resumed run decides as the uninterrupted one did."""
    if cfg.method != "fptt":
        return BPTTTrainer(model, cfg, net)
    compile = cfg.compile == "on"
    if cfg.compile == "auto":
        from .compiled import auto_compiles

        chunk = 1 if cfg.parts == 0 else None if steps is None else steps_per_update(steps, cfg.parts)  # None: T not known
        compile = updates_planned is not None and auto_compiles(updates_planned, chunk)
    return FPTTTrainer(model, cfg, net, compile=compile)


@torch.no_grad()
def evaluate(model: LTCNetwork, x, y, lengths=None, batch_size: int = 256, device="cpu") -> dict:
    """Accuracy and CE at the last step, Heaviside spikes, deterministic initial state."""
    model.eval()
    correct, loss, n = 0, 0.0, len(y)
    for i in range(0, n, batch_size):
        xb = x[i : i + batch_size].to(device, torch.float32)
        yb = y[i : i + batch_size].to(device)
        lb = None if lengths is None else lengths[i : i + batch_size].to(device)
        logits, _ = model(xb, model.initial_state(len(yb), device))
        last = final_logits(logits, lb)
        correct += int((last.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(last, yb, reduction="sum"))
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "samples": n}
