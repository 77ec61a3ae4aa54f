"""The export report: a typed :class:`ExportReport`, its JSON next to the model, and a readable summary."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: reading a report needs neither torch nor onnx
    from .lint import LintResult
    from .parity import ParityResult
    from .precision import PrecisionResult


@dataclass
class ExportIO:
    """The step graph's I/O: ``input`` (name and shape), ``logits`` and the state inputs (outputs add ``_out``)."""

    input: str
    logits: str
    state: list[str]


@dataclass
class Fp16Variant:
    """``MODEL.fp16.onnx`` (``--fp16-variant``)."""

    model: str
    model_bytes: int
    scheme: str


@dataclass
class ExportReport:
    """What ``export_checkpoint`` made and checked; :meth:`to_dict` is ``MODEL.report.json``.

    ``parity``, ``precision`` and ``check_data`` are ``None`` with ``--no-check``; ``train_step``
    (``--adapt``) is the train-step export's own dict.
    """

    checkpoint: str
    model: str
    report: str
    model_bytes: int
    export_seconds: float
    opset: int
    batch: int | str  # "dynamic" for a dynamic batch axis
    io: ExportIO
    checkpoint_sha256: str
    exporter: dict
    lint: LintResult
    parity: ParityResult | None = None
    precision: PrecisionResult | None = None
    check_data: dict | None = None
    lint_note: str | None = None  # written into the JSON's "lint" section as "note"
    fp16_variant: Fp16Variant | None = None
    train_step: dict | None = None

    @property
    def passed(self) -> bool:
        """The parity check passed (``True`` when it did not run)."""
        return self.parity is None or self.parity.passed

    def to_dict(self) -> dict:
        """The JSON layout of ``MODEL.report.json`` (optional sections only when present)."""
        out = {"checkpoint": self.checkpoint, "model": self.model, "report": self.report, "model_bytes": self.model_bytes,
               "export_seconds": self.export_seconds, "opset": self.opset, "batch": self.batch, "io": asdict(self.io),
               "checkpoint_sha256": self.checkpoint_sha256, "exporter": self.exporter}
        if self.parity is not None:
            out["parity"] = self.parity.to_dict()
        if self.precision is not None:
            out["precision"] = self.precision.to_dict()
        if self.check_data is not None:
            out["check_data"] = self.check_data
        out["lint"] = self.lint.to_dict() | ({"note": self.lint_note} if self.lint_note is not None else {})
        if self.fp16_variant is not None:
            out["fp16_variant"] = asdict(self.fp16_variant)
        if self.train_step is not None:
            out["train_step"] = self.train_step
        return out


def _pct(v: float) -> str:
    return f"{100 * v:.4g} %"


def summary(report: ExportReport) -> str:
    """A few readable lines from the report."""
    r = report
    lines = [(f"exported {r.checkpoint} -> {r.model}  ({r.model_bytes / 1024:.1f} KiB, opset {r.opset}, "
              f"batch {r.batch}, {r.export_seconds:.1f} s)")]
    lines.append(f"  I/O: {r.io.input} + {len(r.io.state)} state tensors -> logits + state_out ({', '.join(r.io.state)})")
    par = r.parity
    if par:
        sa = ", ".join(f"{k} {_pct(v)}" for k, v in par.spike_agreement.items())
        lines.append(f"  parity vs PyTorch ({par.streams} streams x {par.steps} steps, ONNX Runtime CPU): "
                     f"{'PASS' if par.passed else 'FAIL'}; spikes agree {sa}; max |d logits| {par.max_abs_logits:.2e}; "
                     f"predictions agree {_pct(par.prediction_agreement)}; "
                     f"spike rate {', '.join(f'{k} {v:.3f}' for k, v in par.spike_rate.items())}")
        if par.ties:
            worst = max(t["max_margin"] for t in par.ties)
            lines.append(f"    {len(par.ties)} rounding tie(s): a neuron within {worst:.1e} of its threshold fired in one backend only "
                         f"(tolerance {par.tie_tolerance:.0e}); state re-synchronised, not exact{' (strict: FAIL)' if par.strict else ''}")
        if par.first_mismatch:
            lines.append(f"    first spike mismatch: {par.first_mismatch}")
    prec = r.precision
    if prec:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in prec.accuracy.items())
        flips = "; ".join(f"{k}: " + ", ".join(f"{lay} {rate:.2e}" for lay, rate in v.items()) for k, v in prec.flip_rate.items())
        lines.append(f"  FP16 emulation ({prec.sequences} sequences x {prec.steps} steps): accuracy {acc}")
        lines.append(f"    spike flip rate {flips}")
        lines.append(f"    {prec.recommendation}; {len(prec.fp32_nodes)} nodes to keep in FP32 (listed in the JSON)")
    if r.fp16_variant:
        lines.append(f"  FP16 variant: {r.fp16_variant.model} ({r.fp16_variant.model_bytes / 1024:.1f} KiB)")
    ts = r.train_step
    if ts:
        per = f", an update every {ts['chunk']} steps" if ts.get("chunk", 1) > 1 else ""
        lines.append(f"  train step ({ts['trainable']}: {ts['parameters']} weights in {len(ts['tensors'])} tensors, batch {ts['batch']}{per}): "
                     f"{ts['model']} ({ts['model_bytes'] / 1024:.1f} KiB, {ts['nodes']} nodes), eps kept: {ts['eps_survives']}, "
                     f"lint {ts['lint']['verdict'].upper()}")
        tpar = ts.get("parity")
        if tpar:
            rel = ", ".join(f"{k} {v:.1e} (float64 {tpar['control_rel'][k]:.1e}; 90 % of elements {tpar['bulk_rel'][k]:.1e})"
                            for k, v in tpar["max_rel"].items())
            lines.append(f"    vs PyTorch's FPTT trainer, {tpar['updates']} updates: {'PASS' if tpar['passed'] else 'FAIL'}; spike mismatches "
                         f"{sum(tpar['spike_mismatches'].values())} in {tpar.get('spike_checks', '?')} updates compared, ties {len(tpar['ties'])}; "
                         f"max relative difference {rel}")
            if "tensor_rel" in tpar:  # reports written before the per-tensor bound have none
                share = tpar["tensor_share"]
                worst = max(share, key=share.get)
                lines.append(f"    each tensor's median element: at most {share[worst]:.2g} of its bound ({worst} of "
                             f"{tpar['tensor_worst'][worst] or '-'}: {tpar['tensor_rel'][worst]:.1e})")
    lines.append(f"  device lint ({r.lint.device}, TensorRT {r.lint.tensorrt}): {r.lint.verdict.upper()}")
    lines.extend(f"    {f.level}: [{f.check}] {f.message}" for f in r.lint.findings if f.level != "info")
    lines.append(f"  report: {r.report}")
    return "\n".join(lines)
