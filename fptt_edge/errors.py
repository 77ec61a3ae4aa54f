"""The one base of every user-facing error (bad input, file or option); no torch here.

Each module raises its own subclass (``CheckpointError``, ``ContractError``, ``DataError``,
``ExportError``, ``TrainingError``, ``RuntimeInputError``, ...); the CLI turns any
:class:`FpttEdgeError` into one line and exit status 2. Any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations


class FpttEdgeError(Exception):
    """A user's input, file or option that fptt-edge refuses, with the reason (one line)."""
