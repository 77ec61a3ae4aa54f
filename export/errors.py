"""Errors of the export step."""


class ExportError(RuntimeError):
    """The export cannot produce a trustworthy graph, with the reason."""
