"""Errors of the export step."""
from ..errors import FpttEdgeError


class ExportError(FpttEdgeError, RuntimeError):
    """The export cannot produce a trustworthy graph, with the reason."""
