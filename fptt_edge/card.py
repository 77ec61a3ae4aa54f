"""The model card (``fptt-edge card MODEL``): what a model is, what it costs, how it was checked.

``build_card(path)`` gathers, for a checkpoint (``model.pt``) or an exported model
(``model.onnx``):

- task and data (the input spec: sensor, binning, downsampling, normalisation, classes);
- accuracy (the run's ``metrics.json`` or the checkpoint's metrics; other runs given with
  ``compare`` give the other method's figure, e.g. FPTT vs BPTT);
- parameters, state size, multiply-accumulates per step: dense, and at the measured rates
  (spike rates per layer from the export report's parity run; the input event rate from
  ``data``, an ``.npz`` of frames), since a spike or an event is what makes a weight work;
- memory for inference and for on-device adaptation (formulas below, stated in the card);
- parity and FP16 figures from ``MODEL.report.json``;
- per device profile, a per-step latency *estimate* from the profile's peak compute and memory
  bandwidth (a roofline bound, not a measurement).

:func:`render_markdown` writes it as Markdown. Exported models are read without torch; a
checkpoint needs it (only to read the file).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import FpttEdgeError
from .io import not_a_file

FLOAT_BYTES = 4
ESTIMATE_NOTE = ("Estimate, not a measurement: max(2 x dense MACs / peak compute, bytes moved / memory bandwidth) from the profile's "
                 "peak figures (a roofline bound). A batch-1 step is a few dozen small kernels, so on the device it is usually bound by "
                 "kernel-launch overhead (tens of µs) well above this figure: measure with `fptt-edge bench` there.")


class CardError(FpttEdgeError, ValueError):
    """A model card that cannot be built, with the reason."""


# --- the model's own figures (from its config alone) ------------------------------------------

def layer_table(config: ModelConfig) -> list[dict]:
    """Per layer: name, kind, shapes, parameters, state floats and MACs per step (dense), split into
    the part driven by the layer's input (``input_macs``: scales with the input's event/spike
    rate), by its own previous spikes (``recurrent_macs``) and the dense rest (``gate_macs``)."""
    layers, shape = [], config.input_shape
    for i, co in enumerate(config.conv_channels):
        ci, h, w = shape
        k = config.conv_kernel
        ho, wo = h // 2, w // 2
        params = co * ci * k * k + co + 2 * (co * co * k * k + co) + 2 + (2 * co if config.conv_batch_norm else 0)
        layers.append({"name": f"l{i}", "kind": "conv", "input": [ci, h, w], "output": [co, ho, wo], "parameters": params,
                       "state": 3 * co * ho * wo, "input_macs": co * ci * k * k * h * w, "recurrent_macs": 0,
                       "gate_macs": 2 * co * co * k * k * ho * wo})
        shape = (co, ho, wo)
    features = math.prod(shape)
    for j, hid in enumerate(config.hidden):
        i = len(config.conv_channels) + j
        layers.append({"name": f"l{i}", "kind": "dense", "input": [features], "output": [hid], "parameters": features * hid + hid + hid * hid + hid
                       + 2 * (2 * hid * hid + hid) + 2, "state": 3 * hid, "input_macs": features * hid, "recurrent_macs": hid * hid,
                       "gate_macs": 2 * 2 * hid * hid})
        features = hid
    c = config.num_classes
    layers.append({"name": "readout", "kind": "readout", "input": [features], "output": [c], "parameters": features * c + c + 2 * c * c + c + 1,
                   "state": c, "input_macs": features * c, "recurrent_macs": 0, "gate_macs": 2 * c * c})
    return layers


def macs(layers: list[dict], rates: dict[str, float | None], input_rate: float | None) -> dict:
    """Dense MACs per step and MACs at the given rates: a layer's input part scales with the rate of
    what feeds it (the input's event rate for the first layer, the previous layer's spike rate
    after), its recurrent part with its own spike rate; gates stay dense. An unknown rate counts as 1."""
    dense = {ly["name"]: ly["input_macs"] + ly["recurrent_macs"] + ly["gate_macs"] for ly in layers}
    at_rates, feed = {}, input_rate
    for ly in layers:
        own = rates.get(ly["name"])
        at_rates[ly["name"]] = (ly["input_macs"] * (1.0 if feed is None else feed) + ly["recurrent_macs"] * (1.0 if own is None else own)
                                + ly["gate_macs"])
        feed = own
    return {"dense": dense, "dense_total": sum(dense.values()), "at_rates": {k: round(v) for k, v in at_rates.items()},
            "at_rates_total": round(sum(at_rates.values())),
            "rates": {"input": input_rate, **{ly["name"]: rates.get(ly["name"]) for ly in layers if ly["kind"] != "readout"}}}


def memory(config: ModelConfig, layers: list[dict], trainable: int | None, adapt_batch: int, steps: int) -> dict:
    """Inference and adaptation memory in bytes (FP32), with the formulas used."""
    params = sum(ly["parameters"] for ly in layers)
    folded = params - sum(2 * ly["output"][0] for ly in layers if ly["kind"] == "conv" and config.conv_batch_norm)  # BN folded at export
    state = sum(ly["state"] for ly in layers)
    frame = math.prod(config.input_shape)
    # the largest activation: a conv output before pooling, or a dense layer's gate input [I; u]
    largest = max(ly["output"][0] * ly["input"][1] * ly["input"][2] if ly["kind"] == "conv" else 2 * ly["output"][0] for ly in layers)
    inference = {"weights": folded * FLOAT_BYTES, "state_two_sets": 2 * state * FLOAT_BYTES, "input_frame": frame * FLOAT_BYTES,
                 "largest_activation": largest * FLOAT_BYTES}
    inference["total"] = sum(inference.values())
    n = params if trainable is None else trainable
    adaptation = {"trainable_parameters": n, "optimizer_buffers": 5 * n * FLOAT_BYTES, "snapshots": 2 * 5 * n * FLOAT_BYTES,
                  "gradients": n * FLOAT_BYTES, "train_step_state": 2 * adapt_batch * state * FLOAT_BYTES,
                  "replay_frames": adapt_batch * steps * frame * FLOAT_BYTES}
    adaptation["total"] = sum(v for k, v in adaptation.items() if k != "trainable_parameters")
    return {"inference_bytes": inference, "adaptation_bytes": adaptation,
            "formulas": {"inference": "weights (BN folded) + 2 state sets (double-buffered) + one input frame + the largest activation",
                         "adaptation": "FPTT per trainable float: W, Wbar, lambda, Adamax m and u (5), kept again as the last-good and factory "
                                       "snapshots (10), and a gradient (1); plus the train step's state (2 sets x batch) and a batch of "
                                       "replayed sequences (batch x T frames). Constant in T apart from the replay buffer (FPTT keeps no "
                                       "per-step activations)."}}


def device_estimates(layers: list[dict], mem: dict, profiles) -> list[dict]:
    """Per profile with peak figures: the roofline per-step latency (µs) in FP32 and FP16."""
    flops = 2 * sum(ly["input_macs"] + ly["recurrent_macs"] + ly["gate_macs"] for ly in layers)
    inf = mem["inference_bytes"]
    out = []
    for p in profiles:
        row = {"profile": p.name, "module": p.module, "peak_fp32_gflops": p.peak_fp32_gflops, "peak_fp16_gflops": p.peak_fp16_gflops,
               "memory_bandwidth_gbs": p.memory_bandwidth_gbs, "source": p.peak_source,
               "unconfirmed": [f for f in p.unconfirmed if f in ("peak_fp32_gflops", "peak_fp16_gflops", "memory_bandwidth_gbs")]}
        for precision, peak, weight_bytes in (("fp32", p.peak_fp32_gflops, inf["weights"]), ("fp16", p.peak_fp16_gflops, inf["weights"] / 2)):
            if peak is None or p.memory_bandwidth_gbs is None:
                row[f"estimate_{precision}_us"] = None
                continue
            moved = weight_bytes + inf["state_two_sets"] + inf["input_frame"]  # state stays FP32
            compute_us, memory_us = flops / (peak * 1e9) * 1e6, moved / (p.memory_bandwidth_gbs * 1e9) * 1e6
            row[f"estimate_{precision}_us"] = round(max(compute_us, memory_us), 3)
            row[f"bound_{precision}"] = "compute" if compute_us >= memory_us else "memory"
        out.append(row)
    return out


# --- gathering what is known about a model ------------------------------------------------------

def _read_json(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested beyond reason
        raise CardError(f"{path}: unreadable {what} ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise CardError(f"{path}: {what} is not a JSON object")
    return value


def _source(path: Path) -> dict:
    """What a model file says about itself: config, classes, input spec, training, metrics, checkpoint hash."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .contract import read_contract

        c = read_contract(path)
        out = {"kind": "onnx", "config": c.model_config, "classes": list(c.class_names), "input_spec": dict(c.input.source),
               "checkpoint_sha256": c.checkpoint_sha256, "training": None, "metrics": None, "opset": c.opset, "batch": c.batch}
        ckpt = _checkpoint_beside(path, c.checkpoint_sha256)
        if ckpt is not None:
            out["checkpoint"] = str(ckpt)
            out["metrics"] = _read_json(ckpt.parent / "metrics.json", "metrics")
        return out
    if suffix == ".pt":
        from .checkpoint import load_checkpoint, model_from_payload
        from .io import file_sha256

        payload = load_checkpoint(path)
        model_from_payload(payload, path)  # the weights must fit the config the card describes
        metrics = payload.get("metrics") or _read_json(path.parent / "metrics.json", "metrics")
        return {"kind": "checkpoint", "config": payload["model_config"], "classes": list(payload.get("class_names") or []),
                "input_spec": dict(payload.get("input_spec") or {}), "checkpoint_sha256": file_sha256(path), "checkpoint": str(path),
                "training": payload.get("training"), "metrics": metrics}
    raise CardError(f"{path}: expected a checkpoint (.pt) or an exported model (.onnx)")


