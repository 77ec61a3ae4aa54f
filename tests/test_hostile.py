"""A corpus of hostile inputs, generated here (no binaries checked in): checkpoints, resume
checkpoints, ONNX files, npz data, labels CSV, command-line options and the runtime API.

Every case must be refused with one line (exit status 2 on the command line, a
:class:`FpttEdgeError` from the API), never a traceback, and leave every input file and
earlier artefact byte-identical (and a session's state unchanged). A failure message starts
with TRACEBACK (an exception escaped) or ACCEPTED (the input was taken), for counting.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_helpers import make_checkpoint, real_spec, restamp_metadata

from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.devices import PROFILE_DIR
from fptt_edge.errors import FpttEdgeError
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.runtime import RuntimeInputError, open_session
from fptt_edge.runtime.sparse import SparseInputSession

TINY = ["--task", "smnist", "--source", "digits8x8", "--mode", "row", "--hidden", "8", "--batch-size", "32",
        "--max-train-samples", "64", "--max-test-samples", "32", "--quiet"]
RESUMABLE = [*TINY, "--schedule", "constant"]  # --epochs may grow on --resume (a cosine schedule would refuse that first)
NMNIST_SPEC = {"task": "nmnist", "sensor_size": [34, 34, 2], "binning": {"by": "time", "steps": 20}, "downsample": 2, "normalisation": "binary"}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """The good artefacts every case starts from (never modified by a case)."""
    root = tmp_path_factory.mktemp("hostile")
    spec, shape = real_spec()
    if spec["task"] != "nmnist":
        spec, shape = dict(NMNIST_SPEC), (2, 17, 17)
    quiet = {"check": False, "log": lambda m: None}
    make_checkpoint(root / "m.pt", ModelConfig(input_shape=shape, num_classes=10, hidden=(16,)), spec, seed=1)
    export_checkpoint(root / "m.pt", root / "m.onnx", **quiet)
    export_checkpoint(root / "m.pt", root / "dyn.onnx", batch=None, **quiet)
    rng = np.random.default_rng(0)
    np.savez(root / "frames.npz", x=(rng.random((2, 6, *shape)) < 0.1).astype(np.float32), y=np.array([1, 2]))
    y3 = np.arange(24) % 3
    np.savez(root / "d3.npz", x=(rng.random((24, 6, 3)) < 0.2 + 0.5 * (y3[:, None, None] == np.arange(3))).astype(np.float32), y=y3)
    make_checkpoint(root / "n.pt", ModelConfig(input_shape=(3,), num_classes=3, hidden=(8,)), {"task": "npz", "test_path": str(root / "d3.npz")})
    ev = np.zeros(400, dtype=[("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int16)])
    ev["x"], ev["y"], ev["t"], ev["p"] = rng.integers(0, 34, 400), rng.integers(0, 34, 400), np.sort(rng.integers(0, 200_000, 400)), rng.integers(0, 2, 400)
    np.save(root / "ev.npy", ev)
    result = CliRunner().invoke(main, ["train", *RESUMABLE, "--epochs", "1", "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, pt=root / "m.pt", onnx=root / "m.onnx", dyn=root / "dyn.onnx", frames=root / "frames.npz",
                           npz_pt=root / "n.pt", d3=root / "d3.npz", events=root / "ev.npy", run=root / "run", shape=shape,
                           ckpt=(root / "m.pt").read_bytes(), payload=torch.load(root / "m.pt", weights_only=True))


# ---------------------------------------------------------------- assertions


def _snapshot(*folders) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def refused_cli(args, *folders, usage: bool = False, expect: str | None = None) -> str:
    """Run the CLI; assert exit 2, a one-line error, no traceback, and every file unchanged."""
    before = _snapshot(*folders)
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        pytest.fail(f"TRACEBACK {type(res.exception).__name__}: {str(res.exception)[:200]}")
    assert res.exit_code == 2, f"ACCEPTED (exit {res.exit_code}): {res.output[-300:]}"
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert "Traceback" not in res.output and lines[-1].startswith("Error:"), res.output
    assert usage or len(lines) == 1, f"more than one line: {res.output}"
    if expect is not None:
        assert expect in res.output, res.output
    after = _snapshot(*folders)
    assert {p: h for p, h in after.items() if p in before} == before, "an input or earlier artefact changed"
    assert not [p for p in after if p.name.endswith(".tmp")], "temporary files left behind"
    return res.output


def refused_api(fn, *args, **kwargs) -> FpttEdgeError:
    try:
        fn(*args, **kwargs)
    except FpttEdgeError as exc:
        assert "\n" not in str(exc).strip(), str(exc)
        return exc
    except Exception as exc:  # noqa: BLE001 - that is the point: it must not happen
        pytest.fail(f"TRACEBACK {type(exc).__name__}: {str(exc)[:200]}")
    pytest.fail("ACCEPTED")


# ---------------------------------------------------------------- checkpoints


def _zip_headers(data: bytes) -> tuple[list[int], list[int]]:
    """Offsets of the local and of the central-directory headers."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        local = [i.header_offset for i in z.infolist()]
    eocd = data.rfind(b"PK\x05\x06")
    count, _, cd = struct.unpack_from("<HII", data, eocd + 10)
    central, pos = [], cd
    for _ in range(count):
        central.append(pos)
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + n + m + k
    return local, central


def _patch(field: str, value, where=("local", "central")):
    """Set a 16-bit header field (version needed, flags, method) in every local and/or central header."""
    local_off, central_off = {"version": (4, 6), "flags": (6, 8), "method": (8, 10)}[field]

    def patch(data: bytes) -> bytes:
        buf, (local, central) = bytearray(data), _zip_headers(data)
        for kind, heads, off in (("local", local, local_off), ("central", central, central_off)):
            for h in heads if kind in where else []:
                struct.pack_into("<H", buf, h + off, value(struct.unpack_from("<H", buf, h + off)[0]))
        return bytes(buf)

    return patch


def _central_u32(offset: int, value: int, entry: int = 0):
    def patch(data: bytes) -> bytes:
        buf = bytearray(data)
        struct.pack_into("<I", buf, _zip_headers(data)[1][entry] + offset, value)
        return bytes(buf)

    return patch


def _eocd(offset: int, fmt: str, value: int):
    def patch(data: bytes) -> bytes:
        buf = bytearray(data)
        struct.pack_into(fmt, buf, data.rfind(b"PK\x05\x06") + offset, value)
        return bytes(buf)

    return patch


def _flip_member(index: int):
    """Flip one bit in the middle of a member's data (the CRC no longer matches)."""

    def patch(data: bytes) -> bytes:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = z.infolist()[index]
        n, m = struct.unpack_from("<HH", data, info.header_offset + 26)
        pos = info.header_offset + 30 + n + m + info.compress_size // 2
        buf = bytearray(data)
        buf[pos] ^= 0x10
        return bytes(buf)

    return patch


def _local_name_byte(data: bytes) -> bytes:
    buf = bytearray(data)
    buf[30 + 3] ^= 0x01  # a letter of the first member's name in its local header only
    return bytes(buf)


def _with_pickle(pkl: bytes):
    """The checkpoint's archive with data.pkl replaced by ``pkl``."""

    def patch(data: bytes) -> bytes:
        src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for info in src.infolist():
                z.writestr(info.filename, pkl if info.filename.endswith("/data.pkl") else src.read(info.filename))
        return out.getvalue()

    return patch


def _cut(frac: float):
    return lambda b: b[: int(len(b) * frac)]


def _cut_end(n: int):
    return lambda b: b[:-n]


MARKER = "PAYLOAD_RAN"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


BYTE_CASES = {
    **{f"truncated-{f}": _cut(f) for f in (0.0, 0.001, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999)},
    "truncated-minus-1": _cut_end(1), "truncated-minus-22": _cut_end(22), "truncated-minus-100": _cut_end(100),
    **{f"bitflip-member-{i}": _flip_member(i) for i in (0, 1, 3, 6, 14, 19, 20)},
    "bitflip-central-crc": _central_u32(16, 0x12345678),
    "zip-encrypted": _patch("flags", lambda v: v | 1),
    "zip-encrypted-central-only": _patch("flags", lambda v: v | 1, ("central",)),
    "zip-method-99": _patch("method", lambda v: 99),
    "zip-method-lzma": _patch("method", lambda v: 14),
    "zip-method-deflate-on-stored": _patch("method", lambda v: 8),
    "zip-method-bzip2": _patch("method", lambda v: 12),
    "zip-version-needed-9.9": _patch("version", lambda v: 99),
    "zip-version-needed-central-only": _patch("version", lambda v: 99, ("central",)),
    "zip-member-offset-past-end": _central_u32(42, 0x7FFFFF00),
    "zip-directory-offset-past-end": _eocd(16, "<I", 0x7FFFFF00),
    "zip-directory-count-zero": lambda b: _eocd(10, "<H", 0)(_eocd(8, "<H", 0)(b)),
    "zip-local-name-differs": _local_name_byte,
    "zip-prepended-junk": lambda b: b"\x00" * 64 + b,
    "pickle-posix-system": _with_pickle(f"cposix\nsystem\n(Vtouch {MARKER}\ntR.".encode()),
    "pickle-builtins-exec": _with_pickle(f"cbuiltins\nexec\n(Vopen('{MARKER}', 'w')\ntR.".encode()),
    "pickle-os-system-proto4": _with_pickle(pickle.dumps(_Evil(), protocol=4)),
    "pickle-garbage": _with_pickle(b"\x80\x02}q\x00(X\x01"),
    "random-bytes": lambda b: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "zip-of-text": lambda b: _zip_of({"archive/data.pkl": b"hello"}),
    "empty-zip": lambda b: _zip_of({}),
}


