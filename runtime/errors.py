"""Errors of the device runtime (no torch here)."""


class RuntimeInputError(ValueError):
    """Input the session refuses (shape, dtype, NaN, unknown stream or state); the state is unchanged."""


class BackendUnavailable(RuntimeError):
    """A backend whose libraries or hardware are missing on this machine, with what is missing."""


class EventFileError(ValueError):
    """An event file that cannot be read: corrupt, truncated or not the claimed format."""
