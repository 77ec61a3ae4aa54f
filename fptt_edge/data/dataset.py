"""An in-memory labelled sequence data set."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import FpttEdgeError
from ..seeding import derived_seed


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

    def take(self, n: int | None) -> SequenceDataset:
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        lengths = None if self.lengths is None else self.lengths[:n]
        return SequenceDataset(self.x[:n], self.y[:n], self.class_names, self.input_spec, lengths)

    def subset(self, idx: torch.Tensor) -> SequenceDataset:
        """The samples at ``idx`` (a copy), with the same classes and input spec."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        lengths = None if self.lengths is None else self.lengths[idx]
        return SequenceDataset(self.x[idx], self.y[idx], self.class_names, dict(self.input_spec), lengths)


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, held_out)`` sorted indices: ``round(fraction * n_c)`` samples of each class ``c``
    held out (at least one of a class with two or more samples, never all of them), drawn by a
    generator seeded with ``seed`` alone, so the same data and seed always give the same split."""
    if not 0 <= fraction < 1:
        raise DataError(f"the validation fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(derived_seed(seed, 7_919, 17))
    held: list[torch.Tensor] = []
    if fraction > 0:
        for c in torch.unique(y).tolist():
            idx = torch.nonzero(y == c).flatten()
            k = int(round(fraction * len(idx)))
            k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
            held.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    out = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.int64)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[out] = False
    return torch.nonzero(mask).flatten(), out


def split_validation(ds: SequenceDataset, fraction: float, seed: int) -> tuple[SequenceDataset, SequenceDataset | None]:
    """``(train, validation)``: a stratified ``fraction`` of ``ds`` held out for model selection
    (:func:`stratified_split`); ``(ds, None)`` when ``fraction`` is 0."""
    if fraction == 0:
        return ds, None
    keep, held = stratified_split(ds.y, fraction, seed)
    if len(held) == 0:
        return ds, None
    train, val = ds.subset(keep), ds.subset(held)
    train.input_spec["validation"] = val.input_spec["validation"] = {"split": "stratified", "fraction": fraction, "seed": int(seed),
                                                                       "held_out": len(held), "of": len(ds)}
    return train, val
