"""The continuous-recognition decision rule and its scoring (runtime/recognition.py), numpy only."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fptt_edge.runtime.errors import RuntimeInputError
from fptt_edge.runtime.events import EVENT_DTYPE
from fptt_edge.runtime.frames import FrameBinner
from fptt_edge.runtime.recognition import DecisionRule, Recognizer, recognise, sample_spans, score, window_frames

NAMES = [f"g{i}" for i in range(6)]


def logits_for(sequence) -> list[np.ndarray]:
    """Per step: None (no class: flat logits) or a class index (that class strongly ahead)."""
    out = []
    for c in sequence:
        z = np.zeros(len(NAMES))
        if c is not None:
            z[c] = 5.0
        out.append(z)
    return out


def run_rule(sequence, rule, step_us=100):
    rec = Recognizer(NAMES, rule)
    emitted_at = []
    for i, z in enumerate(logits_for(sequence)):
        if rec.update(z, i * step_us, (i + 1) * step_us) is not None:
            emitted_at.append(i)
    return [g.to_dict() for g in rec.finish(len(sequence) * step_us)], emitted_at


def test_hold_smoothing_release_by_hand():
    # softmax of a 5-logit lead over 5 others: p = e^5 / (e^5 + 5) = 0.967; flat: 1/6 each
    seq = [None, None, 2, 2, 2, 2, 2, None, None, None, None, 4, 4, 4, None]
    gestures, at = run_rule(seq, DecisionRule(window=2, threshold=0.5, hold=2))
    # window 2: step 2 smooths (1/6 + 0.967)/2 = 0.567 >= 0.5 -> candidate from step 2, held at step 3 -> emitted at step 3,
    # start 200 us (step 2 began), detected 400 us (step 3 ended); releases (< 0.25) at step 8, whose mean is flat: ends at 800 us
    assert at == [3, 12]
    assert [(g["label"], g["start_us"], g["detect_us"], g["end_us"]) for g in gestures] == [(2, 200, 400, 800), (4, 1100, 1300, 1500)]
    assert gestures[0]["confidence"] == pytest.approx((np.exp(5) / (np.exp(5) + 5)), rel=1e-6)  # both window steps confident at step 3
    gestures, at = run_rule(seq, DecisionRule(window=1, threshold=0.9, hold=4))
    assert at == [5] and [(g["label"], g["start_us"], g["end_us"]) for g in gestures] == [(2, 200, 700)]  # class 4 held only 3 steps


def test_switch_refractory_and_ignore():
    seq = [1, 1, 1, 3, 3, 3, None, 3, 3, None, 3, 3]
    gestures, _ = run_rule(seq, DecisionRule(window=1, threshold=0.5, hold=2))
    # 1 at step 1; 3 takes over (held at step 4: 1 ends at 300 when 3's first step began... it ends when released at step 3)
    assert [(g["label"], g["start_us"], g["detect_us"], g["end_us"]) for g in gestures] == [
        (1, 0, 200, 300), (3, 300, 500, 600), (3, 700, 900, 900), (3, 1000, 1200, 1200)]
    gestures, _ = run_rule(seq, DecisionRule(window=1, threshold=0.5, hold=2, refractory=3))
    assert [(g["label"], g["start_us"]) for g in gestures] == [(1, 0), (3, 300), (3, 1000)]  # the restart at 700 falls in the refractory time
    gestures, _ = run_rule(seq, DecisionRule(window=1, threshold=0.5, hold=2, ignore=(3,)))
    assert [g["label"] for g in gestures] == [1]
    for bad in ({"window": 0}, {"hold": 1.5}, {"threshold": 0}, {"threshold": 0.5, "release": 0.6}, {"refractory": -1}):
        with pytest.raises(RuntimeInputError):
            DecisionRule(**bad)
    with pytest.raises(RuntimeInputError, match="outside"):
        Recognizer(NAMES, DecisionRule(ignore=(9,)))
    with pytest.raises(RuntimeInputError, match="finite"):
        Recognizer(NAMES).update(np.full(6, np.nan), 0, 1)


def test_score_by_hand():
    segments = [(0, 1000, 5000), (3, 8000, 12000), (5, 20000, 25000)]
    gestures = [{"label": 0, "detect_us": 2000}, {"label": 1, "detect_us": 9000}, {"label": 3, "detect_us": 10000},
                {"label": 4, "detect_us": 15000}, {"label": 5, "detect_us": 25500}]
    s = score(gestures, segments, duration_s=30.0)
    # seg 0: correct (delay 1 ms); seg 1: first emission is class 1 -> wrong (a false alarm), the later class 3 does not count;
    # seg 2: the class-5 emission at 25.5 ms is after its end -> missed, and a false alarm; class 4 at 15 ms: in no segment
    assert s["segment_accuracy"] == pytest.approx(1 / 3) and s["missed"] == 1 and s["detected"] == 2
    assert s["false_alarms"] == 3 and s["false_alarms_per_minute"] == pytest.approx(6.0)
    assert s["detection_delay_ms"] == {"mean": 1.0, "median": 1.0, "max": 1.0}
    s = score(gestures, segments, duration_s=30.0, grace_us=1000)  # with a grace period the late emission counts for seg 2
    assert s["segment_accuracy"] == pytest.approx(2 / 3) and s["false_alarms"] == 2 and s["detection_delay_ms"]["max"] == 5.5


def test_window_frames_and_recognise_with_a_scripted_session():
    rng = np.random.default_rng(0)
    ev = np.zeros(500, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(10_000, 1_010_001, 500))
    ev["t"][[0, -1]] = 10_000, 1_010_000  # 1 s: ten whole windows and one holding the last event
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 128, 500), rng.integers(0, 128, 500), rng.integers(0, 2, 500)
    binner = FrameBinner((128, 128, 2), 20, "time", 4, "counts")
    frames, starts = window_frames(ev, binner, 100_000)
    assert frames.shape == (11, 2, 32, 32) and starts[0] == ev["t"][0] and np.all(np.diff(starts) == 100_000)
    for k in range(len(frames)):  # each window by hand
        sel = ev[(ev["t"] >= starts[k]) & (ev["t"] < starts[k] + 100_000)]
        ref = np.zeros((2, 32, 32), np.float32)
        np.add.at(ref, (sel["p"].astype(int), sel["y"] // 4, sel["x"] // 4), 1)
        np.testing.assert_array_equal(frames[k], ref)
    assert frames.sum() == len(ev)
    with pytest.raises(RuntimeInputError, match="window"):
        window_frames(ev, binner, 0)

    script = iter(logits_for([None, 2, 2, 2, None, None, None, None, 5, 5, 5]))
    session = SimpleNamespace(streams=1, contract=SimpleNamespace(class_names=NAMES), step=lambda x: next(script)[None])
    seen = []
    out = recognise(session, frames, starts, 100_000, DecisionRule(window=1, threshold=0.5, hold=2), on_event=seen.append)
    assert [(g["label"], g["start_us"] - int(starts[0]), g["detect_us"] - int(starts[0])) for g in out["gestures"]] == [(2, 100_000, 300_000),
                                                                                                                       (5, 800_000, 1_000_000)]
    assert [g.label for g in seen] == [2, 5] and out["steps"] == 11 and out["duration_s"] == pytest.approx(1.1)
    assert set(out["latency_us"]) == {"p50", "p90", "p99"}


def _stream(n=200, t_end=1_000_000):
    rng = np.random.default_rng(1)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, t_end, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    return ev, FrameBinner((128, 128, 2), 20, "time", 4, "counts")


BAD_WINDOWS = {  # (window_us, start_us)
    "start-after-the-recording": (1000, 10 ** 9), "window-beyond-int64": (2 ** 64, None), "start-beyond-int64": (1000, 2 ** 70),
    "start-nan": (1000, float("nan")), "start-float": (1000, 5.0), "window-float": (1000.0, None), "window-bool": (True, None),
    "start-far-before": (2 ** 62, -(2 ** 63) + 1), "windows-past-int64": (2 ** 62, 0),
}


@pytest.mark.parametrize("name", list(BAD_WINDOWS))
def test_window_frames_refuses_windows_and_starts_out_of_range(name):
    ev, binner = _stream()
    window, start = BAD_WINDOWS[name]
    if name == "windows-past-int64":
        ev["t"][-1] = 2 ** 63 - 2 ** 61  # the last window would end past int64
    with pytest.raises(RuntimeInputError) as err:
        window_frames(ev, binner, window, start_us=start)
    assert "\n" not in str(err.value)


def test_window_frames_refuses_frames_beyond_free_memory_up_front(monkeypatch):
    import fptt_edge.runtime.recognition as recognition

    ev, binner = _stream()
    monkeypatch.setattr(recognition, "available_memory", lambda: 1 << 20)  # 1 MiB free; ~1,000 frames of 8 KiB need 8 MiB
    with pytest.raises(RuntimeInputError, match="GiB is free"):
        window_frames(ev, binner, 1000)
    monkeypatch.setattr(recognition, "available_memory", lambda: 1 << 30)
    assert window_frames(ev, binner, 1000)[0].shape[1:] == (2, 32, 32)
    with pytest.raises(RuntimeInputError, match="at most 10,000,000"):
        window_frames(ev, binner, 1, start_us=-(10 ** 7))


def test_recognition_api_refuses_bad_arguments_before_stepping():
    steps = []
    session = SimpleNamespace(streams=1, contract=SimpleNamespace(class_names=NAMES), step=lambda x: steps.append(1) or np.zeros((1, 6)))
    frames = np.zeros((5, 2, 3), np.float32)
    for starts, window in ((np.arange(2) * 1000, 1000), (np.arange(5) * 1000.0, 1000), (np.arange(5) * 1000, 2 ** 64), (list(range(5)), 1000)):
        with pytest.raises(RuntimeInputError):
            recognise(session, frames, starts, window)
    assert not steps  # nothing stepped
    for rule in (dict(ignore=("a",)), dict(ignore=(-1,)), dict(ignore=5), dict(window=10 ** 12), dict(threshold=float("nan"))):
        with pytest.raises(RuntimeInputError):
            Recognizer(NAMES, DecisionRule(**rule))


def test_stream_recordings_scores_by_class_index_not_name():
    from fptt_edge.runtime.inputs import Recording
    from fptt_edge.runtime.streaming import stream_recordings

    session = SimpleNamespace(streams=1, contract=SimpleNamespace(class_names=("same", "same")), reset=lambda: None,
                              step=lambda x: np.array([[1.0, 0.0]]))  # always class 0
    recs = [Recording("r0", np.zeros((2, 3), np.float32), 0), Recording("r1", np.zeros((2, 3), np.float32), 1)]
    assert stream_recordings(session, recs)["accuracy"] == 0.5  # one name for two classes: r1 is still wrong


def test_recognition_is_torch_free():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fptt_edge.runtime.recognition, fptt_edge.runtime.sparse_conv\n"
            "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_sample_spans_from_times_or_a_period_by_hand():
    """A sample closes its step: the step of the sample at t[i] runs from the sample before (the first from a period
    before t[0]) to t[i], so a gesture is detected at the time of the sample that decided it."""
    t = np.array([0, 10_000, 21_000, 30_000, 40_500], np.int64)
    starts, ends, period = sample_spans(t, 5, None)
    assert period == 10_250  # median of 10000, 11000, 9000, 10500
    assert starts.tolist() == [-10_250, 0, 10_000, 21_000, 30_000] and ends.tolist() == t.tolist()
    starts, ends, period = sample_spans(None, 3, 2_500)  # samples at 0, 2500, 5000
    assert (starts.tolist(), ends.tolist(), period) == ([-2_500, 0, 2_500], [0, 2_500, 5_000], 2_500)
    starts, ends, period = sample_spans(None, 1, 7)
    assert (starts.tolist(), ends.tolist(), period) == ([-7], [0], 7)
    huge = np.array([0, 2 ** 62 + 1, 2 ** 63 - 1], np.int64)  # the median of 2**62 + 1 and 2**62 - 2, exactly (not float64's 2**62)
    assert sample_spans(huge, 3, None)[2] == 2 ** 62 - 1
    wide = np.array([-2 ** 62, 2 ** 62 + 1, 2 ** 62 + 3, 2 ** 62 + 5], np.int64)  # a gap beyond int64, the median 2
    assert sample_spans(wide, 4, None)[0].tolist() == [-2 ** 62 - 2, -2 ** 62, 2 ** 62 + 1, 2 ** 62 + 3]
    with pytest.raises(RuntimeInputError, match="--window-ms"):
        sample_spans(None, 3, None)
    with pytest.raises(RuntimeInputError, match="at least 2 samples"):
        sample_spans(t[:1], 1, None)
    with pytest.raises(RuntimeInputError, match="int64"):
        sample_spans(None, 10, 2 ** 62)
    with pytest.raises(RuntimeInputError, match="before the int64"):
        sample_spans(np.array([-2 ** 63, -2 ** 63 + 10], np.int64), 2, None)
    for bad in (t[::-1].copy(), np.r_[t[:3], t[2:4]], t.astype(np.float64), t[:4]):
        with pytest.raises(RuntimeInputError, match="t must"):
            sample_spans(bad, 5, None)


def test_sample_spans_cap_a_continuous_run(monkeypatch):
    from fptt_edge.runtime import recognition

    monkeypatch.setattr(recognition, "MAX_WINDOWS", 4)
    assert len(sample_spans(None, 4, 10)[0]) == 4
    with pytest.raises(RuntimeInputError, match="at most 4 steps"):
        sample_spans(None, 5, 10)
    assert sample_spans(None, 5, 10, capped=False)[1].tolist() == [0, 10, 20, 30, 40]  # labelled segments: each a recording of its own


def test_recognise_takes_each_steps_own_end_and_a_step_function():
    """Irregular steps: a gesture's detection time is the end of the step that emitted it, the duration runs to the
    last step's end; the inputs go to ``step`` (step_raw for raw samples), not to session.step."""
    script = iter(logits_for([None, 2, 2, None]))
    fed = []
    session = SimpleNamespace(streams=1, contract=SimpleNamespace(class_names=NAMES), step=None)
    starts, ends = np.array([0, 7, 30, 31]), np.array([7, 30, 31, 50])
    out = recognise(session, np.arange(4, dtype=np.float32)[:, None], starts, 1, DecisionRule(window=1, threshold=0.5, hold=2),
                    ends=ends, step=lambda x: (fed.append(x.copy()), next(script)[None])[1])
    assert [(g["label"], g["start_us"], g["detect_us"], g["end_us"]) for g in out["gestures"]] == [(2, 7, 31, 31)]
    assert [f.tolist() for f in fed] == [[[0.0]], [[1.0]], [[2.0]], [[3.0]]] and out["duration_s"] == pytest.approx(50e-6)
    for bad in (ends[:3], ends.astype(np.float64), np.array([7, 30, 30, 50])):
        with pytest.raises(RuntimeInputError, match="ends"):
            recognise(session, np.zeros((4, 1), np.float32), starts, 1, ends=bad, step=lambda x: np.zeros((1, len(NAMES))))


