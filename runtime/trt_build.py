"""Build a TensorRT engine for a device profile, or, where TensorRT cannot run, the exact
``trtexec`` command and a build script to run on the device.

FP16 builds keep the neuron dynamics (threshold, reset, state path) in FP32 with per-layer
precision constraints (``--precisionConstraints=obey --layerPrecisions``); everything else may
use FP16. The engine's contract (the ONNX metadata plus build facts) is saved beside it as
``MODEL.engine.json``, since an engine file carries no metadata.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..contract import StepContract, read_contract
from ..io import write_bytes_atomic, write_json_atomic
from ..precision_rules import fp32_nodes
from .errors import BackendUnavailable


@dataclass
class BuildPlan:
    onnx: Path
    engine: Path
    precision: str
    refit: bool
    timing_cache: Path
    fp32_layers: list[str]
    shapes: dict[str, tuple] | None  # dynamic models: min/opt/max per input
    dla: bool = False


def plan_build(onnx_path, precision: str = "fp32", refit: bool = False, streams: int | None = None, dla: bool = False) -> tuple[BuildPlan, StepContract]:
    onnx_path = Path(onnx_path)
    contract = read_contract(onnx_path)
    if precision not in ("fp32", "fp16"):
        raise ValueError("precision must be fp32 or fp16")
    fp32_layers = []
    if precision == "fp16":
        import onnx

        fp32_layers = fp32_nodes(onnx.load(str(onnx_path), load_external_data=False))
    shapes = None
    if not isinstance(contract.batch, int):
        n = streams or 8
        shapes = {name: ((1, *dims), (n, *dims), (max(n, 64), *dims)) for name, dims in
                  [(contract.input.name, contract.input.frame_shape)] + [(s.name, tuple(int(d) for d in s.shape[1:])) for s in contract.states]}
    engine = onnx_path.with_suffix(".engine")
    return BuildPlan(onnx_path, engine, precision, refit, onnx_path.with_suffix(".timing.cache"), fp32_layers, shapes, dla), contract


def trtexec_command(plan: BuildPlan) -> list[str]:
    """The trtexec invocation equivalent to :func:`build_engine`."""
    cmd = ["trtexec", f"--onnx={plan.onnx.name}", f"--saveEngine={plan.engine.name}", f"--timingCacheFile={plan.timing_cache.name}"]
    if plan.shapes:
        fmt = lambda k: ",".join(f"{name}:{'x'.join(map(str, s[k]))}" for name, s in plan.shapes.items())  # noqa: E731
        cmd += [f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    if plan.precision == "fp16":
        cmd += ["--fp16", "--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in plan.fp32_layers)]
    if plan.refit:
        cmd.append("--refit")
    if plan.dla:
        cmd += ["--useDLACore=0", "--allowGPUFallback"]
    return cmd


def write_build_script(plan: BuildPlan, profile, contract: StepContract) -> Path:
    """``MODEL.build.sh``: the trtexec build plus the engine contract, to run on the device."""
    script = plan.onnx.with_suffix(".build.sh")
    contract_json = json.dumps(engine_contract(contract, plan, profile, trt_version="(built by trtexec)"), indent=2, sort_keys=True)
    text = f"""#!/usr/bin/env bash
# Build {plan.engine.name} on the target: {profile.module} (JetPack {profile.jetpack}, TensorRT {profile.tensorrt}).
# An engine is tied to the TensorRT version and GPU it was built with: run this on the device.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
"$TRTEXEC" {' '.join(shlex.quote(c) for c in trtexec_command(plan)[1:])}
cat > {shlex.quote(plan.engine.name + '.json')} <<'CONTRACT'
{contract_json}
CONTRACT
echo "built {plan.engine.name}; run it with: fptt-edge run {plan.engine.name} --backend tensorrt --events FILE"
"""
    write_bytes_atomic(script, text.encode())
    script.chmod(0o755)
    return script


def engine_contract(contract: StepContract, plan: BuildPlan, profile, trt_version: str) -> dict:
    return {"metadata": contract.to_metadata(), "build": {
        "onnx": plan.onnx.name, "onnx_sha256": hashlib.sha256(plan.onnx.read_bytes()).hexdigest(), "precision": plan.precision,
        "refit": plan.refit, "fp32_layers": len(plan.fp32_layers), "device_profile": profile.name if profile else None,
        "tensorrt": trt_version}}


def load_engine_contract(engine_path) -> StepContract:
    path = Path(str(engine_path) + ".json")
    if not path.is_file():
        raise BackendUnavailable(f"{path}: missing; an engine's contract is written beside it by `fptt-edge build` (or pass --contract MODEL.onnx)")
    return StepContract.from_metadata(json.loads(path.read_text())["metadata"], str(path))


def build_engine(plan: BuildPlan, contract: StepContract, profile) -> Path:
    """Build and save the engine with the TensorRT Python API (TensorRT 10; 8.6 where the calls exist)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed") from None
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:
        raise BackendUnavailable(f"TensorRT cannot create a builder here (no usable GPU?): {exc}") from None
    if builder is None:
        raise BackendUnavailable("TensorRT cannot create a builder here (no usable GPU)")
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(plan.onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {plan.onnx}: {errors}")
    config = builder.create_builder_config()
    cache_bytes = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if plan.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep = set(plan.fp32_layers)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in keep or any(layer.name.startswith(n) for n in keep):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    if plan.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if plan.dla:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = 0
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if plan.shapes:
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in plan.shapes.items():
            opt.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    write_bytes_atomic(plan.engine, bytes(serialized))
    write_bytes_atomic(plan.timing_cache, bytes(config.get_timing_cache().serialize()))
    write_json_atomic(Path(str(plan.engine) + ".json"), engine_contract(contract, plan, profile, trt.__version__))
    return plan.engine


def tensorrt_status() -> str | None:
    """None when TensorRT can build here, else the reason it cannot."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (RuntimeError, TypeError) as exc:
        return f"TensorRT {trt.__version__} is installed but cannot create a builder (no usable GPU): {exc}"
    return None if builder is not None else f"TensorRT {trt.__version__} cannot create a builder (no usable GPU)"
