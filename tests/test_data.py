"""Data loaders on real shipped data, generated fixtures and (when present) ../shared N-MNIST."""
import numpy as np
import pytest
import torch

from fptt_edge.data.dataset import DataError
from fptt_edge.data.digits import load_smnist
from fptt_edge.data.nmnist import events_to_frames, load_nmnist, read_nmnist
from fptt_edge.data.npz import load_npz
from fptt_edge.data.tasks import load_task
from tests.conftest import write_nmnist_recording


def test_smnist_fixed_split_from_shipped_mnist():
    train, test = load_smnist("train"), load_smnist("test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.x.shape[1:] == (784, 1) and 0 <= float(train.x.min()) and float(train.x.max()) <= 1
    assert torch.bincount(train.y).tolist() == [400] * 10 and torch.bincount(test.y).tolist() == [100] * 10
    assert torch.bincount(train.y[:200], minlength=10).min() > 5  # any prefix is class-balanced
    # no test image appears in training
    tr = {bytes(r) for r in (train.x[:, :, 0] * 255).round().to(torch.uint8).numpy()}
    assert not any(bytes(r) in tr for r in (test.x[:, :, 0] * 255).round().to(torch.uint8).numpy())
    rows = load_smnist("test", mode="row")
    assert rows.x.shape[1:] == (28, 28) and torch.equal(rows.x.reshape(1000, 784), test.x[:, :, 0])


def test_permuted_smnist_is_a_fixed_permutation_of_smnist():
    plain, perm = load_smnist("test", source="digits8x8"), load_smnist("test", permuted=True, source="digits8x8")
    assert perm.input_spec["task"] == "psmnist"
    order = np.random.default_rng(0).permutation(64)
    assert torch.equal(perm.x[:, :, 0], plain.x[:, order, 0])
    assert torch.equal(load_smnist("test", permuted=True, source="digits8x8").x, perm.x)


def test_sklearn_digits_source():
    train, test = load_smnist("train", "row", source="digits8x8"), load_smnist("test", "row", source="digits8x8")
    assert (len(train), len(test)) == (1437, 360) and train.x.shape[1:] == (8, 8)


def test_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    good = dict(x=rng.random((5, 7, 3), dtype=np.float32), y=np.array([0, 1, 2, 1, 0]), lengths=np.array([7, 3, 5, 1, 7]))
    np.savez(tmp_path / "good.npz", **good)
    ds = load_npz(tmp_path / "good.npz")
    assert ds.x.shape == (5, 7, 3) and ds.lengths.tolist() == [7, 3, 5, 1, 7] and len(ds.class_names) == 3
    frames = dict(x=rng.random((4, 6, 2, 5, 5), dtype=np.float32), y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "frames.npz", **frames)
    assert load_npz(tmp_path / "frames.npz").input_shape == (2, 5, 5)
    cases = {
        "missing_y": (dict(x=good["x"]), "missing field 'y'"),
        "missing_x_among_many": ({f"a{i}": np.zeros(1) for i in range(100)}, r"missing field 'x' \(have a0, a1, .* and 92 more\)"),
        "x_2d": (dict(x=good["x"][:, :, 0], y=good["y"]), "field 'x' must be"),
        "x_complex": (dict(x=good["x"].astype(np.complex64), y=good["y"]), "field 'x' must hold real numbers"),
        "x_str": (dict(x=good["x"].astype(str), y=good["y"]), "field 'x' must hold real numbers"),
        "x_nan": (dict(x=np.where(good["x"] > 0.9, np.nan, good["x"]).astype(np.float32), y=good["y"]), "field 'x' holds NaN"),
        "y_len": (dict(x=good["x"], y=good["y"][:3]), "field 'y' must be"),
        "y_float": (dict(x=good["x"], y=good["y"].astype(np.float32)), "integer labels"),
        "y_neg": (dict(x=good["x"], y=-good["y"] - 1), "labels must be in"),
        "lengths_big": (dict(x=good["x"], y=good["y"], lengths=good["lengths"] + 5), "field 'lengths'"),
    }
    for dtype in (bool, np.uint8, np.int64):  # spikes and counts, as the device's reader takes them
        np.savez(tmp_path / "cast.npz", x=good["x"] > 0.5 if dtype is bool else (good["x"] * 9).astype(dtype), y=good["y"])
        cast = load_npz(tmp_path / "cast.npz").x
        assert cast.dtype == torch.float32 and torch.equal(cast, torch.from_numpy(np.load(tmp_path / "cast.npz")["x"].astype(np.float32)))
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(DataError, match=message) as err:
            load_npz(path)
        assert path.name in str(err.value)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")  # object arrays need pickle: refused
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="labels must be in"):
        load_npz(tmp_path / "good.npz", num_classes=2)


