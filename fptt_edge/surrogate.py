"""Spike function: exact Heaviside forward, multi-Gaussian surrogate backward.

    psi(x) = gamma * [(1+h) N(x; 0, sigma) - h N(x; sigma, k sigma) - h N(x; -sigma, k sigma)]

with sigma = 0.3, h = 0.15, k = 6, gamma = 0.5 (psi(0) ~= 0.732, integral gamma (1-h)).
"""
from __future__ import annotations

import math

import torch

SIGMA = 0.3
HEIGHT = 0.15
SCALE = 6.0
GAMMA = 0.5


def gaussian(x: torch.Tensor, mu: float, sd: float) -> torch.Tensor:
    """Normal pdf N(x; mu, sd)."""
    return torch.exp(-((x - mu) ** 2) / (2.0 * sd * sd)) / (math.sqrt(2.0 * math.pi) * sd)


def multi_gaussian(x: torch.Tensor) -> torch.Tensor:
    """The surrogate derivative psi(x) of the Heaviside."""
    return GAMMA * (
        (1.0 + HEIGHT) * gaussian(x, 0.0, SIGMA)
        - HEIGHT * gaussian(x, SIGMA, SCALE * SIGMA)
        - HEIGHT * gaussian(x, -SIGMA, SCALE * SIGMA)
    )


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """H(x) = (x > 0): a compare and a cast, nothing else (what the exported graph holds)."""
    return (x > 0).to(x.dtype)


class MultiGaussianSpike(torch.autograd.Function):
    """Heaviside forward, psi(x) * grad backward."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return heaviside(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: D102 - separate, so make_fx can trace the train step
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad * multi_gaussian(x)


def spike(x: torch.Tensor, surrogate: bool) -> torch.Tensor:
    """Spikes of ``x = v - theta``: surrogate-differentiable when training, plain Heaviside otherwise."""
    return MultiGaussianSpike.apply(x) if surrogate else heaviside(x)
