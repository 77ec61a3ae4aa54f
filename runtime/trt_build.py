"""Build a TensorRT engine for a device profile, or, where TensorRT cannot run, the exact
``trtexec`` command and a build script to run on the device.

One plan (:class:`BuildPlan`), written for one TensorRT version (the device profile's for the
trtexec script, this machine's for a build here), drives both the Python build and the trtexec
command, so the two build the same engine:

* **FP32**: TF32 off (TensorRT enables it by default; ``BuilderFlag.TF32`` cleared,
  ``--noTF32``) unless asked for, so an FP32 engine matches PyTorch to ~1e-6, not ~1e-3.
* **FP16 on TensorRT 10**: ``--fp16`` with the neuron dynamics (threshold, reset, state path)
  kept in FP32 by per-layer constraints, precision and output types, on the layers of
  :func:`~fptt_edge.precision_rules.constrained_layers` (exact names), obeyed
  (``OBEY_PRECISION_CONSTRAINTS``).
* **FP16 on TensorRT 11**: there is no FP16 flag nor layer precision; networks are strongly
  typed, so the engine is built from the FP16 variant the export writes (``MODEL.fp16.onnx``,
  ``fptt-edge export --fp16-variant``), whose types already keep that path in FP32.
* **DLA** (``--dla``, TensorRT 10; 11.0/11.1 have none): FP16 only (DLA has no FP32, and
  trtexec's ``--useDLACore`` turns FP16 on anyway), static shapes only, constraints preferred
  (trtexec sets ``PREFER``, which cannot be combined with ``OBEY``) and the FP32 layers pinned
  to the GPU (``--layerDeviceTypes``); the rest falls back to the GPU where DLA cannot run it.

The engine's contract (the ONNX metadata plus build facts: precision, TF32, TensorRT version,
the GPU it was built on, the engine's SHA-256) is saved beside it as ``MODEL.engine.json``:
an engine file carries no metadata, and runs only with the TensorRT version and GPU it was
built with. Engine and contract are written as a pair (the old contract removed first, the
new one naming the engine's hash), so a failed build never leaves a mismatched pair.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..contract import StepContract, metadata_sha256, read_contract
from ..errors import FpttEdgeError
from ..io import file_sha256, write_bytes_atomic, write_json_atomic
from ..precision_rules import constrained_layers
from .errors import BackendUnavailable

SUPPORTED_TENSORRT = (10, 11)  # majors this build and the native backend support


class BuildError(FpttEdgeError, ValueError):
    """A build that cannot be planned as asked (precision, DLA, TensorRT version, missing FP16 graph), with the way out."""


def version_tuple(version: str) -> tuple[int, int]:
    parts = [int(p) for p in str(version).split(".")[:2] if p.isdigit()]
    if not parts:
        raise BuildError(f"unreadable TensorRT version {version!r}")
    return (parts[0], parts[1] if len(parts) > 1 else 0)


def dla_supported(version: str) -> bool:
    """TensorRT 11.0 and 11.1 have no DLA (NVIDIA: 'DLA support will be reintroduced in a later minor version')."""
    return version_tuple(version) not in ((11, 0), (11, 1))


@dataclass
class BuildPlan:
    onnx: Path  # the graph TensorRT parses (MODEL.fp16.onnx for FP16 on TensorRT 11)
    engine: Path
    precision: str
    refit: bool
    timing_cache: Path
    fp32_layers: list[str]  # layers constrained to FP32 (TensorRT 10 FP16 builds)
    shapes: dict[str, tuple] | None  # dynamic models: min/opt/max per input
    dla: bool = False
    tensorrt: str = "10.3"  # the TensorRT version the plan is written for
    tf32: bool = False
    model: Path | None = None  # the step model (MODEL.onnx): contract and reference
    notes: list[str] = field(default_factory=list)

    @property
    def trt_major(self) -> int:
        return version_tuple(self.tensorrt)[0]

    @property
    def strongly_typed(self) -> bool:
        return self.trt_major >= 11


def installed_tensorrt() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def plan_build(onnx_path, precision: str = "fp32", refit: bool = False, streams: int | None = None, dla: bool = False,
               tensorrt: str | None = None, tf32: bool = False) -> tuple[BuildPlan, StepContract]:
    """The build of ``onnx_path`` for TensorRT ``tensorrt`` (default: the one installed here, else
    10.3, JetPack 6's); refuses what that TensorRT cannot build as asked."""
    onnx_path = Path(onnx_path)
    tensorrt = tensorrt or installed_tensorrt() or "10.3"
    contract = read_contract(onnx_path)
    if precision not in ("fp32", "fp16"):
        raise BuildError("precision must be fp32 or fp16")
    major, minor = version_tuple(tensorrt)
    if major not in SUPPORTED_TENSORRT:
        raise BuildError(f"TensorRT {tensorrt}: fptt-edge builds and runs engines with TensorRT 10.x and 11.x only"
                         + ("; on JetPack 5 (TensorRT 8.x) run the ONNX model with --backend ort-trt or ort-cuda" if major < 10
                            else "; install tensorrt>=10,<12"))
    if dla:
        if not dla_supported(tensorrt):
            raise BuildError(f"TensorRT {major}.{minor} has no DLA support (none in 11.0/11.1); build for the GPU or use TensorRT 10.x")
        if precision != "fp16":
            raise BuildError("DLA runs FP16 and INT8 only: an FP32 --dla build would run every layer on the GPU (TensorRT API) "
                             "or silently build FP16 (trtexec --useDLACore); pass --precision fp16 --dla")
        if not isinstance(contract.batch, int):
            raise BuildError("DLA needs static shapes: export with --batch N (not --batch dynamic) for a DLA engine")
    source, fp32_layers, notes = onnx_path, [], []
    if precision == "fp16":
        if major >= 11:
            source = onnx_path.with_suffix(".fp16.onnx")
            if not source.is_file():
                raise BuildError(f"TensorRT {major} builds FP16 only from a strongly typed FP16 graph: {source.name} is missing; "
                                 "export with --fp16-variant (it keeps the neuron dynamics and state in FP32)")
            _check_fp16_pair(source, contract, onnx_path)
            notes.append(f"strongly typed: precision from {source.name}")
        else:
            import onnx

            fp32_layers = constrained_layers(onnx.load(str(onnx_path), load_external_data=False))
    shapes = None
    if not isinstance(contract.batch, int):
        n = streams or 8
        shapes = {name: ((1, *dims), (n, *dims), (max(n, 64), *dims)) for name, dims in
                  [(contract.input.name, contract.input.frame_shape)] + [(s.name, tuple(int(d) for d in s.shape[1:])) for s in contract.states]}
    plan = BuildPlan(source, onnx_path.with_suffix(".engine"), precision, refit, onnx_path.with_suffix(".timing.cache"), fp32_layers,
                     shapes, dla, tensorrt=str(tensorrt), tf32=tf32, model=onnx_path, notes=notes)
    _check_outputs(plan)
    return plan, contract


def _check_fp16_pair(source: Path, contract: StepContract, onnx_path: Path) -> None:
    """Refuse an FP16 variant that another export left (another checkpoint or contract than the model's)."""
    try:
        half = read_contract(source)
    except FpttEdgeError as exc:
        raise BuildError(f"{source.name} is not a readable FP16 variant ({exc}); export {onnx_path.name}'s checkpoint with --fp16-variant again") from None
    if half != contract:
        what = "checkpoint" if half.checkpoint_sha256 != contract.checkpoint_sha256 else "contract"
        raise BuildError(f"{source.name} is not the FP16 variant of {onnx_path.name} (another {what}: a stale file from an earlier export); "
                         "export the checkpoint with --fp16-variant again")


def build_outputs(plan: BuildPlan) -> list[Path]:
    """The files a build (here or by MODEL.build.sh) writes: engine, its contract, timing cache, build script."""
    model = plan.model or plan.onnx
    return [plan.engine, contract_path(plan.engine), plan.timing_cache, model.with_suffix(".build.sh")]


def _check_outputs(plan: BuildPlan) -> None:
    """Refuse a build whose outputs would overwrite the graph it reads (an input named X.engine, ...)."""
    inputs = {p.resolve() for p in (plan.onnx, plan.model) if p is not None}
    for out in build_outputs(plan):
        if out.resolve() in inputs:
            raise BuildError(f"{out}: the build would write over its input; name the model MODEL.onnx (the engine goes to MODEL.engine)")


def trtexec_command(plan: BuildPlan, save_as: str | None = None) -> list[str]:
    """The trtexec invocation equivalent to :func:`build_engine`, for the plan's TensorRT version."""
    cmd = ["trtexec", f"--onnx={plan.onnx.name}", f"--saveEngine={save_as or plan.engine.name}", f"--timingCacheFile={plan.timing_cache.name}"]
    if plan.shapes:
        fmt = lambda k: ",".join(f"{name}:{'x'.join(map(str, s[k]))}" for name, s in plan.shapes.items())  # noqa: E731
        cmd += [f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    if not plan.tf32:
        cmd.append("--noTF32")
    if plan.precision == "fp16" and not plan.strongly_typed:
        cmd += ["--fp16", f"--precisionConstraints={'prefer' if plan.dla else 'obey'}"]
        if plan.fp32_layers:
            cmd += ["--layerPrecisions=" + ",".join(f"{n}:fp32" for n in plan.fp32_layers),
                    "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in plan.fp32_layers)]
            if plan.dla:
                cmd.append("--layerDeviceTypes=" + ",".join(f"{n}:GPU" for n in plan.fp32_layers))
    if plan.refit:
        cmd.append("--refit")
    if plan.dla:
        cmd += ["--useDLACore=0", "--allowGPUFallback"]
    return cmd


def write_build_script(plan: BuildPlan, profile, contract: StepContract) -> Path:
    """``MODEL.build.sh``: the trtexec build plus the engine contract, to run on the device.

    It checks that the device's TensorRT is the profile's version (an engine runs only with the
    TensorRT it was built with; ``FORCE=1`` overrides), builds into a temporary file, then
    installs the engine and its contract (with the engine's SHA-256) as a pair."""
    script = build_outputs(plan)[-1]
    data = engine_contract(contract, plan, profile, trt_version="@TRT_VERSION@", built_on={"by": "trtexec", "device": "@DEVICE@"},
                           engine_sha256="@ENGINE_SHA256@")
    contract_json = json.dumps(data, indent=2, sort_keys=True)
    tmp_engine = plan.engine.name + ".partial"
    want = ".".join(map(str, version_tuple(profile.tensorrt)))
    q = shlex.quote
    mismatch = (f"this plan is for TensorRT {profile.tensorrt} ({profile.name}); this machine has TensorRT ", " (FORCE=1 to build anyway)")
    text = f"""#!/usr/bin/env bash
# Build {_comment(plan.engine.name)} on the target: {_comment(f"{profile.module} (JetPack {profile.jetpack}, TensorRT {profile.tensorrt})")}.
# An engine runs only with the TensorRT version and the GPU it was built with: run this on the device.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
TRT_VERSION="$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || echo unknown)"
DEVICE="$(tr -d '\\0' </proc/device-tree/model 2>/dev/null || echo unknown)"
case "$TRT_VERSION" in
  {want}|{want}.*) ;;
  *) if [ "${{FORCE:-0}}" != 1 ]; then
       echo {q(mismatch[0])}"$TRT_VERSION"{q(mismatch[1])} >&2
       exit 1
     fi ;;
esac
rm -f {q(tmp_engine)}
"$TRTEXEC" {' '.join(q(c) for c in trtexec_command(plan, save_as=tmp_engine)[1:])}
SHA="$(sha256sum {q(tmp_engine)} | cut -d' ' -f1)"
rm -f {q(plan.engine.name + '.json')}
mv {q(tmp_engine)} {q(plan.engine.name)}
sed -e "s|@ENGINE_SHA256@|$SHA|" -e "s|@TRT_VERSION@|$TRT_VERSION|" -e "s|@DEVICE@|$DEVICE|" > {q(plan.engine.name + '.json.partial')} <<'CONTRACT'
{contract_json}
CONTRACT
mv {q(plan.engine.name + '.json.partial')} {q(plan.engine.name + '.json')}
echo {q(f"built {plan.engine.name}; run it with: fptt-edge run {q(plan.engine.name)} --backend tensorrt --events FILE")}
"""
    write_bytes_atomic(script, text.encode())
    script.chmod(0o755)
    return script


def _comment(text: str) -> str:
    """``text`` for a shell comment line: control characters (a newline would end the comment) shown as ``?``."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def engine_contract(contract: StepContract, plan: BuildPlan, profile, trt_version: str, built_on: dict | None = None,
                    engine_sha256: str | None = None, applied_fp32_layers: list[str] | None = None) -> dict:
    model = plan.model or plan.onnx
    build = {
        "onnx": plan.onnx.name, "onnx_sha256": hashlib.sha256(plan.onnx.read_bytes()).hexdigest(),
        "model": model.name, "precision": plan.precision, "tf32": plan.tf32, "strongly_typed": plan.strongly_typed,
        "refit": plan.refit, "dla": plan.dla, "fp32_layers": len(plan.fp32_layers if applied_fp32_layers is None else applied_fp32_layers),
        "device_profile": profile.name if profile else None, "tensorrt": trt_version, "built_on": built_on or {},
        "portable": False,  # an engine runs only with the TensorRT version and GPU it was built with
    }
    if engine_sha256:
        build["engine_sha256"] = engine_sha256
    if plan.notes:
        build["notes"] = list(plan.notes)
    metadata = contract.to_metadata()
    build["metadata_sha256"] = metadata_sha256(metadata.items())  # the contract as built: an edited one is refused on load
    return {"metadata": metadata, "build": build}


def contract_path(engine_path) -> Path:
    return Path(str(engine_path) + ".json")


def read_engine_build(engine_path) -> dict:
    """The ``build`` facts of an engine's contract (``{}`` where there is none)."""
    path = contract_path(engine_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    build = data.get("build") if isinstance(data, dict) else None
    return build if isinstance(build, dict) else {}


def load_engine_contract(engine_path) -> StepContract:
    path = contract_path(engine_path)
    if not path.is_file():
        raise BackendUnavailable(f"{path}: missing; an engine's contract is written beside it by `fptt-edge build` (or pass --contract MODEL.onnx)")
    try:
        data = json.loads(path.read_text())
        metadata = data["metadata"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise BackendUnavailable(f"{path}: not a readable engine contract; rebuild with `fptt-edge build`") from None
    if not isinstance(metadata, dict):
        raise BackendUnavailable(f"{path}: not a readable engine contract (its metadata is not an object); rebuild with `fptt-edge build`")
    build = data.get("build") if isinstance(data.get("build"), dict) else {}
    want = build.get("engine_sha256")
    if want and Path(engine_path).is_file() and file_sha256(engine_path) != want:
        raise BackendUnavailable(f"{engine_path} and {path.name} are not a pair (the engine was rebuilt or replaced without its "
                                 "contract); rebuild with `fptt-edge build`")
    meta_sum = build.get("metadata_sha256")  # contracts written before it have none
    if meta_sum is not None and meta_sum != metadata_sha256(metadata.items()):
        raise BackendUnavailable(f"{path}: its metadata changed since the build (an edited contract: class names, input, state); "
                                 "rebuild with `fptt-edge build`")
    return StepContract.from_metadata(metadata, str(path))


def write_engine_pair(engine_path: Path, engine: bytes, contract: dict) -> None:
    """The engine and its contract (naming the engine's SHA-256), as a pair: the old contract goes
    first, so an interrupted write leaves an engine without a contract, never a mismatched pair."""
    contract = {**contract, "build": {**contract["build"], "engine_sha256": hashlib.sha256(engine).hexdigest()}}
    contract_path(engine_path).unlink(missing_ok=True)
    write_bytes_atomic(engine_path, engine)
    write_json_atomic(contract_path(engine_path), contract)


def import_tensorrt_for_build():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed") from None
    major = version_tuple(trt.__version__)[0]
    if major not in SUPPORTED_TENSORRT:
        raise BackendUnavailable(f"TensorRT {trt.__version__}: fptt-edge builds with TensorRT 10.x and 11.x only "
                                 + ("(JetPack 5: use --backend ort-trt)" if major < 10 else "(pip install 'tensorrt>=10,<12')"))
    return trt


def local_target() -> dict:
    """What a build here targets: this machine's TensorRT version and GPU (raises :class:`BackendUnavailable`)."""
    from .cuda import device_info

    trt = import_tensorrt_for_build()
    return {"tensorrt": trt.__version__, **device_info()}


def _timing_cache(config, path: Path, warn) -> object | None:
    """The builder's timing cache from ``path``, or a fresh one where that one is stale or corrupt."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if blob:
        warn(f"{path.name}: stale or corrupt timing cache (another TensorRT or GPU?); starting a fresh one")
    cache = config.create_timing_cache(b"")
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    warn("TensorRT refused a timing cache; building without one")
    return None


def build_engine(plan: BuildPlan, contract: StepContract, profile, warn=None) -> Path:
    """Build and save the engine with the TensorRT Python API (TensorRT 10 or 11), on this machine's GPU.

    ``profile`` labels the engine (None: built for this GPU only). Every TensorRT return value
    is checked; the engine and its contract are written as a pair."""
    warn = warn or (lambda m: None)
    trt = import_tensorrt_for_build()
    if version_tuple(trt.__version__)[0] != plan.trt_major:
        raise BuildError(f"the plan is for TensorRT {plan.tensorrt}, this machine has {trt.__version__}")
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:
        raise BackendUnavailable(f"TensorRT cannot create a builder here (no usable GPU?): {exc}") from None
    if builder is None:
        raise BackendUnavailable("TensorRT cannot create a builder here (no usable GPU)")
    network = builder.create_network(0)  # explicit batch (10), strongly typed always (11)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)) or parser.num_errors:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details (see the log above)"
        raise RuntimeError(f"TensorRT's ONNX parser rejected {plan.onnx}: {errors}")
    config = builder.create_builder_config()
    cache = _timing_cache(config, plan.timing_cache, warn)
    flags = trt.BuilderFlag
    if hasattr(flags, "TF32"):
        (config.set_flag if plan.tf32 else config.clear_flag)(flags.TF32)
    applied: list[str] = []
    if plan.precision == "fp16" and not plan.strongly_typed:
        config.set_flag(flags.FP16)
        config.set_flag(flags.PREFER_PRECISION_CONSTRAINTS if plan.dla else flags.OBEY_PRECISION_CONSTRAINTS)
        applied = _constrain_fp32(trt, network, config, plan, warn)
    if plan.refit:
        config.set_flag(flags.REFIT)
    if plan.dla:
        if not builder.num_DLA_cores:
            raise BackendUnavailable("this machine has no DLA core; build --dla on a Jetson with DLA (AGX/NX Orin, Xavier)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = 0
        config.set_flag(flags.GPU_FALLBACK)
    if plan.shapes:
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in plan.shapes.items():
            opt.set_shape(name, lo, mid, hi)
        if config.add_optimization_profile(opt) < 0:
            raise RuntimeError(f"TensorRT refused the optimisation profile {plan.shapes}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    engine = bytes(serialized)
    built_on = {"by": "fptt-edge build"}
    try:
        built_on |= {k: v for k, v in local_target().items() if k != "tensorrt"}
    except BackendUnavailable:
        pass
    write_engine_pair(plan.engine, engine, engine_contract(contract, plan, profile, trt.__version__, built_on=built_on,
                                                            applied_fp32_layers=applied if plan.fp32_layers else None))
    final = config.get_timing_cache() if cache is not None else None
    if final is not None:
        try:
            write_bytes_atomic(plan.timing_cache, bytes(final.serialize()))
        except (OSError, AttributeError, RuntimeError) as exc:
            warn(f"timing cache not saved: {exc}")
    return plan.engine


def _constrain_fp32(trt, network, config, plan: BuildPlan, warn) -> list[str]:
    """FP32 precision and output types on the plan's layers (exact names, as trtexec does); on DLA
    builds those layers are pinned to the GPU (DLA has no FP32). Returns the layers constrained."""
    keep, applied = set(plan.fp32_layers), []
    floats = {trt.float32, trt.float16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in keep:
            continue
        if any(layer.get_output(j).dtype not in floats for j in range(layer.num_outputs)):
            warn(f"layer {layer.name}: non-float output, left unconstrained")
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        if plan.dla:
            config.set_device_type(layer, trt.DeviceType.GPU)
        applied.append(layer.name)
    missing = sorted(keep - set(applied))
    if missing:
        warn(f"{len(missing)} FP32 layer(s) not found in TensorRT's network (renamed by the parser?): {', '.join(missing[:6])}")
    return applied


def tensorrt_status() -> str | None:
    """None when TensorRT can build here, else the reason it cannot."""
    try:
        trt = import_tensorrt_for_build()
    except BackendUnavailable as exc:
        return str(exc)
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (RuntimeError, TypeError) as exc:
        return f"TensorRT {trt.__version__} is installed but cannot create a builder (no usable GPU): {exc}"
    if builder is None:
        return f"TensorRT {trt.__version__} cannot create a builder (no usable GPU)"
    try:
        local_target()
    except BackendUnavailable as exc:
        return f"TensorRT {trt.__version__} is installed, but {exc}"
    return None
