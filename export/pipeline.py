"""``fptt-edge export``: checkpoint -> checked, device-linted stateful ONNX step + report."""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import onnx
import torch

from ..checkpoint import load_model
from ..contract import OUTPUT_SUFFIX, InputSpec, StateSpec, StepContract, stamp_checksum
from ..data.dataset import DataError
from ..data.tasks import period_warning
from ..devices import DEFAULT_PROFILE, load_profile
from ..io import file_sha256, json_bytes, output_target, write_files_atomic, write_json_atomic
from ..model import LTCNetwork, flatten_state
from ..runtime.recognition import available_memory
from .errors import ExportError
from .graph_passes import default_opset
from .lint import lint
from .onnx_build import INPUT_NAME, LOGITS_NAME, trace_step
from .parity import ParityResult, check_parity, ort_session
from .precision import PrecisionResult, emulate_fp16, fp16_variant
from .report import ExportIO, ExportReport, Fp16Variant
from .streams import make_streams

try:
    import fcntl
except ImportError:  # not POSIX: no lock between exports
    fcntl = None  # type: ignore[assignment]


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


SHIPPED_WITHOUT = ("path", "test_path")  # where the training data lay on the workstation: not shipped to devices


def shipped_source(input_spec: dict) -> dict:
    """The training input spec as the exported model records it: what the data are (task, binning, encoding, the
    file's name), not where they lay (absolute paths on the machine that trained it)."""
    return {k: v for k, v in dict(input_spec).items() if k not in SHIPPED_WITHOUT}


def build_contract(net: LTCNetwork, payload: dict, sha256: str, batch: int | None, opset: int, param_map: dict) -> StepContract:
    """The metadata contract; initial values come from the model's own deterministic initial state."""
    b = batch or "batch"
    states = []
    for name, tensor in zip(net.state_names(), flatten_state(net.initial_state(1))):
        values = tensor.unique()
        if values.numel() != 1:
            raise ExportError(f"initial state '{name}' is not constant; cannot describe it in metadata")
        states.append(StateSpec(name, name + OUTPUT_SUFFIX, (b, *tensor.shape[1:]), float(values.item())))
    classes = payload.get("class_names") or [str(i) for i in range(net.config.num_classes)]
    return StepContract(
        input=InputSpec(INPUT_NAME, (b, *net.config.input_shape), source=shipped_source(payload.get("input_spec") or {}),
                        encoding=dict((payload.get("input_spec") or {}).get("encoding") or {})),
        logits=LOGITS_NAME, states=tuple(states), class_names=tuple(classes), model_config=net.config.to_dict(),
        checkpoint_sha256=sha256,
        exporter={"name": "torch.onnx.export(dynamo=True)", "torch": torch.__version__, "onnx": onnx.__version__,
                  "passes": ["bn-fold", "onnx-graphsurgeon fold_constants", "reshape->flatten", "version-convert" if opset < 18 else "none"]},
        opset=opset, parameter_map=param_map, producer=f"fptt-edge {_version('fptt-edge')}",
    )


def _refuse_overwrite(inputs: dict[str, Path], outputs: list[Path]) -> None:
    """Never write over an input (the checkpoint, ``--data``, a ``--device`` file: same path after resolving links and
    ``..``), and refuse any output that cannot be written as a file (a folder, a FIFO, ...) before the first one is
    written."""
    for path in outputs:
        for what, src in inputs.items():
            if path.resolve() == src.resolve() or (path.exists() and src.exists() and path.samefile(src)):
                raise ExportError(f"{path} is the input {what} {src}; choose another -o")
        output_target(path)


def _refuse_beyond_memory(net: LTCNetwork, streams: int, batch: int | None, steps: int) -> None:
    """The parity check holds every stream's input frames for every step (float32, built once from the recordings and
    stacked: two copies at the peak), the states only for the current step: refuse, before any work, a run whose
    frames would not fit in half the available memory."""
    streams = max(streams, batch or 1)
    need, free = 2 * 4 * streams * steps * math.prod(net.config.input_shape), available_memory()
    if need > free // 2:
        raise ExportError(f"--parity-streams {streams} x --parity-steps {steps:,} would hold {need / 2**30:.1f} GiB for the parity check; "
                          f"{free / 2**30:.1f} GiB are free here: choose fewer steps or streams")


