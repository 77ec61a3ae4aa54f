"""Input encodings for analog channels: the arithmetic by hand, stream = batch, validation of
untrusted metadata, the same frames on the training side and in the device runtime, and a small
synthetic accelerometer gesture set that FPTT learns only through an encoding."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fptt_edge.cli import main
from fptt_edge.contract import ContractError, StepContract
from fptt_edge.data import tasks
from fptt_edge.data.gestures import synthetic_gesture_stream, synthetic_gestures, write_npz
from fptt_edge.data.tasks import encode_dataset, fit_encoding, load_task
from fptt_edge.encoding import Encoding, EncodingError


def test_standardize_and_delta_by_hand():
    x = np.array([[[1.0], [1.25], [1.5], [0.9], [0.9]]], np.float32)  # [N=1, T=5, C=1]
    enc = Encoding(kind="standardize+delta", channels=1, mean=(1.0,), std=(2.0,), threshold=0.1)  # level spacing 0.2
    out = enc.encode(x)
    assert out.shape == (1, 5, 3)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.125, 0.25, -0.05, -0.05], atol=1e-7)
    # ref 1.0 -> 1.25: one ON (ref 1.2); -> 1.5: one ON (ref 1.4); -> 0.9: two OFF (ref 1.0); -> 0.9: none
    np.testing.assert_array_equal(out[0, :, 1], [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(out[0, :, 2], [0, 0, 0, 2, 0])
    assert Encoding().encode(x) is not None and Encoding().output_shape((7,)) == (7,)


def test_stream_equals_whole_sequence_and_fit_ignores_padding():
    ds = synthetic_gestures(12, steps=40, classes=3, seed=1)
    enc = fit_encoding(ds, "standardize+delta", 0.2)
    lens = ds.lengths.numpy()
    valid = np.concatenate([ds.x.numpy()[i, :lens[i], 0] for i in range(len(ds))])
    assert enc.mean[0] == pytest.approx(valid.mean(), rel=1e-6) and enc.std[0] == pytest.approx(valid.std(), rel=1e-5)
    whole = enc.encode(ds.x.numpy())
    stream = enc.stream()
    steps = np.stack([stream.step(ds.x.numpy()[:, t]) for t in range(ds.steps)], axis=1)
    np.testing.assert_array_equal(steps, whole)
    assert whole[..., 1:].sum() > 0, "vacuous: no level crossings"


@pytest.mark.parametrize("bad", [{"kind": "fourier"}, {"kind": "standardize", "channels": 2, "mean": [0.0], "std": [1.0, 1.0]},
                                 {"kind": "standardize", "channels": 1, "mean": [0.0], "std": [0.0]},
                                 {"kind": "delta", "channels": 1, "mean": [0.0], "std": [1.0], "threshold": -1},
                                 {"kind": "delta", "channels": 1, "mean": ["0"], "std": [1.0]}, {"kind": "none", "extra": 1}, [1, 2]])
def test_untrusted_encodings_are_refused(bad):
    with pytest.raises(EncodingError):
        Encoding.from_dict(bad)


def _contract(encoding: dict, frame: int):
    from fptt_edge.config import ModelConfig
    from fptt_edge.export.pipeline import build_contract
    from fptt_edge.model import LTCNetwork

    net = LTCNetwork(ModelConfig(input_shape=(frame,), num_classes=3, hidden=(4,)))
    return build_contract(net, {"input_spec": {"task": "npz", "encoding": encoding}}, "0" * 64, 1, 18, {})


def test_runtime_applies_the_recorded_encoding_as_training_does(tmp_path):
    """The same raw .npz through the training-side loader (test_set_from_spec, which eval and export
    use) and through the device runtime's reader gives bitwise the same frames."""
    from fptt_edge.runtime.inputs import from_npz

    train = synthetic_gestures(30, steps=24, classes=3, seed=2)
    enc = fit_encoding(train, "standardize+delta", 0.1)
    path = tmp_path / "raw.npz"
    write_npz(path, synthetic_gestures(9, steps=24, classes=3, seed=2, split="test"))
    contract = StepContract.from_metadata(_contract(enc.to_dict(), 3).to_metadata(), "m.onnx")
    assert Encoding.from_dict(contract.input.encoding) == enc
    device = [r.frames for r in from_npz(path, contract)]
    host = tasks.test_set_from_spec({"task": "npz", "encoding": enc.to_dict()}, path)
    lengths = host.lengths.numpy() if host.lengths is not None else [host.x.shape[1]] * len(host.x)
    assert len(device) == len(host.x) and min(lengths) < host.x.shape[1]  # variable lengths: the device streams each to its end
    for frames, x, n in zip(device, host.x.numpy(), lengths):
        np.testing.assert_array_equal(frames, x[:n])
    assert host.input_shape == (3,) and host.input_spec["encoding"]["kind"] == "standardize+delta"