def _checkpoint_beside(model: Path, sha: str) -> Path | None:
    from .io import file_with_sha256

    return file_with_sha256(model.parent, "*.pt", sha)


def _report(path: Path, sha: str) -> dict | None:
    """The export report beside the model, if it belongs to the same checkpoint."""
    cand = path.with_suffix(".report.json")
    report = _read_json(cand, "export report")
    if report is not None and report.get("checkpoint_sha256") == sha:
        return {**report, "_path": str(cand)}
    return None


def _check_metrics(metrics, training, where: str) -> None:
    """The fields of a run's metrics (and training record) the card reads, with the types training writes."""
    def number(v):  # an accuracy
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1)
    fields = {"method": lambda v: v is None or isinstance(v, str), "test_accuracy": number, "train_accuracy": number,
              "epochs": lambda v: v is None or isinstance(v, list), "input_spec": lambda v: v is None or isinstance(v, dict),
              "model_config": lambda v: v is None or isinstance(v, dict)}
    bad = [k for k, ok in fields.items() if isinstance(metrics, dict) and not ok(metrics.get(k))]
    if not isinstance(metrics, dict) or bad or not (training is None or isinstance(training, dict)):
        raise CardError(f"{where}: not the metrics of a training run (malformed {', '.join(bad) or 'record'})")
    if training is not None and not (training.get("method") is None or isinstance(training.get("method"), str)):
        raise CardError(f"{where}: malformed training record (method)")