def _zip_of(members: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return out.getvalue()


def _sd(payload, fn):
    sd = {k: v.clone() for k, v in payload["state_dict"].items()}
    fn(sd)
    return sd


def _first_weight(sd) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 2)


def _set(sd, key, value):
    sd[key] = value


PAYLOAD_CASES = {  # payload -> crafted payload (saved with torch.save, so the zip itself is sound)
    "not-a-dict": lambda p: [1, 2, 3],
    "no-format": lambda p: {k: v for k, v in p.items() if k != "format"},
    "format-version-string": lambda p: {**p, "format_version": "1"},
    "format-version-bool": lambda p: {**p, "format_version": True},
    "format-version-99": lambda p: {**p, "format_version": 99},
    "kind-int": lambda p: {**p, "kind": 7},
    "kind-unknown": lambda p: {**p, "kind": "weird"},
    "no-state-dict": lambda p: {k: v for k, v in p.items() if k != "state_dict"},
    "model-config-list": lambda p: {**p, "model_config": [1, 2]},
    "model-config-unknown-key": lambda p: {**p, "model_config": {**p["model_config"], "evil": 1}},
    "model-config-hidden-text": lambda p: {**p, "model_config": {**p["model_config"], "hidden": "abc"}},
    "model-config-classes-float": lambda p: {**p, "model_config": {**p["model_config"], "num_classes": 2.5}},
    "model-config-huge-layer": lambda p: {**p, "model_config": {**p["model_config"], "hidden": [2 ** 40]}},
    "model-config-b-j0-nan": lambda p: {**p, "model_config": {**p["model_config"], "b_j0": float("nan")}},
    "model-config-beta-inf": lambda p: {**p, "model_config": {**p["model_config"], "beta_adapt": float("inf")}},
    "model-config-b-j0-text": lambda p: {**p, "model_config": {**p["model_config"], "b_j0": "0.1"}},
    "model-config-b-j0-beyond-float32": lambda p: {**p, "model_config": {**p["model_config"], "b_j0": -1e39}},
    "state-dict-list": lambda p: {**p, "state_dict": list(p["state_dict"].values())},
    "state-dict-non-tensor": lambda p: {**p, "state_dict": {**p["state_dict"], _first_weight(p["state_dict"]): [1.0]}},
    "state-dict-nan": lambda p: {**p, "state_dict": _sd(p, lambda sd: sd[_first_weight(sd)].view(-1)[3:5].fill_(float("nan")))},
    "state-dict-inf": lambda p: {**p, "state_dict": _sd(p, lambda sd: sd[_first_weight(sd)].view(-1)[0:1].fill_(float("inf")))},
    "state-dict-missing": lambda p: {**p, "state_dict": {k: v for k, v in list(p["state_dict"].items())[1:]}},
    "state-dict-wrong-shape": lambda p: {**p, "state_dict": _sd(p, lambda sd: _set(sd, _first_weight(sd), sd[_first_weight(sd)][:, :-1]))},
    "state-dict-int-dtype": lambda p: {**p, "state_dict": _sd(p, lambda sd: _set(sd, _first_weight(sd), sd[_first_weight(sd)].to(torch.int32)))},
    "class-names-int": lambda p: {**p, "class_names": 5},
    "class-names-count": lambda p: {**p, "class_names": ["a", "b", "c"]},
    "class-names-not-text": lambda p: {**p, "class_names": list(range(10))},
    "input-spec-text": lambda p: {**p, "input_spec": "nmnist"},
    "input-spec-smnist-no-mode": lambda p: {**p, "input_spec": {"task": "smnist"}},
    "input-spec-binning-text": lambda p: {**p, "input_spec": {**NMNIST_SPEC, "binning": "x"}},
    "metrics-list": lambda p: {**p, "metrics": [1]},
    "metrics-epochs-int": lambda p: {**p, "metrics": {"epochs": 5}},
    "training-list": lambda p: {**p, "training": [1]},
}
CKPT_CASES = [(name, cmd) for name in [*BYTE_CASES, *PAYLOAD_CASES] for cmd in ("info", "eval", "export")]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("name,cmd", CKPT_CASES, ids=[f"{n}-{c}" for n, c in CKPT_CASES])
def test_hostile_checkpoint(art, tmp_path, monkeypatch, name, cmd):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.pt"
    if name in BYTE_CASES:
        bad.write_bytes(BYTE_CASES[name](art.ckpt))
    else:
        torch.save(PAYLOAD_CASES[name](art.payload), bad)
    args = {"info": ["info", bad], "eval": ["eval", bad, "--max-samples", "5"],
            "export": ["export", bad, "-o", tmp_path / "out.onnx", "--parity-steps", "10", "--precision-samples", "4"]}[cmd]
    refused_cli(args, tmp_path, art.root)
    assert not (tmp_path / MARKER).exists(), "a pickle payload ran"


# ---------------------------------------------------------------- resume checkpoints


def _trainer(p, fn):
    t = {"optimizer": dict(p["trainer"]["optimizer"]), "traces": dict(p["trainer"]["traces"])}
    fn(t)
    return {**p, "trainer": t}


def _progress(p, **kw):
    return {**p, "progress": {**p["progress"], **kw}}


def _opt_state(t, fn):
    state = {k: dict(v) for k, v in t["optimizer"]["state"].items()}
    fn(state)
    t["optimizer"] = {**t["optimizer"], "state": state}


def _group_setting(key: str, value):
    """A case that sets ``key`` of every saved optimiser param group to ``value``."""
    return lambda p: _trainer(p, lambda t: t.update(optimizer={**t["optimizer"], "param_groups": [
        {**g, key: value} for g in t["optimizer"]["param_groups"]]}))


