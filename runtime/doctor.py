"""``fptt-edge doctor``: what this machine has for the GPU backends, and what each one still needs.

GPU, CUDA driver and runtime, cuda-python, TensorRT (version, whether fptt-edge supports it, a
builder, DLA cores), ONNX Runtime (packages, the providers a session really gets: ONNX Runtime
lists the CUDA and TensorRT providers whenever onnxruntime-gpu is installed, and falls back to
the CPU when their libraries fail to load), and a Jetson's L4T/JetPack release. Never raises,
never imports torch; each probe that fails says why.
"""
from __future__ import annotations

import importlib.metadata as md
import platform
import re
import sys
from pathlib import Path

from .errors import BackendUnavailable

JETSON_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"  # NVIDIA's Jetson AI Lab wheels for JetPack 6 (CUDA 12.6)
L4T_TO_JETPACK = {32: "4", 35: "5", 36: "6", 38: "7"}
PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python", "cuda-bindings", "safetensors", "numba")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def jetson(root: Path = Path("/")) -> dict | None:
    """L4T release, JetPack generation and board model of a Jetson (None elsewhere)."""
    release = root / "etc" / "nv_tegra_release"
    model_file = root / "proc" / "device-tree" / "model"
    if not release.is_file():
        return None
    text = release.read_text(errors="replace")
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    l4t = f"{m.group(1)}.{m.group(2)}" if m else None
    try:
        model = model_file.read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        model = None
    return {"l4t": l4t, "jetpack": L4T_TO_JETPACK.get(int(m.group(1))) if m else None, "model": model}


