"""Thin modules around the pure LTC step: dense recurrent, convolutional, readout.

Each module's ``drive`` computes the affine part (input current and gate pre-activations);
the shared ``forward(x, state) -> (out, new_state)`` feeds it to
:func:`fptt_edge.neurons.ltc_update` (or :func:`~fptt_edge.neurons.readout_update`): one step.
Training mode uses the surrogate spike; eval mode a plain Heaviside.

Precision policy (FP16 emulation), ``None`` leaving tensors as they are:
``affine_dtype`` is the dtype the affine maps see (their input and the state they read; the
weights are the caller's, who casts a copy of the net), ``state_dtype`` the dtype of the neuron
dynamics (gate slopes, sigmoid, adaptation, threshold, reset) and of the new state.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .neurons import LTCState, ReadoutState, ltc_update, readout_update


def _slope() -> nn.Parameter:
    return nn.Parameter(torch.ones(()))


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None else t.to(dtype)


def _cast_state(state, dtype: torch.dtype | None):
    return state if dtype is None else type(state)(*(t.to(dtype) for t in state))


def _initial_ltc_state(shape, b_j0, initial_u, device, generator, dtype=torch.float32) -> LTCState:
    """``u_0`` is drawn from ``U[0,1)`` only for ``initial_u == "uniform"`` with a training generator."""
    if initial_u == "uniform" and generator is not None:
        u = torch.rand(shape, generator=generator, dtype=dtype, device="cpu").to(device)
    else:
        u = torch.zeros(shape, dtype=dtype, device=device)
    return LTCState(u, torch.zeros(shape, dtype=dtype, device=device), torch.full(shape, b_j0, dtype=dtype, device=device))


class _LTCLayer(nn.Module):
    """The step shared by the LTC layers: the subclass's ``drive``, then :func:`ltc_update`."""

    b_j0: float
    beta_adapt: float
    a_m: nn.Parameter
    a_a: nn.Parameter

    def drive(self, x: torch.Tensor, state: LTCState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: LTCState, *, affine_dtype: torch.dtype | None = None,
                state_dtype: torch.dtype | None = None, margins: list | None = None) -> tuple[torch.Tensor, LTCState]:
        """``(s_t, state_t)``; appends ``v_t - theta_t`` to ``margins`` when given one."""
        current, z_m, z_a = self.drive(_cast(x, affine_dtype), _cast_state(state, affine_dtype))
        up = lambda t: _cast(t, state_dtype)
        new, margin = ltc_update(state, up(current), up(z_m), up(z_a), up(self.a_m), up(self.a_a), self.b_j0, self.beta_adapt,
                                 self.training)
        if margins is not None:
            margins.append(margin)
        return new.s, new


class DenseLTC(_LTCLayer):
    """Dense recurrent LTC layer: ``I_t = W_x x_t + c_x + W_r s_{t-1} + c_r``; gates Linear(2H -> H)."""

    def __init__(self, in_features: int, hidden: int, b_j0: float, beta_adapt: float):
        super().__init__()
        self.hidden, self.b_j0, self.beta_adapt = hidden, b_j0, beta_adapt
        self.fc_x = nn.Linear(in_features, hidden)
        self.fc_r = nn.Linear(hidden, hidden)
        self.gate_m = nn.Linear(2 * hidden, hidden)
        self.gate_a = nn.Linear(2 * hidden, hidden)
        self.a_m = _slope()
        self.a_a = _slope()
        for lin in (self.fc_x, self.gate_m, self.gate_a):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.orthogonal_(self.fc_r.weight)
        nn.init.zeros_(self.fc_r.bias)

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.hidden)

    def drive(self, x: torch.Tensor, state: LTCState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The affine part of a step: input current ``I_t`` and gate pre-activations ``z_m``, ``z_a``."""
        current = self.fc_x(x.flatten(1)) + self.fc_r(state.s)
        return current, self.gate_m(torch.cat((current, state.u), dim=1)), self.gate_a(torch.cat((current, state.b), dim=1))


class ConvLTC(_LTCLayer):
    """Convolutional LTC layer: ``I_t = MaxPool2(BN(Conv(x_t)))``; gates ``Conv(I_t + u)``, ``Conv(I_t + b)``.

    No recurrent weights: recurrence goes through ``u`` and ``b`` only. The batch norm is an
    ordinary (not per-time-step) one, foldable into the conv at export.
    """

    def __init__(self, in_channels, out_channels, kernel, in_hw, batch_norm, b_j0, beta_adapt):
        super().__init__()
        self.out_channels, self.b_j0, self.beta_adapt = out_channels, b_j0, beta_adapt
        self.out_hw = (in_hw[0] // 2, in_hw[1] // 2)
        pad = kernel // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=pad)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.gate_m = nn.Conv2d(out_channels, out_channels, kernel, padding=pad)
        self.gate_a = nn.Conv2d(out_channels, out_channels, kernel, padding=pad)
        self.a_m = _slope()
        self.a_a = _slope()
        for conv in (self.conv, self.gate_m, self.gate_a):
            nn.init.xavier_normal_(conv.weight)
            nn.init.zeros_(conv.bias)

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.out_channels, *self.out_hw)

    def drive(self, x: torch.Tensor, state: LTCState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The affine part of a step: input current ``I_t`` and gate pre-activations ``z_m``, ``z_a``."""
        current = F.max_pool2d(self.bn(self.conv(x)), 2)
        return current, self.gate_m(current + state.u), self.gate_a(current + state.b)


class LeakyReadout(nn.Module):
    """Leaky-integrator readout: ``o_t = W_o s_t + c_o``; gate Linear(2C -> C)."""

    def __init__(self, in_features: int, classes: int):
        super().__init__()
        self.classes = classes
        self.fc = nn.Linear(in_features, classes)
        self.gate = nn.Linear(2 * classes, classes)
        self.a_o = _slope()
        for lin in (self.fc, self.gate):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def drive(self, s: torch.Tensor, state: ReadoutState) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine part of a step: ``o_t`` and the gate pre-activation ``z_o``."""
        o = self.fc(s.flatten(1))
        return o, self.gate(torch.cat((o, state.m), dim=1))

    def forward(self, s: torch.Tensor, state: ReadoutState, *, affine_dtype: torch.dtype | None = None,
                state_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ReadoutState]:
        o, z_o = self.drive(_cast(s, affine_dtype), _cast_state(state, affine_dtype))
        up = lambda t: _cast(t, state_dtype)
        new = readout_update(state, up(o), up(z_o), up(self.a_o))
        return new.m, new
