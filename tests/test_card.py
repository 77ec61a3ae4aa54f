"""Model cards: figures against independent counts, the export report, and torch-free reading of .onnx."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_helpers import make_checkpoint

from fptt_edge.card import build_card, render_markdown
from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.devices import all_profiles, load_profile
from fptt_edge.export.pipeline import export_checkpoint

CONFIG = ModelConfig(input_shape=(2, 16, 16), num_classes=5, hidden=(24,), conv_channels=(6,))


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    run = tmp / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    x = (rng.random((12, 10, 2, 16, 16)) < 0.1).astype(np.float32)
    np.savez(tmp / "frames.npz", x=x, y=rng.integers(0, 5, 12))
    spec = {"task": "npz", "test_path": str(tmp / "frames.npz")}
    net = make_checkpoint(run / "model.pt", CONFIG, spec, seed=2, input_gain=3.0)
    export_checkpoint(run / "model.pt", run / "model.onnx", data=tmp / "frames.npz", streams=2, steps=40, precision_samples=6, log=lambda m: None)
    (run / "metrics.json").write_text(json.dumps({"method": "fptt", "test_accuracy": 0.75, "train_accuracy": 0.8, "epochs": [{}, {}],
                                                  "model_config": CONFIG.to_dict(), "input_spec": spec}))
    (tmp / "bptt").mkdir()
    (tmp / "bptt" / "metrics.json").write_text(json.dumps({"method": "bptt", "test_accuracy": 0.5, "train_accuracy": 0.6, "epochs": [{}],
                                                           "model_config": CONFIG.to_dict(), "input_spec": spec}))
    return tmp, run, net, x


def hooked_macs(net) -> int:
    """MACs of one step counted by hooks on every Conv2d and Linear (batch 1)."""
    total = []

    def hook(module, inp, out):
        if isinstance(module, torch.nn.Conv2d):
            total.append(out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1])
        else:
            total.append(out.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net.step(torch.zeros(1, *CONFIG.input_shape), net.initial_state(1))
    for h in handles:
        h.remove()
    return sum(total)


def test_card_figures(carded):
    tmp, run, net, x = carded
    card = build_card(run / "model.onnx", compare=[tmp / "bptt"], data=tmp / "frames.npz")
    assert card["parameters"] == sum(p.numel() for p in net.parameters())
    assert card["state"]["floats_per_stream"] == sum(int(np.prod(s)) for s in net.state_shapes(1))
    m = card["macs_per_step"]
    assert m["dense_total"] == hooked_macs(net)
    report = json.loads((run / "model.report.json").read_text())
    assert m["rates"]["l0"] == report["parity"]["spike_rate"]["l0"] and m["rates"]["input"] == pytest.approx(float((x != 0).mean()))
    assert 0 < m["at_rates_total"] < m["dense_total"]
    layers = {ly["name"]: ly for ly in card["layers"]}
    assert m["at_rates"]["l0"] == round(layers["l0"]["input_macs"] * m["rates"]["input"] + layers["l0"]["gate_macs"])
    assert card["accuracy"]["by_method"] == {"fptt": 0.75, "bptt": 0.5}
    assert card["export"]["parity"]["passed"] and card["export"]["fp16"]["accuracy"]
    assert len(card["devices"]) == len(all_profiles()) and all(d["estimate_fp32_us"] > 0 for d in card["devices"])
    nano = next(d for d in card["devices"] if d["profile"] == "jetson-nano")
    orin = next(d for d in card["devices"] if d["profile"] == "agx-orin-64gb")
    assert nano["estimate_fp32_us"] > orin["estimate_fp32_us"] and nano["estimate_fp16_us"] <= nano["estimate_fp32_us"]
    md = render_markdown(card)
    assert "Estimate, not a measurement" in md and "| bptt | 0.5 |" in md and "## Export checks" in md
    # each source of peak figures once, with the profiles that use it: every profile named exactly once
    sources = md.split("Where the peak figures come from:\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(sources) == len({p.peak_source for p in all_profiles()})
    named = [n for line in sources for n in line[2:].split(": ", 1)[0].split(", ")]
    assert sorted(named) == sorted(d["profile"] for d in card["devices"])
    assert card["memory"]["inference_bytes"]["total"] < card["memory"]["adaptation_bytes"]["total"]
    ckpt = build_card(run / "model.pt")  # the checkpoint finds the same report (same checkpoint hash) and its metrics
    assert ckpt["export"]["parity"] == card["export"]["parity"] and ckpt["accuracy"]["by_method"] == {"fptt": 0.75}


def test_card_cli_writes_markdown_and_json_and_reads_onnx_without_torch(carded, tmp_path):
    tmp, run, _, _ = carded
    res = CliRunner().invoke(main, ["card", str(run / "model.onnx"), "--device", "orin-nano-8gb", "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.card.md").read_text().startswith("# Model card: model.onnx")
    card = json.loads((tmp_path / "c.card.json").read_text())
    assert [d["profile"] for d in card["devices"]] == ["orin-nano-8gb"] and card["macs_per_step"]["rates"]["input"] is None
    res = CliRunner().invoke(main, ["card", str(tmp_path / "c.card.md")])
    assert res.exit_code == 2 and "expected a checkpoint (.pt) or an exported model (.onnx)" in res.output
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from fptt_edge.card import build_card\n"
            f"c = build_card({str(run / 'model.onnx')!r})\n"
            "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
            "print(json.dumps(c['parameters']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == build_card(run / "model.onnx")["parameters"]


def test_profiles_carry_peak_figures_with_a_source():
    for p in all_profiles():
        assert p.peak_fp32_gflops > 0 and p.peak_fp16_gflops >= p.peak_fp32_gflops and p.memory_bandwidth_gbs > 0 and p.peak_source
    assert load_profile("orin-nano-8gb").memory_bandwidth_gbs == 102.0


def test_card_markdown_shows_what_files_say_as_text(carded, tmp_path):
    """Class names (model metadata) and a compared run's method (metrics.json) are text in the card: they cannot start a
    section, forge a table row, run as HTML or a link, or send escapes to the terminal."""
    import onnx

    tmp, run, _, _ = carded
    model = onnx.load(str(run / "model.onnx"))
    names = ["a\n\n## Accuracy\n\n| fptt | 0.999 | 0.999 | 9 | `x` | yes |", "<script>alert(1)</script>", "\x1b[2J", "[c](http://e)", "e"]
    for p in model.metadata_props:
        if p.key == "fptt_edge.class_names":
            p.value = json.dumps(names)
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text(json.dumps({"method": "bptt |\n## Export checks\n", "test_accuracy": 0.5}))
    md = render_markdown(build_card(tmp_path / "m.onnx", compare=[tmp_path / "other"]))
    lines = md.splitlines()
    assert lines.count("## Accuracy") == 1 and lines.count("## Export checks") == 1, md
    assert not [line for line in lines if line.startswith("| fptt |")], md
    assert "<" not in md.replace("\\<", "") and "\x1b" not in md and "[c](" not in md, md
    assert "classes: a\\n\\n## Accuracy" in md and "\\<script>" in md and "| bptt \\|\\n## Export checks\\n | 0.5 |" in md
    card = build_card(tmp_path / "m.onnx")  # a device profile's name and source (a user's --device FILE.toml) are text too
    card["devices"][0].update(profile="mine|9|9|9|9|9|9 |\n## x", source="`x`|<b>")
    md = render_markdown(card)
    assert "| mine\\|9\\|9\\|9\\|9\\|9\\|9 \\|\\n## x" in md and "- mine\\|9" in md and "\\`x\\`\\|\\<b>" in md, md
    assert "## x" not in md.splitlines()


def test_card_markdown_shows_file_names_as_code_they_cannot_end(carded, tmp_path):
    """A file name is the user's, but it may hold a backtick, a newline or '|': its code span cannot be closed early, start
    a line, or split the table row of a compared run."""
    import shutil

    tmp, run, _, _ = carded
    model = tmp_path / "x`\n## Forged.onnx"
    shutil.copy(run / "model.onnx", model)
    other = tmp_path / "a|b`c"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"method": "bptt", "test_accuracy": 0.5}))
    md = render_markdown(build_card(model, compare=[other]))
    lines = md.splitlines()
    assert "## Forged.onnx" not in [line.strip("` ") for line in lines] and not [line for line in lines if line.startswith("## Forged")], md
    assert "x`\\n## Forged.onnx" in md and "`` " in md
    row = next(line for line in lines if line.startswith("| bptt |"))
    assert row.count(" | ") == 5 and "a\\|b`c" in row, row  # six cells, the name's '|' escaped
