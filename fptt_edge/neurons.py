"""Pure single-step functions of the LTC spiking neuron and the leaky readout.

One LTC step, given the input current ``I_t`` and the gate pre-activations
(``z_m = W_m[I_t; u_{t-1}] + c_m``, ``z_a = W_a[I_t; b_{t-1}] + c_a``)::

    alpha_t = sigmoid(a_m z_m)              # membrane update rate ("tauM")
    rho_t   = sigmoid(a_a z_a)              # adaptation decay ("tauAdp")
    b_t     = rho_t b_{t-1} + (1 - rho_t) s_{t-1}
    theta_t = b_j0 + beta_adapt b_t
    v_t     = u_{t-1} + alpha_t (I_t - u_{t-1})
    s_t     = H(v_t - theta_t)
    u_t     = (1 - s_t) v_t                 # hard reset

Readout (leaky integrator, no spikes)::

    gam_t = sigmoid(a_o (W_om [o_t; m_{t-1}] + c_om))
    m_t   = (1 - gam_t) m_{t-1} + gam_t o_t
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .surrogate import spike


class LTCState(NamedTuple):
    """State of one LTC layer: membrane ``u``, last spikes ``s``, adaptation trace ``b``."""

    u: torch.Tensor
    s: torch.Tensor
    b: torch.Tensor


class ReadoutState(NamedTuple):
    """State of the leaky-integrator readout: ``m`` (the logits)."""

    m: torch.Tensor


def ltc_update(
    state: LTCState,
    current: torch.Tensor,
    z_m: torch.Tensor,
    z_a: torch.Tensor,
    a_m: torch.Tensor,
    a_a: torch.Tensor,
    b_j0: float,
    beta_adapt: float,
    surrogate: bool,
) -> tuple[LTCState, torch.Tensor]:
    """One LTC neuron step (equations in the module docstring).

    Returns the new state and the margin ``v_t - theta_t`` (the distance to firing, ``s_t = H(margin)``).
    """
    v, theta, b = ltc_membrane(state, current, z_m, z_a, a_m, a_a, b_j0, beta_adapt)
    margin = v - theta
    s = spike(margin, surrogate)
    u = (1.0 - s) * v
    return LTCState(u, s, b), margin


def ltc_membrane(state: LTCState, current, z_m, z_a, a_m, a_a, b_j0: float, beta_adapt: float):
    """The pre-spike quantities of a step: membrane ``v_t``, threshold ``theta_t`` and trace ``b_t``."""
    alpha = torch.sigmoid(a_m * z_m)
    rho = torch.sigmoid(a_a * z_a)
    b = rho * state.b + (1.0 - rho) * state.s
    theta = b_j0 + beta_adapt * b
    v = state.u + alpha * (current - state.u)
    return v, theta, b


def readout_update(state: ReadoutState, o: torch.Tensor, z_o: torch.Tensor, a_o: torch.Tensor) -> ReadoutState:
    """One leaky-integrator readout step, ``z_o = W_om [o_t; m_{t-1}] + c_om``."""
    gam = torch.sigmoid(a_o * z_o)
    return ReadoutState((1.0 - gam) * state.m + gam * o)
