"""DVS128 Gesture loading in both layouts (original release, tonic's), written by the tests themselves."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_event_readers import write_aedat31

from fptt_edge.cli import main
from fptt_edge.data.dataset import DataError
from fptt_edge.data.dvsgesture import (
    CLASSES,
    Augment,
    detect_layout,
    epoch_seed,
    events_to_frames,
    find_root,
    fresh_views,
    load_dvsgesture,
    original_segments,
    segments,
    split_validation_by_segment,
    tonic_segments,
)
from fptt_edge.runtime.events import EVENT_DTYPE, read_aedat31, read_gesture_labels
from fptt_edge.runtime.frames import FrameBinner

SEGMENT_US = 400_000


def gesture_events(rng, label: int, start: int, end: int, n: int = 600) -> np.ndarray:
    """Events of one synthetic gesture (class 0..10): a blob whose position and drift depend on the class."""
    t = np.sort(rng.integers(start, end, n)) // 1000 * 1000  # whole ms: tonic's layout stores ms
    phase = (t - start) / max(end - start, 1)
    cx, cy = 12 + 10 * label + 20 * phase * (label % 2), 30 + 6 * (label % 4) + 30 * phase * (1 - label % 2)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["x"] = np.clip(cx + rng.normal(0, 4, n), 0, 127).astype(int)
    ev["y"] = np.clip(cy + rng.normal(0, 4, n), 0, 127).astype(int)
    ev["t"], ev["p"] = t, rng.integers(0, 2, n)
    return ev


def trial(rng, classes) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """One recording: gaps, then a segment per class (CSV classes 1..11), in class order."""
    parts, rows, t0 = [], [], 100_000
    for c in classes:
        parts.append(gesture_events(rng, c, t0, t0 + SEGMENT_US))
        rows.append((c + 1, t0, t0 + SEGMENT_US))
        t0 += SEGMENT_US + 150_000
    parts.append(gesture_events(rng, 10, t0, t0 + 100_000, 50))  # unlabelled tail
    return np.concatenate(parts), rows


TRIALS = {"train": {"user01_led": (0, 1, 2, 10), "user02_fluorescent": (0, 1, 2, 10)}, "test": {"user24_led": (0, 1, 2, 10)}}


def write_original(root: Path, trials=TRIALS, seed: int = 0) -> dict:
    """The original release's layout under root/DvsGesture; returns the events and labels per trial."""
    rng = np.random.default_rng(seed)
    base = root / "DvsGesture"
    base.mkdir(parents=True)
    written = {}
    for split, names in trials.items():
        (base / f"trials_to_{split}.txt").write_text("".join(f"{n}.aedat\n" for n in names) + "\n")
        for name, classes in names.items():
            ev, rows = trial(rng, classes)
            half = len(ev) // 2
            write_aedat31(base / f"{name}.aedat", [tuple(a[:half] for a in (ev["x"], ev["y"], ev["t"], ev["p"], np.ones(len(ev)))),
                                                    tuple(a[half:] for a in (ev["x"], ev["y"], ev["t"], ev["p"], np.ones(len(ev))))])
            (base / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows))
            written[name] = (ev, rows)
    return written


def write_tonic(root: Path, written: dict, trials=TRIALS) -> None:
    """tonic's extracted layout (root/DVSGesture/ibmGesture{Train,Test}/userNN_<lighting>/<class>.npy, [N, 4] x, y, p, t in ms)."""
    for split, names in trials.items():
        folder = root / "DVSGesture" / {"train": "ibmGestureTrain", "test": "ibmGestureTest"}[split]
        for name in names:
            ev, rows = written[name]
            (folder / name).mkdir(parents=True)
            for c, s, e in rows:
                seg = ev[(ev["t"] >= s) & (ev["t"] < e)]
                cols = np.stack([seg["x"], seg["y"], seg["p"], seg["t"] / 1000.0], 1).astype(np.float64)
                np.save(folder / name / f"{c - 1}.npy", cols)


@pytest.fixture(scope="module")
def gesture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvsgesture")
    written = write_original(root / "orig")
    write_tonic(root / "tonic", written)
    return root, written