def test_nmnist_reader_and_binning_on_generated_recording(tmp_path):
    t = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99])
    x = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 33, 33])
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 33, 33])
    p = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
    write_nmnist_recording(tmp_path / "r.bs2", x, y, t, p)
    ev = read_nmnist(tmp_path / "r.bs2")
    assert ev["x"].tolist() == x.tolist() and ev["t"].tolist() == t.tolist() and ev["p"].tolist() == p.tolist()
    frames = events_to_frames(ev, steps=5, binning="time", normalisation="counts")
    assert frames.shape == (5, 2, 34, 34)
    # independent check: the first bin spans t in [0, 19.8): events 0 and 1
    assert frames[0, 1, 0, 0] == 1 and frames[0, 0, 0, 1] == 1 and frames[0].sum() == 2
    assert frames.sum() >= len(t) - 1  # tonic may drop the very last event at the right edge
    by_events = events_to_frames(ev, steps=5, binning="events", normalisation="counts")
    assert by_events.shape == (5, 2, 34, 34) and by_events.sum() >= len(t) - 1
    small = events_to_frames(ev, steps=5, downsample=2, normalisation="binary")
    assert small.shape == (5, 2, 17, 17) and set(np.unique(small)) <= {0.0, 1.0}
    assert small[:, 1, 16, 16].sum() >= 1  # (33, 33) lands in the last downsampled pixel


def test_nmnist_corrupt_files(tmp_path):
    write_nmnist_recording(tmp_path / "ok.bs2", [1, 2], [3, 4], [10, 20], [0, 1])
    data = (tmp_path / "ok.bs2").read_bytes()
    (tmp_path / "trunc.bs2").write_bytes(data[:7])
    (tmp_path / "empty.bs2").write_bytes(b"")
    (tmp_path / "wide.bs2").write_bytes(bytes([200, 3, 0, 0, 10]))
    for name, message in [("trunc.bs2", "truncated"), ("empty.bs2", "truncated"), ("wide.bs2", "outside"), ("none.bs2", "cannot read")]:
        with pytest.raises(DataError, match=message):
            read_nmnist(tmp_path / name)


def test_nmnist_folder_fixture(nmnist_fixture):
    train = load_task("nmnist", "train", nmnist_fixture / "train.txt", steps=6)
    assert train.x.shape == (12, 6, 2, 34, 34) and train.y.tolist() == [0, 1] * 6
    left = train.x[train.y == 0][..., :17].sum() > 0 and train.x[train.y == 0][..., 17:].sum() == 0
    assert left
    with pytest.raises(DataError, match="needs --train"):
        load_task("nmnist", "train", None)


def test_real_nmnist_subset(nmnist_dir):
    ds = load_nmnist(nmnist_dir, "test100.txt", steps=10, downsample=2, limit=20)
    assert ds.x.shape == (20, 10, 2, 17, 17) and ds.y.min() >= 0 and ds.y.max() <= 9
    assert float(ds.x.mean()) > 0.001 and set(torch.unique(ds.x).tolist()) <= {0.0, 1.0}
    events = read_nmnist(nmnist_dir / "1.bs2")
    assert 2000 <= len(events) <= 8000 and events["t"].max() < 400_000 and np.all(np.diff(events["t"]) >= 0)