def _accuracy(src: dict, compare: list) -> dict:
    """Test accuracy per training method: this model's, and each compared run's (a metrics.json,
    a run folder or a checkpoint) when it trained the same architecture on the same task."""
    rows = []
    entries = [(src.get("checkpoint") or "this model", src.get("metrics"), src.get("training"))]
    for other in compare:
        other = Path(other)
        if other.is_dir():
            other = other / "metrics.json"
        if other.suffix == ".pt":
            s = _source(other)
            entries.append((str(other), s["metrics"], s["training"]))
        else:
            m = _read_json(other, "metrics")
            if m is None:
                raise CardError(f"{other}: no such metrics.json (give a run folder, its metrics.json or its model.pt)")
            entries.append((str(other), m, None))
    for where, metrics, training in entries:
        if not metrics:
            continue
        _check_metrics(metrics, training, where)
        method = metrics.get("method") or (training or {}).get("method")
        # the same model and task only where the run says so (a metrics file without them proves nothing)
        same = metrics.get("model_config") == src["config"] and (metrics.get("input_spec") or {}).get("task") == src["input_spec"].get("task")
        rows.append({"method": method, "test_accuracy": metrics.get("test_accuracy"), "train_accuracy": metrics.get("train_accuracy"),
                     "epochs": len(metrics.get("epochs") or []), "from": where, "same_model_and_task": bool(same)})
    by_method = {r["method"]: r["test_accuracy"] for r in rows if r["same_model_and_task"] and r["method"]}
    return {"runs": rows, "by_method": by_method}


