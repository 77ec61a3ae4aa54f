"""The module that is traced into ONNX: one step over flat, named state, batch norm folded."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers import ConvLTC
from ..model import LTCNetwork, flatten_state, unflatten_state


class StepGraph(nn.Module):
    """``forward(x, *state) -> (logits, *state_out)``, state in :meth:`LTCNetwork.state_names` order."""

    def __init__(self, net: LTCNetwork):
        super().__init__()
        self.net = net.eval()

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        logits, new = self.net.step(x, unflatten_state(self.net, list(state)))
        return (logits, *flatten_state(new))


def fold_batch_norm(net: LTCNetwork) -> tuple[LTCNetwork, dict[str, dict]]:
    """A copy of ``net`` with each conv layer's batch norm folded into its conv.

    ``W' = W * g``, ``c' = c * g + (beta - mu * g)`` with ``g = gamma / sqrt(var + eps)`` per
    output channel. Returns the copy and, per folded conv weight/bias, the per-channel
    ``scale`` (and ``shift`` for the bias) a later refit must apply to new weights.
    """
    folded = copy.deepcopy(net).eval()
    transforms: dict[str, dict] = {}
    for i, layer in enumerate(folded.layers):
        if not isinstance(layer, ConvLTC) or not isinstance(layer.bn, nn.BatchNorm2d):
            continue
        bn = layer.bn
        assert bn.running_var is not None and bn.running_mean is not None  # track_running_stats (the default)
        with torch.no_grad():
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * g
            layer.conv.weight.mul_(g.view(-1, 1, 1, 1))
            layer.conv.bias.copy_(layer.conv.bias * g + shift)
        layer.bn = nn.Identity()
        transforms[f"layers.{i}.conv.weight"] = {"transform": "bn_fold_weight", "scale": g.tolist()}
        transforms[f"layers.{i}.conv.bias"] = {"transform": "bn_fold_bias", "scale": g.tolist(), "shift": shift.tolist()}
    return folded, transforms
