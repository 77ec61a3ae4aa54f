"""An in-memory labelled sequence data set."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import FpttEdgeError


class DataError(FpttEdgeError, ValueError):
    """Unusable input data, with the file and field it concerns."""


@dataclass
class SequenceDataset:
    """``x`` ``[N, T, *input_shape]``, ``y`` ``[N]`` int64, optional ``lengths`` ``[N]``.

    ``input_spec`` records how raw data became these steps (task, layout, binning,
    normalisation); it is saved in checkpoints and, later, in exported models.
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    input_spec: dict = field(default_factory=dict)
    lengths: torch.Tensor | None = None

    def __post_init__(self):
        if self.x.ndim < 3 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"x must be [N, T, ...] with N = len(y); got x {tuple(self.x.shape)}, y {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def steps(self) -> int:
        return int(self.x.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.x.shape[2:])

    def take(self, n: int | None) -> "SequenceDataset":
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        lengths = None if self.lengths is None else self.lengths[:n]
        return SequenceDataset(self.x[:n], self.y[:n], self.class_names, self.input_spec, lengths)