def input_rate(data, frame_shape, encoding: dict | None = None) -> float | None:
    """The fraction of non-zero inputs per step in an ``.npz`` (``x`` ``[N, T, *frame]``, optional ``lengths``: the
    padding after a recording's end is not counted). For a model trained with an input ``encoding``, ``x`` may hold the
    raw samples, encoded here as the runtime does (``run --npz``)."""
    if data is None:
        return None
    from .encoding import Encoding, EncodingError
    from .npzfile import checked_lengths, float32_x, read_npz

    arrays = read_npz(data, CardError)
    if "x" not in arrays:
        raise CardError(f"{data}: not an .npz with frames 'x' (have {sorted(arrays)[:10]})")
    x = arrays["x"]
    try:
        enc = Encoding.from_dict(encoding)
    except EncodingError as exc:
        raise CardError(f"the model's input encoding: {exc}") from None
    if enc.kind != "none" and x.ndim == 3 and x.shape[2:] == (enc.channels,) and x.size:
        try:
            x = enc.encode(float32_x(x, f"{data}: field 'x'", CardError))
        except EncodingError as exc:
            raise CardError(f"{data}: field 'x': {exc}") from None
    if x.ndim < 2 or tuple(x.shape[2:]) != tuple(frame_shape):
        raw = f" or raw samples ({enc.channels},) for its {enc.kind} encoding" if enc.kind != "none" else ""
        raise CardError(f"{data}: frames have shape {tuple(x.shape[2:])}; the model takes {tuple(frame_shape)}{raw}")
    if x.size == 0:  # a rate of 0 would understate the MACs at rates
        raise CardError(f"{data}: holds no frames (x has shape {list(x.shape)}); an input rate needs some")
    if "lengths" not in arrays:
        return float(np.count_nonzero(x) / x.size)
    lengths = checked_lengths(arrays["lengths"], len(x), x.shape[1], data, CardError)
    valid = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]  # [N, T]
    return float(np.count_nonzero(x[valid]) / x[valid].size)


