"""The train-step graph in ONNX Runtime vs the PyTorch FPTT trainer, update by update.

Both start from the same weights with fresh traces and moments and take the same real labelled
sequences, ``batch`` at a time, one update per time step with ``w_t = (t+1)/T`` (or per chunk of
L steps, FPTT-K, against the trainer's chunk loss; spikes then compared at each chunk's end, where
the graph hands its state back, and logits at every step). The reference
is :class:`~fptt_edge.training.trainers.FPTTTrainer` itself (its :meth:`apply_update`) on the
batch-norm-folded network with only the trainable tensors requiring grad. Spikes must be
identical (rounding ties are classified by the reference margin as in the export's parity,
then every buffer is re-synchronised). Weights, ``Wbar``, ``lam`` and both Adamax moments, relative
to each buffer's largest magnitude: the largest deviation within ``rtol``, or, where the same update
in float64 moves further from the float32 reference (Adamax with fresh moments amplifies rounding
noise in near-zero gradients), within ``NOISE_FACTOR`` times that; and the deviation of 90 % of
the elements within ``BULK_RTOL`` (a fault in the update rule moves most elements, rounding
noise a few), and the median of each trainable tensor's elements within ``BULK_RTOL`` too (a
fault confined to one tensor, e.g. a wrong gradient or rate for one bias, moves most of that
tensor's elements: 2e-5 to 6e-3 relative, measured, against 1e-9 for rounding; tensors of fewer than
``MIN_TENSOR`` elements have the first bound only). Both floors come from the trainer, never from the graph's own function, so a fault
in that function cannot widen its own tolerance. Each update starts from the reference's state
and buffers (teacher forcing), so one update's rounding never compounds into the next.
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
from .errors import ExportError
from .parity import TIE_TOLERANCE, spike_margins
from .train_graph import OUTPUT_SUFFIX

RTOL = 1e-5
BULK_QUANTILE = 0.9
# the BULK_QUANTILE of each buffer's deviation, relative to its largest element, must stay below these: a wrong rate,
# bias correction or trace rule moves most elements (a 1.1x rate: 7.5e-5 to 2.2e-4 in the weights, 0.1 in lam),
# rounding noise (Adamax amplifies it in the few elements whose gradient is near zero) moves the bulk by 5e-9
# (weights) and 3e-6 (lam, small early on, so relatively noisier); measured on S-MNIST row models at batch 4 and 16
BULK_RTOL = {"weights": 1e-6, "wbar": 1e-6, "lam": 1e-3, "m": 1e-5, "u": 1e-5}
NOISE_FACTOR = 4.0
MIN_TENSOR = 8  # tensors this small (the scalar slopes) get no median bound: one element's noise is its median
BUFFERS = ("weights", "wbar", "lam", "m", "u")


@dataclass
class TrainParityResult:
    updates: int
    batch: int
    sequences: int
    max_rel: dict[str, float]  # buffer -> max |ort - torch| / max |torch| over all updates
    control_rel: dict[str, float]  # the same for the reference in float64 against the reference (float32)
    bulk_rel: dict[str, float]  # buffer -> max over updates of the BULK_QUANTILE of |ort - torch| / max |torch|
    tensor_rel: dict[str, float]  # buffer -> max over updates and trainable tensors of the tensor's median deviation
    tensor_worst: dict[str, str]  # buffer -> the tensor that gave tensor_rel
    max_abs_logits: float
    spike_mismatches: dict[str, int]
    spike_checks: int  # updates whose spikes were compared (a chunk padded past its batch's end is not)
    ties: list[dict] = field(default_factory=list)
    first_mismatch: dict | None = None
    rtol: float = RTOL
    tie_tolerance: float = TIE_TOLERANCE
    strict: bool = False

    @property
    def spikes_ok(self) -> bool:
        return self.spike_checks > 0 and all(v == 0 for v in self.spike_mismatches.values()) and not (self.strict and self.ties)

    def buffer_ok(self, name: str) -> bool:
        """The largest deviation within ``rtol`` or within ``NOISE_FACTOR`` x the float64 reference's (fresh Adamax
        moments turn rounding noise in a near-zero gradient into an lr-sized step in any two implementations), and the
        bulk of the elements, and of each trainable tensor's, within ``BULK_RTOL`` (which no rounding noise widens)."""
        return (self.max_rel[name] <= max(self.rtol, NOISE_FACTOR * self.control_rel[name])
                and max(self.bulk_rel[name], self.tensor_rel[name]) <= BULK_RTOL[name])

    @property
    def passed(self) -> bool:
        return self.spikes_ok and all(self.buffer_ok(k) for k in self.max_rel)

    @property
    def tensor_share(self) -> dict[str, float]:
        """Per buffer: the worst tensor median as a share of its bound (``BULK_RTOL``)."""
        return {k: v / BULK_RTOL[k] for k, v in self.tensor_rel.items()}

    def to_dict(self) -> dict:
        return {**asdict(self), "tensor_share": self.tensor_share, "passed": self.passed, "exact": not self.ties and self.spikes_ok}


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
                      state, dtype: torch.dtype = torch.float32):
    """The trainer's own update over steps ``t0 .. t0 + chunk - 1`` (fewer where the batch ends): one step and
    ``w_t CE`` as the per-step loop weighs it, or the chunk and :func:`picked_step_loss`, as FPTT-K does.
    Returns the logits ``[B, C]`` or ``[B, L', C]`` and the state after the chunk."""
    if chunk == 1:
        w = loss_weights(lb, t0)
        logits, state = ref.step(torch.from_numpy(np.ascontiguousarray(xb[:, t0], dtype=np.float32)).to(dtype), state)
        loss = (torch.from_numpy(w).to(dtype) * F.cross_entropy(logits, torch.from_numpy(yb).long(), reduction="none")).sum() / len(yb)
    else:
        t1 = min(t0 + chunk, int(lb.max()))
        logits, state = ref(torch.from_numpy(np.ascontiguousarray(xb[:, t0:t1], dtype=np.float32)).to(dtype), state)
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
    max_rel, control_rel, bulk_rel, tensor_rel = (dict.fromkeys(BUFFERS, 0.0) for _ in range(4))
    tensor_worst = dict.fromkeys(BUFFERS, "")
    control = _Float64Control(net, names, hyper)
    mismatches, ties, first, max_logits = dict.fromkeys(spike_names, 0), [], None, 0.0
    spike_checks = 0
    updates, used = 0, 0
    n_total = len(x) - len(x) % batch
    if n_total == 0:
        raise ExportError(f"need at least {batch} labelled sequences for the train-step check, got {len(x)}")
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
            ctrl = control(trainer, xb, yb, lb, t, chunk, before)
            logits, tstate = _reference_update(ref, trainer, xb, yb, lb, t, chunk, tstate)
            updates += 1
            tflat = {n: v.numpy() for n, v in zip(state_names, flatten_state(tstate))}
            ostate = {n: out[n + OUTPUT_SUFFIX] for n in state_names}
            step = out[STEP + OUTPUT_SUFFIX]
            new = {"weights": out[WEIGHTS_OUT], **{k: out[FLAT_IO[k] + OUTPUT_SUFFIX] for k in ("wbar", "lam", "m", "u")}}
            refb = trainer_buffers(trainer)
            for k in BUFFERS:
                big, bulk, per_tensor = _deviation(new[k], refb[k], tensors)
                max_rel[k], bulk_rel[k] = max(max_rel[k], big), max(bulk_rel[k], bulk)
                name, worst = max(per_tensor.items(), key=lambda kv: kv[1])
                if worst > tensor_rel[k]:
                    tensor_rel[k], tensor_worst[k] = worst, name
            got = out["logits"] if chunk == 1 else out["logits"][:, :real]
            spike_checks += real == chunk
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
            for k in BUFFERS:
                control_rel[k] = max(control_rel[k], _deviation(ctrl[k], refb[k])[0])
    return TrainParityResult(updates=updates, batch=batch, sequences=used, max_rel=max_rel, control_rel=control_rel, bulk_rel=bulk_rel,
                             tensor_rel=tensor_rel, tensor_worst=tensor_worst,
                             max_abs_logits=max_logits, spike_checks=spike_checks,
                             spike_mismatches={n[: -len(".s")]: v for n, v in mismatches.items()}, ties=ties, first_mismatch=first,
                             rtol=rtol, tie_tolerance=tie_tolerance, strict=strict)