def test_a_gesture_is_detected_at_its_samples_time_even_before_a_gap():
    """Samples at 0, 10, 20, 30 us, then a pause until 1 s: the gesture decided by the sample at 30 us is detected at
    30 us, inside the labelled segment [10, 40) us (a step reaching on to the next sample would put its detection after
    the pause: a miss and a false alarm); it starts with the step of its first confident sample (from 20 us)."""
    t = np.array([0, 10, 20, 30, 1_000_000], np.int64)
    starts, ends, period = sample_spans(t, len(t), None)
    script = iter(logits_for([None, None, None, 2, None]))
    session = SimpleNamespace(streams=1, contract=SimpleNamespace(class_names=NAMES), step=lambda x: next(script)[None])
    out = recognise(session, np.zeros((len(t), 1), np.float32), starts, period, DecisionRule(window=1, threshold=0.5, hold=1), ends=ends)
    assert [(g["label"], g["start_us"], g["detect_us"], g["end_us"]) for g in out["gestures"]] == [(2, 20, 30, 30)]
    assert out["duration_s"] == pytest.approx((1_000_000 + period) / 1e6)  # from a period before the first sample
    result = score(out["gestures"], [(2, 10, 40)], out["duration_s"])
    assert (result["segment_accuracy"], result["false_alarms"], result["detection_delay_ms"]["max"]) == (1.0, 0, 0.02)


def test_a_step_refused_mid_stream_says_which():
    def step(x):
        if x[0, 0] == 2:
            raise RuntimeInputError("this input drives state 'l0.u' to NaN or Inf")
        return np.zeros((1, len(NAMES)))

    session = SimpleNamespace(streams=1, contract=SimpleNamespace(class_names=NAMES), step=step)
    with pytest.raises(RuntimeInputError, match=r"^step 3 of 4 \(ending at 30 us\): this input drives state 'l0.u'"):
        recognise(session, np.arange(4, dtype=np.float32)[:, None], np.array([0, 10, 20, 30]), 10)
