"""The train-step graph in ONNX Runtime vs the PyTorch FPTT trainer, update by update.

Both start from the same weights with fresh traces and moments and take the same real labelled
sequences, ``batch`` at a time, one update per time step with ``w_t = (t+1)/T`` (or per chunk of
L steps, FPTT-K, against the trainer's chunk loss; spikes then compared at each chunk's end, where
the graph hands its state back, and logits at every step). The reference
is :class:`~fptt_edge.training.trainers.FPTTTrainer` itself (its :meth:`apply_update`) on the
batch-norm-folded network with only the trainable tensors requiring grad. Spikes must be
identical (rounding ties are classified by the reference margin as in the export's parity,
then every buffer is re-synchronised); weights, ``Wbar``, ``lam`` and both Adamax moments must
agree within ``rtol`` relative to each buffer's largest magnitude, or, where PyTorch disagrees
with itself by more (the same update with the batch summed in reverse order; Adamax with fresh
moments amplifies rounding noise in near-zero gradients), within ``NOISE_FACTOR`` times that
noise floor. Each update starts from the reference's state and buffers (teacher forcing), so
one update's rounding never compounds into the next.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from ..model import LTCNetwork, detach_state, flatten_state
from ..train_contract import FLAT_IO, LR, MASK, STEP, WEIGHTS_OUT, Hyper, TrainTensor, W, X, Y, chunk_loss_weights
from ..training.trainers import FPTTTrainer, TrainConfig, picked_step_loss
from .parity import TIE_TOLERANCE, spike_margins
from .train_graph import OUTPUT_SUFFIX

RTOL = 1e-5
NOISE_FACTOR = 4.0
BUFFERS = ("weights", "wbar", "lam", "m", "u")


@dataclass
class TrainParityResult:
    updates: int
    batch: int
    sequences: int
    max_rel: dict[str, float]  # buffer -> max |ort - torch| / max |torch| over all updates
    control_rel: dict[str, float]  # the same for PyTorch against itself with the batch summed in reverse order
    max_abs_logits: float
    spike_mismatches: dict[str, int]
    ties: list[dict] = field(default_factory=list)
    first_mismatch: dict | None = None
    rtol: float = RTOL
    tie_tolerance: float = TIE_TOLERANCE
    strict: bool = False

    @property
    def spikes_ok(self) -> bool:
        return all(v == 0 for v in self.spike_mismatches.values()) and not (self.strict and self.ties)

    def buffer_ok(self, name: str) -> bool:
        """Within ``rtol``, or within ``NOISE_FACTOR`` x PyTorch's own rounding noise floor (fresh Adamax
        moments turn rounding noise in a near-zero gradient into an lr-sized step in any two implementations)."""
        return self.max_rel[name] <= max(self.rtol, NOISE_FACTOR * self.control_rel[name])

    @property
    def passed(self) -> bool:
        return self.spikes_ok and all(self.buffer_ok(k) for k in self.max_rel)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "exact": not self.ties and self.spikes_ok}


def reference_trainer(net: LTCNetwork, names: list[str], hyper: Hyper) -> FPTTTrainer:
    """The PyTorch FPTT trainer on a copy of ``net`` where only ``names`` learn."""
    ref = copy.deepcopy(net)
    for n, p in ref.named_parameters():
        p.requires_grad_(n in names)
    cfg = TrainConfig(lr=hyper.lr, alpha=hyper.alpha, beta=hyper.beta, clip=hyper.clip)
    trainer = FPTTTrainer(ref, cfg)
    group = trainer.optimizer.param_groups[0]
    if tuple(group["betas"]) != (hyper.beta1, hyper.beta2) or group["eps"] != hyper.eps:
        raise ValueError("the reference Adamax uses other betas/eps than the train graph")
    return trainer


def trainer_buffers(trainer: FPTTTrainer) -> dict[str, np.ndarray]:
    """The reference's flat buffers as ``[1, N]`` arrays (zeros for moments before the first step)."""
    flat = trainer.flat.flat.detach()
    st = trainer.optimizer.state.get(trainer.flat.flat, {})
    zero = torch.zeros_like(flat)
    tensors = {"weights": flat, "wbar": trainer.traces.wbar[0], "lam": trainer.traces.lam[0],
               "m": st.get("exp_avg", zero), "u": st.get("exp_inf", zero)}
    return {k: v.detach().numpy().reshape(1, -1).copy() for k, v in tensors.items()}


def loss_weights(lengths: np.ndarray, t: int) -> np.ndarray:
    """``w_b = (t+1)/T_b`` while sequence b lasts, 0 after its end."""
    return np.where(t < lengths, (t + 1) / lengths, 0.0).astype(np.float32)