def _deviation(got: np.ndarray, ref: np.ndarray, tensors: tuple[TrainTensor, ...] = ()) -> tuple[float, float, dict[str, float]]:
    """``|got - ref| / max |ref|``: its largest element, its ``BULK_QUANTILE`` (a fault moves most elements; rounding
    noise that Adamax amplifies moves the few whose gradient is near zero), and the median over each of ``tensors``."""
    rel = np.abs(got - ref).reshape(-1) / max(float(np.abs(ref).max()), 1e-30)
    k = int(BULK_QUANTILE * (rel.size - 1))
    per_tensor = {t.name: float(np.median(rel[t.offset:t.offset + t.size])) for t in tensors if t.size >= MIN_TENSOR}
    return float(rel.max()), float(np.partition(rel, k)[k]), per_tensor or {"": 0.0}


def _weight_views(flat: np.ndarray, tensors: tuple[TrainTensor, ...]) -> dict[str, np.ndarray]:
    """Each trainable tensor as a view of the flat ``[1, N]`` weight buffer."""
    row = flat.reshape(-1)
    return {t.name: row[t.offset:t.offset + t.size].reshape(t.shape) for t in tensors}


class _Float64Control:
    """The reference update again in float64, from the reference's own state and buffers: how far float32 rounding
    alone moves an update (Adamax turns rounding noise in a near-zero gradient into an lr-sized step), the floor
    against which ONNX Runtime's deviation from the float32 reference is judged. It is a second
    :class:`FPTTTrainer`, not the traced function, so a fault in the graph's update (a wrong rate, bias correction or
    trace rule) cannot widen its own tolerance."""

    def __init__(self, net: LTCNetwork, names: list[str], hyper: Hyper):
        self.trainer = reference_trainer(copy.deepcopy(net).double(), names, hyper)

    def __call__(self, ref: FPTTTrainer, xb: np.ndarray, yb: np.ndarray, lb: np.ndarray, t0: int, chunk: int, state) -> dict[str, np.ndarray]:
        """``ref``'s buffers after the same update in float64 (``ref`` itself is left as it is)."""
        ctrl = self.trainer
        with torch.no_grad():
            ctrl.flat.flat.copy_(ref.flat.flat)
        ctrl.traces.load_state_dict({k: [t.double() for t in v] if isinstance(v, list) else v for k, v in ref.traces.state_dict().items()})
        opt = copy.deepcopy(ref.optimizer.state_dict())
        for st in opt["state"].values():
            for k in ("exp_avg", "exp_inf"):
                st[k] = st[k].double()
        ctrl.optimizer.load_state_dict(opt)
        _reference_update(ctrl.model, ctrl, xb, yb, lb, t0, chunk, state.map(lambda t: t.double()), torch.float64)
        return trainer_buffers(ctrl)