def _cuda() -> dict:
    from .cuda import CudaError, check, cuda_version, cudart, device_info

    out: dict = {"cuda_python": None, "driver_cuda": None, "gpu": None, "error": None}
    try:
        rt = cudart()
    except BackendUnavailable as exc:
        out["error"] = str(exc)
        return out
    out["cuda_python"] = _version("cuda-bindings") or _version("cuda-python") or "installed"
    try:
        out["driver_cuda"] = cuda_version(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion"))
        out["gpu"] = device_info()
    except (BackendUnavailable, CudaError) as exc:
        out["error"] = str(exc)
    bindings = out["cuda_python"].split(".")[0] if out["cuda_python"] else ""
    driver = out["driver_cuda"]
    if bindings.isdigit() and int(bindings) >= 13 and driver and int(driver.split(".")[0]) < 13:
        out["error"] = (f"cuda-python {out['cuda_python']} needs a CUDA 13 driver (R580+); this driver is CUDA {driver}: "
                        "pip install 'cuda-python>=12.6,<13'")
    if driver is None and out["error"] is None:
        out["error"] = "no NVIDIA driver"
    return out


def _tensorrt() -> dict:
    out: dict = {"version": None, "supported": False, "builder": False, "dla_cores": 0, "error": None}
    try:
        import tensorrt as trt
    except ImportError as exc:
        out["error"] = f"not importable ({exc})"
        return out
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        out["error"] = f"import failed: {exc}"
        return out
    out["version"] = str(trt.__version__)
    from .trt_build import SUPPORTED_TENSORRT, dla_supported, version_tuple

    major = version_tuple(out["version"])[0]
    out["supported"] = major in SUPPORTED_TENSORRT
    if not out["supported"]:
        out["error"] = (f"TensorRT {out['version']} is not supported (10.x and 11.x are)"
                        + ("; JetPack 5: use --backend ort-trt" if major < 10 else "; pip install 'tensorrt>=10,<12'"))
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (RuntimeError, TypeError) as exc:
        builder, out["error"] = None, out["error"] or f"cannot create a builder (no usable GPU?): {exc}"
    if builder is not None:
        out["builder"] = True
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        out["dla_cores"] = cores if dla_supported(out["version"]) else 0
        if cores and not dla_supported(out["version"]):
            out["dla_note"] = f"TensorRT {out['version']} has no DLA support (11.0/11.1); DLA needs TensorRT 10.x or 11.2+"
    return out


def _probe_provider(ort, provider: str) -> tuple[bool, str]:
    """Whether a session on a one-node model really gets ``provider`` (not a silent CPU fall-back)."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        return False, "not probed (needs the onnx package)"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=[provider, "CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types
        return False, f"session failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
    got = sess.get_providers()
    return (provider in got), ("works" if provider in got else f"fell back to {got} (its libraries failed to load)")


def _onnxruntime(probe: bool) -> dict:
    out: dict = {"version": None, "available": [], "works": {}, "error": None}
    try:
        import onnxruntime as ort
    except ImportError as exc:
        out["error"] = f"not importable ({exc})"
        return out
    out["version"] = ort.__version__
    out["available"] = list(ort.get_available_providers())
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider in out["available"]:
            out["works"][provider] = _probe_provider(ort, provider) if probe else (None, "not probed")
    return out


def diagnose(root: Path = Path("/"), probe: bool = True) -> dict:
    """Everything ``doctor`` reports, as a dict (``root``: where /etc and /proc are; tests pass a fake one)."""
    board = jetson(root)
    packages = {p: _version(p) for p in PACKAGES}
    cuda, trt, ort = _cuda(), _tensorrt(), _onnxruntime(probe)
    problems: list[str] = []
    if packages["onnxruntime"] and packages["onnxruntime-gpu"]:
        problems.append("onnxruntime and onnxruntime-gpu are both installed and overwrite each other: "
                        "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them")
    if board and board["jetpack"] and sys.version_info[:2] != (3, 10) and board["jetpack"] == "6":
        problems.append(f"JetPack 6 ships TensorRT for its system Python 3.10; this is Python {platform.python_version()}: "
                        "use a venv made with /usr/bin/python3 -m venv --system-site-packages")
    gpu_ok = cuda["gpu"] is not None and cuda["error"] is None
    works = {p: bool(ok) for p, (ok, _) in ort["works"].items()}

    def ort_gpu_fix(provider: str) -> str:
        if provider not in ort["available"]:
            return (f"onnxruntime-gpu from NVIDIA's Jetson index: pip install onnxruntime-gpu --index-url {JETSON_INDEX} (PyPI has no "
                    "aarch64 onnxruntime-gpu)" if board else "pip install 'fptt-edge[ort-gpu]' (and uninstall onnxruntime)")
        return f"{provider} is listed but {ort['works'][provider][1]}: install the CUDA/cuDNN{'/TensorRT' if 'Tensorrt' in provider else ''} " \
               "libraries this onnxruntime-gpu was built for"

    trt_fix = ("TensorRT comes with JetPack: sudo apt install python3-libnvinfer, and a venv with --system-site-packages"
               if board else "pip install 'fptt-edge[gpu]'")
    backends = {
        "ort": {"ok": ort["version"] is not None, "needs": None if ort["version"] else "pip install 'fptt-edge[runtime]'"},
        "ort-cuda": {"ok": works.get("CUDAExecutionProvider", False),
                     "needs": None if works.get("CUDAExecutionProvider") else ort_gpu_fix("CUDAExecutionProvider")},
        "ort-trt": {"ok": works.get("TensorrtExecutionProvider", False),
                    "needs": None if works.get("TensorrtExecutionProvider") else ort_gpu_fix("TensorrtExecutionProvider")},
    }
    trt_ok = trt["supported"] and trt["builder"] and gpu_ok
    needs = None
    if not trt["version"]:
        needs = trt_fix
    elif not trt["supported"] or not trt["builder"]:
        needs = trt["error"]
    elif not gpu_ok:
        needs = cuda["error"] or "a CUDA GPU"
    backends["tensorrt"] = {"ok": trt_ok, "needs": needs}
    backends["build"] = {"ok": trt_ok, "needs": needs and f"{needs} (or run the MODEL.build.sh that `fptt-edge build` writes, on the device)"}
    dla_fix = trt.get("dla_note") or "a Jetson with DLA cores (AGX/NX Orin, Xavier) and TensorRT 10.x"
    backends["dla"] = {"ok": trt_ok and trt["dla_cores"] > 0, "needs": None if trt_ok and trt["dla_cores"] else dla_fix}
    # the event-driven conv front end's compiled scatter (run --sparse-input on a conv model); numpy is its fall-back
    backends["events-jit"] = {"ok": packages["numba"] is not None, "needs": None if packages["numba"] else "pip install 'fptt-edge[events]'"}
    return {"python": platform.python_version(), "machine": platform.machine(), "jetson": board, "packages": packages, "cuda": cuda,
            "tensorrt": trt, "onnxruntime": ort, "backends": backends, "problems": problems}


def format_report(r: dict) -> str:
    lines = [f"python {r['python']} on {r['machine']}"]
    j = r["jetson"]
    lines.append(f"jetson: {j['model'] or 'unknown board'}, L4T {j['l4t']}, JetPack {j['jetpack'] or '?'}" if j else "jetson: no")
    c = r["cuda"]
    gpu = c["gpu"]
    lines.append(f"gpu: {gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory_gb']} GB)" if gpu else "gpu: none found")
    lines.append(f"cuda: driver {c['driver_cuda'] or 'none'}, cuda-python {c['cuda_python'] or 'not installed'}"
                 + (f"  ({c['error']})" if c["error"] and c["cuda_python"] else ""))  # not installed: the error says only that
    t = r["tensorrt"]
    lines.append(f"tensorrt: {t['version'] or 'not installed'}" + (f", DLA cores {t['dla_cores']}" if t["builder"] else "")
                 + (f"  ({t['error']})" if t["error"] and t["version"] else ""))
    o = r["onnxruntime"]
    probed = ", ".join(f"{p}: {why}" for p, (_, why) in o["works"].items())
    lines.append(f"onnxruntime: {o['version'] or 'not installed'}" + (f", providers {o['available']}" if o["version"] else "")
                 + (f"; {probed}" if probed else ""))
    pk = r["packages"]
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    lines.append("backends:")
    for name, b in r["backends"].items():
        lines.append(f"  {name:10} {'ok' if b['ok'] else 'missing: ' + str(b['needs'])}")
    for p in r["problems"]:
        lines.append(f"problem: {p}")
    return "\n".join(lines)