def test_label_segmentation_against_hand_computed_boundaries(tmp_path):
    ev = np.zeros(100, EVENT_DTYPE)
    ev["t"] = np.arange(100) * 1000  # 0, 1000, ..., 99000 us
    ev["x"], ev["y"] = np.arange(100) % 128, 5
    write_aedat31(tmp_path / "user05_led.aedat", [(ev["x"], ev["y"], ev["t"], ev["p"], np.ones(100))])
    (tmp_path / "user05_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,10000,25000\n3,25000,25001\n11,50500,60000\n"
                                                    "2,99000,120000\n")
    (tmp_path / "trials_to_train.txt").write_text("user05_led.aedat\n")
    got = [(name, label, len(seg), int(seg["t"][0]), int(seg["t"][-1])) for name, label, seg in original_segments(tmp_path, "train")]
    # [10000, 25000): 10000..24000 (15 events, the start included, the end excluded); [25000, 25001): only 25000;
    # [50500, 60000): 51000..59000 (9); [99000, 120000): the last event, 99000 (1). CSV classes 1, 3, 11, 2 -> 0, 2, 10, 1.
    assert got == [("user05_led[0]", 0, 15, 10000, 24000), ("user05_led[1]", 2, 1, 25000, 25000), ("user05_led[2]", 10, 9, 51000, 59000),
                   ("user05_led[3]", 1, 1, 99000, 99000)]
    labels = read_gesture_labels(tmp_path / "user05_led_labels.csv")
    for (_, seg), (_, start, end) in zip(segments(read_aedat31(tmp_path / "user05_led.aedat"), labels), labels):  # the runtime's rule
        np.testing.assert_array_equal(seg, ev[(ev["t"] >= start) & (ev["t"] < end)])
    (tmp_path / "user05_led_labels.csv").write_text("12,0,5000\n")
    with pytest.raises(DataError, match="label class 12 is outside 1..11"):
        list(original_segments(tmp_path, "train"))


def test_both_layouts_load_the_same_samples(gesture_root):
    root, written = gesture_root
    assert detect_layout(root / "orig") == ("original", root / "orig" / "DvsGesture")
    assert detect_layout(root / "tonic") == ("tonic", root / "tonic" / "DVSGesture")
    for split in ("train", "test"):
        a = load_dvsgesture(root / "orig", split, steps=8, augmentation=None)
        b = load_dvsgesture(root / "tonic", split, steps=8, augmentation=None)
        assert a.x.shape == (4 * len(TRIALS[split]), 8, 2, 32, 32) and a.class_names == list(CLASSES)
        assert a.y.tolist() == b.y.tolist() == [0, 1, 2, 10] * len(TRIALS[split])
        assert np.array_equal(a.x.numpy(), b.x.numpy())
        assert a.input_spec["source_layout"] == "original" and b.input_spec["source_layout"] == "tonic"
        assert a.input_spec["csv_class_offset"] == 1 and a.input_spec["binning"] == {"by": "time", "steps": 8}
    orig = [seg for _, _, seg in original_segments(root / "orig" / "DvsGesture", "train")]
    ton = [seg for _, _, seg in tonic_segments(root / "tonic" / "DVSGesture", "train")]
    for s1, s2 in zip(orig, ton):
        for k in "xytp":
            np.testing.assert_array_equal(s1[k], s2[k])


@pytest.mark.parametrize("by,ds,norm", [("time", 4, "binary"), ("time", 1, "counts"), ("events", 8, "log1p"), ("events", 3, "counts")])
def test_training_binning_equals_the_runtime_binner(gesture_root, by, ds, norm):
    root, _ = gesture_root
    binner = FrameBinner((128, 128, 2), 10, by, ds, norm)
    for _, _, seg in original_segments(root / "orig" / "DvsGesture", "train", limit=5):
        np.testing.assert_array_equal(events_to_frames(seg, 10, by, ds, norm), binner(seg))


def test_augmentation_only_in_training_and_seeded(gesture_root):
    root, _ = gesture_root
    aug = Augment(copies=2, max_shift=6, max_drop=0.2)
    train = load_dvsgesture(root / "orig", "train", steps=8, augmentation=aug, seed=3)
    plain = load_dvsgesture(root / "orig", "train", steps=8, augmentation=None)
    n = len(plain)
    assert len(train) == 3 * n and train.y.tolist() == plain.y.tolist() * 3
    assert np.array_equal(train.x[:n].numpy(), plain.x.numpy())
    assert not np.array_equal(train.x[n:2 * n].numpy(), plain.x.numpy()) and not np.array_equal(train.x[n:2 * n].numpy(), train.x[2 * n:].numpy())
    assert np.array_equal(load_dvsgesture(root / "orig", "train", steps=8, augmentation=aug, seed=3).x.numpy(), train.x.numpy())
    assert train.input_spec["augmentation"] == {"copies": 2, "max_shift": 6, "max_drop": 0.2, "seed": 3}
    test = load_dvsgesture(root / "orig", "test", steps=8, augmentation=aug)
    assert len(test) == 4 and test.input_spec["augmentation"] is None  # never at evaluation
    assert len(load_dvsgesture(root / "tonic", "train", steps=8, augmentation=aug, limit=3)) == 9  # limit counts segments
    fit, val = split_validation_by_segment(train, 0.25, seed=1)  # whole segments held out: no view of a validation segment trains
    held = [i for i in range(n) if any(np.array_equal(v, train.x[i].numpy()) for v in val.x.numpy())]
    kept = [i for i in range(n) if i not in held]
    assert len(val) == len(held) == 4 and val.input_spec["augmentation"] is None
    assert np.array_equal(fit.x.numpy(), np.concatenate([train.x[[i + k * n for i in kept]].numpy() for k in range(3)]))


