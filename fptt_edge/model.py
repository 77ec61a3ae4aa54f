"""The LTC spiking network: a stack of LTC layers and a leaky readout.

``step(x_t, state) -> (logits_t, state')`` is one time step over explicit state, the only
one: training, evaluation, the exported graph, FP16 emulation (``affine_dtype``/``state_dtype``)
and the rounding-tie checker (``margins``) all call it. ``forward(xs, state)`` runs a sequence
``[B, T, ...]`` and returns per-step logits. The state is a :class:`NetState`;
:meth:`LTCNetwork.state_names` names its flat tensors ``l<i>.<var>`` / ``readout.m``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from .layers import ConvLTC, DenseLTC, LeakyReadout, _initial_ltc_state
from .neurons import LTCState, ReadoutState


class NetState(NamedTuple):
    """The network's state: one :class:`LTCState` per LTC layer and the readout's :class:`ReadoutState`."""

    layers: tuple[LTCState, ...]
    readout: ReadoutState

    def tensors(self) -> list[torch.Tensor]:
        """Flat, in :meth:`LTCNetwork.state_names` order."""
        return [t for st in (*self.layers, self.readout) for t in st]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> NetState:
        """The same structure with ``fn`` applied to every tensor."""
        return NetState(tuple(LTCState(*map(fn, st)) for st in self.layers), ReadoutState(*map(fn, self.readout)))


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

    @property
    def ltc_layers(self) -> list[DenseLTC | ConvLTC]:
        """The LTC layers, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return list(self.layers)  # type: ignore[arg-type]

    def state_names(self) -> list[str]:
        """Flat names of the state tensors, in :meth:`flatten_state` order."""
        names = [f"l{i}.{var}" for i in range(len(self.layers)) for var in LTCState._fields]
        return names + ["readout.m"]

    def state_shapes(self, batch: int) -> list[tuple[int, ...]]:
        shapes = [layer.state_shape(batch) for layer in self.ltc_layers for _ in LTCState._fields]
        return shapes + [(batch, self.config.num_classes)]

    def initial_state(self, batch: int, device=None, generator: torch.Generator | None = None) -> NetState:
        """``s_0 = 0``, ``b_0 = b_j0``, ``m_0 = 0``, ``u_0 = 0``.

        With ``initial_u == "uniform"`` and a ``generator`` (training only), ``u_0 ~ U[0,1)``;
        without a generator the state is the deterministic one evaluation and export use.
        """
        ref = next(self.parameters())
        device, dtype = device or ref.device, ref.dtype
        states = tuple(
            _initial_ltc_state(layer.state_shape(batch), self.config.b_j0, self.config.initial_u, device, generator, dtype)
            for layer in self.ltc_layers
        )
        return NetState(states, ReadoutState(torch.zeros(batch, self.config.num_classes, device=device, dtype=dtype)))

    def step(self, x: torch.Tensor, state: NetState, *, affine_dtype: torch.dtype | None = None,
             state_dtype: torch.dtype | None = None, margins: list | None = None) -> tuple[torch.Tensor, NetState]:
        """One time step: ``x`` is ``[B, *input_shape]``; ``h_0 = x``, ``(h_l, state_l) = layer_l(h_{l-1}, state_l)``,
        ``logits = m_t`` of the readout on ``h_L``.

        ``affine_dtype``/``state_dtype``: the precision policy of :mod:`fptt_edge.layers` (FP16
        emulation; ``None`` leaves every tensor as it is). ``margins``: a list that receives
        ``v_t - theta_t`` of each LTC layer (the rounding-tie checker's distance to firing).
        """
        h, layers = x, []
        for layer, st in zip(self.layers, state.layers, strict=True):
            h, st = layer(h, st, affine_dtype=affine_dtype, state_dtype=state_dtype, margins=margins)
            layers.append(st)
        logits, ro = self.readout(h, state.readout, affine_dtype=affine_dtype, state_dtype=state_dtype)
        return logits, NetState(tuple(layers), ro)

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
    """The state's tensors in :meth:`LTCNetwork.state_names` order."""
    return state.tensors()


def unflatten_state(model: LTCNetwork, tensors: list[torch.Tensor]) -> NetState:
    """Inverse of :func:`flatten_state` for ``model``."""
    n = len(LTCState._fields)
    layers = tuple(LTCState(*tensors[i * n : (i + 1) * n]) for i in range(len(model.layers)))
    return NetState(layers, ReadoutState(tensors[len(layers) * n]))


def detach_state(state: NetState) -> NetState:
    return state.map(torch.Tensor.detach)
