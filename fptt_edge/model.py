"""The LTC spiking network: a stack of LTC layers and a leaky readout.

``step(x_t, state) -> (logits_t, state')`` is one time step over explicit state;
``forward(xs, state)`` runs a sequence ``[B, T, ...]`` and returns per-step logits.
The state is a tuple with one :class:`LTCState` per layer and a final :class:`ReadoutState`;
:func:`state_names` flattens it to ``l<i>.<var>`` / ``readout.m`` names.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .layers import ConvLTC, DenseLTC, LeakyReadout, _initial_ltc_state
from .neurons import LTCState, ReadoutState

NetState = tuple  # tuple[LTCState, ..., ReadoutState]


class LTCNetwork(nn.Module):
    """LTC-SNN built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        shape = config.input_shape
        for ch in config.conv_channels:
            layer = ConvLTC(shape[0], ch, config.conv_kernel, shape[1:], config.conv_batch_norm, config.b_j0, config.beta_adapt)
            layers.append(layer)
            shape = (ch, *layer.out_hw)
        features = math.prod(shape)
        for h in config.hidden:
            layers.append(DenseLTC(features, h, config.b_j0, config.beta_adapt))
            features = h
        self.layers = nn.ModuleList(layers)
        self.readout = LeakyReadout(features, config.num_classes)

    def state_names(self) -> list[str]:
        """Flat names of the state tensors, in :meth:`flatten_state` order."""
        names = [f"l{i}.{var}" for i in range(len(self.layers)) for var in LTCState._fields]
        return names + ["readout.m"]

    def state_shapes(self, batch: int) -> list[tuple[int, ...]]:
        shapes = [layer.state_shape(batch) for layer in self.layers for _ in LTCState._fields]
        return shapes + [(batch, self.config.num_classes)]

    def initial_state(self, batch: int, device=None, generator: torch.Generator | None = None) -> NetState:
        """``s_0 = 0``, ``b_0 = b_j0``, ``m_0 = 0``, ``u_0 = 0``.

        With ``initial_u == "uniform"`` and a ``generator`` (training only), ``u_0 ~ U[0,1)``;
        without a generator the state is the deterministic one evaluation and export use.
        """
        ref = next(self.parameters())
        device, dtype = device or ref.device, ref.dtype
        states = [
            _initial_ltc_state(layer.state_shape(batch), self.config.b_j0, self.config.initial_u, device, generator, dtype)
            for layer in self.layers
        ]
        return (*states, ReadoutState(torch.zeros(batch, self.config.num_classes, device=device, dtype=dtype)))

    def step(self, x: torch.Tensor, state: NetState) -> tuple[torch.Tensor, NetState]:
        """One time step: ``x`` is ``[B, *input_shape]``."""
        new_states = []
        h = x
        for layer, st in zip(self.layers, state[:-1]):
            h, st = layer(h, st)
            new_states.append(st)
        logits, ro = self.readout(h, state[-1])
        return logits, (*new_states, ro)

    def forward(self, xs: torch.Tensor, state: NetState | None = None) -> tuple[torch.Tensor, NetState]:
        """Run ``xs`` ``[B, T, *input_shape]``; returns logits ``[B, T, C]`` and the final state."""
        if state is None:
            state = self.initial_state(xs.shape[0], xs.device)
        out = []
        for t in range(xs.shape[1]):
            logits, state = self.step(xs[:, t], state)
            out.append(logits)
        return torch.stack(out, dim=1), state


def flatten_state(state: NetState) -> list[torch.Tensor]:
    return [t for st in state for t in st]


def unflatten_state(model: LTCNetwork, tensors: list[torch.Tensor]) -> NetState:
    n = len(LTCState._fields)
    layers = [LTCState(*tensors[i * n : (i + 1) * n]) for i in range(len(model.layers))]
    return (*layers, ReadoutState(tensors[-1]))


def detach_state(state: NetState) -> NetState:
    return tuple(type(st)(*(t.detach() for t in st)) for st in state)
