"""All trainable tensors of a model as views into one contiguous buffer, their grads into another.

FPTT updates the weights at every time step, so per-step optimiser, clipping and trace work
dominates on small recurrent models. With one flat buffer each of those is a single kernel
over all weights instead of a loop over tensors. Autograd accumulates into the existing
``.grad`` views in place, so backward fills the flat gradient directly.
"""
from __future__ import annotations

import torch


class FlatParameters:
    """``flat`` holds every parameter (``params[i]`` are views of it); ``flat.grad`` every gradient."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.flat = flat.requires_grad_(True)
        self.flat.grad = torch.zeros_like(flat)
        for p, data, grad in zip(self.params, self.views(self.flat.data), self.views(self.flat.grad)):
            p.data = data
            p.grad = grad

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat buffer, shaped like the parameters."""
        out, offset = [], 0
        for p in self.params:
            n = p.numel()
            out.append(buffer[offset : offset + n].view_as(p))
            offset += n
        return out

    def check_intact(self) -> None:
        """Raise if something replaced a parameter or gradient instead of updating it in place."""
        for p, data, grad in zip(self.params, self.views(self.flat.data), self.views(self.flat.grad)):
            if p.data_ptr() != data.data_ptr() or p.grad is None or p.grad.data_ptr() != grad.data_ptr():
                raise RuntimeError("a parameter or its gradient no longer lives in the flat buffer")