def _reference_update(ref: LTCNetwork, trainer: FPTTTrainer, xb: np.ndarray, yb: np.ndarray, lb: np.ndarray, t0: int, chunk: int,
                      state):
    """The trainer's own update over steps ``t0 .. t0 + chunk - 1`` (fewer where the batch ends): one step and
    ``w_t CE`` as the per-step loop weighs it, or the chunk and :func:`picked_step_loss`, as FPTT-K does.
    Returns the logits ``[B, C]`` or ``[B, L', C]`` and the state after the chunk."""
    if chunk == 1:
        w = loss_weights(lb, t0)
        logits, state = ref.step(torch.from_numpy(np.ascontiguousarray(xb[:, t0], dtype=np.float32)), state)
        loss = (torch.from_numpy(w) * F.cross_entropy(logits, torch.from_numpy(yb).long(), reduction="none")).sum() / len(yb)
    else:
        t1 = min(t0 + chunk, int(lb.max()))
        logits, state = ref(torch.from_numpy(np.ascontiguousarray(xb[:, t0:t1], dtype=np.float32)), state)
        loss = picked_step_loss(logits, torch.from_numpy(yb).long(), torch.from_numpy(lb.astype(np.int64)), t0)[0]
    trainer.apply_update(loss)
    return logits.detach().numpy(), detach_state(state)


def _graph_inputs(xb: np.ndarray, lb: np.ndarray, t0: int, chunk: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``x`` and ``w`` of the graph's update at ``t0`` (a chunk past the batch's end is zero-padded, with no loss),
    and how many of its steps are real."""
    if chunk == 1:
        return np.ascontiguousarray(xb[:, t0], dtype=np.float32), loss_weights(lb, t0), 1
    real = min(chunk, int(lb.max()) - t0)
    xc = np.zeros((xb.shape[0], chunk, *xb.shape[2:]), np.float32)
    xc[:, :real] = xb[:, t0:t0 + real]
    return xc, chunk_loss_weights(lb, t0, chunk), real


def _tie_margin(ref: LTCNetwork, xb: np.ndarray, t0: int, real: int, chunk: int, before, layer: int, where: np.ndarray) -> float:
    """How close the reference came to a spike decision that could explain a mismatch: for one step, the largest
    ``|v - theta|`` over the mismatched neurons (as the inference parity does); for a chunk, whose inner steps the graph
    does not expose, the smallest ``|v - theta|`` of the layer over the chunk's steps."""
    with torch.no_grad():
        if chunk == 1:
            margins = spike_margins(ref, torch.from_numpy(np.ascontiguousarray(xb[:, t0], dtype=np.float32)), before)
            return float(np.abs(margins[layer].numpy()[where]).max())
        state, smallest = before, float("inf")
        for t in range(t0, t0 + real):
            xt = torch.from_numpy(np.ascontiguousarray(xb[:, t], dtype=np.float32))
            smallest = min(smallest, float(spike_margins(ref, xt, state)[layer].abs().min()))
            state = ref.step(xt, state)[1]
        return smallest