RESUME_CASES = {
    "no-training-config": lambda p: {k: v for k, v in p.items() if k != "training_config"},
    "training-config-list": lambda p: {**p, "training_config": [1]},
    "training-config-milestone-inf": lambda p: {**p, "training_config": {**p["training_config"], "milestones": [float("inf")]}},
    "traces-beta-huge-int": lambda p: _trainer(p, lambda t: t["traces"].update(beta=10 ** 400)),
    "training-config-unknown-key": lambda p: {**p, "training_config": {**p["training_config"], "evil": 1}},
    "training-config-bad-value": lambda p: {**p, "training_config": {**p["training_config"], "method": "magic"}},
    "no-progress": lambda p: {k: v for k, v in p.items() if k != "progress"},
    "progress-list": lambda p: {**p, "progress": [0, 0]},
    "progress-no-batch": lambda p: {**p, "progress": {k: v for k, v in p["progress"].items() if k != "batch"}},
    "progress-epoch-text": lambda p: _progress(p, epoch="x"),
    "progress-epoch-negative": lambda p: _progress(p, epoch=-1),
    "progress-epoch-past-history": lambda p: _progress(p, epoch=5),
    "progress-epoch-done-no-history": lambda p: {**_progress(p, epoch=2), "history": []},
    "progress-batch-huge": lambda p: _progress(p, batch=10 ** 6),
    "progress-batch-float": lambda p: _progress(p, batch=0.5),
    "progress-generator-text": lambda p: _progress(p, batch=1, generator="x"),
    "progress-generator-short": lambda p: _progress(p, batch=1, generator=torch.zeros(3, dtype=torch.uint8)),
    "progress-generator-invalid": lambda p: _progress(p, batch=1, generator=torch.zeros_like(p["progress"]["generator"])),
    "progress-loss-nan": lambda p: _progress(p, batch=1, loss_sum=float("nan")),
    "progress-seen-negative": lambda p: _progress(p, batch=1, seen=-5),
    "progress-elapsed-inf": lambda p: _progress(p, batch=1, elapsed=float("inf")),
    "progress-grad-stats-short": lambda p: _progress(p, batch=1, grad_stats=[1.0, 0.0]),
    "progress-grad-stats-text": lambda p: _progress(p, batch=1, grad_stats="many"),
    "progress-grad-stats-tensor": lambda p: _progress(p, batch=1, grad_stats=torch.zeros(4)),
    "progress-grad-stats-clipped-beyond-updates": lambda p: _progress(p, batch=1, grad_stats=[2.0, 3.0, 0.0, 1.0]),
    "progress-grad-stats-fractional-count": lambda p: _progress(p, batch=1, grad_stats=[2.5, 0.0, 0.0, 1.0]),
    "progress-grad-stats-nan-count": lambda p: _progress(p, batch=1, grad_stats=[float("nan"), 0.0, 0.0, 1.0]),
    "progress-grad-stats-count-huge": lambda p: _progress(p, batch=1, grad_stats=[1e300, 0.0, 0.0, 1.0]),
    "history-grad-norm-tensor": lambda p: {**p, "history": [{**r, "grad_norm": torch.zeros(4)} for r in p["history"]]},
    "history-grad-norm-extra-key": lambda p: {**p, "history": [{**r, "grad_norm": {**r["grad_norm"], "x": 1}} for r in p["history"]]},
    "history-grad-norm-negative": lambda p: {**p, "history": [{**r, "grad_norm": {**r["grad_norm"], "clipped": -1.0}} for r in p["history"]]},
    "no-history": lambda p: {k: v for k, v in p.items() if k != "history"},
    "history-dict": lambda p: {**p, "history": {"a": 1}},
    "history-not-records": lambda p: {**p, "history": [5]},
    "history-record-missing-keys": lambda p: {**p, "history": [{"epoch": 1}]},
    "no-trainer": lambda p: {k: v for k, v in p.items() if k != "trainer"},
    "trainer-list": lambda p: {**p, "trainer": [1]},
    "trainer-no-optimizer": lambda p: {**p, "trainer": {"traces": p["trainer"]["traces"]}},
    "traces-short": lambda p: _trainer(p, lambda t: t["traces"].update(wbar=[])),
    "traces-wrong-shape": lambda p: _trainer(p, lambda t: t["traces"].update(wbar=[w[:-1] for w in t["traces"]["wbar"]])),
    "traces-nan": lambda p: _trainer(p, lambda t: t["traces"].update(lam=[torch.full_like(w, float("nan")) for w in t["traces"]["lam"]])),
    "traces-anchor-nan": lambda p: _trainer(p, lambda t: t["traces"].update(anchor=[w * float("nan") for w in t["traces"]["anchor"]])),
    "traces-anchor-wrong-shape": lambda p: _trainer(p, lambda t: t["traces"].update(anchor=[w[:-1] for w in t["traces"]["anchor"]])),
    "traces-anchor-short": lambda p: _trainer(p, lambda t: t["traces"].update(anchor=[])),
    "traces-anchor-text": lambda p: _trainer(p, lambda t: t["traces"].update(anchor="x")),
    "traces-alpha-zero": lambda p: _trainer(p, lambda t: t["traces"].update(alpha=0.0)),
    "traces-beta-text": lambda p: _trainer(p, lambda t: t["traces"].update(beta="x")),
    "optimizer-state-wrong-shape": lambda p: _trainer(p, lambda t: _opt_state(t, lambda s: s[0].update(exp_avg=s[0]["exp_avg"][:-1]))),
    "optimizer-state-nan": lambda p: _trainer(p, lambda t: _opt_state(t, lambda s: s[0].update(exp_inf=s[0]["exp_inf"] * float("nan")))),
    "optimizer-step-negative": lambda p: _trainer(p, lambda t: _opt_state(t, lambda s: s[0].update(step=torch.tensor(-1.0)))),
    "optimizer-step-per-weight": lambda p: _trainer(p, lambda t: _opt_state(t, lambda s: s[0].update(step=torch.ones_like(s[0]["exp_avg"])))),
    "optimizer-step-fraction": lambda p: _trainer(p, lambda t: _opt_state(t, lambda s: s[0].update(step=torch.tensor(2.5)))),
    "optimizer-groups-empty": lambda p: _trainer(p, lambda t: t.update(optimizer={**t["optimizer"], "param_groups": []})),
    "optimizer-lr-text": lambda p: _trainer(p, lambda t: t.update(optimizer={**t["optimizer"], "param_groups": [
        {**g, "lr": "fast"} for g in t["optimizer"]["param_groups"]]})),
    **{f"optimizer-{k}-{v}-crafted": _group_setting(k, v)
       for k, v in (("weight_decay", 0.5), ("weight_decay", 1e300), ("eps", 0.0), ("betas", (0.0, 0.0)), ("params", [99]))},
    "kind-model": lambda p: {**p, "kind": "model"},
}


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_hostile_resume_checkpoint(art, tmp_path, name):
    out = tmp_path / "run"
    shutil.copytree(art.run, out)
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save(RESUME_CASES[name](payload), out / "checkpoint.pt")
    said = refused_cli(["train", *RESUMABLE, "--epochs", "2", "--out", out, "--resume"], tmp_path, art.root)
    assert "these differ" not in said, f"refused for the settings, not for the crafted field: {said}"
    if "grad" in name:
        assert "grad_" in said or "plain values" in said, said  # refused for that field (a tensor: by the plain-values check)
    if name.endswith("-crafted"):
        assert "optimiser" in said, said  # not blamed on settings the user gave


# ---------------------------------------------------------------- ONNX files


def _onnx_meta(restamp: bool = True, **changes):
    """Rewrite metadata entries (value None removes the entry); the graph and its checksum stay, the metadata's checksum
    is re-stamped (a file crafted consistently) unless ``restamp`` is False (a hand edit)."""

    def make(art, path):
        import onnx

        model = onnx.load(str(art.onnx))
        props = {p.key: p.value for p in model.metadata_props}
        for key, value in changes.items():
            key = f"fptt_edge.{key}"
            value = value(props.get(key)) if callable(value) else value
            if value is None:
                props.pop(key, None)
            else:
                props[key] = value
        del model.metadata_props[:]
        for k, v in props.items():
            model.metadata_props.add(key=k, value=v)
        if restamp:
            restamp_metadata(model)
        onnx.save(model, str(path))

    return make


def _state_edit(fn):
    return lambda v: json.dumps(fn(json.loads(v)))


def _input_edit(**kw):
    return lambda v: json.dumps({**json.loads(v), **kw})


def _flip_weight(where: float, name_index: int = -1):
    """Flip one bit inside an initializer's raw bytes (the largest one by default)."""

    def make(art, path):
        import onnx

        data = bytearray(art.onnx.read_bytes())
        inits = sorted(onnx.load(str(art.onnx)).graph.initializer, key=lambda t: len(t.raw_data))
        raw = inits[name_index].raw_data
        pos = bytes(data).find(raw) + int((len(raw) - 1) * where)
        data[pos] ^= 0x04
        path.write_bytes(bytes(data))

    return make


def _bytes(fn):
    def make(art, path):
        path.write_bytes(fn(art.onnx.read_bytes()))

    return make


def _external(location: str):
    """The largest initializer moved to external data at ``location`` (relative to the model)."""

    def make(art, path):
        import onnx

        model = onnx.load(str(art.onnx))
        t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        n = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(n))):
            t.external_data.add(key=k, value=v)
        (path.parent.parent / "secret.bin").write_bytes(b"TOPSECRET" * (n // 9 + 1))
        onnx.save(model, str(path))

    return make


def _symlinked_external(art, path):
    (path.parent / "inside.bin").symlink_to(path.parent.parent / "secret.bin")
    _external("inside.bin")(art, path)


def _logits_dim_edited(art, path):
    """The graph's declared logits size edited (+1), class_names edited to match, the checksum re-stamped: the graph computes 10."""
    import onnx

    from fptt_edge.contract import stamp_checksum

    model = onnx.load(str(art.onnx))
    logits = next(p.value for p in model.metadata_props if p.key == "fptt_edge.logits")
    out = next(o for o in model.graph.output if o.name == logits)
    out.type.tensor_type.shape.dim[1].dim_value += 1
    for p in model.metadata_props:
        if p.key == "fptt_edge.class_names":
            p.value = json.dumps([*json.loads(p.value), "extra"])
    stamp_checksum(model)
    onnx.save(model, str(path))


def _shape(i, shape):
    return _state_edit(lambda s: [dict(e, shape=shape) if j == i else e for j, e in enumerate(s)])


ONNX_CASES = {
    "empty": _bytes(lambda b: b""),
    "random-7": _bytes(lambda b: np.random.default_rng(2).integers(0, 256, 7, dtype=np.uint8).tobytes()),
    "random-300": _bytes(lambda b: np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes()),
    "random-5000": _bytes(lambda b: np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
    **{f"truncated-{f}": _bytes(_cut(f)) for f in (0.1, 0.5, 0.9, 0.99)},
    "truncated-minus-1": _bytes(_cut_end(1)),
    "bitflip-weight-start": _flip_weight(0.0),
    "bitflip-weight-middle": _flip_weight(0.5),
    "bitflip-weight-end": _flip_weight(1.0),
    "bitflip-small-initializer": _flip_weight(0.5, -2),
    "checksum-removed": _onnx_meta(graph_sha256=None),
    "metadata-hand-edited": _onnx_meta(restamp=False, class_names=lambda v: json.dumps([f"x{c}" for c in json.loads(v)])),
    "checksum-tampered": _onnx_meta(graph_sha256="0" * 64),
    "model-type-other": _onnx_meta(model_type="something/else"),
    "contract-version-text": _onnx_meta(contract_version="one"),
    "contract-version-newer": _onnx_meta(contract_version="99"),
    "state-json-broken": _onnx_meta(state="[{"),
    "state-object": _onnx_meta(state="{}"),
    "state-empty": _onnx_meta(state="[]"),
    "state-entry-text": _onnx_meta(state='["l0.u"]'),
    "state-shape-differs": _onnx_meta(state=_shape(0, [1, 99])),
    "state-shape-negative": _onnx_meta(state=_shape(0, [1, -16])),
    "state-shape-float": _onnx_meta(state=_shape(0, [1, 1.5])),
    "state-shape-empty": _onnx_meta(state=_shape(0, [])),
    "state-name-unknown": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], name="nope"), *s[1:]])),
    "state-output-unknown": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], output="nope"), *s[1:]])),
    "state-duplicated": _onnx_meta(state=_state_edit(lambda s: [*s, s[0]])),
    "state-missing-one": _onnx_meta(state=_state_edit(lambda s: s[1:])),
    "state-init-nan": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], init=float("nan")), *s[1:]])),
    "state-init-inf": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], init=float("inf")), *s[1:]])),
    "state-init-beyond-float32": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], init=1e308), *s[1:]])),
    "state-init-text": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], init="zero"), *s[1:]])),
    "state-dtype-float64": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], dtype="float64"), *s[1:]])),
    "state-extra-field": _onnx_meta(state=_state_edit(lambda s: [dict(s[0], evil=1), *s[1:]])),
    "class-names-count": _onnx_meta(class_names='["a", "b", "c"]'),
    "class-names-text": _onnx_meta(class_names='"abc"'),
    "class-names-numbers": _onnx_meta(class_names=json.dumps(list(range(10)))),
    "class-names-duplicate": _onnx_meta(class_names=json.dumps(["same"] * 10)),
    "logits-dim-edited": _logits_dim_edited,
    "input-name-unknown": _onnx_meta(input=_input_edit(name="nope")),
    "input-shape-differs": _onnx_meta(input=_input_edit(shape=[1, 5])),
    "input-shape-text": _onnx_meta(input=_input_edit(shape="big")),
    "input-source-list": _onnx_meta(input=_input_edit(source=[1])),
    "input-not-object": _onnx_meta(input="[1, 2]"),
    "logits-unknown": _onnx_meta(logits="nope"),
    "logits-is-state": _onnx_meta(logits="l0.u_out"),
    "model-config-list": _onnx_meta(model_config="[1]"),
    "opset-text": _onnx_meta(opset="x"),
    "parameter-map-list": _onnx_meta(parameter_map="[1]"),
    "exporter-number": _onnx_meta(exporter="5"),
    "exporter-nested-deep": _onnx_meta(exporter="[" * 100_000 + "]" * 100_000),
    "state-nested-deep": _onnx_meta(state="[" * 100_000 + "]" * 100_000),
    "external-data-parent": _external("../secret.bin"),
    "external-data-absolute": lambda art, path: _external(str(path.parent.parent / "secret.bin"))(art, path),
    "external-data-symlink-out": _symlinked_external,
}
ONNX_COMMANDS = {"info": lambda m, a: ["info", m], "run": lambda m, a: ["run", m, "--npz", a.frames],
                 "bench": lambda m, a: ["bench", m, "--steps", "10", "--backends", "ort", "--streams", "1"]}
