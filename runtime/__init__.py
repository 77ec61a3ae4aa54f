"""On-device streaming inference (``fptt_edge.runtime``): numpy + onnxruntime, TensorRT when present.

Nothing here imports torch.
"""
from .errors import BackendUnavailable, EventFileError, RuntimeInputError, StepFailed
from .session import BACKENDS, StreamSession, open_session

__all__ = ["BACKENDS", "BackendUnavailable", "EventFileError", "RuntimeInputError", "StepFailed", "StreamSession", "open_session"]
