"""The export report: JSON next to the model, and a readable summary."""
from __future__ import annotations


def _pct(v: float) -> str:
    return f"{100 * v:.4g} %"


def summary(report: dict) -> str:
    """A few readable lines from the report dict."""
    lines = [f"exported {report['checkpoint']} -> {report['model']}  ({report['model_bytes'] / 1024:.1f} KiB, opset {report['opset']}, "
             f"batch {report['batch']}, {report['export_seconds']:.1f} s)"]
    lines.append(f"  I/O: {report['io']['input']} + {len(report['io']['state'])} state tensors -> logits + state_out "
                 f"({', '.join(report['io']['state'])})")
    par = report.get("parity")
    if par:
        sa = ", ".join(f"{k} {_pct(v)}" for k, v in par["spike_agreement"].items())
        lines.append(f"  parity vs PyTorch ({par['streams']} streams x {par['steps']} steps, ONNX Runtime CPU): "
                     f"{'PASS' if par['passed'] else 'FAIL'}; spikes agree {sa}; max |d logits| {par['max_abs_logits']:.2e}; "
                     f"predictions agree {_pct(par['prediction_agreement'])}; "
                     f"spike rate {', '.join(f'{k} {v:.3f}' for k, v in par['spike_rate'].items())}")
        if par.get("ties"):
            worst = max(t["max_margin"] for t in par["ties"])
            lines.append(f"    {len(par['ties'])} rounding tie(s): a neuron within {worst:.1e} of its threshold fired in one backend only "
                         f"(tolerance {par['tie_tolerance']:.0e}); state re-synchronised, not exact{' (strict: FAIL)' if par['strict'] else ''}")
        if par.get("first_mismatch"):
            lines.append(f"    first spike mismatch: {par['first_mismatch']}")
    prec = report.get("precision")
    if prec:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in prec["accuracy"].items())
        flips = "; ".join(f"{k}: " + ", ".join(f"{lay} {r:.2e}" for lay, r in v.items()) for k, v in prec["flip_rate"].items())
        lines.append(f"  FP16 emulation ({prec['sequences']} sequences x {prec['steps']} steps): accuracy {acc}")
        lines.append(f"    spike flip rate {flips}")
        lines.append(f"    {prec['recommendation']}; {len(prec['fp32_nodes'])} nodes to keep in FP32 (listed in the JSON)")
    fp16 = report.get("fp16_variant")
    if fp16:
        lines.append(f"  FP16 variant: {fp16['model']} ({fp16['model_bytes'] / 1024:.1f} KiB)")
    ts = report.get("train_step")
    if ts:
        lines.append(f"  train step ({ts['trainable']}: {ts['parameters']} weights in {len(ts['tensors'])} tensors, batch {ts['batch']}): "
                     f"{ts['model']} ({ts['model_bytes'] / 1024:.1f} KiB, {ts['nodes']} nodes), eps kept: {ts['eps_survives']}, "
                     f"lint {ts['lint']['verdict'].upper()}")
        par = ts.get("parity")
        if par:
            rel = ", ".join(f"{k} {v:.1e} (noise {par['control_rel'][k]:.1e})" for k, v in par["max_rel"].items())
            lines.append(f"    vs PyTorch's FPTT trainer, {par['updates']} updates: {'PASS' if par['passed'] else 'FAIL'}; spike mismatches "
                         f"{sum(par['spike_mismatches'].values())}, ties {len(par['ties'])}; max relative difference {rel}")
    lint = report["lint"]
    lines.append(f"  device lint ({lint['device']}, TensorRT {lint['tensorrt']}): {lint['verdict'].upper()}")
    for f in lint["findings"]:
        if f["level"] != "info":
            lines.append(f"    {f['level']}: [{f['check']}] {f['message']}")
    lines.append(f"  report: {report['report']}")
    return "\n".join(lines)
