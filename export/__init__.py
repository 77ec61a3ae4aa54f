"""Checkpoint -> stateful single-step ONNX graph, checked (parity, FP16 emulation, device lint).

``export_checkpoint("model.pt", device="orin-nano-8gb")`` is what ``fptt-edge export`` runs.
"""
from .errors import ExportError
from .pipeline import export_checkpoint

__all__ = ["ExportError", "export_checkpoint"]
