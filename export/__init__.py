"""Checkpoint -> stateful single-step ONNX graph, checked (parity, FP16 emulation, device lint).

``export_checkpoint("model.pt", device="orin-nano-8gb")`` is what ``fptt-edge export`` runs.
The names below load on first use, so torch-free submodules (``fptt_edge.export.lint``) import
without torch.
"""
from __future__ import annotations

import importlib

_LAZY = {"ExportError": ".errors", "export_checkpoint": ".pipeline"}

__all__ = ["ExportError", "export_checkpoint"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
