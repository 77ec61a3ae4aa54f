"""Errors of the device runtime (no torch here)."""
from ..errors import FpttEdgeError


class RuntimeInputError(FpttEdgeError, ValueError):
    """Input the session refuses (shape, dtype, NaN, unknown stream or state); the state is unchanged."""


class BackendUnavailable(FpttEdgeError, RuntimeError):
    """A backend whose libraries or hardware are missing on this machine, with what is missing."""


class StepFailed(FpttEdgeError, RuntimeError):
    """A backend that could not run a step (e.g. a graph that does not compute what its contract declares); the state is unchanged."""


class EventFileError(FpttEdgeError, ValueError):
    """An event file that cannot be read: corrupt, truncated or not the claimed format."""


class AdaptationError(FpttEdgeError, ValueError):
    """On-device adaptation refused: a bad label or segment, a train graph that does not pair with
    the model, or an adapted-weights file that is corrupt, hostile or for another model."""
