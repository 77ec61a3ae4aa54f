"""CPU stand-ins for ``tensorrt`` and ``cuda.bindings.runtime`` that record calls and simulate device
memory, streams, CUDA graphs, engines and refits, so the GPU code paths run (and fail as the real
libraries would) without a GPU. Install with :func:`install` (``monkeypatch`` puts them in
``sys.modules``)."""
from __future__ import annotations

import sys
import types

from .fake_cuda import FakeCudaRuntime
from .fake_tensorrt import make_tensorrt


def install(monkeypatch, trt_version: str = "10.3.0", cuda: FakeCudaRuntime | None = None, **knobs):
    """Put a fake ``cuda.bindings.runtime`` and a fake ``tensorrt`` (version ``trt_version``; ``None``:
    no TensorRT) into ``sys.modules``; returns ``(trt_module, cuda_runtime)``."""
    rt = cuda or FakeCudaRuntime()
    cuda_pkg = types.ModuleType("cuda")
    cuda_pkg.__path__ = []  # a package
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []
    bindings.runtime = rt
    cuda_pkg.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    trt = None
    if trt_version is not None:
        trt = make_tensorrt(trt_version, rt, **knobs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    else:
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    return trt, rt