def build_card(path, *, compare=(), data=None, devices=None) -> dict:
    """The card of ``path`` (``.pt`` or ``.onnx``) as a JSON-ready dict."""
    try:
        return _build_card(Path(path), compare, data, devices)
    except FpttEdgeError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a field the loaders let through, of a wrong type
        raise CardError(f"{path}: a field of the model's description (input_spec, training or metrics) is malformed "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


def _build_card(path: Path, compare, data, devices) -> dict:
    from .devices import all_profiles, load_profile

    if not path.is_file():
        raise CardError(f"{path}: {not_a_file(path)}")
    src = _source(path)
    try:
        config = ModelConfig.from_dict(src["config"])
    except (TypeError, ValueError) as exc:
        raise CardError(f"{path}: unusable model config ({exc})") from None
    report = _report(path, src["checkpoint_sha256"])
    layers = layer_table(config)
    parity = (report or {}).get("parity") or {}
    rate_in = input_rate(data, config.input_shape, src["input_spec"].get("encoding"))
    spike_rates: dict[str, float | None] = {str(k): float(v) for k, v in (parity.get("spike_rate") or {}).items() if isinstance(v, (int, float))}
    train_step = (report or {}).get("train_step") or {}
    steps = int((src["input_spec"].get("binning") or {}).get("steps") or src["input_spec"].get("steps") or 1)
    mem = memory(config, layers, train_step.get("parameters"), int(train_step.get("batch") or 4), steps)
    profiles = [load_profile(d) for d in devices] if devices else all_profiles()
    spec = src["input_spec"]
    card = {
        "model": str(path), "kind": src["kind"], "checkpoint": src.get("checkpoint"), "checkpoint_sha256": src["checkpoint_sha256"],
        "task": {"task": spec.get("task"), "classes": src["classes"], "input_shape": list(config.input_shape),
                 "data": {k: v for k, v in spec.items() if k not in ("path", "test_path", "split", "file")}},
        "architecture": config.to_dict(),
        "training": src.get("training") or ((src.get("metrics") or {}).get("training_config")),
        "accuracy": _accuracy(src, list(compare)),
        "parameters": sum(ly["parameters"] for ly in layers),
        "layers": layers,
        "state": {"floats_per_stream": sum(ly["state"] for ly in layers), "bytes_per_stream": FLOAT_BYTES * sum(ly["state"] for ly in layers)},
        "macs_per_step": macs(layers, spike_rates, rate_in) | {
            "rates_source": {"spikes": "the export report's parity run (ONNX Runtime on real data)" if spike_rates else "not measured (no export report)",
                             "input": f"non-zero fraction of {data}" if rate_in is not None else "not measured (pass --data FRAMES.npz)"}},
        "memory": mem,
        "export": _export_figures(report),
        "devices": device_estimates(layers, mem, profiles),
        "notes": [ESTIMATE_NOTE],
    }
    if spec.get("task") == "dvsgesture":
        card["notes"].append("DVS128 Gesture: accuracy here is what this run measured on the data it was given; the published figure for "
                             "the conv LTC-SNN with FPTT at T = 20 is 97.2 % (authors' log), not reproduced by this card.")
    return card


def _export_figures(report: dict | None) -> dict | None:
    if report is None:
        return None
    par, prec = report.get("parity") or {}, report.get("precision") or {}
    return {
        "report": report.get("_path"), "opset": report.get("opset"), "batch": report.get("batch"), "model_bytes": report.get("model_bytes"),
        "parity": {k: par.get(k) for k in ("passed", "exact", "streams", "steps", "max_abs_logits", "spike_agreement", "prediction_agreement",
                                           "spike_rate")} | {"ties": len(par.get("ties") or [])} if par else None,
        "fp16": {k: prec.get(k) for k in ("sequences", "steps", "accuracy", "flip_rate", "prediction_agreement", "max_abs_logits",
                                          "recommendation")} if prec else None,
        "fp16_variant": report.get("fp16_variant"),
        "lint": {k: (report.get("lint") or {}).get(k) for k in ("device", "tensorrt", "verdict")},
        "train_step": {k: (report.get("train_step") or {}).get(k) for k in ("trainable", "parameters", "batch", "model")} if report.get("train_step") else None,
    }


# --- Markdown ----------------------------------------------------------------------------------

_MD_ACTIVE = re.compile(r"[\\`<|]|\](?=\()")  # code spans, HTML, table cells, the "](" of an inline link


def _text(v) -> str:
    """A value read from a file (class names, input spec, metrics, export report) as inline Markdown text: the characters
    that start markup backslash-escaped and those that do not print (newlines, terminal escapes) written as escapes, so
    that it can neither start a line, forge a table row or a section, nor run as HTML, a link or in a terminal."""
    return _printable(_MD_ACTIVE.sub(lambda m: "\\" + m.group(0), str(v)))


def _printable(s: str) -> str:
    """``s`` with the characters that do not print (newlines, terminal escapes) written as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in s)


def _code(v, cell: bool = False) -> str:
    """A path as an inline code span that its own characters cannot end: a fence one backtick longer than any run inside,
    non-printing characters written as escapes, and (in a table ``cell``) '|' escaped so that it cannot split the row."""
    s = _printable(str(v))
    if cell:
        s = s.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", s)), default=0) + 1)
    pad = " " if "`" in s else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _fmt(v, digits=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _mib(n) -> str:
    return "-" if n is None else (f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB")


def render_markdown(card: dict) -> str:
    t, m = card["task"], card["macs_per_step"]
    lines = [f"# Model card: {_text(Path(card['model']).name)}", "",
             f"File {_code(card['model'])} ({card['kind']}); checkpoint SHA-256 `{card['checkpoint_sha256'][:16]}...`.", "",
             "## Task and data", "",
             f"- task: **{_text(t['task'] or 'unknown')}**, {len(t['classes'])} classes: {', '.join(map(_text, t['classes']))}",
             f"- input per step: {t['input_shape']}; " + ", ".join(f"{_text(k)} {_text(json.dumps(v))}" for k, v in t["data"].items() if k != "task"),
             "",
             "## Accuracy", ""]
    acc = card["accuracy"]
    if acc["runs"]:
        lines += ["| method | test accuracy | train accuracy | epochs | from | same model and task |", "|---|---|---|---|---|---|"]
        lines += [f"| {_text(r['method'])} | {_fmt(r['test_accuracy'])} | {_fmt(r['train_accuracy'])} | {r['epochs']} | {_code(r['from'], cell=True)} | "
                  f"{'yes' if r['same_model_and_task'] else 'no'} |" for r in acc["runs"]]
    else:
        lines.append("No training metrics found beside the model (pass --compare RUN for other runs).")
    lines += ["", "## Size and compute", "",
              f"- parameters: {card['parameters']:,}; state: {card['state']['floats_per_stream']:,} floats per stream "
              f"({_mib(card['state']['bytes_per_stream'])})",
              f"- MACs per step: dense {m['dense_total']:,}; at the measured rates {m['at_rates_total']:,} "
              f"(rates: {', '.join(f'{k} {_fmt(v, 3)}' for k, v in m['rates'].items())}; spikes: {m['rates_source']['spikes']}; "
              f"input: {m['rates_source']['input']})", "",
              "| layer | kind | input | output | parameters | state floats | dense MACs | MACs at rates |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {ly['name']} | {ly['kind']} | {ly['input']} | {ly['output']} | {ly['parameters']:,} | {ly['state']:,} | "
              f"{m['dense'][ly['name']]:,} | {m['at_rates'][ly['name']]:,} |" for ly in card["layers"]]
    inf, ad = card["memory"]["inference_bytes"], card["memory"]["adaptation_bytes"]
    lines += ["", "## Memory", "",
              f"- inference: {_mib(inf['total'])} ({', '.join(f'{k} {_mib(v)}' for k, v in inf.items() if k != 'total')}): "
              f"{card['memory']['formulas']['inference']}",
              f"- on-device adaptation ({ad['trainable_parameters']:,} trainable): {_mib(ad['total'])} "
              f"({', '.join(f'{k} {_mib(v)}' for k, v in ad.items() if k not in ('total', 'trainable_parameters'))}): "
              f"{card['memory']['formulas']['adaptation']}", "", "## Export checks", ""]
    ex = card["export"]
    if ex is None:
        lines.append("No export report beside the model (`fptt-edge export` writes MODEL.report.json).")
    else:
        par, fp16 = ex["parity"], ex["fp16"]
        lines.append(f"- report {_code(ex['report'])}: opset {_text(ex['opset'])}, batch {_text(ex['batch'])}, lint {_text(ex['lint']['verdict'])} "
                     f"({_text(ex['lint']['device'])}, TensorRT {_text(ex['lint']['tensorrt'])})")
        if par:
            lines.append(f"- parity vs PyTorch ({par['streams']} streams x {par['steps']} steps): {'PASS' if par['passed'] else 'FAIL'}, "
                         f"exact {_text(par['exact'])}, max |d logits| {_fmt(par['max_abs_logits'], 3)}, spike agreement {_text(par['spike_agreement'])}, "
                         f"{par['ties']} rounding ties")
        else:
            lines.append("- parity: not run (--no-check)")
        if fp16:
            lines.append(f"- FP16 emulation ({_text(fp16['sequences'])} sequences): accuracy {_text(fp16['accuracy'])}; flip rates "
                         f"{_text(fp16['flip_rate'])}; {_text(fp16['recommendation'])}")
        if ex["train_step"]:
            lines.append(f"- train step for adaptation: {_text(ex['train_step'])}")
    lines += ["", "## Per-step latency on device profiles (estimate)", "", card["notes"][0], "",
              "| profile | peak FP32 GFLOPS | peak FP16 GFLOPS | bandwidth GB/s | FP32 est. µs | FP16 est. µs | bound |", "|---|---|---|---|---|---|---|"]
    for d in card["devices"]:
        flag = " (unconfirmed)" if d["unconfirmed"] else ""
        lines.append(f"| {_text(d['profile'])}{flag} | {_fmt(d['peak_fp32_gflops'])} | {_fmt(d['peak_fp16_gflops'])} | {_fmt(d['memory_bandwidth_gbs'])} | "
                     f"{_fmt(d.get('estimate_fp32_us'))} | {_fmt(d.get('estimate_fp16_us'))} | {d.get('bound_fp32', '-')} |")
    by_source: dict[str, list[str]] = {}
    for d in card["devices"]:
        if d["source"]:
            by_source.setdefault(d["source"], []).append(d["profile"])
    if by_source:
        lines += ["", "Where the peak figures come from:", ""]
        lines += [f"- {', '.join(_text(n) for n in names)}: {_text(source)}" for source, names in sorted(by_source.items())]
    for note in card["notes"][1:]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_card(card: dict, out_base, inputs=()) -> tuple[Path, Path]:
    """``OUT.card.md`` and ``OUT.card.json``; refused (nothing written) where either is a file the card was built from:
    the model, its checkpoint, metrics and export report, a compared run, or one of ``inputs`` (``--data``, ...)."""
    from .io import atomic_path

    base = Path(out_base)
    md, js = base.with_name(base.name + ".card.md"), base.with_name(base.name + ".card.json")
    checkpoint = card.get("checkpoint")
    read = [card["model"], checkpoint, checkpoint and Path(checkpoint).parent / "metrics.json", Path(card["model"]).parent / "metrics.json",
            (card.get("export") or {}).get("report"), *(r["from"] for r in card["accuracy"]["runs"]), *inputs]
    for out in (md, js):
        for src in (Path(p) for p in read if p):
            if src.exists() and (out.resolve() == src.resolve() or (out.exists() and out.samefile(src))):
                raise CardError(f"{out} is an input of the card ({src}); choose another -o")
    with atomic_path(md) as tmp_md, atomic_path(js) as tmp_js:  # both written before either replaces its file
        tmp_md.write_bytes(render_markdown(card).encode())
        tmp_js.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return md, js