def test_missing_and_broken_files_are_named(tmp_path, gesture_root):
    root, _ = gesture_root
    with pytest.raises(DataError, match="not a DVS128 Gesture folder"):
        load_dvsgesture(tmp_path, "train")
    with pytest.raises(DataError, match="no such folder"):
        load_dvsgesture(tmp_path / "nope", "train")
    base = tmp_path / "o"
    base.mkdir()
    (base / "trials_to_train.txt").write_text("user09_led.aedat\n")
    with pytest.raises(DataError, match=r"trials_to_test.txt: missing"):
        load_dvsgesture(base, "test")
    with pytest.raises(DataError, match=r"user09_led.aedat: missing \(listed in trials_to_train.txt\)"):
        load_dvsgesture(base, "train")
    (base / "user09_led.aedat").write_bytes((root / "orig" / "DvsGesture" / "user01_led.aedat").read_bytes())
    with pytest.raises(DataError, match=r"user09_led_labels.csv: missing"):
        load_dvsgesture(base, "train")
    (base / "user09_led_labels.csv").write_text("1,0,100000\n")
    (base / "user09_led.aedat").write_bytes((root / "orig" / "DvsGesture" / "user01_led.aedat").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"user09_led.aedat: truncated packet"):
        load_dvsgesture(base, "train")
    (base / "trials_to_train.txt").write_text("../secret.aedat\n")
    with pytest.raises(DataError, match=r"trials_to_train.txt:1: expected a recording name"):
        load_dvsgesture(base, "train")
    t = tmp_path / "t" / "ibmGestureTrain" / "user01_led"
    t.mkdir(parents=True)
    np.save(t / "gesture.npy", np.zeros((3, 4)))
    with pytest.raises(DataError, match=r"gesture.npy: expected '<class>.npy'"):
        load_dvsgesture(tmp_path / "t", "train")
    with pytest.raises(DataError, match=r"ibmGestureTest: missing"):
        load_dvsgesture(tmp_path / "t", "test")
    assert find_root(root / "tonic" / "DVSGesture" / "ibmGestureTest" / "user24_led" / "0.npy") == root / "tonic" / "DVSGesture"
    assert find_root(root / "orig" / "DvsGesture" / "trials_to_test.txt") == root / "orig" / "DvsGesture"
    with pytest.raises(DataError, match="not in a DVS128 Gesture folder"):
        find_root(tmp_path / "nothing.txt")


def test_fresh_augmented_views_every_epoch(gesture_root):
    """Epoch e >= 1 trains on new views of the same training segments (seeded by seed and epoch), originals and
    held-out validation segments unchanged; the same epoch always gives the same views (a resumed run sees them again)."""
    root, _ = gesture_root
    opts = {"steps": 8, "binning": "time", "downsample": 4, "normalisation": "binary", "seed": 99}  # opts["seed"] is ignored: seed wins
    epoch0, _ = split_validation_by_segment(load_dvsgesture(root / "orig", "train", steps=8, seed=3), 0.25, seed=3)
    views = fresh_views(root / "orig", None, opts, 0.25, seed=3)
    v1, v2 = views(1), views(2)
    k = epoch0.input_spec["segments"]
    for v in (v1, v2):
        assert len(v) == len(epoch0) and torch.equal(v.y, epoch0.y)
        assert torch.equal(v.x[:k], epoch0.x[:k])  # the originals
    assert not torch.equal(v1.x[k:], epoch0.x[k:]) and not torch.equal(v1.x[k:], v2.x[k:])
    assert torch.equal(views(1).x, v1.x)
    assert epoch_seed(3, 0) == 3 and len({epoch_seed(3, e) for e in range(50)} | {epoch_seed(4, e) for e in range(50)}) == 100


