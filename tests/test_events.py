"""Event readers and binning (numpy only) against generated files, tonic, and fuzzed bytes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from export_helpers import make_checkpoint
from test_event_readers import write_aedat31

from fptt_edge.cli import main
from fptt_edge.config import ModelConfig
from fptt_edge.export.pipeline import export_checkpoint
from fptt_edge.runtime.errors import EventFileError, RuntimeInputError
from fptt_edge.runtime.events import EVENT_DTYPE, read_aedat31, read_events, read_gesture_labels, read_nmnist, read_tonic_npy
from fptt_edge.runtime.frames import FrameBinner


@pytest.fixture
def gesture(tmp_path):
    rng = np.random.default_rng(1)
    n = 3000
    t = np.sort(rng.integers(0, 3_000_000, n))
    x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    valid = (rng.random(n) > 0.05).astype(np.uint32)
    write_aedat31(tmp_path / "user01_led.aedat", [(x[:1000], y[:1000], t[:1000], p[:1000], valid[:1000]),
                                                   (x[1000:], y[1000:], t[1000:], p[1000:], valid[1000:])])
    (tmp_path / "user01_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,100000,1200000\n3,1500000,2900000\n")
    keep = valid == 1
    return tmp_path, (x[keep], y[keep], t[keep], p[keep])


def test_aedat31_round_trip_and_labels(gesture):
    folder, (x, y, t, p) = gesture
    ev = read_aedat31(folder / "user01_led.aedat")
    assert len(ev) == len(x)
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["t"], t)
    np.testing.assert_array_equal(ev["p"], p)
    assert read_gesture_labels(folder / "user01_led_labels.csv") == [(1, 100000, 1200000), (3, 1500000, 2900000)]


def test_tonic_npy_layouts(tmp_path):
    rng = np.random.default_rng(2)
    cols = np.stack([rng.integers(0, 128, 50), rng.integers(0, 128, 50), rng.integers(0, 2, 50), np.sort(rng.random(50) * 100)], 1)
    np.save(tmp_path / "a.npy", cols)
    ev = read_tonic_npy(tmp_path / "a.npy")
    np.testing.assert_array_equal(ev["t"], (cols[:, 3] * 1000).astype(np.int64))
    structured = np.zeros(5, np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")]))
    structured["t"] = [1, 2, 3, 3, 5]
    np.save(tmp_path / "b.npy", structured)
    assert list(read_events(tmp_path / "b.npy")["t"]) == [1, 2, 3, 3, 5]
    structured["t"] = [5, 1, 3, 2, 4]  # out of time order: refused like every reader does, not sorted
    np.save(tmp_path / "b.npy", structured)
    with pytest.raises(EventFileError, match="timestamps go backwards at event 1"):
        read_events(tmp_path / "b.npy")
    np.save(tmp_path / "c.npy", np.zeros((3, 3)))
    with pytest.raises(EventFileError, match="expected a structured"):
        read_tonic_npy(tmp_path / "c.npy")


def test_nmnist_reader_and_binning_match_training(nmnist_dir):
    """The one N-MNIST reader (runtime's, which training calls) gives exactly tonic's events on real
    files, and the runtime's numpy binner exactly the frames training made with tonic."""
    import tonic

    from fptt_edge.data.nmnist import events_to_frames
    from fptt_edge.data.nmnist import read_nmnist as training_read

    for f in sorted(nmnist_dir.glob("*.bs2"))[:12]:
        ours, train = read_nmnist(f), training_read(f)
        ref = tonic.io.read_mnist_file(str(f), dtype=tonic.datasets.NMNIST.dtype)
        assert train.dtype == ref.dtype and train.tobytes() == ref.tobytes()  # bit-identical to tonic's reader
        for k in "xytp":
            np.testing.assert_array_equal(ours[k], ref[k])
        for by, ds, norm in (("time", 1, "counts"), ("time", 2, "binary"), ("events", 3, "log1p")):
            expected = events_to_frames(ref, 20, by, ds, norm)
            np.testing.assert_array_equal(events_to_frames(train, 20, by, ds, norm), expected)
            np.testing.assert_array_equal(FrameBinner((34, 34, 2), 20, by, ds, norm)(ours), expected)


def test_binner_refuses_events_no_reader_returns():
    binner = FrameBinner((34, 34, 2), 4)
    ev = np.zeros(3, EVENT_DTYPE)
    ev["t"] = [1, 2, 3]
    assert binner(ev).shape == (4, 2, 34, 34)
    for field, values, message in (("x", [0, -1, 0], "outside"), ("p", [0, 2, 0], "outside"), ("t", [3, 2, 1], "backwards")):
        bad = ev.copy()
        bad[field] = values
        with pytest.raises(RuntimeInputError, match=message):
            binner(bad)
    with pytest.raises(RuntimeInputError, match="structured array"):
        binner(np.zeros((3, 4)))


def test_run_streams_gesture_segments_and_nmnist_files(gesture, tmp_path):
    folder, _ = gesture
    spec = {"task": "dvsgesture", "sensor_size": [128, 128, 2], "binning": {"by": "time", "steps": 12}, "downsample": 8, "normalisation": "binary"}
    make_checkpoint(tmp_path / "g.pt", ModelConfig(input_shape=(2, 16, 16), num_classes=11, hidden=(32,)), spec)
    export_checkpoint(tmp_path / "g.pt", tmp_path / "g.onnx", check=False, log=lambda m: None)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "g.onnx"), "--events", str(folder / "user01_led.aedat"),
                                    "--labels", str(folder / "user01_led_labels.csv"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["recordings"] == 2 and out["steps"] == 24 and out["accuracy"] is not None
    assert [r["label"] for r in out["results"]] == ["class-1", "class-3"]
    res = CliRunner().invoke(main, ["run", str(tmp_path / "g.onnx"), "--events", str(folder / "user01_led.aedat"), "--sparse-input", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["backend"] == "ort+sparse-input"
    (tmp_path / "bad.aedat").write_bytes(b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + b"\x01\x00" * 7)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "g.onnx"), "--events", str(tmp_path / "bad.aedat")])
    assert res.exit_code == 2 and "truncated packet header" in res.output
    # (real N-MNIST binning: test_nmnist_reader_and_binning_match_training, which skips without ../shared)
    with pytest.raises(RuntimeInputError, match="outside"):
        FrameBinner((16, 16, 2), 4)(read_aedat31(folder / "user01_led.aedat"))
