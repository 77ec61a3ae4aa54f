"""FPTT traces: a running average ``Wbar`` and a multiplier ``lam`` per parameter tensor.

Regulariser (the authors' form)::

    R(W) = sum_W  0.5 alpha ||W - Wbar||^2 - <W, lam>        dR/dW = alpha (W - Wbar) - lam

After each optimiser step, with the new ``W``::

    lam  <- lam - alpha (W - Wbar)
    Wbar <- (1 - beta) Wbar + beta W - (beta / alpha) lam

All updates are fused multi-tensor (``torch._foreach_*``) ops over every tensor at once (the
trainer passes a single flat buffer holding all weights, so each is one kernel). Between trace
updates ``alpha W - dR/dW = alpha Wbar + lam`` is constant and kept, so the regulariser's
gradient costs one fused multiply-add per step. (The compiled update computes it from ``lam`` and
``Wbar`` directly, one pass fewer over the weights, and marks the kept sum stale.)
"""
from __future__ import annotations

import torch


class FPTTTraces:
    """``Wbar`` and ``lam`` for a list of parameters."""

    def __init__(self, params, alpha: float = 0.1, beta: float = 0.5):
        if alpha <= 0:
            raise ValueError("FPTT alpha must be > 0")
        if not 0 < beta <= 1:
            raise ValueError("FPTT beta must be in (0, 1]")
        self.params = [p for p in params if p.requires_grad]
        self.alpha, self.beta = float(alpha), float(beta)
        with torch.no_grad():
            self.wbar = [p.detach().clone() for p in self.params]
            self.lam = [torch.zeros_like(p) for p in self.params]
            self._data = [p.detach() for p in self.params]  # storage-sharing views, made once (weights change in place)
            self._buf = [torch.empty_like(p) for p in self.params]
            self._anchor = [torch.empty_like(p) for p in self.params]  # alpha Wbar + lam
            self._refresh_anchor()
        self.anchor_stale = False  # set by the compiled update, which changes lam and Wbar without it

    @torch.no_grad()
    def _refresh_anchor(self) -> None:
        torch._foreach_copy_(self._anchor, self.lam)
        torch._foreach_add_(self._anchor, self.wbar, alpha=self.alpha)
        self.anchor_stale = False

    def regularizer(self) -> torch.Tensor:
        """``R(W)`` as a differentiable scalar (for logging and checks; training adds its gradient directly)."""
        terms = [0.5 * self.alpha * (p - wb).pow(2).sum() - (p * lam).sum() for p, wb, lam in zip(self.params, self.wbar, self.lam)]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def add_regularizer_grad(self) -> None:
        """``grad += alpha (W - Wbar) - lam = alpha W - (alpha Wbar + lam)`` for every tensor (grads must exist)."""
        if self.anchor_stale:
            self._refresh_anchor()
        grads = [p.grad for p in self.params]
        torch._foreach_add_(grads, self._data, alpha=self.alpha)
        torch._foreach_sub_(grads, self._anchor)

    @torch.no_grad()
    def update(self) -> None:
        """Trace update after an optimiser step."""
        params = self._data
        diff = self._buf
        torch._foreach_copy_(diff, params)
        torch._foreach_sub_(diff, self.wbar)  # W - Wbar
        torch._foreach_add_(self.lam, diff, alpha=-self.alpha)
        torch._foreach_lerp_(self.wbar, params, self.beta)  # (1 - beta) Wbar + beta W
        torch._foreach_add_(self.wbar, self.lam, alpha=-self.beta / self.alpha)
        self._refresh_anchor()

    @torch.no_grad()
    def copy_wbar_to_params(self) -> None:
        """``W <- Wbar`` (the reference does this before evaluation; ``lam`` is kept)."""
        torch._foreach_copy_([p.data for p in self.params], self.wbar)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "wbar": [t.clone() for t in self.wbar], "lam": [t.clone() for t in self.lam]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["wbar"]) != len(self.params) or len(state["lam"]) != len(self.params):
            raise ValueError("FPTT trace state does not match the model's parameters")
        for dst, src in zip(self.wbar + self.lam, list(state["wbar"]) + list(state["lam"])):
            if dst.shape != src.shape:
                raise ValueError("FPTT trace shape mismatch")
            dst.copy_(src)
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])
        self._refresh_anchor()
