"""FPTT traces: a running average ``Wbar`` and a multiplier ``lam`` per parameter tensor.

Regulariser (the authors' form)::

    R(W) = sum_W  0.5 alpha ||W - Wbar||^2 - <W, lam>        dR/dW = alpha (W - Wbar) - lam

After each optimiser step, with the new ``W``::

    lam  <- lam - alpha (W - Wbar)
    Wbar <- (1 - beta) Wbar + beta W - (beta / alpha) lam

All updates are fused multi-tensor (``torch._foreach_*``) ops over every tensor at once.
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
            self._buf = [torch.empty_like(p) for p in self.params]

    @torch.no_grad()
    def _diff(self) -> list[torch.Tensor]:
        """``W - Wbar`` into a preallocated buffer."""
        torch._foreach_copy_(self._buf, [p.detach() for p in self.params])
        torch._foreach_sub_(self._buf, self.wbar)
        return self._buf

    def regularizer(self) -> torch.Tensor:
        """``R(W)`` as a differentiable scalar (for logging and checks; training adds its gradient directly)."""
        terms = [0.5 * self.alpha * (p - wb).pow(2).sum() - (p * lam).sum() for p, wb, lam in zip(self.params, self.wbar, self.lam)]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def add_regularizer_grad(self) -> None:
        """``grad += alpha (W - Wbar) - lam`` for every tensor (grads must exist)."""
        diff = self._diff()
        torch._foreach_mul_(diff, self.alpha)
        torch._foreach_sub_(diff, self.lam)
        torch._foreach_add_([p.grad for p in self.params], diff)

    @torch.no_grad()
    def update(self) -> None:
        """Trace update after an optimiser step."""
        diff = self._diff()
        torch._foreach_add_(self.lam, diff, alpha=-self.alpha)
        torch._foreach_mul_(self.wbar, 1.0 - self.beta)
        torch._foreach_add_(self.wbar, [p.detach() for p in self.params], alpha=self.beta)
        torch._foreach_add_(self.wbar, self.lam, alpha=-self.beta / self.alpha)

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