INSPECT_ONLY = {"bitflip-weight-start", "bitflip-weight-middle", "bitflip-weight-end", "bitflip-small-initializer", "checksum-removed",
                "checksum-tampered", "logits-dim-edited", "metadata-hand-edited"}  # info shows what a file claims; run and bench verify or run it
ONNX_RUNS = [(n, c) for n in ONNX_CASES for c in ONNX_COMMANDS if not (c == "info" and n in INSPECT_ONLY)]


@pytest.mark.parametrize("name,cmd", ONNX_RUNS, ids=[f"{n}-{c}" for n, c in ONNX_RUNS])
def test_hostile_onnx(art, tmp_path, name, cmd):
    folder = tmp_path / "models"
    folder.mkdir()
    bad = folder / "bad.onnx"
    ONNX_CASES[name](art, bad)
    out = refused_cli(ONNX_COMMANDS[cmd](bad, art), tmp_path, art.root)
    assert "TOPSECRET" not in out
    if name == "metadata-hand-edited":
        assert "metadata" in out and "changed since export" in out, out


def _source_edit(**kw):
    return _onnx_meta(input=lambda v: json.dumps({**json.loads(v), "source": {**json.loads(v)["source"], **kw}}))


BINNING_CASES = {  # the event binning a model records, crafted: refused before any frame is made
    "sensor-size-2d": _source_edit(sensor_size=[34, 34]),
    "sensor-size-float": _source_edit(sensor_size=[34.0, 34, 2]),
    "sensor-size-huge": _source_edit(sensor_size=[34, 34, 10 ** 9]),
    "downsample-zero": _source_edit(downsample=0),
    "downsample-text": _source_edit(downsample="2"),
    "steps-text": _source_edit(binning={"by": "time", "steps": "abc"}),
    "steps-negative": _source_edit(binning={"by": "time", "steps": -3}),
    "steps-huge": _source_edit(binning={"by": "time", "steps": 10 ** 12}),
    "by-unknown": _source_edit(binning={"by": "magic", "steps": 20}),
    "normalisation-unknown": _source_edit(normalisation="cubic"),
}


@pytest.mark.parametrize("name", list(BINNING_CASES))
def test_hostile_event_binning(art, tmp_path, name):
    bad = tmp_path / "bad.onnx"
    BINNING_CASES[name](art, bad)
    refused_cli(["run", bad, "--events", art.events], tmp_path, art.root)


ENGINE_CONTRACTS = {  # MODEL.engine.json beside an engine: malformed in every way a hand edit can
    "metadata-text": lambda meta: json.dumps({"metadata": "abc"}),
    "metadata-list": lambda meta: json.dumps({"metadata": [1, 2]}),
    "version-list": lambda meta: json.dumps({"metadata": {**meta, "fptt_edge.contract_version": [1]}}),
    "input-object": lambda meta: json.dumps({"metadata": {**meta, "fptt_edge.input": json.loads(meta["fptt_edge.input"])}}),
    "nested-deep": lambda meta: '{"metadata":' + "[" * 100_000 + "]" * 100_000 + "}",
    "not-json": lambda meta: "{",
}


@pytest.mark.parametrize("name", list(ENGINE_CONTRACTS))
def test_hostile_engine_contract(art, tmp_path, name):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(art.onnx)).metadata_props}
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    (tmp_path / "m.engine.json").write_text(ENGINE_CONTRACTS[name](meta))
    refused_cli(["info", engine], tmp_path)


# ---------------------------------------------------------------- npz data


def _npz(**arrays):
    def make(path, frame):
        np.savez(path, **{k: (v(frame) if callable(v) else v) for k, v in arrays.items()})

    return make


def _x(n=4, t=5, dtype=np.float32, fill=0.0):
    return lambda frame: np.full((n, t, *frame), fill, dtype=dtype)


Y4 = np.array([0, 1, 2, 1])
NPZ_CASES = {
    "zero-length": _npz(x=_x(t=0), y=Y4),
    "no-samples": _npz(x=_x(n=0), y=np.zeros(0, np.int64)),
    "nan": _npz(x=_x(fill=np.nan), y=Y4),
    "inf": _npz(x=_x(fill=np.inf), y=Y4),
    "x-beyond-float32": _npz(x=_x(dtype=np.float64, fill=1e300), y=Y4),
    "x-timedelta": _npz(x=_x(dtype="m8[s]"), y=Y4),
    "x-complex": _npz(x=_x(dtype=np.complex64), y=Y4),
    "x-text": _npz(x=lambda f: np.full((4, 5, *f), "1.0"), y=Y4),
    "x-object": lambda path, f: np.savez(path, x=np.empty((4, 5, *f), dtype=object), y=Y4),
    "x-2d": _npz(x=np.zeros((4, 5), np.float32), y=Y4),
    "x-empty-frame": _npz(x=np.zeros((4, 5, 0), np.float32), y=Y4),
    "no-x": _npz(y=Y4),
    "no-y": _npz(x=_x()),
    "y-float": _npz(x=_x(), y=Y4.astype(np.float32)),
    "y-2d": _npz(x=_x(), y=Y4[:, None]),
    "y-negative": _npz(x=_x(), y=-Y4 - 1),
    "y-huge": _npz(x=_x(), y=np.array([0, 1, 2, 2 ** 62])),
    "y-short": _npz(x=_x(), y=Y4[:2]),
    "lengths-zero": _npz(x=_x(), y=Y4, lengths=np.array([0, 5, 5, 5])),
    "lengths-past-end": _npz(x=_x(), y=Y4, lengths=np.array([6, 5, 5, 5])),
    "lengths-negative": _npz(x=_x(), y=Y4, lengths=np.array([-1, 5, 5, 5])),
    "lengths-float": _npz(x=_x(), y=Y4, lengths=np.full(4, 2.5)),
    "lengths-2d": _npz(x=_x(), y=Y4, lengths=np.full((4, 1), 2)),
    "lengths-bool": _npz(x=_x(), y=Y4, lengths=np.ones(4, bool)),
    "period-zero": _npz(x=_x(), y=Y4, period_us=np.int64(0)),
    "period-negative": _npz(x=_x(), y=Y4, period_us=np.int64(-10_000)),
    "period-float": _npz(x=_x(), y=Y4, period_us=np.float64(1e4)),
    "period-beyond-an-hour": _npz(x=_x(), y=Y4, period_us=np.uint64(2 ** 63 + 1)),
    "period-per-sample": _npz(x=_x(), y=Y4, period_us=np.full(4, 10_000)),
    "not-a-zip": lambda path, f: path.write_bytes(b"not an npz file at all"),
    "truncated": lambda path, f: (_npz(x=_x(), y=Y4)(path, f), path.write_bytes(path.read_bytes()[:200])),
}
RUN_NPZ = ["zero-length", "no-samples", "nan", "inf", "x-object", "x-2d", "x-empty-frame", "no-x", "not-a-zip", "truncated",
           *[n for n in NPZ_CASES if n.startswith("period-")]]
NPZ_RUNS = [(n, "train") for n in NPZ_CASES] + [(n, "export") for n in NPZ_CASES] + [(n, "run") for n in RUN_NPZ]
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("name,cmd", [pytest.param(n, c, id=f"{n}-{c}", marks=[pytest.mark.xfail(reason=KNOWN_GAPS[n, c])] if (n, c) in KNOWN_GAPS else [])
                                      for n, c in NPZ_RUNS])
