"""Check an ONNX graph against a device profile, on the CPU (TensorRT's parser needs a GPU).

Findings are ``error`` (the engine build would fail or be wrong), ``warning`` (it builds, but
not as you may expect) or ``info``. Checks: opset range, every op in the set the device's
TensorRT parses, INT64 tensors, static shapes, DLA fall-backs, the device's Python.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx

from ..devices import DeviceProfile
from ..devices.tensorrt_ops import DLA, DLA_INT8_ONLY, supported_ops

RUNTIME_MIN_PYTHON = (3, 10)


@dataclass
class Finding:
    level: str  # "error" | "warning" | "info"
    check: str
    message: str


@dataclass
class LintResult:
    device: str
    tensorrt: str
    findings: list[Finding]

    @property
    def verdict(self) -> str:
        levels = {f.level for f in self.findings}
        return "fail" if "error" in levels else "pass with warnings" if "warning" in levels else "pass"

    def to_dict(self) -> dict:
        return {"device": self.device, "tensorrt": self.tensorrt, "verdict": self.verdict, "findings": [asdict(f) for f in self.findings]}


def _int64_tensors(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    names = [i.name for i in g.initializer if i.data_type == onnx.TensorProto.INT64]
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            names.append(vi.name)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.INT64:
                    names.append(node.output[0])
    return sorted(set(names))


def _dynamic_dims(model: onnx.ModelProto) -> dict[str, list]:
    out = {}
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_param or "?" if not d.HasField("dim_value") else d.dim_value for d in dims]
    return out


def _lint_dla(model: onnx.ModelProto, profile: DeviceProfile, dynamic: dict, add) -> None:
    """What DLA (``build --dla``) would make of the graph: FP16/INT8 only, static shapes only, which ops fall back to the GPU."""
    trt_version = tuple(int(p) for p in profile.tensorrt.split(".")[:2])
    if trt_version in ((11, 0), (11, 1)):
        add("warning", "dla", f"TensorRT {profile.tensorrt} has no DLA support (none in 11.0/11.1): {profile.name}'s "
                              f"{profile.dla_cores} DLA core(s) cannot be used; build for the GPU")
        return
    ops = {n.op_type for n in model.graph.node}
    off = sorted(o for o in ops if o not in DLA and o not in DLA_INT8_ONLY)
    int8_only = sorted(ops & DLA_INT8_ONLY)
    add("info", "dla", f"{profile.name} has {profile.dla_cores} DLA core(s); DLA runs FP16 and INT8 only (build --dla --precision "
                       "fp16: an FP32 build would run nothing there) and static shapes only; the layers kept in FP32 run on the GPU")
    parts = []
    if int8_only:
        parts.append(f"{', '.join(int8_only)} runs on DLA in INT8 only (output cast at once): in an FP16 build the spike threshold "
                     "compare runs on the GPU")
    if off:
        parts.append(f"ops without DLA support fall back to the GPU: {', '.join(off)} (--allowGPUFallback)")
    if parts:
        add("warning", "dla", "; ".join(parts))
    if dynamic:
        add("warning", "dla", "DLA needs static shapes: with dynamic axes the graph cannot run on DLA (export with --batch N)")


def lint(model: onnx.ModelProto, profile: DeviceProfile) -> LintResult:
    findings: list[Finding] = []
    add = lambda level, check, msg: findings.append(Finding(level, check, msg))  # noqa: E731
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    trt = f"TensorRT {profile.tensorrt}"
    if opset is None or not profile.min_opset <= opset <= profile.max_opset:
        add("error", "opset", f"opset {opset}; {trt} on {profile.name} parses opsets {profile.min_opset}-{profile.max_opset} "
                              f"(re-export with --opset {profile.max_opset})")
    else:
        add("info", "opset", f"opset {opset} is within {profile.min_opset}-{profile.max_opset}")
    foreign = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        add("error", "ops", f"nodes from custom domains {foreign} need TensorRT plugins")
    ops = supported_ops(profile.tensorrt_major)
    bad = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type not in ops})
    if bad:
        add("error", "ops", f"ops {trt} does not parse: {', '.join(bad)}")
    else:
        add("info", "ops", f"all {len({n.op_type for n in model.graph.node})} op types are supported by {trt}")
    int64 = _int64_tensors(model)
    if int64:
        what = ("casts INT64 down to INT32 with a warning (values beyond INT32 clamp)" if profile.tensorrt_major < 9
                else "runs INT64 natively, but it is off the fast path")
        add("warning", "int64", f"INT64 tensors on the step path: {', '.join(int64[:8])}{' ...' if len(int64) > 8 else ''}; {trt} {what}")
    dynamic = _dynamic_dims(model)
    if dynamic:
        add("warning", "static-shapes", f"dynamic axes {dynamic}: the engine needs an optimisation profile (--minShapes/--optShapes/--maxShapes); "
                                        "export with --batch 1 (or N) for a static engine")
    if profile.dla_cores:
        _lint_dla(model, profile, dynamic, add)
    if profile.python_tuple < RUNTIME_MIN_PYTHON:
        add("warning", "python", f"JetPack {profile.jetpack} ships Python {profile.python}; the fptt-edge runtime needs >= "
                                 f"{'.'.join(map(str, RUNTIME_MIN_PYTHON))} (use trtexec or a newer Python there)")
    if profile.unconfirmed:
        add("info", "profile", f"profile fields not confirmed against vendor docs: {', '.join(profile.unconfirmed)}")
    return LintResult(profile.name, profile.tensorrt, findings)
