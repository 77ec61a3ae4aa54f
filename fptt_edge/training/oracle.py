"""The reference's optional "oracle" term for FPTT: soft targets for a sequence's early updates.

At update point ``p`` (of ``P`` per sequence) with per-sequence loss weight ``w`` (``(t+1)/T``)
the loss gains, as in the authors' code (``train_mnist_snn_v2.py``)::

    (1 - w) * mean_{b, c}( -q[y_b, p, c] * log_softmax(m_p)[b, c] )

where ``q[y, p]`` is a table of soft targets: the softmax output at update point ``p`` of an
example of class ``y`` that the model got wrong there (the first such example of each batch, in
batch order, replaces the row; zeros until one is seen, so the term starts at zero). Early
updates, where the label cannot yet be read from the input, are pulled less towards the one-hot
label and more towards what the network says on hard examples; the last update (``w = 1``)
keeps the plain cross-entropy. The table is read before the step's outputs update it.

BPTT can take the same term (``--oracle`` with the weighted per-step loss) for a like-for-like
comparison: its one loss over the sequence then adds ``mean_t (1 - w_t) mean_{b,c}(-q[y_b, t, c]
log_softmax(m_t)[b, c])``, with every row read before the batch's outputs update the table, which
is what FPTT sees too (row ``t`` is read and then updated at step ``t`` only).

The table is part of the trainer's state (saved in resume checkpoints).
"""
from __future__ import annotations

import torch


class OracleTargets:
    """The ``[classes, parts, classes]`` soft-target table and the term it adds to the loss."""

    def __init__(self, classes: int):
        self.classes = int(classes)
        self.table: torch.Tensor | None = None  # [C, P, C], made at the first batch (P is known then)

    def _table(self, parts: int, like: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            self.table = torch.zeros(self.classes, parts, self.classes, dtype=torch.float32, device=like.device)
        elif self.table.device != like.device:  # loaded from a checkpoint (on the CPU) for a run on another device
            self.table = self.table.to(like.device)
        if self.table.shape[1] != parts:
            raise ValueError(f"the oracle table holds {self.table.shape[1]} update points per sequence, "
                             f"this batch has {parts} (sequences of another length)")
        return self.table

    def targets(self, y: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        """``q[y_b, part]`` for the batch: ``[B, C]`` (a copy)."""
        return self._table(parts, y)[y, part]

    @staticmethod
    def early_weights(w: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
        """The term's weights ``1 - w``, 0 where a sequence has ended (``alive`` False)."""
        return 1.0 - w if alive is None else torch.where(alive, 1.0 - w, torch.zeros_like(w))

    @staticmethod
    def term(logits: torch.Tensor, q: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``sum_b weight_b * sum_c(-q[b, c] * log_softmax(logits)[b, c]) / (B * C)``; ``weight`` is ``1 - w`` per sequence (0 where it ended)."""
        logp = torch.log_softmax(logits, dim=1)
        return (weight * (-(q * logp).sum(1))).sum() / (logits.shape[0] * logits.shape[1])

    def _rows(self, logits: torch.Tensor, y: torch.Tensor, wrong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class and step, the softmax of the first sequence (in batch order) marked ``wrong``, and whether there is one:
        ``logits`` ``[B, T, C]``, ``wrong`` ``[B, T]`` -> rows ``[C, T, C]``, found ``[C, T]``. No host syncs (no boolean indexing)."""
        batch, steps = wrong.shape
        candidate = torch.where(wrong, torch.arange(batch, device=y.device).unsqueeze(1), torch.full_like(wrong, batch, dtype=torch.long))
        first = torch.full((self.classes, steps), batch, dtype=torch.long, device=y.device)
        first.scatter_reduce_(0, y.unsqueeze(1).expand(batch, steps), candidate, reduce="amin")
        rows = torch.softmax(logits[first.clamp(max=batch - 1), torch.arange(steps, device=y.device)].float(), dim=2)
        return rows, first < batch

    @torch.no_grad()
    def observe(self, logits: torch.Tensor, y: torch.Tensor, part: int, parts: int, alive: torch.Tensor | None = None) -> None:
        """Row ``q[c, part]`` := softmax of the first sequence of class ``c`` (in batch order) misclassified at this update
        (not at the last update point, whose target is the label: its weight ``1 - w`` is 0). With variable lengths any
        sequence still running at this update may fill the row (also one at its own last step): a row holds outputs at
        update point ``part``, read by the sequences still running there."""
        table = self._table(parts, y)
        if part >= parts - 1:
            return
        wrong = logits.argmax(1) != y
        if alive is not None:
            wrong &= alive
        rows, found = self._rows(logits.unsqueeze(1), y, wrong.unsqueeze(1))
        table[:, part] = torch.where(found, rows[:, 0], table[:, part])

    def sequence_targets(self, y: torch.Tensor, steps: int) -> torch.Tensor:
        """``q[y_b, t]`` for every step: ``[B, T, C]`` (a copy)."""
        return self._table(steps, y)[y]

    @torch.no_grad()
    def observe_sequence(self, logits: torch.Tensor, y: torch.Tensor, alive: torch.Tensor | None = None) -> None:
        """:meth:`observe` for every step of a whole sequence at once: ``logits`` ``[B, T, C]``, ``alive`` ``[B, T]``."""
        table = self._table(logits.shape[1], y)
        wrong = logits.argmax(2) != y.unsqueeze(1)  # [B, T]
        if alive is not None:
            wrong &= alive
        wrong[:, -1] = False  # the last step's row is never filled (its weight 1 - w is 0)
        rows, found = self._rows(logits, y, wrong)
        table.copy_(torch.where(found.unsqueeze(2), rows, table))

    def state_dict(self) -> dict:
        return {"classes": self.classes, "table": None if self.table is None else self.table.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "table" not in state:
            raise ValueError("oracle state without a table entry")
        table = state["table"]
        if int(state.get("classes", -1)) != self.classes:
            raise ValueError(f"oracle table for {state.get('classes')} classes, the model has {self.classes}")
        if table is not None:
            if (not isinstance(table, torch.Tensor) or not table.is_floating_point() or table.ndim != 3
                    or table.shape[0] != self.classes or table.shape[2] != self.classes):
                raise ValueError(f"oracle table must be [{self.classes}, parts, {self.classes}]")
            if not torch.isfinite(table).all() or bool((table < 0).any()) or bool((table > 1).any()):
                raise ValueError("oracle table must hold probabilities (finite, in [0, 1])")
            table = table.to(torch.float32).clone()
        self.table = table