def test_hostile_npz(art, tmp_path, name, cmd):
    bad = tmp_path / "bad.npz"
    NPZ_CASES[name](bad, art.shape if cmd == "run" else (3,))
    args = {"train": ["train", "--task", "npz", "--train", bad, "--test", art.d3, "--epochs", "1", "--hidden", "8", "--batch-size", "4",
                      "--out", tmp_path / "out", "--quiet"],
            "export": ["export", art.npz_pt, "--data", bad, "-o", tmp_path / "e.onnx", "--parity-steps", "10", "--precision-samples", "4"],
            "run": ["run", art.onnx, "--npz", bad]}[cmd]
    refused_cli(args, tmp_path, art.root)


def _rec(T=8, **fields):
    """A continuous recording for ``run --npz REC --continuous``: ``x`` [T, *frame] unless given, and ``fields``."""
    return lambda path, f: np.savez(path, **{"x": np.zeros((T, *f), np.float32), **fields})


TIMES = np.arange(8, dtype=np.int64) * 10_000
CONTINUOUS_CASES = {  # name -> (writer, extra run options); every case is refused before a step
    "labels-as-y": (_rec(y=np.array([1])), ["--window-ms", "10"]),
    "cut-by-lengths": (_rec(lengths=np.array([4])), ["--window-ms", "10"]),
    "several-recordings": (lambda path, f: np.savez(path, x=np.zeros((2, 8, *f), np.float32)), ["--window-ms", "10"]),
    "no-samples": (_rec(T=0), ["--window-ms", "10"]),
    "nan": (lambda path, f: np.savez(path, x=np.full((8, *f), np.nan, np.float32)), ["--window-ms", "10"]),
    "foreign-frame": (lambda path, f: np.savez(path, x=np.zeros((8, 3), np.float32)), ["--window-ms", "10"]),
    "t-float": (_rec(t=TIMES.astype(np.float64)), []),
    "t-short": (_rec(t=TIMES[:7]), []),
    "t-2d": (_rec(t=TIMES[:, None]), []),
    "t-decreasing": (_rec(t=TIMES[::-1].copy()), []),
    "t-repeated": (_rec(t=np.r_[TIMES[:4], TIMES[3:7]]), []),
    "t-beyond-int64": (_rec(T=2, t=np.array([0, 2 ** 63 + 5], np.uint64)), []),
    "t-at-the-start-of-int64": (_rec(T=2, t=np.array([-2 ** 63, -2 ** 63 + 1], np.int64)), []),
    "t-period-beyond-int64": (_rec(T=2, t=np.array([-2 ** 63 + 1, 2 ** 63 - 1], np.int64)), []),
    "t-one-sample": (_rec(T=1, t=TIMES[:1]), []),
    "t-bool": (_rec(t=np.ones(8, bool)), []),
    "t-objects": (_rec(t=np.array(list(TIMES), dtype=object)), []),
    "x-complex": (lambda path, f: np.savez(path, x=np.zeros((8, *f), np.complex64)), ["--window-ms", "10"]),
    "x-objects": (lambda path, f: np.savez(path, x=np.empty((8, *f), dtype=object)), ["--window-ms", "10"]),
    "x-beyond-float32": (lambda path, f: np.savez(path, x=np.full((8, *f), 1e300)), ["--window-ms", "10"]),
    "t-and-a-period": (_rec(t=TIMES), ["--window-ms", "10"]),
    "t-and-period-us": (_rec(t=TIMES, period_us=np.int64(10_000)), []),
    "period-us-and-a-period": (_rec(period_us=np.int64(10_000)), ["--window-ms", "10"]),
    "period-us-zero": (_rec(period_us=np.int64(0)), []),
    "period-us-per-sample": (_rec(period_us=np.full(8, 10_000)), []),
    "neither-times-nor-a-period": (_rec(), []),
    "not-a-zip": (lambda path, f: path.write_bytes(b"not an npz file at all"), ["--window-ms", "10"]),
    "truncated": (lambda path, f: (_rec()(path, f), path.write_bytes(path.read_bytes()[:200])), ["--window-ms", "10"]),
}


@pytest.mark.parametrize("name", list(CONTINUOUS_CASES))
def test_hostile_continuous_recording(art, tmp_path, name):
    """``run --npz REC --continuous`` (one stream of samples, never cut) on a crafted recording: one line, exit 2."""
    write, extra = CONTINUOUS_CASES[name]
    write(tmp_path / "rec.npz", art.shape)
    labels = tmp_path / "labels.csv"
    labels.write_text("class,startTime_usec,endTime_usec\n1,0,50000\n")
    out = refused_cli(["run", art.onnx, "--npz", tmp_path / "rec.npz", "--continuous", "--labels", labels, *extra], tmp_path, art.root)
    if name == "neither-times-nor-a-period":
        assert "give the sample period (period_us in the file, or --window-ms)" in out


SEGMENT_CASES = {  # one .npz recording cut into its labelled segments (run --npz REC --labels CSV): (writer, labels rows, expected)
    "no-times": (_rec(), "1,0,50000\n", "no sample times"),
    "segment-past-the-recording": (_rec(t=TIMES), "1,0,50000\n2,900000,990000\n", "holds no sample"),
    "segment-between-samples": (_rec(t=TIMES), "1,10001,19999\n", "holds no sample"),
    "recordings-with-y": (lambda path, f: np.savez(path, x=np.zeros((2, 8, *f), np.float32), y=np.array([1, 2])), "1,0,50000\n",
                          "y describes separate recordings"),
    "labels-on-another-clock": (_rec(t=TIMES + 10 ** 12), "1,0,50000\n2,60000,70000\n", "none of its 2 segments overlaps the recording"),
    "t-one-sample-outside": (_rec(T=1, t=TIMES[1:2]), "1,0,10000\n", "none of its 1 segments overlaps the recording (10000 to 10001 us)"),
    "period-us-per-sample": (_rec(period_us=np.full(8, 10_000)), "1,0,50000\n", "field 'period_us' must be one whole number"),
    "t-and-period-us": (_rec(t=TIMES, period_us=np.int64(10_000)), "1,0,50000\n", "keep one"),
    "class-past-the-model": (_rec(t=TIMES), "10,0,50000\n", "class 10 is outside the model's 10 classes, numbered 0..9 in the CSV"),
}


@pytest.mark.parametrize("name", list(SEGMENT_CASES))
def test_hostile_labelled_segments_of_a_recording(art, tmp_path, name):
    write, rows, expected = SEGMENT_CASES[name]
    write(tmp_path / "rec.npz", art.shape)
    (tmp_path / "labels.csv").write_text(rows)
    refused_cli(["run", art.onnx, "--npz", tmp_path / "rec.npz", "--labels", tmp_path / "labels.csv"], tmp_path, art.root, expect=expected)


