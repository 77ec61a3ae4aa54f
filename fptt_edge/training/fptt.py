"""FPTT traces: a running average ``Wbar`` and a multiplier ``lam`` per parameter tensor.

Regulariser (the authors' form)::

    R(W) = sum_W  0.5 alpha ||W - Wbar||^2 - <W, lam>        dR/dW = alpha (W - Wbar) - lam

After each optimiser step, with the new ``W``::

    lam  <- lam - alpha (W - Wbar)
    Wbar <- (1 - beta) Wbar + beta W - (beta / alpha) lam

All updates are fused multi-tensor (``torch._foreach_*``) ops over every tensor at once (the
trainer passes a single flat buffer holding all weights, so each is one kernel). Between trace
updates the anchor ``A = alpha Wbar + lam = alpha W - dR/dW`` is constant and kept, so the
regulariser's gradient ``alpha W - A`` costs one fused multiply-add per step.

The compiled update (:mod:`~fptt_edge.training.compiled`) carries ``(A, lam)`` instead of
``(Wbar, lam)``: the same recurrence, with ``W`` the weights after the optimiser step::

    lam <- A - alpha W
    A   <- (1 - beta) (2 A - lam_old) + alpha (2 beta - 1) W

so its clipping norm reads the anchor alone, not ``Wbar`` and ``lam`` (one pass fewer over the
weights). ``Wbar = (A - lam) / alpha`` is rebuilt when it is next read.
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
            self._wbar = [p.detach().clone() for p in self.params]
            self.lam = [torch.zeros_like(p) for p in self.params]
            self._data = [p.detach() for p in self.params]  # storage-sharing views, made once (weights change in place)
            self._buf = [torch.empty_like(p) for p in self.params]
            self._anchor = [torch.empty_like(p) for p in self.params]  # alpha Wbar + lam
            self._wbar_stale = False  # the compiled update moved (A, lam) on; Wbar is rebuilt from them when read
            self._refresh_anchor()

    @property
    def wbar(self) -> list[torch.Tensor]:
        """The running averages ``Wbar`` (rebuilt as ``(A - lam) / alpha`` after compiled updates)."""
        if self._wbar_stale:
            with torch.no_grad():
                torch._foreach_copy_(self._wbar, self._anchor)
                torch._foreach_sub_(self._wbar, self.lam)
                torch._foreach_div_(self._wbar, self.alpha)
            self._wbar_stale = False
        return self._wbar

    def anchor_and_lam(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, lam)`` of a single flat buffer, for the compiled update to change in place (then :meth:`moved_on`)."""
        if len(self.params) != 1:
            raise ValueError("the compiled update needs the traces of one flat buffer")
        return self._anchor[0], self.lam[0]

    def moved_on(self) -> None:
        """The compiled update changed ``(A, lam)`` in place: ``Wbar`` is out of date until it is next read."""
        self._wbar_stale = True

    @torch.no_grad()
    def _refresh_anchor(self) -> None:
        torch._foreach_copy_(self._anchor, self.lam)
        torch._foreach_add_(self._anchor, self.wbar, alpha=self.alpha)

    def regularizer(self) -> torch.Tensor:
        """``R(W)`` as a differentiable scalar (for logging and checks; training adds its gradient directly)."""
        terms = [0.5 * self.alpha * (p - wb).pow(2).sum() - (p * lam).sum() for p, wb, lam in zip(self.params, self.wbar, self.lam)]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def add_regularizer_grad(self) -> None:
        """``grad += alpha (W - Wbar) - lam = alpha W - (alpha Wbar + lam)`` for every tensor (grads must exist)."""
        grads = [p.grad for p in self.params]
        torch._foreach_add_(grads, self._data, alpha=self.alpha)
        torch._foreach_sub_(grads, self._anchor)

    @torch.no_grad()
    def update(self) -> None:
        """Trace update after an optimiser step."""
        params, wbar = self._data, self.wbar
        diff = self._buf
        torch._foreach_copy_(diff, params)
        torch._foreach_sub_(diff, wbar)  # W - Wbar
        torch._foreach_add_(self.lam, diff, alpha=-self.alpha)
        torch._foreach_lerp_(wbar, params, self.beta)  # (1 - beta) Wbar + beta W
        torch._foreach_add_(wbar, self.lam, alpha=-self.beta / self.alpha)
        self._refresh_anchor()

    @torch.no_grad()
    def copy_wbar_to_params(self) -> None:
        """``W <- Wbar`` (the reference does this before evaluation; ``lam`` is kept)."""
        torch._foreach_copy_([p.data for p in self.params], self.wbar)

    def state_dict(self) -> dict:
        """``Wbar`` and ``lam``, and the anchor ``A`` as it is (rebuilding it from the other two would round differently
        from the compiled update's own, and a resumed run would no longer repeat the uninterrupted one bit for bit)."""
        return {"alpha": self.alpha, "beta": self.beta, "wbar": [t.clone() for t in self.wbar], "lam": [t.clone() for t in self.lam],
                "anchor": [t.clone() for t in self._anchor]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """A saved state; one without ``anchor`` (older checkpoints) gets ``A = alpha Wbar + lam``."""
        alpha, beta = float(state["alpha"]), float(state["beta"])
        names = ("wbar", "lam", "anchor") if "anchor" in state else ("wbar", "lam")
        mine = {"wbar": self._wbar, "lam": self.lam, "anchor": self._anchor}
        if any(len(state[n]) != len(self.params) for n in names):
            raise ValueError("FPTT trace state does not match the model's parameters")
        pairs = [(dst, src) for n in names for dst, src in zip(mine[n], state[n])]
        if any(dst.shape != src.shape for dst, src in pairs):  # checked before anything is overwritten
            raise ValueError("FPTT trace shape mismatch")
        for dst, src in pairs:
            dst.copy_(src)
        self._wbar_stale = False
        self.alpha, self.beta = alpha, beta
        if "anchor" not in state:
            self._refresh_anchor()

    def tensors(self) -> list[torch.Tensor]:
        """Every trace tensor (``Wbar``, ``lam``, the anchor), e.g. for a finiteness check."""
        return [*self.wbar, *self.lam, *self._anchor]
