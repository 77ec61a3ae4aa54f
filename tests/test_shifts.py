"""Deterministic domain shifts (fptt_edge.shifts) and the `shift` command."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from fptt_edge.cli import main
from fptt_edge.data.digits import load_smnist
from fptt_edge.shifts import ShiftError, apply


def frames(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((3, 4, 2, 5, 6)) < 0.3).astype(np.float32)


def test_each_shift_against_its_definition():
    x = frames()
    assert np.array_equal(apply(x, "none"), x)
    assert np.array_equal(apply(x, "gain:0.4"), x * np.float32(0.4))
    shifted = apply(x, "columns:2")
    assert np.array_equal(shifted[..., 2:], x[..., :-2]) and np.array_equal(shifted[..., :2], x[..., -2:])
    swapped = apply(x, "polarity-swap")
    assert np.array_equal(swapped[:, :, 0], x[:, :, 1]) and np.array_equal(swapped[:, :, 1], x[:, :, 0])
    dropped = apply(x, "dropout:0.5", seed=1)
    assert np.all(dropped <= x) and 0.3 < 1 - dropped.sum() / x.sum() < 0.7
    assert np.array_equal(dropped, apply(x, "dropout:0.5", seed=1))  # seeded
    hot = apply(x, "hot-pixels:0.1", seed=1)
    always = (hot == 1).all(axis=(0, 1))  # the same pixels in every frame
    assert always.any() and np.all(hot >= x) and np.array_equal(hot[:, :, ~always], x[:, :, ~always])


@pytest.mark.parametrize("spec", ["gain", "gain:x", "columns:1.5", "dropout:2", "hot-pixels:-1", "rotate:3", "none:1", "gain:nan"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ShiftError):
        apply(frames(), spec)


def test_event_shifts_need_event_frames():
    with pytest.raises(ShiftError, match="event frames"):
        apply(np.zeros((2, 3, 8), np.float32), "polarity-swap")


def test_shift_command_writes_shifted_real_data(tmp_path):
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(main, ["shift", "--source", "digits8x8", "--mode", "row", "--split", "test", "--offset", "5",
                                       "--samples", "7", "--shift", "gain:0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    ds = load_smnist("test", mode="row", source="digits8x8")
    with np.load(out) as f:
        assert np.array_equal(f["x"], ds.x.numpy()[5:12].astype(np.float32) * np.float32(0.5))
        assert np.array_equal(f["y"], ds.y.numpy()[5:12]) and np.array_equal(f["lengths"], np.full(7, 8))
    bad = CliRunner().invoke(main, ["shift", "--source", "digits8x8", "--shift", "spin:3", "-o", str(tmp_path / "t.npz")])
    assert bad.exit_code == 2 and "unknown shift" in bad.output and not (tmp_path / "t.npz").exists()
