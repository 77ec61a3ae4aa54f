"""A fake ``cuda.bindings.runtime`` (cuda-python 12.6+/13 calling convention: every call returns
``(cudaError_t, *values)``). Device memory is numpy; host pointers are real addresses (read and
written with ctypes, as the CUDA runtime would). Work on a stream runs at once, unless the stream
is capturing: then it is recorded into the graph, and a graph launch replays it. What real CUDA
refuses during a capture (synchronous copies, synchronising the capturing stream) invalidates
the capture here too. ``live()`` counts what was created and not destroyed."""
from __future__ import annotations

import ctypes
import enum
import types

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - the real name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureImplicit = 906


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class Handle:
    """A stream, graph or graph-exec handle: an opaque object with ``__int__`` like cuda-python's."""

    def __init__(self, kind: str, value: int):
        self.kind, self.value = kind, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.kind} {self.value:#x}>"


class FakeCudaRuntime(types.ModuleType):
    """The module object itself (``sys.modules['cuda.bindings.runtime']``)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self, driver: int = 12060, runtime: int = 12090, devices: list[dict] | None = None):
        super().__init__("cuda.bindings.runtime")
        self.driver, self.runtime_version = driver, runtime
        self.devices = [{"name": b"Fake Orin (nvgpu)", "major": 8, "minor": 7, "totalGlobalMem": 8 << 30, "integrated": 1}] if devices is None else devices
        self.mem: dict[int, np.ndarray] = {}
        self._next = 0x7000_0000_0000
        self.streams: dict[int, dict] = {}
        self.graphs: dict[int, list] = {}
        self.execs: dict[int, list] = {}
        self.calls: list[str] = []
        self.fail: dict[str, cudaError_t] = {}  # call name -> error returned (once)
        self.launches = 0

    # -- bookkeeping ---------------------------------------------------------------------------

    def _err(self, name: str) -> cudaError_t | None:
        self.calls.append(name)
        if not self.devices and name not in ("cudaDriverGetVersion", "cudaRuntimeGetVersion", "cudaGetErrorName"):
            return cudaError_t.cudaErrorNoDevice
        return self.fail.pop(name, None)

    def live(self) -> dict[str, int]:
        return {"allocations": len(self.mem), "streams": len(self.streams), "graphs": len(self.graphs), "graph_execs": len(self.execs)}

    def _capturing(self) -> list[dict]:
        return [s for s in self.streams.values() if s["capture"] is not None]

    def _invalidate_captures(self) -> None:
        for s in self._capturing():
            s["invalid"] = True

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The device bytes at ``ptr`` (a uint8 view into one allocation)."""
        ptr = int(ptr)
        for base, arr in self.mem.items():
            if base <= ptr < base + arr.size:
                off = ptr - base
                if off + nbytes > arr.size:
                    raise IndexError(f"device access of {nbytes} bytes at {ptr:#x} overruns its allocation")
                return arr[off:off + nbytes]
        raise IndexError(f"{ptr:#x} is not device memory")

    def array(self, ptr: int, shape, dtype=np.float32) -> np.ndarray:
        """A typed view of device memory (what a kernel would read or write)."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.view(ptr, n).view(dtype).reshape(shape)

    def submit(self, stream, work, what: str) -> cudaError_t:
        """Run ``work`` on ``stream`` now, or record it when the stream is capturing."""
        s = self.streams.get(int(stream)) if stream is not None and int(stream) != 0 else None
        if stream is not None and int(stream) != 0 and s is None:
            return cudaError_t.cudaErrorInvalidResourceHandle
        if s is not None and s["capture"] is not None:
            s["capture"].append((what, work))
        else:
            work()
        return cudaError_t.cudaSuccess

    # -- device, versions ----------------------------------------------------------------------

    def cudaDriverGetVersion(self):
        return (self._err("cudaDriverGetVersion") or cudaError_t.cudaSuccess, self.driver)

    def cudaRuntimeGetVersion(self):
        return (self._err("cudaRuntimeGetVersion") or cudaError_t.cudaSuccess, self.runtime_version)

    def cudaGetDeviceCount(self):
        if self.driver < self.runtime_version // 1000 * 1000:  # e.g. cuda-python 13 on a CUDA 12 driver
            return (cudaError_t.cudaErrorInsufficientDriver, 0)
        err = self._err("cudaGetDeviceCount")
        return (err, 0) if err else (cudaError_t.cudaSuccess, len(self.devices))

    def cudaGetDeviceProperties(self, device: int):
        err = self._err("cudaGetDeviceProperties")
        if err or device >= len(self.devices):
            return (err or cudaError_t.cudaErrorInvalidValue, None)
        return (cudaError_t.cudaSuccess, types.SimpleNamespace(**self.devices[device]))

    def cudaGetErrorName(self, err):
        return (cudaError_t.cudaSuccess, cudaError_t(int(err)).name.encode())

    # -- memory --------------------------------------------------------------------------------

    def cudaMalloc(self, size: int):
        err = self._err("cudaMalloc")
        if err:
            return (err, None)
        base = self._next
        self._next += (int(size) + 0xFFF) & ~0xFFF or 0x1000
        self.mem[base] = np.full(max(int(size), 1), 0xCD, np.uint8)  # garbage, as fresh device memory is
        return (cudaError_t.cudaSuccess, base)

    def cudaFree(self, ptr):
        err = self._err("cudaFree")
        if err:
            return (err,)
        if self._capturing():
            self._invalidate_captures()
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        if self.mem.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t.cudaSuccess,)

    def _copy(self, dst, src, count: int, kind) -> None:
        dst, src, count = int(dst), int(src), int(count)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.view(dst, count)[:] = np.frombuffer(ctypes.string_at(src, count), np.uint8)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            data = self.view(src, count)
            ctypes.memmove(dst, data.ctypes.data, count)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToDevice:
            self.view(dst, count)[:] = self.view(src, count).copy()
        else:
            raise ValueError(kind)

    def cudaMemcpy(self, dst, src, count, kind):
        err = self._err("cudaMemcpy")
        if err:
            return (err,)
        if self._capturing():  # a synchronous copy during a capture: refused, the capture is invalidated
            self._invalidate_captures()
            return (cudaError_t.cudaErrorStreamCaptureImplicit,)
        try:
            self._copy(dst, src, count, kind)
        except IndexError:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        err = self._err("cudaMemcpyAsync")
        if err:
            return (err,)
        try:  # validate the addresses now, as the driver does
            if kind != cudaMemcpyKind.cudaMemcpyHostToDevice:
                self.view(src, count)
            if kind != cudaMemcpyKind.cudaMemcpyDeviceToHost:
                self.view(dst, count)
        except IndexError:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (self.submit(stream, lambda: self._copy(dst, src, count, kind), "memcpy"),)

    # -- streams and graphs --------------------------------------------------------------------

    def cudaStreamCreate(self):
        err = self._err("cudaStreamCreate")
        if err:
            return (err, None)
        h = Handle("cudaStream_t", self._next)
        self._next += 0x10
        self.streams[int(h)] = {"capture": None, "invalid": False, "mode": None}
        return (cudaError_t.cudaSuccess, h)

    def cudaStreamDestroy(self, stream):
        err = self._err("cudaStreamDestroy")
        if err:
            return (err,)
        if self.streams.pop(int(stream), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        err = self._err("cudaStreamSynchronize")
        if err:
            return (err,)
        s = self.streams.get(int(stream))
        if s is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if s["capture"] is not None:
            s["invalid"] = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        err = self._err("cudaStreamBeginCapture")
        if err:
            return (err,)
        if not isinstance(mode, cudaStreamCaptureMode):
            raise TypeError("Argument 'mode' has incorrect type (expected cudaStreamCaptureMode)")
        s = self.streams.get(int(stream))
        if s is None or s["capture"] is not None:
            return (cudaError_t.cudaErrorInvalidValue,)
        s.update(capture=[], invalid=False, mode=mode)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        err = self._err("cudaStreamEndCapture")
        s = self.streams.get(int(stream))
        if s is None or s["capture"] is None:
            return (err or cudaError_t.cudaErrorInvalidValue, None)
        work, invalid = s["capture"], s["invalid"]
        s.update(capture=None, invalid=False, mode=None)
        if err:
            return (err, None)
        if invalid:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        h = Handle("cudaGraph_t", self._next)
        self._next += 0x10
        self.graphs[int(h)] = list(work)
        return (cudaError_t.cudaSuccess, h)

    def cudaGraphInstantiate(self, graph, flags):  # both positional, as in cuda-python 12.x and 13.x
        err = self._err("cudaGraphInstantiate")
        if err:
            return (err, None)
        work = self.graphs.get(int(graph))
        if work is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle, None)
        h = Handle("cudaGraphExec_t", self._next)
        self._next += 0x10
        self.execs[int(h)] = list(work)  # the executable keeps its own copy: the graph may be destroyed
        return (cudaError_t.cudaSuccess, h)

    def cudaGraphLaunch(self, graph_exec, stream):
        err = self._err("cudaGraphLaunch")
        if err:
            return (err,)
        work = self.execs.get(int(graph_exec))
        if work is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.launches += 1

        def replay():
            for _, w in work:
                w()

        return (self.submit(stream, replay, "graph"),)

    def cudaGraphDestroy(self, graph):
        err = self._err("cudaGraphDestroy")
        if err:
            return (err,)
        if self.graphs.pop(int(graph), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        err = self._err("cudaGraphExecDestroy")
        if err:
            return (err,)
        if self.execs.pop(int(graph_exec), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)
