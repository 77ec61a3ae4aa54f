"""The train-step graph in ONNX Runtime vs the PyTorch FPTT trainer, update by update.

Both start from the same weights with fresh traces and moments and take the same real labelled
sequences, ``batch`` at a time, one update per time step with ``w_t = (t+1)/T``. The reference
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
from ..train_contract import FLAT_IO, LR, MASK, STEP, WEIGHTS_OUT, Hyper, TrainTensor, W, X, Y
from ..training.trainers import FPTTTrainer, TrainConfig
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


def check_train_parity(net: LTCNetwork, tensors: tuple[TrainTensor, ...], hyper: Hyper, session, x: np.ndarray, y: np.ndarray,
                       lengths: np.ndarray | None, batch: int, min_updates: int = 200, rtol: float = RTOL,
                       tie_tolerance: float = TIE_TOLERANCE, strict: bool = False) -> TrainParityResult:
    """Run labelled sequences ``x`` ``[N, T, *frame]`` through both until ``min_updates`` updates are done."""
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
    control = _reversed_batch_control(net, names, hyper, state_names, tensors)
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
        for t in range(int(lb.max())):
            w = loss_weights(lb, t)
            xt = np.ascontiguousarray(xb[:, t], dtype=np.float32)
            feeds = {X: xt, Y: onehot, W: w, **ostate, **_weight_views(bufs["weights"], tensors), **feeds_const, STEP: step,
                     **{FLAT_IO[k]: bufs[k] for k in ("wbar", "lam", "m", "u")}}
            out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
            before = tstate
            logits, tstate = ref.step(torch.from_numpy(xt), tstate)
            loss = (torch.from_numpy(w) * F.cross_entropy(logits, torch.from_numpy(yb).long(), reduction="none")).sum() / batch
            trainer.apply_update(loss)
            tstate = detach_state(tstate)
            updates += 1
            tflat = {n: v.numpy() for n, v in zip(state_names, flatten_state(tstate))}
            ostate = {n: out[n + OUTPUT_SUFFIX] for n in state_names}
            step = out[STEP + OUTPUT_SUFFIX]
            new = {"weights": out[WEIGHTS_OUT], **{k: out[FLAT_IO[k] + OUTPUT_SUFFIX] for k in ("wbar", "lam", "m", "u")}}
            refb = trainer_buffers(trainer)
            for k in BUFFERS:
                scale = max(float(np.abs(refb[k]).max()), 1e-30)
                max_rel[k] = max(max_rel[k], float(np.abs(new[k] - refb[k]).max()) / scale)
            max_logits = max(max_logits, float(np.abs(out["logits"] - logits.detach().numpy()).max()))
            for li, n in enumerate(spike_names):
                diff = ostate[n] != tflat[n]
                if not diff.any():
                    continue
                margins = [m.numpy() for m in spike_margins(ref, torch.from_numpy(xt), before)]
                where = {"update": updates, "step": t, "state": n, "count": int(diff.sum()), "max_margin": float(np.abs(margins[li][diff]).max())}
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


def _reversed_batch_control(net: LTCNetwork, names: list[str], hyper: Hyper, state_names: list[str], tensors):
    """The same update in PyTorch (the traced function, eager) with the batch in reverse order: the
    rounding noise floor of the update, against which ONNX Runtime's deviation is judged."""
    from .train_graph import make_train_step

    fn = make_train_step(net, names, hyper)
    batch_inputs = [X, Y, W, *state_names]

    def run(feeds: dict) -> dict[str, np.ndarray]:
        args = [feeds[n][::-1].copy() if n in batch_inputs else feeds[n] for n in batch_inputs]
        args += [feeds[t.name] for t in tensors] + [feeds[FLAT_IO[k]] for k in ("wbar", "lam", "m", "u")] + [feeds[MASK], feeds[STEP], feeds[LR]]
        out = fn(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args))
        flat = [o.detach().numpy() for o in out[1 + len(state_names):]]
        return dict(zip(BUFFERS, flat))

    return run
