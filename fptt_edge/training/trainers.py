"""One training batch with FPTT (online, constant memory) or BPTT (the baseline).

FPTT: the state is detached between updates; an update every ``ceil(T / K)`` steps (every
step when K = T) on ``w_t CE(m_t, y) + R(W)`` with ``w_t = (t+1)/T``, gradient clipping, an
Adamax step and the trace update of :class:`~fptt_edge.training.fptt.FPTTTraces`.
BPTT: one forward over the whole sequence, one backward.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from ..model import LTCNetwork, detach_state
from .flat import FlatParameters
from .fptt import FPTTTraces

METHODS = ("fptt", "bptt")


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
    eval_weights: str = "wbar"  # "wbar": W <- Wbar before evaluation (reference); "current": keep W
    checkpoint_interval: float = 300.0  # seconds between mid-epoch checkpoints (0 = epoch ends only)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if self.parts < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.clip <= 0:
            raise ValueError("parts >= 0, epochs >= 1, batch_size >= 1, lr > 0 and clip > 0 are required")
        if self.bptt_loss not in ("weighted", "last"):
            raise ValueError("bptt_loss must be 'weighted' or 'last'")
        if self.eval_weights not in ("wbar", "current"):
            raise ValueError("eval_weights must be 'wbar' or 'current'")

    def to_dict(self) -> dict:
        return asdict(self)


def final_logits(logits: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Logits at each sequence's last valid step: ``logits[i, len_i - 1]``."""
    if lengths is None:
        return logits[:, -1]
    return logits[torch.arange(logits.shape[0], device=logits.device), lengths - 1]


class FPTTTrainer:
    """Online FPTT updates over a batch of sequences."""

    def __init__(self, model: LTCNetwork, cfg: TrainConfig, net=None):
        self.model, self.cfg = model, cfg
        self.net = net if net is not None else model  # a DistributedDataParallel wrapper, when distributed
        # One flat buffer for all weights and one for all grads: every per-step update below is
        # one kernel over all weights (grads live for the whole run, zeroed in place).
        self.flat = FlatParameters(model.parameters())
        self.params = [self.flat.flat]
        self.optimizer = torch.optim.Adamax(self.params, lr=cfg.lr, foreach=True)
        self.traces = FPTTTraces(self.params, cfg.alpha, cfg.beta)

    def train_batch(self, x, y, lengths=None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (summed CE at each sequence's last step, number correct there), as :class:`BPTTTrainer` does."""
        self.model.train()
        batch, steps = x.shape[:2]
        chunk = 1 if self.cfg.parts == 0 else max(1, math.ceil(steps / self.cfg.parts))
        state = self.model.initial_state(batch, x.device, generator)
        final = None
        for t0 in range(0, steps, chunk):
            t1 = min(steps, t0 + chunk)
            logits, state = self.net(x[:, t0:t1], state)
            if lengths is None:
                picked = logits[:, -1]
                loss = (t1 / steps) * F.cross_entropy(picked, y)
                final = picked.detach()
            else:
                idx = (lengths - 1 - t0).clamp(0, t1 - t0 - 1)
                picked = logits[torch.arange(batch, device=x.device), idx]
                alive = (lengths - 1 >= t0).to(picked.dtype)
                ce_i = F.cross_entropy(picked, y, reduction="none")
                weight = alive * (t0 + idx + 1).to(picked.dtype) / lengths.to(picked.dtype)
                loss = (weight * ce_i).sum() / batch
                ends_here = ((lengths - 1 >= t0) & (lengths - 1 < t1)).unsqueeze(1)
                final = picked.detach() if final is None else torch.where(ends_here, picked.detach(), final)
            self.apply_update(loss)
            state = detach_state(state)
        return F.cross_entropy(final, y, reduction="sum"), (final.argmax(1) == y).sum()

    def apply_update(self, loss: torch.Tensor) -> None:
        """One FPTT update from ``loss``: gradient + regulariser gradient, clip, Adamax, trace update."""
        self.flat.flat.grad.zero_()
        loss.backward()
        self.traces.add_regularizer_grad()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip, foreach=True)
        self.optimizer.step()
        self.traces.update()

    def before_eval(self) -> None:
        if self.cfg.eval_weights == "wbar":
            self.traces.copy_wbar_to_params()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "traces": self.traces.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.traces.load_state_dict(state["traces"])


class BPTTTrainer:
    """Backpropagation through the whole sequence: memory grows linearly with T."""

    def __init__(self, model: LTCNetwork, cfg: TrainConfig, net=None):
        self.model, self.cfg = model, cfg
        self.net = net if net is not None else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adamax(self.params, lr=cfg.lr, foreach=True)

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
            if lengths is None:
                loss = (ce_t * (t / steps)).mean()
            else:
                lens = lengths.to(logits.dtype).unsqueeze(1)
                w = torch.where(t <= lens, t / lens, torch.zeros((), dtype=logits.dtype, device=x.device))
                loss = ((ce_t * w).sum(1) / lens.squeeze(1)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip, foreach=True)
        self.optimizer.step()
        return F.cross_entropy(last.detach(), y, reduction="sum"), (last.detach().argmax(1) == y).sum()

    def before_eval(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def make_trainer(model: LTCNetwork, cfg: TrainConfig, net=None):
    return (FPTTTrainer if cfg.method == "fptt" else BPTTTrainer)(model, cfg, net)


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
