"""Seeds derived from the user's ``--seed`` for the run's separate random streams."""
from __future__ import annotations

SEED_SPACE = 1 << 64  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def derived_seed(seed: int, scale: int, offset: int) -> int:
    """``seed * scale + offset`` wrapped into the 64 bits a generator takes: the same value for every seed small
    enough not to wrap (so runs keep their streams), and a valid one for any ``--seed`` up to ``2**63 - 1``."""
    return (int(seed) * scale + offset) % SEED_SPACE
