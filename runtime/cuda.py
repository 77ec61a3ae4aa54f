"""Thin checked wrappers over the CUDA runtime API from cuda-python (``cuda.bindings.runtime``).

cuda-python 12.6+ and 13.x expose the same calls there (each returns ``(err, *values)``); the
older ``cuda.cudart`` module (removed in 13) is used where it is all there is. cuda-python 13
needs a CUDA 13 driver (R580+): on a CUDA 12 system (JetPack 6, CUDA 12.6) install
``cuda-python>=12.6,<13``, which also runs on newer drivers.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BackendUnavailable

INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver
NO_DEVICE = 100  # cudaErrorNoDevice


def cudart():
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6 (cuda-bindings)
    except ImportError:
        try:
            from cuda import cudart as rt  # older cuda-python
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed (pip install 'cuda-python>=12.6,<13'; "
                                     "`fptt-edge doctor` says what this machine has)") from None
    return rt


def error_name(err) -> str:
    """``cudaErrorNoDevice (100)``: the name of a CUDA error code, and why where it is a common install problem."""
    name = getattr(err, "name", None) or str(err)
    try:
        code, text = cudart().cudaGetErrorName(err)
        if int(code) == 0 and text:
            name = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # noqa: BLE001 - only decoration of an error already being raised
        pass
    hint = {INSUFFICIENT_DRIVER: ": the NVIDIA driver is older than this cuda-python needs (cuda-python 13 needs R580+; "
                                 "pip install 'cuda-python>=12.6,<13')",
            NO_DEVICE: ": no CUDA GPU visible"}.get(int(err), "")
    return f"{name} ({int(err)}){hint}"


class CudaError(RuntimeError):
    """A CUDA runtime call that failed, with the call and the error's name."""

    def __init__(self, what: str, err):
        self.code = int(err)
        super().__init__(f"{what} failed: {error_name(err)}")


def check(result, what: str = "CUDA call"):
    """cuda-python returns ``(err, *values)``; raise :class:`CudaError` on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CudaError(what, err)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_info(device: int = 0) -> dict:
    """Name, compute capability and memory of GPU ``device``, with the driver and runtime CUDA
    versions; raises :class:`BackendUnavailable` (saying why) where there is none."""
    rt = cudart()
    driver = check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
    try:
        count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            raise BackendUnavailable("no CUDA GPU visible")
        props = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    except CudaError as exc:
        raise BackendUnavailable(f"no usable CUDA GPU: {exc} (driver CUDA {cuda_version(driver)})") from None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(int(props.totalGlobalMem) / 2**30, 1), "integrated": bool(getattr(props, "integrated", False)),
            "driver_cuda": cuda_version(driver), "runtime_cuda": cuda_version(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))}


def cuda_version(v) -> str | None:
    """12060 -> '12.6' (0: no driver)."""
    v = int(v or 0)
    return f"{v // 1000}.{v % 1000 // 10}" if v else None


class DeviceBuffer:
    """A device allocation for one float32 tensor."""

    def __init__(self, shape: tuple[int, ...]):
        self.rt = cudart()
        self.shape, self.nbytes = tuple(shape), int(np.prod(shape)) * 4
        self.ptr: Any = None
        self.ptr = check(self.rt.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})")

    def upload(self, host: np.ndarray, stream=None, offset: int = 0) -> None:
        host = np.ascontiguousarray(host, dtype=np.float32)
        if offset < 0 or offset + host.nbytes > self.nbytes:
            raise ValueError(f"upload of {host.nbytes} bytes at offset {offset} overruns a {self.nbytes}-byte buffer")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(self.rt.cudaMemcpy(int(self.ptr) + offset, host.ctypes.data, host.nbytes, kind), "cudaMemcpy (to the GPU)")
        else:
            check(self.rt.cudaMemcpyAsync(int(self.ptr) + offset, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync (to the GPU)")

    def download(self, host: np.ndarray | None = None, stream=None) -> np.ndarray:
        host = np.empty(self.shape, np.float32) if host is None else host
        if host.nbytes != self.nbytes or host.dtype != np.float32 or not host.flags.c_contiguous:
            raise ValueError(f"download target must be a contiguous float32 array of {self.nbytes} bytes")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(self.rt.cudaMemcpy(host.ctypes.data, int(self.ptr), self.nbytes, kind), "cudaMemcpy (from the GPU)")
        else:
            check(self.rt.cudaMemcpyAsync(host.ctypes.data, int(self.ptr), self.nbytes, kind, stream), "cudaMemcpyAsync (from the GPU)")
        return host

    def copy_from(self, other: DeviceBuffer, stream=None) -> None:
        """Device-to-device copy of a buffer of the same size."""
        if other.nbytes != self.nbytes:
            raise ValueError("device copy between buffers of different sizes")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        if stream is None:
            check(self.rt.cudaMemcpy(int(self.ptr), int(other.ptr), self.nbytes, kind), "cudaMemcpy (on the GPU)")
        else:
            check(self.rt.cudaMemcpyAsync(int(self.ptr), int(other.ptr), self.nbytes, kind, stream), "cudaMemcpyAsync (on the GPU)")

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.rt.cudaFree(ptr)