def test_training_draws_views_each_epoch_and_refuses_views_that_do_not_line_up(gesture_root, tmp_path, monkeypatch):
    import fptt_edge.data.dvsgesture as dvs

    root, _ = gesture_root
    calls: list[int] = []
    real = dvs.fresh_views

    def spy(*args, **kwargs):
        views = real(*args, **kwargs)
        return lambda epoch: calls.append(epoch) or views(epoch)

    monkeypatch.setattr(dvs, "fresh_views", spy)
    args = ["train", "--task", "dvsgesture", "--root", str(root / "tonic"), "--conv", "4", "--hidden", "8", "--steps", "6", "--epochs", "3",
            "--batch-size", "4", "--quiet", "--val-fraction", "0.25"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert calls == [1, 2]
    monkeypatch.setattr(dvs, "fresh_views", lambda *a, **k: (lambda epoch: real(*a, **k)(epoch).subset(torch.arange(3))))
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "do not line up" in res.output and "Traceback" not in res.output


def test_train_export_and_run_on_gesture_recordings(gesture_root, tmp_path):
    """train --task dvsgesture --root DIR, export checked on the test trials, run with --labels (CSV classes mapped to the model's)."""
    root, _ = gesture_root
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--task", "dvsgesture", "--root", str(root / "tonic"), "--conv", "4", "--hidden", "16", "--steps", "6",
                               "--epochs", "1", "--batch-size", "4", "--quiet", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["test_accuracy"] is not None
    res = runner.invoke(main, ["train", "--task", "dvsgesture", "--train", "x.txt", "--root", str(root)])
    assert res.exit_code == 2 and "--root" in res.output
    model = tmp_path / "run" / "model.pt"
    res = runner.invoke(main, ["export", str(model), "--data", str(root / "orig" / "DvsGesture" / "trials_to_test.txt"), "--parity-steps", "30",
                               "--parity-streams", "2", "--precision-samples", "4"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "model.report.json").read_text())
    assert report["parity"]["passed"] and report["check_data"]["task"] == "dvsgesture"
    res = runner.invoke(main, ["run", str(tmp_path / "run" / "model.onnx"), "--events", str(root / "orig" / "DvsGesture" / "user24_led.aedat"),
                               "--labels", str(root / "orig" / "DvsGesture" / "user24_led_labels.csv"), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert [r["label"] for r in result["results"]] == [CLASSES[0], CLASSES[1], CLASSES[2], CLASSES[10]]
    onnx, rec = str(tmp_path / "run" / "model.onnx"), root / "orig" / "DvsGesture" / "user24_led"
    res = runner.invoke(main, ["run", onnx, "--events", f"{rec}.aedat", "--labels", f"{rec}_labels.csv", "--sparse-input", "--json"])
    assert res.exit_code == 0, res.output
    sparse = json.loads(res.output)
    assert sparse["backend"] == "ort+sparse-input" and sparse["predictions"] == result["predictions"]  # the conv front end from events
    front = sparse["front_end"]
    assert front["scatter"] in ("numba", "numpy") and sum(front["steps"][k] for k in ("sparse", "dense")) == 4 * 6  # 4 segments of 6 steps
    # continuous recognition: the whole recording as a stream of the training step span, scored against the labels
    window = json.loads(runner.invoke(main, ["info", str(model)]).output)["input_spec"]["window_us"]
    assert window == (SEGMENT_US // 1000 * 1000 - 1000) // 6 or abs(window - SEGMENT_US / 6) < 2000
    res = runner.invoke(main, ["run", onnx, "--events", f"{rec}.aedat", "--labels", f"{rec}_labels.csv", "--continuous", "--threshold", "0.2",
                               "--hold", "1", "--json"])
    assert res.exit_code == 0, res.output
    cont = json.loads(res.output)
    events = read_aedat31(f"{rec}.aedat")
    assert cont["window_us"] == window and cont["steps"] == (int(events["t"][-1]) - int(events["t"][0])) // window + 1
    assert cont["score"]["segments"] == 4 and set(cont["latency_us"]) == {"p50", "p90", "p99"}
    assert cont["score"]["missed"] + cont["score"]["detected"] == 4 and all(g["label"] in range(11) for g in cont["gestures"])
    res = runner.invoke(main, ["run", onnx, "--events", f"{rec}.aedat", "--continuous", "--window-ms", "50", "--threshold", "0.1"])
    assert res.exit_code == 0 and '"window_us": 50000' in res.output and '"score"' not in res.output, res.output
    res = runner.invoke(main, ["run", onnx, "--events", f"{rec}.aedat", "--continuous", "--every", "3", "--no-reset"])
    assert res.exit_code == 2 and "--every, --no-reset apply to recordings streamed one by one, not to --continuous" in res.output
