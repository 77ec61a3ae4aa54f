"""Initial time constants of the LTC gates (applied once, to a fresh model, before training).

The reference initialises every gate bias to zero: membrane rate ``alpha = sigmoid(z_m) ~ 0.5``
(a time constant of about two steps), adaptation decay ``rho ~ 0.5`` and readout rate
``gam ~ 0.5``, whatever the sequence length. ``spread`` (``--tau-init spread``) gives each neuron
its own time constants, spread over the sequence's time scale:

- membrane: ``alpha = 1 / (1 + tau_m)`` with ``tau_m`` log-uniform in ``[1, max(2, T / 4)]`` steps;
- adaptation: ``rho = exp(-1 / tau_a)`` with ``tau_a`` log-uniform in ``[2, max(3, T / 2)]`` steps;
- readout: ``gam = min(0.5, 8 / T)`` (the logits integrate evidence over about ``T / 8`` steps).

Only the biases change (the gates stay input-dependent and trainable). On a synthetic one-channel
accelerometer set (48 steps, 4 classes, standardised + level-crossing input) FPTT's test accuracy
after 10 epochs rose from 0.73 to 0.83 (mean of 3 seeds); see README "Training that ends well".
"""
from __future__ import annotations

import math

import torch

from ..model import LTCNetwork
from ..seeding import derived_seed

TAU_INITS = ("default", "spread")


@torch.no_grad()
def init_time_constants(model: LTCNetwork, steps: int, mode: str, seed: int = 0) -> None:
    """Set the gate biases of a fresh ``model`` for sequences of ``steps`` steps (``mode`` in :data:`TAU_INITS`)."""
    if mode not in TAU_INITS:
        raise ValueError(f"tau_init must be one of {TAU_INITS}")
    if mode == "default":
        return
    g = torch.Generator().manual_seed(derived_seed(seed, 7_919, 3))

    def log_uniform(n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.exp(math.log(lo) + torch.rand(n, generator=g, dtype=torch.float64) * (math.log(hi) - math.log(lo)))

    for layer in model.ltc_layers:
        n = layer.gate_m.bias.numel()
        tau_m = log_uniform(n, 1.0, max(2.0, steps / 4))
        layer.gate_m.bias.copy_(torch.logit(1.0 / (1.0 + tau_m)))
        tau_a = log_uniform(n, 2.0, max(3.0, steps / 2))
        layer.gate_a.bias.copy_(torch.logit(torch.exp(-1.0 / tau_a)))
    gam = min(0.5, 8.0 / max(steps, 1))
    model.readout.gate.bias.fill_(math.log(gam / (1.0 - gam)))