def test_the_contract_refuses_an_encoding_that_does_not_fit_the_graph():
    enc = Encoding(kind="delta", channels=2, mean=(0.0, 0.0), std=(1.0, 1.0))
    meta = _contract(enc.to_dict(), 3).to_metadata()  # delta of 2 channels gives 4 values, the graph takes 3
    with pytest.raises(ContractError, match="input encoding"):
        StepContract.from_metadata(meta, "m.onnx")
    inp = json.loads(meta["fptt_edge.input"])
    inp["encoding"] = {"kind": "delta", "channels": 1, "mean": [0.0], "std": [float("nan")]}
    with pytest.raises(ContractError, match="input encoding"):
        StepContract.from_metadata({**meta, "fptt_edge.input": json.dumps(inp)}, "m.onnx")


def test_encoding_is_fitted_on_the_training_part_and_recorded(tmp_path):
    train, test = synthetic_gestures(60, steps=20, classes=3, seed=3), synthetic_gestures(30, steps=20, classes=3, seed=3, split="test")
    write_npz(tmp_path / "tr.npz", train)
    write_npz(tmp_path / "te.npz", test)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--task", "npz", "--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz"),
                                       "--hidden", "8", "--epochs", "1", "--batch-size", "16", "--encoding", "delta", "--out", str(out),
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = torch.load(out / "model.pt", weights_only=True)
    recorded = Encoding.from_dict(payload["input_spec"]["encoding"])
    assert payload["model_config"]["input_shape"] == [2] and recorded.kind == "delta"
    from fptt_edge.data.dataset import split_validation

    part, _ = split_validation(load_task("npz", "train", tmp_path / "tr.npz"), 0.1, 0)
    assert recorded == fit_encoding(part, "delta", 0.1)  # fitted on the training part only (not the validation part)
    evaluated = json.loads(CliRunner().invoke(main, ["eval", str(out / "model.pt"), "--data", str(tmp_path / "te.npz")]).output)
    assert evaluated["accuracy"] == pytest.approx(json.loads((out / "metrics.json").read_text())["test_accuracy"])


def _fptt_accuracy(train, test, encoding: str) -> float:
    from fptt_edge.config import ModelConfig
    from fptt_edge.model import LTCNetwork
    from fptt_edge.training.trainers import FPTTTrainer, TrainConfig, evaluate

    enc = fit_encoding(train, encoding)
    tr, te = encode_dataset(train, enc), encode_dataset(test, enc)
    torch.manual_seed(0)
    model = LTCNetwork(ModelConfig(input_shape=tr.input_shape, num_classes=len(train.class_names), hidden=(32,)))
    cfg = TrainConfig(batch_size=16, epochs=8, lr=1e-2, schedule="cosine")
    trainer = FPTTTrainer(model, cfg)
    order = torch.Generator().manual_seed(0)
    batches = len(tr) // cfg.batch_size
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(tr), generator=order)
        for b in range(batches):
            trainer.set_lr(cfg.lr_at(epoch, b, batches))
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            trainer.train_batch(tr.x[idx], tr.y[idx], tr.lengths[idx])
        trainer.before_eval()  # as the training loop does after every epoch (W <- Wbar, the default)
    return evaluate(model, te.x, te.y, te.lengths)["accuracy"]


def test_fptt_learns_synthetic_accelerometer_gestures_through_an_encoding():
    """One analog channel around gravity (9.8, gestures of +-1.5..3 on top), 4 classes, 96 training
    sequences of 28-40 steps: fed raw, FPTT stays at chance; standardised with level-crossing
    ON/OFF channels (fitted on the training data) it learns them."""
    train = synthetic_gestures(96, steps=40, classes=4, seed=0)
    test = synthetic_gestures(96, steps=40, classes=4, seed=0, split="test")
    raw = _fptt_accuracy(train, test, "none")
    encoded = _fptt_accuracy(train, test, "standardize+delta")
    assert raw <= 0.36 and encoded >= 0.5, (raw, encoded)


