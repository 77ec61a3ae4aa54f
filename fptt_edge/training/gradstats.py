"""Per-epoch statistics of the gradient norm each update clips: is the gradient exploding?

Four running figures in one tensor on the training device, updated in place by every update
(inside the compiled FPTT graph too, so nothing synchronises per update)::

    [updates, clipped (norm > clip), sum of ln(norm), largest norm]

They merge by addition (and max), so a run resumed mid-epoch saves and restores them exactly.
The norm is the one the clip sees: of the loss gradient (FPTT: plus the regulariser's).
"""
from __future__ import annotations

import math

import torch

SIZE = 4
MAX_COUNT = 2**53  # the float64 counts are exact up to here (a saved 1e300 overflowed: an OverflowError at the epoch's end)


def new_stats(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(SIZE, dtype=torch.float64, device=device)  # float64: counts exact to 2**53, the log sum without drift


def record(stats: torch.Tensor, norm: torch.Tensor, clip: float) -> None:
    """Add one update's pre-clip gradient norm to ``stats`` (in place; traceable)."""
    norm = norm.to(stats.dtype)
    stats.copy_(torch.stack((stats[0] + 1.0, stats[1] + (norm > clip).to(stats.dtype),
                             stats[2] + torch.log(norm.clamp(min=1e-30)), torch.maximum(stats[3], norm))))


def summary(stats: torch.Tensor) -> dict:
    """``{"updates", "clipped", "geo_mean", "max"}``: the share of updates the clip scaled down, the geometric mean and
    the largest pre-clip norm (``None`` where not finite: a gradient that overflowed)."""
    n, clipped, log_sum, largest = (float(v) for v in stats.detach().cpu())
    finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON has no Inf or NaN
    geo = finite(math.exp(log_sum / n)) if n and math.isfinite(log_sum) and log_sum / n < 700 else None
    return {"updates": int(n), "clipped": clipped / n if n else 0.0, "geo_mean": geo, "max": finite(largest)}


def from_saved(values, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Saved figures back as ``stats``, ``None`` unless four numbers with whole, consistent counts (the sum and the
    largest norm may be Inf or NaN: an exploding gradient)."""
    if not (isinstance(values, (list, tuple)) and len(values) == SIZE and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                             for v in values)):
        return None
    n, clipped = values[0], values[1]
    if not (math.isfinite(n) and math.isfinite(clipped) and n == int(n) and clipped == int(clipped) and 0 <= clipped <= n <= MAX_COUNT):
        return None
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