def test_a_sample_belongs_to_the_segments_holding_its_time(art, tmp_path):
    """Boundaries: a sample belongs to a segment when start <= its time < end; overlapping segments share samples; a
    recording of one timed sample is cut too. The steps are counted against the times by hand."""
    _rec(t=TIMES)(tmp_path / "rec.npz", art.shape)
    rows = [(1, 10_000, 30_000), (2, 20_000, 20_001), (3, 0, 10_000), (4, 65_000, 10 ** 9), (5, 15_000, 45_000)]
    (tmp_path / "labels.csv").write_text("".join(f"{c},{a},{b}\n" for c, a, b in rows))
    res = CliRunner().invoke(main, ["run", str(art.onnx), "--npz", str(tmp_path / "rec.npz"), "--labels", str(tmp_path / "labels.csv"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [r["steps"] for r in out["results"]] == [int(((TIMES >= a) & (TIMES < b)).sum()) for _, a, b in rows] == [2, 1, 1, 1, 3]
    assert [r["label"] for r in out["results"]] == [f"class-{c}" for c, _, _ in rows]
    _rec(T=1, t=TIMES[3:4])(tmp_path / "one.npz", art.shape)
    (tmp_path / "one.csv").write_text("1,30000,30001\n")
    res = CliRunner().invoke(main, ["run", str(art.onnx), "--npz", str(tmp_path / "one.npz"), "--labels", str(tmp_path / "one.csv"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["steps"] == 1, res.output


@pytest.mark.parametrize("extra, expect", [
    (["--continuous", "--every", "3"], "Error: --every applies to recordings streamed one by one, not to --continuous"),
    (["--continuous", "--no-reset", "--every", "5"], "Error: --every, --no-reset apply to recordings streamed one by one, not to --continuous"),
    (["--window-ms", "10"], "Error: --window-ms applies to --continuous only"),
    (["--threshold", "0.5", "--hold", "2"], "Error: --threshold, --hold apply to --continuous only"),
    (["--continuous", "--events", "rec.npz"], "Error: give exactly one of --events FILE or --npz FILE"),
])
def test_run_options_that_do_not_apply_to_a_continuous_npz(art, tmp_path, extra, expect):
    """Options ``run --npz`` would ignore, with or without --continuous, are refused by name (before the files are read)."""
    _rec(t=TIMES)(tmp_path / "rec.npz", art.shape)
    (tmp_path / "labels.csv").write_text("class,startTime_usec,endTime_usec\n1,0,50000\n")
    args = [a if a not in ("labels.csv", "rec.npz") else tmp_path / a for a in extra]
    out = refused_cli(["run", art.onnx, "--npz", tmp_path / "rec.npz", *args], tmp_path, art.root)
    assert out.startswith(expect), out


# ---------------------------------------------------------------- labels CSV

LABEL_CASES = {
    "inf": "1,inf,5000\n",
    "minus-inf": "1,-inf,5000\n",
    "nan": "1,0,nan\n",
    "overflow-float": "1,1e400,2e400\n",
    "beyond-int64": "1,0,1e30\n",
    "header-only": "class,startTime_usec,endTime_usec\n",
    "empty": "",
    "blank-lines": "\n\n  \n",
    "two-fields": "1,0\n",
    "four-fields": "1,0,5000,7\n",
    "fractional-class": "1.5,0,5000\n",
    "negative-class": "-1,0,5000\n",
    "negative-time": "1,-5,5000\n",
    "ends-before-start": "1,5000,1000\n",
    "text-values": "1,zero,5000\n",
    "binary-junk": b"\xff\xfe\x00\x81garbage\x00",
}


@pytest.mark.parametrize("name", list(LABEL_CASES))
def test_hostile_labels_csv(art, tmp_path, name):
    labels = tmp_path / "labels.csv"
    content = LABEL_CASES[name]
    labels.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = refused_cli(["run", art.onnx, "--events", art.events, "--labels", labels], tmp_path, art.root)
    assert "garbage" not in out  # no file contents echoed


@pytest.mark.parametrize("recording", ["events", "samples"])
def test_continuous_run_refuses_labels_that_miss_the_recording(art, tmp_path, recording):
    """Labels whose segments all lie outside the recording (another recording's, or another clock's) would score every
    segment missed: refused, with the recording's span."""
    labels = tmp_path / "labels.csv"
    labels.write_text("class,startTime_usec,endTime_usec\n1,500000000,500050000\n2,600000000,600050000\n")
    _rec(t=TIMES + 10 ** 12)(tmp_path / "rec.npz", art.shape)
    source = ["--events", art.events, "--window-ms", "10"] if recording == "events" else ["--npz", tmp_path / "rec.npz"]
    out = refused_cli(["run", art.onnx, *source, "--continuous", "--labels", labels], tmp_path, art.root)
    assert "none of its 2 segments overlaps the recording" in out


def test_continuous_run_refuses_labels_outside_the_models_classes(art, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("class,startTime_usec,endTime_usec\n99,0,5000\n")
    refused_cli(["run", art.onnx, "--events", art.events, "--labels", labels, "--continuous", "--window-ms", "10"], tmp_path, art.root,
                expect="outside the model's")


@pytest.mark.parametrize("window", [1e30, 2.0 ** 64, 1e12])
def test_continuous_run_refuses_an_absurd_window_in_the_metadata(art, tmp_path, window):
    bad = tmp_path / "bad.onnx"
    _source_edit(window_us=window)(art, bad)
    refused_cli(["run", bad, "--events", art.events, "--continuous"], tmp_path, art.root, expect="window")


# ---------------------------------------------------------------- options and writers


def _copy(art, tmp_path, name: str, src: Path | None = None) -> Path:
    dst = tmp_path / name
    shutil.copy(src or art.pt, dst)
    return dst


_HELD: list = []


@pytest.fixture(scope="module", autouse=True)
def _release_held_locks():
    """Close the lock files the "busy" cases hold once this module's tests are done."""
    yield
    while _HELD:
        held = _HELD.pop()
        os.close(held) if isinstance(held, int) else held.close()


def _held_lock(folder: Path):
    """Hold ``folder/.lock`` as a running training would."""
    folder.mkdir()
    f = open(folder / ".lock", "w")  # noqa: SIM115 - held until the process ends
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(f)


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _efbig(*_a, **_k):
    raise OSError(errno.EFBIG, "File too large")


def _enospc_after(calls: int):
    """``os.fsync`` that syncs ``calls`` times, then finds the disk full."""
    real, seen = os.fsync, []

    def fsync(fd):
        seen.append(fd)
        if len(seen) > calls:
            _enospc()
        real(fd)
    return fsync


def _earlier_export(a, t) -> Path:
    """An earlier export's three files at ``t/x.*`` (what a failed export must leave as they were)."""
    for suffix, src in ((".onnx", a.onnx), (".report.json", None), (".fp16.onnx", a.dyn)):
        (t / f"x{suffix}").write_bytes(src.read_bytes() if src else b'{"earlier": "report"}')
    return t / "x.onnx"


def _held_folder_lock(folder: Path) -> Path:
    """Another export writing into ``folder``: its advisory lock on the folder, held until the process ends."""
    folder.mkdir(exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(fd)
    return folder


OPTION_CASES = {
    "bench-streams-letter": lambda a, t, mp: (["bench", a.dyn, "--streams", "1,a", "--steps", "10", "--backends", "ort"], True),
    "bench-streams-zero": lambda a, t, mp: (["bench", a.dyn, "--streams", "0", "--steps", "10", "--backends", "ort"], True),
    "bench-streams-negative": lambda a, t, mp: (["bench", a.dyn, "--streams", "-2", "--steps", "10", "--backends", "ort"], True),
    "bench-streams-float": lambda a, t, mp: (["bench", a.dyn, "--streams", "1.5", "--steps", "10", "--backends", "ort"], True),
    "bench-streams-empty": lambda a, t, mp: (["bench", a.dyn, "--streams", ",,", "--steps", "10", "--backends", "ort"], True),
    "train-b-j0-beyond-float32": lambda a, t, mp: (["train", *TINY, "--epochs", "1", "--b-j0", "1e39", "--out", t / "o"], False),
    "train-device-cuda": lambda a, t, mp: (["train", *TINY, "--epochs", "1", "--device", "cuda", "--out", t / "o"], False),
    "export-onto-itself": lambda a, t, mp: (["export", _copy(a, t, "c.pt"), "-o", t / "c.pt", "--no-check"], False),
    "export-onto-itself-relative": lambda a, t, mp: (["export", _copy(a, t, "c.pt"), "-o", t / "sub" / ".." / "c.pt", "--no-check"], False),
    "export-onto-itself-default-name": lambda a, t, mp: (["export", _copy(a, t, "c.onnx"), "--no-check"], False),
    "export-report-onto-input": lambda a, t, mp: (["export", _copy(a, t, "c.report.json"), "-o", t / "c.onnx", "--no-check"], False),
    "export-fp16-onto-input": lambda a, t, mp: (["export", _copy(a, t, "c.fp16.onnx"), "-o", t / "c.onnx", "--no-check", "--fp16-variant"], False),
    "export-symlink-onto-input": lambda a, t, mp: ((t / "link.onnx").symlink_to(_copy(a, t, "c.pt")),
                                                   ["export", t / "c.pt", "-o", t / "link.onnx", "--no-check"], False)[1:],
    "train-out-locked": lambda a, t, mp: (_held_lock(t / "busy"), ["train", *TINY, "--epochs", "1", "--out", t / "busy"], False)[1:],
    "export-disk-full": lambda a, t, mp: ((t / "o.onnx").write_bytes(b"earlier artefact"), mp.setattr("os.fsync", _enospc),
                                          ["export", a.pt, "-o", t / "o.onnx", "--no-check"], False)[2:],
    "train-disk-full": lambda a, t, mp: (mp.setattr("os.fsync", _enospc), ["train", *TINY, "--epochs", "1", "--out", t / "full"], False)[1:],
    "train-file-size-limit": lambda a, t, mp: (mp.setattr("os.fsync", _efbig), ["train", *TINY, "--epochs", "1", "--out", t / "big"], False)[1:],
    # the disk fills on the second artefact: the earlier export's model, variant and report stay as they were, together
    "export-disk-full-later-artefact": lambda a, t, mp: (mp.setattr("os.fsync", _enospc_after(1)),
                                                         ["export", a.pt, "-o", _earlier_export(a, t), "--no-check", "--fp16-variant",
                                                          "--batch", "dynamic"], False)[1:],
    "export-while-another-writes-there": lambda a, t, mp: (["export", a.pt, "-o", _held_folder_lock(t / "busy") / "o.onnx", "--no-check"],
                                                           False),
    "export-onto-its-data": lambda a, t, mp: (["export", a.npz_pt, "--data", _copy(a, t, "d.npz", a.d3), "-o", t / "d.npz"], False),
    "export-onto-its-device-file": lambda a, t, mp: (["export", a.pt, "--device", _copy(a, t, "p.toml", PROFILE_DIR / "orin-nano-8gb.toml"),
                                                      "-o", t / "p.toml", "--no-check"], False),
    "export-bad-data-into-a-new-folder": lambda a, t, mp: (["export", a.npz_pt, "--data", t / "nosuch.npz", "-o", t / "new" / "sub" / "o.onnx"],
                                                           False),
    "export-adapt-option-without-adapt": lambda a, t, mp: (["export", a.pt, "-o", t / "o.onnx", "--no-check", "--adapt-chunk", "3"], True),
    "export-parity-beyond-memory": lambda a, t, mp: (["export", a.pt, "-o", t / "o.onnx", "--parity-steps", "1000000000000"], False),
    "export-adapt-batch-beyond-the-data": lambda a, t, mp: (["export", a.npz_pt, "--data", a.d3, "-o", t / "o.onnx", "--adapt",
                                                             "--adapt-batch", "64"], False),
    "export-empty-output": lambda a, t, mp: ((t / "c.onnx").write_bytes(b"earlier artefact"), ["export", _copy(a, t, "c.pt"), "-o", "", "--no-check"],
                                             False)[1:],
    "export-output-under-a-file": lambda a, t, mp: (["export", _copy(a, t, "c.pt"), "-o", t / "c.pt" / "x.onnx", "--no-check"], False),
    "card-onto-its-data": lambda a, t, mp: (["card", a.onnx, "--data", _copy(a, t, "f.card.md", a.frames), "-o", t / "f"], False),
    "card-onto-a-compared-run": lambda a, t, mp: (["card", a.pt, "--compare", _copy(a, t, "r.card.json", a.run / "metrics.json"), "-o", t / "r"],
                                                  False),
    "card-symlink-onto-its-model": lambda a, t, mp: ((t / "x.card.md").symlink_to(_copy(a, t, "c.onnx", a.onnx)),
                                                     ["card", t / "c.onnx", "-o", t / "x"], False)[1:],
    "card-compare-nested-beyond-reason": lambda a, t, mp: ((t / "m.json").write_text("[" * 100_000 + "]" * 100_000),
                                                           ["card", a.onnx, "--compare", t / "m.json", "-o", t / "o"], False)[1:],
    "data-without-frames-for-card": lambda a, t, mp: (np.savez(t / "x0.npz", x=np.zeros((0, 4, *_frame_of(a))), y=np.zeros(0)),
                                                  ["card", a.onnx, "--data", t / "x0.npz", "-o", t / "o"], False)[1:],
    "run-npz-with-labels": lambda a, t, mp: ((t / "l.csv").write_text("1,0,5000\n"), ["run", a.onnx, "--npz", a.frames, "--labels", t / "l.csv"],
                                             False)[1:],
    "run-window-without-continuous": lambda a, t, mp: (["run", a.onnx, "--npz", a.frames, "--window-ms", "10"], False),
    "run-rule-without-continuous": lambda a, t, mp: (["run", a.onnx, "--events", a.events, "--smooth", "5", "--threshold", "0.7"], False),
}


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_hostile_options_and_writers(art, tmp_path, monkeypatch, name):
    if name == "train-device-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args, usage = OPTION_CASES[name](art, tmp_path, monkeypatch)
    out = refused_cli(args, tmp_path, art.root, usage=usage)
    if "disk-full" in name:
        assert "no space left on device writing" in out
    if "locked" in name:
        assert "another training is using" in out
    if name == "train-file-size-limit":  # the file the limit refused is named
        assert "checkpoint.pt: File too large" in out
    if "another-writes" in name:
        assert "another fptt-edge export is writing into" in out
    if name == "export-bad-data-into-a-new-folder":
        assert not (tmp_path / "new").exists()
    if name == "export-parity-beyond-memory":
        assert "GiB are free here" in out
    if name in ("export-adapt-batch-beyond-the-data", "export-while-another-writes-there", "export-parity-beyond-memory"):
        assert not [p for p in tmp_path.rglob("o.*")]
    if name == "export-output-under-a-file":
        assert "is not a folder" in out
    if name.startswith("card-") and "nested" not in name:
        assert "is an input of the card" in out and not [p for p in ("f.card.json", "r.card.md", "x.card.json") if (tmp_path / p).exists()]


def _frame_of(art) -> tuple[int, ...]:
    with np.load(art.frames) as f:
        return tuple(f["x"].shape[2:])


@pytest.mark.parametrize("cmd", [lambda f, t: ["info", f], lambda f, t: ["card", f, "-o", t / "c"],
                                 lambda f, t: ["shift", "--task", "npz", "--data", f, "--shift", "none", "-o", t / "o.npz"]],
                         ids=["info", "card", "shift"])
def test_a_fifo_given_as_input_is_named_for_what_it_is(tmp_path, cmd):
    """Not 'no such file': it is there, and never opened (opening it would block)."""
    fifo = tmp_path / "in.onnx"
    os.mkfifo(fifo)
    refused_cli(cmd(fifo, tmp_path), tmp_path, expect="not a regular file")


def test_bench_takes_only_the_checkpoint_the_model_was_exported_from(art, tmp_path):
    args = ["bench", art.onnx, "--steps", "10", "--backends", "ort", "--streams", "1"]
    refused_cli([*args, "--checkpoint", art.npz_pt], tmp_path, art.root, expect="not the checkpoint")
    os.mkfifo(tmp_path / "f.pt")
    refused_cli([*args, "--checkpoint", tmp_path / "f.pt"], tmp_path, art.root, expect="not a regular file")
    res = CliRunner().invoke(main, [*map(str, args), "--checkpoint", str(art.pt), "--json"])
    assert res.exit_code == 0 and "torch-eager" in {r["engine"] for r in json.loads(res.output)}, res.output


# ---------------------------------------------------------------- runtime API


def _warm(sess, shape, steps: int = 3):
    rng = np.random.default_rng(5)
    for _ in range(steps):
        sess.step((rng.random((1, *shape)) < 0.2).astype(np.float32))
    return sess


def _frame(shape):
    return (np.random.default_rng(6).random((1, *shape)) < 0.2).astype(np.float32)


def _masked(f, nan: bool):
    mask = np.zeros(f.shape, bool)
    mask.flat[0] = True
    data = f.copy()
    if nan:
        data.flat[0] = np.nan
    return np.ma.array(data, mask=mask)


STEP_INPUTS = {
    "extra-dim": lambda f: f[None], "missing-dim": lambda f: f[..., :-1], "flat": lambda f: f.reshape(-1), "numpy-scalar": lambda f: np.float32(1),
    "zero-d": lambda f: np.array(1, np.float32), "float64": lambda f: f.astype(np.float64), "float16": lambda f: f.astype(np.float16),
    "int32": lambda f: f.astype(np.int32), "bool": lambda f: f.astype(bool), "object": lambda f: f.astype(object),
    "complex": lambda f: f.astype(np.complex64), "big-endian": lambda f: f.astype(">f4"), "nan": lambda f: np.where(f > 0, np.nan, f).astype(np.float32),
    "inf": lambda f: np.full_like(f, np.inf), "minus-inf": lambda f: np.full_like(f, -np.inf), "list": lambda f: f.tolist(), "none": lambda f: None,
    "masked-nan": lambda f: _masked(f, True), "masked": lambda f: _masked(f, False),
}


def _sessions(art, kind):
    return open_session(art.onnx) if kind == "dense" else SparseInputSession(art.onnx)


def _same_state(a, b) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


STEP_RUNS = [(n, k) for n in STEP_INPUTS for k in ("dense", "sparse")]


@pytest.mark.parametrize("name,kind", STEP_RUNS, ids=[f"{n}-{k}" for n, k in STEP_RUNS])
def test_hostile_step_input(art, name, kind):
    sess = _warm(_sessions(art, kind), art.shape)
    before = sess.get_state()
    refused_api(sess.step, STEP_INPUTS[name](_frame(art.shape)))
    assert _same_state(before, sess.get_state())


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("value", [3e38, -3e38])
def test_hostile_frames_driving_the_state_to_inf(art, kind, value):
    sess = _warm(_sessions(art, kind), art.shape)
    frame = np.full((1, *art.shape), value, np.float32)
    for _ in range(20):
        before = sess.get_state()
        try:
            sess.step(frame)
        except FpttEdgeError as exc:
            assert "\n" not in str(exc)
            break
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"TRACEBACK {type(exc).__name__}: {exc}")
        assert all(np.isfinite(v).all() for v in sess.get_state().values()), "ACCEPTED: the state holds NaN or Inf"
    else:
        pytest.fail("ACCEPTED")
    after = sess.get_state()
    assert _same_state(before, after) and all(np.isfinite(v).all() for v in after.values())


RESET_ARGS = {"half": 0.5, "negative": -1, "past-end": 1, "text": "0", "bool": True, "float-one": 1.0, "numpy-float": np.float32(0), "list": [0]}


@pytest.mark.parametrize("name", list(RESET_ARGS))
def test_hostile_reset(art, name):
    sess = _warm(open_session(art.onnx), art.shape)
    before = sess.get_state()
    refused_api(sess.reset, stream=RESET_ARGS[name])
    assert _same_state(before, sess.get_state())


def _state_case(name, good):
    first = min(good)
    return {
        "not-a-dict": lambda: list(good.values()),
        "missing-name": lambda: {k: v for k, v in good.items() if k != first},
        "extra-name": lambda: {**good, "l9.u": good[first]},
        "int-key": lambda: {**{k: v for k, v in good.items() if k != first}, 0: good[first]},
        "wrong-shape": lambda: {**good, first: good[first][:, :-1]},
        "float64": lambda: {**good, first: good[first].astype(np.float64)},
        "nan": lambda: {**good, first: good[first] * np.nan},
        "inf": lambda: {**good, first: good[first] + np.inf},
        "nested-list": lambda: {**good, first: good[first].tolist()},
        "masked": lambda: {**good, first: np.ma.array(good[first], mask=np.zeros(good[first].shape, bool))},
        "none-value": lambda: {**good, first: None},
        "object": lambda: {**good, first: good[first].astype(object)},
    }[name]()


SET_STATE_CASES = ["not-a-dict", "missing-name", "extra-name", "int-key", "wrong-shape", "float64", "nan", "inf", "nested-list", "masked",
                   "none-value", "object"]


@pytest.mark.parametrize("name", SET_STATE_CASES)
def test_hostile_set_state(art, name):
    sess = _warm(open_session(art.onnx), art.shape)
    before = sess.get_state()
    refused_api(sess.set_state, _state_case(name, before))
    assert _same_state(before, sess.get_state())


ACTIVE_CASES = {
    "negative-index": lambda d: ([np.array([-1])], None),
    "index-past-end": lambda d: ([np.array([d])], None),
    "index-huge": lambda d: ([np.array([2 ** 40])], None),
    "float-index": lambda d: ([np.array([0.5])], None),
    "bool-index": lambda d: ([np.ones(3, bool)], None),
    "2d-index": lambda d: ([np.array([[1, 2]])], None),
    "too-many-streams": lambda d: ([np.array([1]), np.array([2])], None),
    "values-length": lambda d: ([np.array([1, 2])], [np.ones(3, np.float32)]),
    "values-nan": lambda d: ([np.array([1, 2])], [np.array([1.0, np.nan], np.float32)]),
    "values-huge": lambda d: ([np.arange(d)], [np.full(d, 3e38, np.float32)]),
    "not-a-list": lambda d: (np.array([1, 2]), None),
}


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("name", list(ACTIVE_CASES))
def test_hostile_sparse_step_active(art, name):
    sess = _warm(SparseInputSession(art.onnx), art.shape)
    before = sess.get_state()
    refused_api(sess.step_active, *ACTIVE_CASES[name](int(np.prod(art.shape))))
    assert _same_state(before, sess.get_state())


OPEN_CASES = {
    "streams-zero": lambda a: {"model": a.dyn, "streams": 0}, "streams-negative": lambda a: {"model": a.dyn, "streams": -1},
    "streams-float": lambda a: {"model": a.dyn, "streams": 2.5}, "streams-text": lambda a: {"model": a.dyn, "streams": "2"},
    "backend-unknown": lambda a: {"model": a.onnx, "backend": "nope"}, "model-missing": lambda a: {"model": a.root / "nope.onnx"},
    "model-is-folder": lambda a: {"model": a.root}, "model-is-checkpoint": lambda a: {"model": a.pt},
    "streams-huge": lambda a: {"model": a.dyn, "streams": 10 ** 12},
}


@pytest.mark.parametrize("name", list(OPEN_CASES))
def test_hostile_open_session(art, name):
    refused_api(open_session, **OPEN_CASES[name](art))


def test_a_step_onnx_runtime_cannot_run_is_refused_with_the_state_unchanged(art, tmp_path, capfd):
    bad = tmp_path / "bad.onnx"
    _logits_dim_edited(art, bad)
    capfd.readouterr()
    sess = open_session(bad)
    before = sess.get_state()
    err = refused_api(sess.step, _frame(art.shape))
    assert "ONNX Runtime could not run the step" in str(err) and _same_state(before, sess.get_state())
    assert "onnxruntime" not in capfd.readouterr().err  # its own log lines (a shape-merge warning here) stay out of the one line


@pytest.mark.parametrize("batch", [-1, 0, 1.5, True, "2", 10 ** 12])
def test_hostile_initial_state_batch(art, batch):
    from fptt_edge.contract import read_contract

    refused_api(read_contract(art.dyn).initial_state, batch)


def test_hostile_session_from_two_threads(art):
    sess = _warm(open_session(art.onnx), art.shape)
    inside, release = threading.Event(), threading.Event()
    original = sess.backend.step

    def slow_step():
        inside.set()
        release.wait(10)
        original()

    sess.backend.step = slow_step
    worker = threading.Thread(target=sess.step, args=(_frame(art.shape),))
    worker.start()
    assert inside.wait(10)
    try:
        for call in (lambda: sess.step(_frame(art.shape)), lambda: sess.reset(), lambda: sess.set_state(sess.get_state())):
            refused_api(call)
    finally:
        release.set()
        worker.join(10)
    sess.backend.step = original
    assert np.isfinite(sess.step(_frame(art.shape))).all()


# ---------------------------------------------------------------- what must still work


def test_non_contiguous_frames_are_accepted(art):
    a, b = open_session(art.onnx), open_session(art.onnx)
    f = _frame(art.shape)
    wide = np.zeros((1, *art.shape[:-1], art.shape[-1] * 2), np.float32)
    wide[..., ::2] = f
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    for _ in range(3):
        np.testing.assert_array_equal(a.step(f), b.step(view))


def test_sessions_close_and_work_as_context_managers(art):
    with open_session(art.onnx) as s:
        s.step(_frame(art.shape))
    refused_api(s.step, _frame(art.shape))
    with SparseInputSession(art.onnx) as sp:
        sp.step(_frame(art.shape))
    refused_api(sp.step, _frame(art.shape))


def test_checksum_is_deterministic_and_verified(art, tmp_path):
    import onnx

    from fptt_edge.contract import verify_checksum

    export_checkpoint(art.pt, tmp_path / "again.onnx", check=False, log=lambda m: None)
    sums = [{p.key: p.value for p in onnx.load(str(f)).metadata_props}["fptt_edge.graph_sha256"] for f in (art.onnx, tmp_path / "again.onnx")]
    assert sums[0] == sums[1] and len(sums[0]) == 64
    verify_checksum(art.onnx)
    bad = tmp_path / "flipped.onnx"
    _flip_weight(0.5)(art, bad)
    with pytest.raises(FpttEdgeError, match="checksum"):
        verify_checksum(bad)
    with pytest.raises(FpttEdgeError, match="checksum"):
        open_session(bad)
    open_session(bad, verify=False).step(_frame(art.shape))  # for people who edit graphs
    res = CliRunner().invoke(main, ["run", str(bad), "--npz", str(art.frames), "--no-verify", "--json"])
    assert res.exit_code == 0, res.output


def test_an_initial_state_beyond_float32_is_blamed_on_the_model_not_the_input(art, tmp_path):
    bad = tmp_path / "bad.onnx"
    ONNX_CASES["state-init-beyond-float32"](art, bad)
    refused_cli(["run", bad, "--npz", art.frames], tmp_path, art.root, expect="initial value")


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path):
    from fptt_edge.io import write_bytes_atomic

    stale = tmp_path / ".m.onnx.fptt-edge-k1ll3d_x.tmp"
    stale.write_bytes(b"half")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_bytes(b"mine")
    write_bytes_atomic(tmp_path / "m.onnx", b"new")
    assert not stale.exists() and unrelated.exists() and (tmp_path / "m.onnx").read_bytes() == b"new"


def test_labels_reader_refuses_non_finite_values(tmp_path):
    from fptt_edge.runtime.errors import EventFileError
    from fptt_edge.runtime.events import read_gesture_labels

    path = tmp_path / "l.csv"
    path.write_text("class,startTime_usec,endTime_usec\n1,0,5000\n2,5000,9000\n")
    assert read_gesture_labels(path) == [(1, 0, 5000), (2, 5000, 9000)]
    for text in ("1,inf,5000\n", "1,0,nan\n", "class\n"):
        path.write_text(text)
        with pytest.raises(EventFileError):
            read_gesture_labels(path)


def test_every_error_type_shares_one_base():
    from fptt_edge.checkpoint import CheckpointError
    from fptt_edge.contract import ContractError
    from fptt_edge.data.dataset import DataError
    from fptt_edge.devices import DeviceProfileError
    from fptt_edge.export.errors import ExportError
    from fptt_edge.runtime.errors import BackendUnavailable, EventFileError, StepFailed
    from fptt_edge.training.loop import TrainingError

    for cls in (CheckpointError, ContractError, DataError, DeviceProfileError, ExportError, BackendUnavailable, EventFileError,
                RuntimeInputError, StepFailed, TrainingError):
        assert issubclass(cls, FpttEdgeError), cls
    assert issubclass(RuntimeInputError, ValueError) and issubclass(TrainingError, RuntimeError)


def _initializer(art):
    import onnx

    return max(onnx.load(str(art.onnx)).graph.initializer, key=lambda t: len(t.raw_data))


OPEN_ARG_CASES = {  # open_session arguments a caller can get wrong
    "initializers-unknown-name": lambda a: {"initializers": {"no.such.weight": np.zeros(3, np.float32)}},
    "initializers-wrong-shape": lambda a: {"initializers": {_initializer(a).name: np.zeros(3, np.float32)}},
    "initializers-nan": lambda a: {"initializers": {_initializer(a).name: np.full(tuple(_initializer(a).dims), np.nan, np.float32)}},
    "initializers-beyond-float32": lambda a: {"initializers": {_initializer(a).name: np.full(tuple(_initializer(a).dims), 1e39)}},
    "initializers-text": lambda a: {"initializers": {_initializer(a).name: "abc"}},
    "initializers-list": lambda a: {"initializers": [1]},
    "contract-of-another-model": lambda a: {"contract": a.dyn if a.dyn.is_file() else None},
    "threads-text": lambda a: {"threads": "x"},
    "threads-float": lambda a: {"threads": 1.5},
    "threads-zero": lambda a: {"threads": 0},
    "threads-huge": lambda a: {"threads": 10 ** 12},
    "contract-dict": lambda a: {"contract": {"fptt_edge.model_type": "x"}},
    "contract-number": lambda a: {"contract": 123},
}


@pytest.mark.parametrize("name", list(OPEN_ARG_CASES))
def test_hostile_open_session_arguments(art, name):
    kwargs = OPEN_ARG_CASES[name](art)
    if name == "contract-of-another-model":  # the dynamic-batch export of the same checkpoint: another graph, another contract
        from fptt_edge.contract import read_contract
        if read_contract(art.dyn) == read_contract(art.onnx):
            pytest.skip("the two exports share one contract")
    refused_api(open_session, art.onnx, **kwargs)