def test_spread_time_constants_cover_the_sequence_length():
    from fptt_edge.config import ModelConfig
    from fptt_edge.model import LTCNetwork
    from fptt_edge.training.init import init_time_constants

    net = LTCNetwork(ModelConfig(input_shape=(3,), num_classes=4, hidden=(200,)))
    init_time_constants(net, 400, "spread", seed=1)
    layer = net.ltc_layers[0]
    tau_m = 1 / torch.sigmoid(layer.gate_m.bias) - 1  # alpha = 1 / (1 + tau_m)
    tau_a = -1 / torch.log(torch.sigmoid(layer.gate_a.bias))  # rho = exp(-1 / tau_a)
    assert 1 - 1e-3 <= float(tau_m.min()) and float(tau_m.max()) <= 100 + 1e-2 and float(tau_m.max()) > 50
    assert 2 - 1e-3 <= float(tau_a.min()) and float(tau_a.max()) <= 200 + 1e-1 and float(tau_a.max()) > 100
    assert float(torch.sigmoid(net.readout.gate.bias[0])) == pytest.approx(8 / 400)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_time_constants(net, 400, "default")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_an_encoding_that_overflows_float32_is_refused_in_one_line_on_both_sides(tmp_path):
    """Raw values far from the training mean overflow float32 once standardised: refused, never streamed as inf."""
    enc = Encoding(kind="standardize", channels=1, mean=(3.05e38,), std=(5e36,))
    with pytest.raises(EncodingError, match="non-finite"):
        enc.encode(np.full((1, 4, 1), -3e38, np.float32))
    x = np.where(np.arange(20 * 6)[:, None] % 2 == 0, 3.0e38, 3.1e38).astype(np.float32).reshape(20, 6, 1)
    np.savez(tmp_path / "tr.npz", x=x, y=np.arange(20) % 2)
    np.savez(tmp_path / "te.npz", x=-x[:4], y=np.arange(4) % 2)
    result = CliRunner().invoke(main, ["train", "--task", "npz", "--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz"),
                                       "--hidden", "4", "--epochs", "1", "--encoding", "standardize", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2 and "non-finite" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1 and not (tmp_path / "run").exists()


def test_encoder_streams_start_over_one_at_a_time():
    """reset(row) makes one stream's next step its first: from there its frames are those of the new recording encoded
    whole; the other streams go on as before."""
    x = synthetic_gestures(3, steps=30, classes=3, seed=4).x.numpy()  # [3, 30, 1]
    enc = Encoding.fit("standardize+delta", x, threshold=0.1)
    stream = enc.stream()
    out = [stream.step(x[:, t]) for t in range(12)]
    stream.reset(1)
    out += [stream.step(x[:, t]) for t in range(12, 30)]
    got = np.stack(out, axis=1)
    whole = enc.encode(x)
    np.testing.assert_array_equal(got[[0, 2]], whole[[0, 2]])
    np.testing.assert_array_equal(got[1, 12:], enc.encode(x[1:2, 12:])[0])
    assert not np.array_equal(got[1, 12:], whole[1, 12:])  # not vacuous: starting over changed that stream's frames
    before = stream.snapshot()
    with pytest.raises(EncodingError):
        stream.step(np.full((3, 1), np.nan, np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(stream.snapshot(), before))  # a refused step moves nothing
    with pytest.raises(EncodingError, match="shape"):
        stream.step(x[:2, 0])


@pytest.fixture(scope="module")
def encoded_model(tmp_path_factory):
    """A small model trained with --encoding standardize+delta on data sampled at 100 Hz (period_us), exported with its
    train-step graph (unchecked)."""
    folder = tmp_path_factory.mktemp("encoded")
    write_npz(folder / "tr.npz", synthetic_gestures(48, steps=24, classes=3, seed=5), period_us=10_000)  # sampled at 100 Hz
    write_npz(folder / "te.npz", synthetic_gestures(6, steps=24, classes=3, seed=5, split="test"), period_us=10_000)
    run = CliRunner().invoke(main, ["train", "--task", "npz", "--train", str(folder / "tr.npz"), "--test", str(folder / "te.npz"),
                                    "--hidden", "8", "--epochs", "1", "--batch-size", "16", "--encoding", "standardize+delta",
                                    "--out", str(folder / "run"), "--quiet"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    export = CliRunner().invoke(main, ["export", str(folder / "run" / "model.pt"), "--adapt", "--no-check", "--batch", "dynamic"],
                                catch_exceptions=False)
    assert export.exit_code == 0, export.output
    return folder


def test_live_session_encodes_raw_samples_per_stream(encoded_model):
    """step_raw on raw samples gives bitwise the logits of step on the frames Encoding.encode makes of the whole recording,
    per stream: stream 1 starts a new recording after reset(1) while stream 0 goes on; a refused sample (NaN) changes
    neither the state nor the encoder."""
    from fptt_edge.runtime import RuntimeInputError, open_session

    model = encoded_model / "run" / "model.onnx"
    data = np.load(encoded_model / "te.npz")
    x = data["x"][:3, :20]  # [3, 20, 1] raw
    with open_session(model, streams=2) as raw, open_session(model, streams=2) as framed:
        enc = raw.encoding
        assert enc.kind == "standardize+delta" and raw.raw_shape == (1,) and raw.frame_shape == (3,)
        first = enc.encode(x[:2])  # streams 0 and 1, recordings 0 and 1
        for t in range(10):
            np.testing.assert_array_equal(raw.step_raw(x[:2, t]), framed.step(first[:, t]).copy())
        with pytest.raises(RuntimeInputError):
            raw.step_raw(np.full((2, 1), np.nan, np.float32))
        with pytest.raises(RuntimeInputError):
            raw.step_raw(x[:2, 0, :1].reshape(2, 1, 1))  # wrong shape
        before = raw._encoder.snapshot()

        def refused():
            raise RuntimeInputError("refused")
        raw._step_checked = refused  # the sample encodes, then the step is refused (as one driving the state to NaN)
        with pytest.raises(RuntimeInputError, match="refused"):
            raw.step_raw(x[:2, 10])
        del raw._step_checked
        assert all(np.array_equal(a, b) for a, b in zip(raw._encoder.snapshot(), before))  # the encoder stepped back
        raw.reset(1)
        framed.reset(1)
        second = enc.encode(x[2:3, 10:])[0]  # stream 1: recording 2 from its step 10 on, a new recording
        for t in range(10, 20):
            frames = np.stack([first[0, t], second[t - 10]])
            np.testing.assert_array_equal(raw.step_raw(np.stack([x[0, t], x[2, t]])), framed.step(frames).copy())


def test_learner_keeps_the_encoded_frames_of_raw_samples(encoded_model):
    from fptt_edge.runtime.learner import open_learner

    data = np.load(encoded_model / "te.npz")
    x = data["x"][:1, :16]
    with open_learner(encoded_model / "run" / "model.onnx", store=False) as learner:
        frames = learner.session.encoding.encode(x)[0]
        for t in range(16):
            learner.step_raw(x[:, t])
        np.testing.assert_array_equal(learner._ring[0, :16], frames)


def test_learn_raw_trains_as_learn_on_the_encoded_recording(encoded_model):
    """learn_raw on raw recordings makes, bit for bit, the updates learn makes on the frames Encoding.encode gives of them
    (the encoding read back from the checkpoint); encode() on a padded batch is that encoding too. Bad raw input is
    refused in one line and queues nothing."""
    from fptt_edge.runtime.errors import AdaptationError
    from fptt_edge.runtime.learner import open_learner

    data = np.load(encoded_model / "te.npz")
    x, y, lengths = data["x"], data["y"], data["lengths"]
    enc = Encoding.from_dict(json.loads(json.dumps(torch.load(encoded_model / "run" / "model.pt", weights_only=True)["input_spec"]["encoding"])))
    model = encoded_model / "run" / "model.onnx"
    with open_learner(model, store=False) as raw, open_learner(model, store=False) as framed:
        factory = raw.backend.buffers()["weights"].copy()
        updates = 0
        for i in range(len(x)):
            updates += raw.learn_raw(x[i, :lengths[i]], int(y[i]))
            framed.learn(enc.encode(x[i:i + 1, :lengths[i]])[0], int(y[i]))
        updates += raw.flush()
        framed.flush()
        assert updates > 0 and not np.array_equal(raw.backend.buffers()["weights"], factory), "vacuous: nothing learned"
        for name, value in raw.backend.buffers().items():
            np.testing.assert_array_equal(value, framed.backend.buffers()[name], err_msg=name)
        np.testing.assert_array_equal(raw.encode(x), enc.encode(x))
        for bad, match in ((np.full((5, 1), np.nan, np.float32), "NaN"), (x[0, :5, :1].repeat(2, axis=1), r"\[\.\.\., T >= 1, 1\]"),
                           (x[:2, :5], "one recording"), (x[0, :0], "T >= 1"), ([[0.1], [0.2, 0.3]], "one shape"),
                           (x[0, :5].astype(np.complex64), "real numbers"), (torch.zeros(5, 1, requires_grad=True), "one shape")):
            with pytest.raises(AdaptationError, match=match) as info:
                raw.learn_raw(bad, 0)
            assert "\n" not in str(info.value)
        assert raw._pending == 0 and raw.events.segments == len(x)
        with pytest.raises(AdaptationError, match="one shape"):
            framed.learn(torch.zeros(5, *framed.frame_shape, requires_grad=True), 0)  # a tensor numpy cannot take


def test_card_measures_the_input_rate_of_raw_samples_through_the_encoding(encoded_model):
    """card --data takes the raw .npz that run and adapt take: encoded as the runtime does, the padding after each
    recording's end not counted."""
    from fptt_edge.card import build_card

    data = np.load(encoded_model / "te.npz")
    assert "lengths" in data and data["lengths"].min() < data["x"].shape[1]  # padded recordings: the count must skip padding
    enc = Encoding.from_dict(json.loads(json.dumps(torch.load(encoded_model / "run" / "model.pt", weights_only=True)["input_spec"]["encoding"])))
    frames = enc.encode(data["x"])
    valid = np.arange(frames.shape[1])[None, :] < data["lengths"][:, None]
    expected = np.count_nonzero(frames[valid]) / frames[valid].size
    card = build_card(encoded_model / "run" / "model.onnx", data=encoded_model / "te.npz")
    assert card["macs_per_step"]["rates"]["input"] == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(np.count_nonzero(frames) / frames.size)  # not vacuous: padding would change it


def _same_encoder(a, b) -> bool:
    return all((p is None and q is None) or (p is not None and q is not None and np.array_equal(p, q)) for p, q in zip(a, b))


@contextlib.contextmanager
def _stepped_session_and_learner(encoded_model, steps: int = 3):
    """A 2-stream session and learner on the encoded model, each stepped ``steps`` raw samples: ``(x, [(owner, live
    session), ...])`` for step_raw on each owner."""
    from fptt_edge.runtime import open_session
    from fptt_edge.runtime.learner import open_learner

    model = encoded_model / "run" / "model.onnx"
    x = np.load(encoded_model / "te.npz")["x"][:2, :6]
    with open_session(model, streams=2) as sess, open_learner(model, store=False, streams=2) as learner:
        owners = [(sess, sess), (learner, learner.session)]
        for owner, _ in owners:
            for t in range(steps):
                owner.step_raw(x[:, t])
        yield x, owners


def test_a_step_that_fails_in_the_backend_leaves_the_encoder_as_it_was(encoded_model):
    """StepFailed (ONNX Runtime could not run the step: 'state unchanged') or Ctrl-C during the step: step_raw, on the
    session and on the learner, leaves the encoder where it was too, so the sample can be given again."""
    from fptt_edge.runtime import StepFailed

    with _stepped_session_and_learner(encoded_model) as (x, owners):
        for owner, live in owners:
            for failure in (StepFailed("ONNX Runtime could not run the step; state unchanged"), KeyboardInterrupt()):
                before, state = live._encoder.snapshot(), live.get_state()

                def fail(failure=failure):
                    raise failure
                live.backend.step = fail
                with pytest.raises(type(failure)):
                    owner.step_raw(x[:, 3])
                del live.backend.step
                after = live.get_state()
                assert all(np.array_equal(after[k], state[k]) for k in state)
                assert _same_encoder(live._encoder.snapshot(), before)  # the encoder did not move on without the model
        assert owners[1][0]._seen.tolist() == [3, 3]


class _Intruder:
    """The session's lock, plus another thread that takes the session as soon as step_raw lets it go after encoding its
    sample but before the model has stepped (what a thread calling get_state or predict can do at any time)."""

    def __init__(self, sess):
        import threading

        self.sess, self.lock, self.encoded, self.stepped = sess, sess._lock, False, False
        self.holding, self.leave, self.threading = threading.Event(), threading.Event(), threading
        encoder_step, backend_step = sess._encoder.step, sess.backend.step

        def on_encode(x):
            out = encoder_step(x)
            self.encoded = True
            return out

        def on_step():
            backend_step()
            self.stepped = True
        sess._encoder.step, sess.backend.step = on_encode, on_step

    def acquire(self, blocking=True):
        return self.lock.acquire(blocking)

    def release(self):
        self.lock.release()
        if self.encoded and not self.stepped and not self.holding.is_set():
            def other():
                with self.lock:
                    self.holding.set()
                    self.leave.wait(10)
            self.thread = self.threading.Thread(target=other)
            self.thread.start()
            self.holding.wait(10)

    def done(self):
        self.leave.set()
        if self.holding.is_set():
            self.thread.join(10)
        self.sess._lock = self.lock
        del self.sess._encoder.step, self.sess.backend.step


def test_another_thread_between_encoding_and_step_cannot_split_step_raw(encoded_model):
    """A call from another thread while step_raw runs is refused, and step_raw does both (encoder and model) or neither:
    never the encoder moved on with the model not stepped (the next samples' delta counts would then be off)."""
    from fptt_edge.runtime import RuntimeInputError

    with _stepped_session_and_learner(encoded_model) as (x, owners):
        for owner, live in owners:
            before, state = live._encoder.snapshot(), live.get_state()
            intruder = _Intruder(live)
            live._lock = intruder
            try:
                owner.step_raw(x[:, 3])
                refused = False
            except RuntimeInputError:
                refused = True
            finally:
                intruder.done()
            after = live.get_state()
            moved = not all(np.array_equal(after[k], state[k]) for k in state)
            assert moved != refused and _same_encoder(live._encoder.snapshot(), before) == refused  # both or neither


def test_exported_files_do_not_carry_the_workstations_data_paths(encoded_model):
    """The checkpoint records where its data lay (for its own error messages); the model shipped to a device, its train
    graph and the export report record what the data are (task, encoding, the file's name), not the absolute paths."""
    import onnx

    run = encoded_model / "run"
    payload = torch.load(run / "model.pt", weights_only=True)
    assert str(encoded_model) in payload["input_spec"]["path"]  # not vacuous: the checkpoint has them
    for name in ("model.onnx", "model.train.onnx"):
        props = {p.key: p.value for p in onnx.load(str(run / name), load_external_data=False).metadata_props}
        assert not [k for k, v in props.items() if str(encoded_model) in v], name
    source = json.loads(next(p.value for p in onnx.load(str(run / "model.onnx")).metadata_props if p.key == "fptt_edge.input"))["source"]
    assert source["file"] == "tr.npz" and source["encoding"]["kind"] == "standardize+delta"
    report = (run / "model.report.json").read_text()  # the workstation's record: it names the files the user gave export
    assert str(encoded_model / "tr.npz") not in report and str(encoded_model / "te.npz") not in report


def _continuous_recording(folder, with_times: bool = True):
    """A synthetic IMU recording of 6 gestures with rests between them (``rec.npz``: raw x [T, 1], t) and its labels CSV."""
    stream = synthetic_gesture_stream(6, steps=24, classes=3, seed=5)
    np.savez(folder / "rec.npz", x=stream["x"], **({"t": stream["t"]} if with_times else {}))
    _labels_csv(folder, stream["segments"])
    return stream


def _labels_csv(folder, segments):
    """``segments`` [S, 3] (class, start_us, end_us) as ``folder/labels.csv``."""
    rows = "".join(f"{c},{a},{b}\n" for c, a, b in segments)
    (folder / "labels.csv").write_text("class,startTime_usec,endTime_usec\n" + rows)
    return folder / "labels.csv"


def test_a_continuous_raw_recording_is_recognised_as_its_whole_encoding_is(encoded_model, tmp_path):
    """``run --npz REC --continuous`` on an analog model: each raw sample goes through step_raw (encoded per step,
    never reset), and the gestures are those of the recording encoded whole by Encoding.encode and stepped as
    frames, at the times the file gives (a step ends at its sample); scored against the labelled windows."""
    from fptt_edge.runtime import open_session
    from fptt_edge.runtime.recognition import DecisionRule, recognise, recognise_samples, score

    stream = _continuous_recording(tmp_path)
    rule = DecisionRule(window=2, threshold=0.4, hold=1)  # fires on this barely trained model
    model = encoded_model / "run" / "model.onnx"
    with open_session(model) as live, open_session(model) as framed:
        out = recognise_samples(live, live.contract, tmp_path / "rec.npz", tmp_path / "labels.csv", rule=rule)
        t, period = stream["t"], int(np.median(np.diff(stream["t"])))  # each step ends at its sample, begins at the one before
        ref = recognise(framed, framed.encoding.encode(stream["x"][None])[0], np.r_[t[0] - period, t[:-1]], period, rule, ends=t)
        after, expected = live.get_state(), framed.get_state()  # every step the same input: the same state at the end
        assert all(np.array_equal(after[k], expected[k]) for k in expected)
    assert out["gestures"] == ref["gestures"] and ref["gestures"], ref["gestures"]
    assert out["input"] == "raw samples, encoded per step (standardize+delta)" and out["steps"] == len(t) and out["window_us"] == period
    assert out["duration_s"] == pytest.approx((t[-1] + period) / 1e6)
    assert out["score"] == score(ref["gestures"], [tuple(s) for s in stream["segments"]], ref["duration_s"]) and out["score"]["segments"] == 6


def test_run_continuous_on_an_analog_recording(encoded_model, tmp_path):
    """The CLI: sample times from the file, or a sample period (--window-ms) for a file without them; the event-driven
    first layer (--sparse-input, which encodes the recording whole) emits the same gestures."""
    stream = _continuous_recording(tmp_path)
    model = str(encoded_model / "run" / "model.onnx")
    rule = ["--smooth", "2", "--threshold", "0.4", "--hold", "1"]
    base = ["run", model, "--npz", str(tmp_path / "rec.npz"), "--continuous", *rule, "--labels", str(tmp_path / "labels.csv"), "--json"]
    live, sparse = (json.loads(CliRunner().invoke(main, base + extra, catch_exceptions=False).output) for extra in ([], ["--sparse-input"]))
    assert live["steps"] == len(stream["x"]) and live["score"]["segments"] == 6 and live["gestures"]
    assert sparse["gestures"] == live["gestures"] and sparse["input"] == "raw samples, encoded whole (standardize+delta)"
    _continuous_recording(tmp_path, with_times=False)
    res = CliRunner().invoke(main, ["run", model, "--npz", str(tmp_path / "rec.npz"), "--continuous", *rule, "--window-ms", "10"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output[res.output.index("{\n"):])
    assert printed["window_us"] == 10_000 and printed["duration_s"] == pytest.approx(len(stream["x"]) / 100)
    assert [line for line in res.output.splitlines() if "confidence" in line][0].split()[1] == "s"  # each gesture as it is emitted


def test_labelled_segments_of_an_analog_recording_run_and_adapt_as_separate_recordings(encoded_model, tmp_path):
    """``--labels`` on one continuous .npz cuts it into its labelled segments, each the samples whose time lies inside
    it, encoded on its own: ``run`` predicts, and ``adapt`` learns, exactly as from an .npz of those recordings cut by hand."""
    import shutil

    stream = _continuous_recording(tmp_path)
    t, x = stream["t"], stream["x"]
    cut = [x[(t >= a) & (t < b)] for _, a, b in stream["segments"]]
    longest = max(len(c) for c in cut)
    np.savez(tmp_path / "cut.npz", x=np.stack([np.pad(c, ((0, longest - len(c)), (0, 0))) for c in cut]), y=stream["segments"][:, 0],
             lengths=np.array([len(c) for c in cut]))
    invoke = lambda *args: CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)  # noqa: E731
    model = encoded_model / "run" / "model.onnx"
    segments = json.loads(invoke("run", model, "--npz", tmp_path / "rec.npz", "--labels", tmp_path / "labels.csv", "--json").output)
    by_hand = json.loads(invoke("run", model, "--npz", tmp_path / "cut.npz", "--json").output)
    assert segments["predictions"] == by_hand["predictions"] and segments["recordings"] == 6 and segments["steps"] == sum(map(len, cut))
    assert segments["accuracy"] == by_hand["accuracy"]
    reports = []
    for name, data in (("a", ["--data", tmp_path / "rec.npz", "--labels", tmp_path / "labels.csv"]), ("b", ["--data", tmp_path / "cut.npz"])):
        shutil.copytree(encoded_model / "run", tmp_path / name, ignore=shutil.ignore_patterns("*.adapted"))  # the fixture's model stays factory
        res = invoke("adapt", tmp_path / name / "model.onnx", *data, "--holdout", "0.3", "--max-drop", "1", "--json")
        assert res.exit_code == 0, res.output
        reports.append(json.loads(res.output))
    a, b = reports
    assert a["samples"] == b["samples"] == {"train": 4, "held_out": 2} and a["updates"] == b["updates"] > 0
    assert a["accuracy_before"] == b["accuracy_before"] and a["accuracy_after"] == b["accuracy_after"]


def test_the_sample_period_is_recorded_and_a_recording_at_another_rate_is_warned_of(encoded_model, tmp_path):
    """An .npz's period_us becomes the model's window_us (checkpoint and ONNX contract): ``run --continuous`` takes it as the
    period of a recording without times, and a recording sampled at another rate is warned of, before the first step."""
    import shutil

    from fptt_edge.contract import read_contract

    assert torch.load(encoded_model / "run" / "model.pt", weights_only=True)["input_spec"]["window_us"] == 10_000
    model = encoded_model / "run" / "model.onnx"
    assert read_contract(model).input.source["window_us"] == 10_000
    invoke = lambda *args: CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)  # noqa: E731
    stream = synthetic_gesture_stream(4, steps=24, classes=3, seed=6)  # 10 ms apart, as trained
    np.savez(tmp_path / "plain.npz", x=stream["x"])
    np.savez(tmp_path / "timed.npz", x=stream["x"], t=stream["t"])
    for name in ("plain", "timed"):
        out = json.loads(invoke("run", model, "--npz", tmp_path / f"{name}.npz", "--continuous", "--json").output)
        assert abs(out["window_us"] - 10_000) < 1_000 and out["warnings"] == [], out
    fast = synthetic_gesture_stream(4, steps=24, classes=3, seed=6, period_us=5_000)
    np.savez(tmp_path / "fast.npz", x=fast["x"], t=fast["t"])
    res = invoke("run", model, "--npz", tmp_path / "fast.npz", "--continuous")
    fast_warning = f"warning: {tmp_path / 'fast.npz'}: the sample period (4.99"
    assert res.exit_code == 0 and res.output.index(fast_warning) < res.output.index("{"), res.output
    assert "ms, the median interval of t) is not the 10 ms the model was trained at" in res.output
    assert "spans 2x more steps than in training" in res.output
    assert json.loads(res.output[res.output.index("{\n"):])["warnings"][0].startswith(fast_warning[len("warning: "):])
    shutil.copytree(encoded_model / "run", tmp_path / "copy", ignore=shutil.ignore_patterns("*.adapted"))  # the fixture's model stays factory
    res = invoke("adapt", tmp_path / "copy" / "model.onnx", "--data", tmp_path / "fast.npz", "--labels", _labels_csv(tmp_path, fast["segments"]),
                 "--json")
    assert res.exit_code == 0 and json.loads(res.output[res.output.index("{\n"):])["warnings"][0].startswith(fast_warning[len("warning: "):])
    np.savez(tmp_path / "period.npz", x=fast["x"], period_us=np.int64(5_000))  # a period instead of times
    out = json.loads(invoke("run", model, "--npz", tmp_path / "period.npz", "--continuous", "--json").output)
    assert out["window_us"] == 5_000 and out["duration_s"] == pytest.approx(len(fast["x"]) * 5e-3) and len(out["warnings"]) == 1
    recordings = tmp_path / "recordings.npz"  # separate recordings sampled at 200 Hz: run streams them, and warns
    write_npz(recordings, synthetic_gestures(3, steps=24, classes=3, seed=7, split="test"), period_us=5_000)
    res = invoke("run", model, "--npz", recordings, "--json")
    assert res.exit_code == 0 and res.output.startswith(f"warning: {recordings}: the sample period (5 ms) is not the 10 ms"), res.output
    other_rate = f"{recordings}: the sample period (5 ms) is not the 10 ms the model was trained at"
    res = invoke("adapt", tmp_path / "copy" / "model.onnx", "--data", tmp_path / "timed.npz", "--labels", _labels_csv(tmp_path, stream["segments"]),
                 "--score", recordings, "--json")  # recorded at the model's rate; the file it is scored on is not
    assert res.exit_code == 0 and [w[:len(other_rate)] for w in json.loads(res.output[res.output.index("{\n"):])["warnings"]] == [other_rate]
    for args in (["eval", encoded_model / "run" / "model.pt", "--data", recordings],
                 ["export", encoded_model / "run" / "model.pt", "--data", recordings, "-o", tmp_path / "e.onnx", "--parity-steps", "10",
                  "--precision-samples", "4"]):  # the test data, and export's parity checks and guard set, at another rate
        res = invoke(*args)
        assert res.exit_code == 0 and [line[:9 + len(other_rate)] for line in res.output.splitlines() if "warning" in line] == \
            [f"warning: {other_rate}"], res.output
    assert not [line for line in invoke("eval", encoded_model / "run" / "model.pt", "--data", encoded_model / "te.npz").output.splitlines()
                if "warning" in line]


def test_the_period_warning_shows_the_ratio_in_plain_numbers():
    from fptt_edge.npzfile import period_mismatch

    assert "so a movement here spans 100x more steps" in period_mismatch(100, 10_000, "r.npz")
    assert "spans 3,600,000,000x fewer steps" in period_mismatch(3_600_000_000, 1, "r.npz")
    assert "spans 1.5x fewer steps" in period_mismatch(15_000, 10_000, "r.npz", median=True)
    assert "(15 ms, the median interval of t)" in period_mismatch(15_000, 10_000, "r.npz", median=True)
    assert [period_mismatch(p, 10_000, "r.npz") for p in (9_000, 11_000, None, True, 0)] == [None] * 5  # within 10 %, or unknown
    assert period_mismatch(10_000, None, "r.npz") is None


def test_training_files_sampled_at_different_rates_are_refused(tmp_path):
    write_npz(tmp_path / "tr.npz", synthetic_gestures(24, steps=16, classes=3, seed=1), period_us=10_000)
    write_npz(tmp_path / "te.npz", synthetic_gestures(6, steps=16, classes=3, seed=1, split="test"), period_us=5_000)
    res = CliRunner().invoke(main, ["train", "--task", "npz", "--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz"),
                                    "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2 and "different sample periods (period_us): training 10,000 us, validation 10,000 us, test 5,000 us" in res.output
    assert not (tmp_path / "run" / "model.pt").exists()
    write_npz(tmp_path / "tr.npz", synthetic_gestures(24, steps=16, classes=3, seed=1))  # a period in the test file only: it would be lost
    res = CliRunner().invoke(main, ["train", "--task", "npz", "--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz"),
                                    "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2 and len(res.output.splitlines()) == 1, res.output
    assert "different sample periods (period_us): training none, validation none, test 5,000 us" in res.output
    assert not (tmp_path / "run" / "model.pt").exists()


def test_run_continuous_refuses_a_sample_the_encoding_cannot_take_before_the_first_step(encoded_model, tmp_path):
    """A sample that overflows float32 once encoded, half way through the recording: one line naming the file, before any
    gesture is printed, whether the samples are encoded per step (step_raw) or whole (--sparse-input)."""
    stream = _continuous_recording(tmp_path)
    x = stream["x"].copy()
    x[len(x) // 2], x[len(x) // 2 + 1] = 3e38, -3e38
    np.savez(tmp_path / "bad.npz", x=x, t=stream["t"])
    model = str(encoded_model / "run" / "model.onnx")
    for extra in ([], ["--sparse-input"]):
        res = CliRunner().invoke(main, ["run", model, "--npz", str(tmp_path / "bad.npz"), "--continuous", "--smooth", "1", "--threshold",
                                        "0.34", "--hold", "1", *extra])
        assert res.exit_code == 2 and len(res.output.splitlines()) == 1, res.output
        assert res.output.startswith(f"Error: {tmp_path / 'bad.npz'}: field 'x': the standardize+delta encoding gives non-finite values")


def test_bench_times_a_model_with_an_encoding_also_on_raw_samples(encoded_model, monkeypatch):
    """``bench``'s matrix has a ``<backend> step_raw`` row for a model trained with --encoding: raw samples through the
    session's step_raw (the encoding included), one call per timed step."""
    from fptt_edge.runtime.benchmark import bench_matrix
    from fptt_edge.runtime.session import StreamSession

    calls = []
    real = StreamSession.step_raw
    monkeypatch.setattr(StreamSession, "step_raw", lambda self, x: (calls.append(x.shape), real(self, x))[1])
    rows = bench_matrix(encoded_model / "run" / "model.onnx", [2], ["ort"], 30)
    assert [r["engine"] for r in rows] == ["ort", "ort step_raw", "numpy-blas-floor"]
    assert all(r["p50_us"] > 0 for r in rows) and calls == [(2, 1)] * (30 + 50)  # 50 warm-up steps, then the timed ones
