"""On-device streaming inference (``fptt_edge.runtime``): numpy + onnxruntime, TensorRT when present.

Nothing here imports torch.
"""
from .errors import BackendUnavailable, EventFileError, RuntimeInputError
from .session import BACKENDS, StreamSession, open_session

__all__ = ["BACKENDS", "BackendUnavailable", "EventFileError", "RuntimeInputError", "StreamSession", "open_session"]
