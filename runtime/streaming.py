"""Stream recordings through a one-stream session, step by step (what ``fptt-edge run`` does).

    summary = stream_recordings(open_session("model.onnx"), from_npz("x.npz", contract))
    summary["predictions"], summary["accuracy"], summary["latency_us"]["p99"]

numpy only, no torch.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from .errors import RuntimeInputError
from .inputs import Recording

StepCallback = Callable[[Recording, int, np.ndarray], None]


def check_recordings(recordings: Sequence[Recording]) -> None:
    """Refuse an empty list or a recording without frames (:class:`RuntimeInputError`)."""
    empty = [rec.name for rec in recordings if len(rec.frames) == 0]
    if not recordings or empty:
        raise RuntimeInputError(f"nothing to stream: {empty[0] + ' has no frames' if empty else 'no recordings'}")


def label_name(label: int | None, class_names: Sequence[str]) -> str | int | None:
    """A recording's label as its class name (the raw integer if the model has no such class)."""
    if label is None:
        return None
    return class_names[label] if 0 <= label < len(class_names) else label


def stream_recordings(session, recordings: Sequence[Recording], *, reset: bool = True, on_step: StepCallback | None = None) -> dict:
    """Step every recording's frames through ``session`` (one stream) and summarise.

    ``reset``: back to the initial state at each recording (else the state carries over).
    ``on_step(recording, t, logits)``: called after step ``t`` (0-based) of each recording;
    ``logits`` is ``[1, classes]``, valid until the next step.

    Returns ``recordings``, ``steps``, ``predictions`` (class name per recording, after its
    last step), ``results`` (per recording: name, steps, prediction, label), ``latency_us``
    (p50/p90/p99 per step, µs) and ``accuracy`` over the labelled recordings (None if none).
    """
    check_recordings(recordings)
    if session.streams != 1:
        raise RuntimeInputError(f"streaming recordings needs a one-stream session, got {session.streams} streams")
    classes = session.contract.class_names
    latencies, results, correct = [], [], []
    for rec in recordings:
        if reset:
            session.reset()
        for t, frame in enumerate(rec.frames):
            t0 = time.perf_counter_ns()
            logits = session.step(frame[None])
            latencies.append(time.perf_counter_ns() - t0)
            if on_step is not None:
                on_step(rec, t, logits)
        predicted = int(logits[0].argmax())
        results.append({"recording": rec.name, "steps": len(rec.frames), "prediction": classes[predicted], "label": label_name(rec.label, classes)})
        if rec.label is not None:
            correct.append(predicted == rec.label)  # by index: names are for people
    us = np.asarray(latencies) / 1e3
    return {
        "recordings": len(results),
        "steps": len(us),
        "predictions": [r["prediction"] for r in results],
        "results": results,
        "latency_us": {p: float(np.percentile(us, q)) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "accuracy": sum(correct) / len(correct) if correct else None,
    }
