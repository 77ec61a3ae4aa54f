"""Thin checked wrappers over the CUDA runtime API from cuda-python (``cuda.bindings.runtime``)."""
from __future__ import annotations

import numpy as np

from .errors import BackendUnavailable


def cudart():
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as rt  # older cuda-python
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed (pip install 'fptt-edge[gpu]')") from None
    return rt


def check(result):
    """cuda-python returns ``(err, *values)``; raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class DeviceBuffer:
    """A device allocation for one float32 tensor."""

    def __init__(self, shape: tuple[int, ...]):
        self.rt = cudart()
        self.shape, self.nbytes = tuple(shape), int(np.prod(shape)) * 4
        self.ptr = check(self.rt.cudaMalloc(self.nbytes))

    def upload(self, host: np.ndarray, stream=None, offset: int = 0) -> None:
        host = np.ascontiguousarray(host, dtype=np.float32)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(self.rt.cudaMemcpy(int(self.ptr) + offset, host.ctypes.data, host.nbytes, kind))
        else:
            check(self.rt.cudaMemcpyAsync(int(self.ptr) + offset, host.ctypes.data, host.nbytes, kind, stream))

    def download(self, host: np.ndarray | None = None, stream=None) -> np.ndarray:
        host = np.empty(self.shape, np.float32) if host is None else host
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(self.rt.cudaMemcpy(host.ctypes.data, self.ptr, self.nbytes, kind))
        else:
            check(self.rt.cudaMemcpyAsync(host.ctypes.data, self.ptr, self.nbytes, kind, stream))
        return host

    def free(self) -> None:
        if self.ptr is not None:
            self.rt.cudaFree(self.ptr)
            self.ptr = None
