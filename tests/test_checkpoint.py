"""Checkpoints: plain tensors and data only; hostile, corrupt and future files are refused."""
import os
import pickle
import zipfile

import pytest
import torch

from fptt_edge.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_model, save_checkpoint
from fptt_edge.config import ModelConfig
from fptt_edge.model import LTCNetwork


def _payload(model):
    return {"kind": "model", "model_config": model.config.to_dict(), "state_dict": model.state_dict(),
            "class_names": ["a", "b"], "input_spec": {"task": "npz"}, "metrics": {"test_accuracy": 0.5}}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return LTCNetwork(ModelConfig(input_shape=(3,), num_classes=2, hidden=(6,)))


def test_round_trip_loads_with_weights_only(model, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _payload(model))
    raw = torch.load(path, weights_only=True)  # the plain safe loader reads it
    assert raw["format_version"] == FORMAT_VERSION and raw["class_names"] == ["a", "b"]
    loaded, payload = load_model(path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert payload["metrics"]["test_accuracy"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_hostile_pickle_is_refused_and_runs_nothing(model, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**_payload(model), "format": "fptt-edge-checkpoint", "format_version": 1, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not marker.exists()
    # the same object in a plain pickle file (not a torch archive) is refused too
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError, match="not a fptt-edge checkpoint"):
        load_model(plain)
    assert not marker.exists()


def test_truncated_random_and_foreign_files(model, tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _payload(model))
    data = good.read_bytes()
    for name, content in [("trunc.pt", data[: len(data) // 2]), ("tiny.pt", data[:10]), ("empty.pt", b""),
                          ("random.pt", os.urandom(4096))]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="corrupt|truncated|not a fptt-edge"):
            load_model(path)
    # flipped bytes inside a stored tensor: torch itself would load them silently
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 16)
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"), int.from_bytes(
        data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len  # the tensor's bytes (local header's own lengths)
    bad = bytearray(data)
    bad[start + 4 : start + 8] = b"\xff\xff\xff\xff"
    (tmp_path / "flipped.pt").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(tmp_path / "flipped.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="no 'fptt-edge-checkpoint' header"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing.pt")


def test_future_version_wrong_kind_bad_weights(model, tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**_payload(model), "format": "fptt-edge-checkpoint", "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="newer fptt-edge"):
        load_model(path)
    good = tmp_path / "m.pt"
    save_checkpoint(good, _payload(model))
    with pytest.raises(CheckpointError, match="'resume' one is needed"):
        load_checkpoint(good, kind="resume")
    sd = model.state_dict()
    sd["layers.0.fc_x.weight"] = torch.full_like(sd["layers.0.fc_x.weight"], float("nan"))
    save_checkpoint(tmp_path / "nan.pt", {**_payload(model), "state_dict": sd})
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(tmp_path / "nan.pt")
    sd = model.state_dict()
    sd.pop("readout.gate.bias")
    save_checkpoint(tmp_path / "missing_w.pt", {**_payload(model), "state_dict": sd})
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "missing_w.pt")


def test_failed_write_keeps_the_previous_file(model, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _payload(model))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _payload(model))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