@contextlib.contextmanager
def _export_lock(folder: Path):
    """One export at a time into ``folder`` (an advisory lock on the folder itself, or on its nearest existing parent
    while it does not exist yet; no file or folder made): two exports writing the same names would leave one's model
    beside the other's report. Best effort: where the folder cannot be opened (write-only) or there is no ``fcntl``,
    the export goes on unlocked."""
    held = next((p for p in (folder, *folder.parents) if p.is_dir()), None)
    try:
        fd = None if fcntl is None or held is None else os.open(held, os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportError(f"another fptt-edge export is writing into {held}; wait for it to finish") from None
        yield
    finally:
        if fd is not None:
            os.close(fd)


def export_checkpoint(checkpoint, out=None, *, device: str | None = None, opset: int | None = None, batch: int | None = 1,
                      check: bool = True, data=None, streams: int = 4, steps: int = 500, precision_samples: int = 200,
                      fp16: bool = False, strict_parity: bool = False, adapt: bool = False, trainable: str = "all",
                      adapt_batch: int = 4, adapt_updates: int = 200, guard_samples: int = 500, adapt_chunk: int = 1,
                      log=print) -> ExportReport:
    """Export ``checkpoint`` to ``out`` (default: beside it, ``.onnx``); returns the report (``to_dict()`` is the JSON).

    Raises :class:`ExportError` (parity failure, exporter failure) before anything is written,
    except the report of a failed parity check, which is written for inspection.
    """
    checkpoint = Path(checkpoint)
    profile = load_profile(device or DEFAULT_PROFILE)
    if batch is not None and batch < 1:
        raise ExportError("--batch must be >= 1 or 'dynamic'")
    net, payload = load_model(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".onnx")
    if out.name.lower().endswith((".train.onnx", ".fp16.onnx")):
        raise ExportError(f"{out}: names ending in .train.onnx and .fp16.onnx are the ones export gives the train-step graph and "
                          "the FP16 variant beside MODEL.onnx; choose another -o")
    report_path = out.with_suffix(".report.json")
    inputs = {"checkpoint": checkpoint, **({"--data file": Path(data)} if data else {}),
              **({"--device file": Path(device)} if device and os.path.lexists(device) else {})}
    _refuse_overwrite(inputs, [out, report_path, *([out.with_suffix(".fp16.onnx")] if fp16 else []),
                               *([out.with_suffix(".train.onnx"), out.with_name(out.stem + ".guard.npz")] if adapt else [])])
    if check:
        _refuse_beyond_memory(net, streams, batch, steps)
    with _export_lock(out.parent):
        ds = _check_set(net, payload, data) if check else None
        mismatch = None if ds is None else period_warning(ds, payload.get("input_spec") or {}, data)
        if mismatch:  # the parity checks and the guard set (--adapt) would run the model at another rate than it learnt
            log(f"warning: {mismatch}")
        if adapt and ds is not None and len(ds) < adapt_batch:
            raise ExportError(f"--adapt-batch {adapt_batch} needs at least {adapt_batch} labelled check sequences; the check data "
                              f"has {len(ds)} (pass --data with more, or a smaller --adapt-batch)")
        longest = None if ds is None else int(ds.x.shape[1] if ds.lengths is None else ds.lengths.max())
        if adapt and longest is not None and adapt_chunk > longest:
            raise ExportError(f"--adapt-chunk {adapt_chunk} is longer than the check data's sequences ({longest} steps): every chunk "
                              f"would be padded and the check would compare no spikes; use a chunk of at most {longest} steps")
        return _export(net, payload, checkpoint, out, report_path, profile, device, opset, batch, ds, streams, steps, precision_samples,
                       fp16, strict_parity, adapt, trainable, adapt_batch, adapt_updates, guard_samples, adapt_chunk, log)


def _export(net, payload, checkpoint: Path, out: Path, report_path: Path, profile, device, opset, batch, ds, streams, steps,
            precision_samples, fp16, strict_parity, adapt, trainable, adapt_batch, adapt_updates, guard_samples, adapt_chunk,
            log) -> ExportReport:
    """Trace, check and write every artefact; nothing replaces an existing file unless all of them were written (a
    full disk or a failed check leaves the previous export whole; a failed check writes its report alone)."""
    if opset is None:
        opset = max(min(profile.max_opset, 20), 18) if profile.max_opset >= 18 else profile.max_opset
    t0 = time.perf_counter()
    model, pmap = trace_step(net, batch, opset)
    actual_opset = default_opset(model)
    contract = build_contract(net, payload, file_sha256(checkpoint), batch, actual_opset, pmap)
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "fptt-edge", _version("fptt-edge")
    model.doc_string = "LTC-SNN single step: (x_t, state_t) -> (logits_t, state_{t+1}); contract in metadata_props (fptt_edge.*)"
    stamp_checksum(model)  # fptt_edge.graph_sha256: the runtime verifies graph and weights on load
    model_bytes = model.SerializeToString()
    export_seconds = time.perf_counter() - t0
    report = ExportReport(
        checkpoint=str(checkpoint), model=str(out), report=str(report_path), model_bytes=len(model_bytes),
        export_seconds=export_seconds, opset=actual_opset, batch=batch or "dynamic",
        io=ExportIO(f"{INPUT_NAME}{list(contract.input.shape)}", LOGITS_NAME, [s.name for s in contract.states]),
        checkpoint_sha256=contract.checkpoint_sha256, exporter=contract.exporter, lint=lint(model, profile),
    )
    if ds is not None:
        report.parity, report.precision, report.check_data = _run_checks(net, ds, model, model_bytes, batch, streams, steps,
                                                                         precision_samples, strict_parity, log)
    if device is None:
        report.lint_note = f"no --device given: linted against the default profile {DEFAULT_PROFILE}"
    if report.parity is not None and not report.parity.passed:
        write_json_atomic(report_path, report.to_dict())
        m = report.parity.first_mismatch or report.parity.ties[0]
        raise ExportError(f"ONNX Runtime and PyTorch disagree on spikes (first at stream {m['stream']}, step {m['step']}, {m['state']}: "
                          f"{m['count']} values, reference margin |v - theta| {m['max_margin']:.2e}); {out} not written, report in {report_path}")
    files = [(out, model_bytes)]
    if fp16:
        variant = fp16_variant(model)
        stamp_checksum(variant)
        fp16_path = out.with_suffix(".fp16.onnx")
        data16 = variant.SerializeToString()
        files.append((fp16_path, data16))
        report.fp16_variant = Fp16Variant(str(fp16_path), len(data16), "Gemm/Conv in FP16; neuron dynamics, threshold and state in FP32")
    if adapt:
        report.train_step, train_files = _export_train_step(net, payload, checkpoint, out, hashlib.sha256(model_bytes).hexdigest(), profile,
                                                            actual_opset, trainable, adapt_batch, ds, adapt_updates, strict_parity, report, log,
                                                            guard_samples, adapt_chunk)
        files += train_files
    files.append((report_path, json_bytes(report.to_dict())))
    write_files_atomic(files)
    return report


def _export_train_step(net, payload, checkpoint, out, model_sha256, profile, opset, trainable, batch, ds, updates, strict,
                       report: ExportReport, log, guard_samples, chunk: int = 1) -> tuple[dict, list[tuple[Path, bytes]]]:
    """``MODEL.train.onnx`` (``--adapt``) and its guard set, checked on the same real data as the parity unless ``--no-check``."""
    from .adapt_export import _TrainCheckFailed, export_train_step

    check_data = None if ds is None else (ds.x.numpy(), ds.y.numpy(), None if ds.lengths is None else ds.lengths.numpy())
    try:
        return export_train_step(net, payload, checkpoint, out, model_sha256, profile, opset, trainable, batch, check_data, updates, strict,
                                 log, guard_samples, chunk)
    except _TrainCheckFailed as exc:
        report.train_step = exc.report
        write_json_atomic(Path(report.report), report.to_dict())
        raise ExportError(f"{exc}; report in {report.report}") from None


def _check_set(net, payload, data):
    from ..data.tasks import DataNotGiven, test_set_from_spec

    # Built-in data sets, or the file the user passes: a data path recorded in the checkpoint is never opened.
    try:
        ds = test_set_from_spec(payload.get("input_spec") or {}, data, None, num_classes=net.config.num_classes)
    except DataNotGiven as exc:
        raise ExportError(f"the checks need real data: {exc}, or --no-check to skip the checks") from None
    except DataError as exc:
        raise ExportError(f"the checks need real data: {exc}. Pass --data FILE, or --no-check to skip the checks") from None
    if ds.input_shape != net.config.input_shape:
        raise ExportError(f"check data steps have shape {ds.input_shape}; the model expects {net.config.input_shape}")
    return ds


def _run_checks(net, ds, model, model_bytes, batch, n_streams, steps, precision_samples, strict,
                log) -> tuple[ParityResult, PrecisionResult, dict]:
    n_streams = max(n_streams, batch or 1)
    n_streams -= n_streams % (batch or 1)
    xs = make_streams(ds, n_streams, steps)
    log(f"parity: {len(xs)} streams x {xs.shape[1]} steps through PyTorch and ONNX Runtime ...")
    parity = check_parity(net, ort_session(model_bytes), xs, batch, strict=strict)
    sub = ds.take(precision_samples)
    log(f"precision: FP16 emulation over {len(sub)} sequences ...")
    precision = emulate_fp16(net, sub.x, sub.y, sub.lengths, model)
    return parity, precision, shipped_source(ds.input_spec) | {"sequences": len(ds)}