def check_train_parity(net: LTCNetwork, tensors: tuple[TrainTensor, ...], hyper: Hyper, session, x: np.ndarray, y: np.ndarray,
                       lengths: np.ndarray | None, batch: int, min_updates: int = 200, rtol: float = RTOL,
                       tie_tolerance: float = TIE_TOLERANCE, strict: bool = False, chunk: int = 1) -> TrainParityResult:
    """Run labelled sequences ``x`` ``[N, T, *frame]`` through both until ``min_updates`` updates are done (one per
    step, or one per ``chunk`` steps: FPTT-K, compared with the trainer's own chunk loss)."""
    names = [t.name for t in tensors]
    trainer = reference_trainer(net, names, hyper)
    ref = trainer.model
    classes = net.config.num_classes
    state_names = net.state_names()
    spike_names = [n for n in state_names if n.endswith(".s")]
    bufs = trainer_buffers(trainer)
    step = np.zeros(1, np.float32)
    feeds_const = {MASK: np.ones_like(bufs["weights"]), LR: np.full(1, hyper.lr, np.float32)}
    max_rel, control_rel = dict.fromkeys(BUFFERS, 0.0), dict.fromkeys(BUFFERS, 0.0)
    control = _reversed_batch_control(net, names, hyper, state_names, tensors, chunk)
    mismatches, ties, first, max_logits = dict.fromkeys(spike_names, 0), [], None, 0.0
    updates, used = 0, 0
    n_total = len(x) - len(x) % batch
    if n_total == 0:
        raise ValueError(f"need at least {batch} labelled sequences for the train-step check")
    full_len = np.full(len(x), x.shape[1]) if lengths is None else np.asarray(lengths)
    while updates < min_updates:
        i0 = used % n_total
        xb, yb, lb = x[i0:i0 + batch], y[i0:i0 + batch], full_len[i0:i0 + batch].astype(np.float32)
        used += batch
        onehot = np.eye(classes, dtype=np.float32)[yb]
        tstate = ref.initial_state(batch)
        ostate = {n: t.numpy().copy() for n, t in zip(state_names, flatten_state(tstate))}
        ref.train()
        for t in range(0, int(lb.max()), chunk):
            xt, w, real = _graph_inputs(xb, lb, t, chunk)
            feeds = {X: xt, Y: onehot, W: w, **ostate, **_weight_views(bufs["weights"], tensors), **feeds_const, STEP: step,
                     **{FLAT_IO[k]: bufs[k] for k in ("wbar", "lam", "m", "u")}}
            out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
            before = tstate
            logits, tstate = _reference_update(ref, trainer, xb, yb, lb, t, chunk, tstate)
            updates += 1
            tflat = {n: v.numpy() for n, v in zip(state_names, flatten_state(tstate))}
            ostate = {n: out[n + OUTPUT_SUFFIX] for n in state_names}
            step = out[STEP + OUTPUT_SUFFIX]
            new = {"weights": out[WEIGHTS_OUT], **{k: out[FLAT_IO[k] + OUTPUT_SUFFIX] for k in ("wbar", "lam", "m", "u")}}
            refb = trainer_buffers(trainer)
            for k in BUFFERS:
                scale = max(float(np.abs(refb[k]).max()), 1e-30)
                max_rel[k] = max(max_rel[k], float(np.abs(new[k] - refb[k]).max()) / scale)
            got = out["logits"] if chunk == 1 else out["logits"][:, :real]
            max_logits = max(max_logits, float(np.abs(got - logits).max()))
            for li, n in enumerate(spike_names):
                diff = ostate[n] != tflat[n]
                if real < chunk or not diff.any():  # a padded chunk's state ran on past the batch's end: not compared
                    continue
                where = {"update": updates, "step": t, "state": n, "count": int(diff.sum()),
                         "max_margin": _tie_margin(ref, xb, t, real, chunk, before, li, diff)}
                if where["max_margin"] <= tie_tolerance and first is None:
                    ties.append(where)
                    break
                mismatches[n] += where["count"]
                first = first or where
            # teacher forcing: the next update starts from the reference's state and buffers again,
            # so each update is compared on its own (Adamax amplifies any rounding difference in a
            # near-zero gradient to an lr-sized step, which would otherwise compound)
            bufs, ostate, step = refb, {k: v.copy() for k, v in tflat.items()}, np.asarray([float(updates)], np.float32)
            ctrl = control(feeds)
            for k in BUFFERS:
                scale = max(float(np.abs(refb[k]).max()), 1e-30)
                control_rel[k] = max(control_rel[k], float(np.abs(ctrl[k] - refb[k]).max()) / scale)
            ref.train()
    return TrainParityResult(updates=updates, batch=batch, sequences=used, max_rel=max_rel, control_rel=control_rel, max_abs_logits=max_logits,
                             spike_mismatches={n[: -len(".s")]: v for n, v in mismatches.items()}, ties=ties, first_mismatch=first,
                             rtol=rtol, tie_tolerance=tie_tolerance, strict=strict)


def _weight_views(flat: np.ndarray, tensors: tuple[TrainTensor, ...]) -> dict[str, np.ndarray]:
    """Each trainable tensor as a view of the flat ``[1, N]`` weight buffer."""
    row = flat.reshape(-1)
    return {t.name: row[t.offset:t.offset + t.size].reshape(t.shape) for t in tensors}


def _reversed_batch_control(net: LTCNetwork, names: list[str], hyper: Hyper, state_names: list[str], tensors, chunk: int = 1):
    """The same update in PyTorch (the traced function, eager) with the batch in reverse order: the
    rounding noise floor of the update, against which ONNX Runtime's deviation is judged."""
    from .train_graph import make_train_step

    fn = make_train_step(net, names, hyper, chunk)
    batch_inputs = [X, Y, W, *state_names]

    def run(feeds: dict) -> dict[str, np.ndarray]:
        args = [feeds[n][::-1].copy() if n in batch_inputs else feeds[n] for n in batch_inputs]
        args += [feeds[t.name] for t in tensors] + [feeds[FLAT_IO[k]] for k in ("wbar", "lam", "m", "u")] + [feeds[MASK], feeds[STEP], feeds[LR]]
        out = fn(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args))
        flat = [o.detach().numpy() for o in out[1 + len(state_names):]]
        return dict(zip(BUFFERS, flat))

    return run
