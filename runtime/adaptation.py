"""``fptt-edge adapt``: adapt a deployed model on labelled data from its new domain, safely.

Labelled recordings (an ``.npz`` of recordings, an N-MNIST-style split list, or an event recording
or one continuous ``.npz`` recording with its labels CSV) are split into a training part and a held-out part (seeded). The learner starts
from the latest good generation (or the factory weights with ``factory=True``), trains for
``epochs`` passes, commits (guard check, a new generation, the weights pushed live) and the
report gives accuracy before/after on the held-out part and on the guard set, the rollbacks
and where the weights went. Numpy + ONNX Runtime only.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..contract import ContractError, StepContract, read_contract
from ..npzfile import float32_x, read_npz
from .errors import AdaptationError
from .inputs import Recording, from_contract_source, from_events, from_npz, segments_from_npz

GUARD_SUFFIX = ".guard.npz"


def guard_path_for(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.guard.npz`` (written by ``export --adapt``)."""
    return model_path.with_name(model_path.stem + GUARD_SUFFIX)


def load_labelled(contract: StepContract, data=None, events=None, labels=None, warn=None) -> list[Recording]:
    """Labelled recordings from exactly one source; ``warn(message)`` hears of a recording's sample period other than the model's."""
    if (data is None) == (events is None):
        raise AdaptationError("give exactly one of --data FILE or --events REC (with --labels CSV)")
    if events is not None:
        if labels is None:
            raise AdaptationError("--events needs --labels CSV: adaptation learns from labelled segments")
        recs = from_events(events, contract, labels)
    elif str(data).endswith(".txt"):
        if labels is not None:
            raise AdaptationError("--labels cuts --events REC or one .npz recording into labelled segments; a split list labels its recordings")
        recs = from_contract_source(contract, data, limit=None)
    else:
        recs = from_npz(data, contract, warn) if labels is None else segments_from_npz(data, contract, labels, warn)
    recs = [r for r in recs if r.label is not None]
    if not recs:
        raise AdaptationError("no labelled recordings in the given data (an .npz needs 'y')")
    bad = [r.label for r in recs if r.label is not None and not 0 <= r.label < len(contract.class_names)]
    if bad:
        raise AdaptationError(f"labels {sorted(set(bad))[:5]} are outside the model's {len(contract.class_names)} classes")
    return recs


def pack(recs: list[Recording]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x [N, T_max, *frame]`` (zero padded), ``y [N]``, ``lengths [N]``."""
    t_max = max(len(r.frames) for r in recs)
    x = np.zeros((len(recs), t_max, *recs[0].frames.shape[1:]), np.float32)
    for i, r in enumerate(recs):
        x[i, :len(r.frames)] = r.frames
    return x, np.array([r.label for r in recs], np.int64), np.array([len(r.frames) for r in recs], np.int64)


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices for training and held-out scoring (at least one of each when n >= 2)."""
    if not 0 <= holdout < 1:
        raise AdaptationError("--holdout must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(n * holdout))
    k = min(max(k, 1 if holdout > 0 and n >= 2 else 0), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def read_guard(path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A guard set ``.npz`` (``x [N, T, *frame]``, ``y [N]``, optional ``lengths [N]`` of zero-padded recordings); never
    unpickles. Dtypes, shapes, labels and values are checked against the model by the learner."""
    arrays = read_npz(path, AdaptationError)
    if "x" not in arrays or "y" not in arrays:
        raise AdaptationError(f"{path}: a guard set needs arrays 'x' and 'y' (have {sorted(arrays)[:10]})")
    return float32_x(arrays["x"], f"{path}: field 'x'", AdaptationError), arrays["y"], arrays.get("lengths")


def adapt(model, *, data=None, events=None, labels=None, guard=None, trainable: str | None = None, lr: float | None = None, epochs: int = 1,
          holdout: float = 0.3, seed: int = 0, factory: bool = False, max_drop: float = 0.02, check_every: int = 500,
          score=(), backend: str = "ort", progress=None, warn=None) -> dict:
    """Adapt ``model`` (``.onnx`` with ``.train.onnx`` beside it); returns the report.

    ``score``: more labelled files (``.npz`` / split lists) scored before and after, e.g. held-out
    data of the new domain and of the original one (forgetting)."""
    from .learner import open_learner

    model = Path(model)
    contract = read_contract(model)
    recs = load_labelled(contract, data, events, labels, warn)
    x, y, lengths = pack(recs)
    train_idx, test_idx = split(len(recs), holdout, seed)
    scored = {str(p): pack(load_labelled(contract, data=p, warn=warn)) for p in score}  # scored at each recording's own last step
    default_guard = guard_path_for(model)
    if guard is None and os.path.lexists(default_guard) and not default_guard.is_file():  # else it would adapt without its guard
        raise AdaptationError(f"{default_guard}: the guard set's name, but not a regular file; restore it (fptt-edge export MODEL.pt "
                              "--adapt), remove it to adapt without a guard, or pass --guard FILE")
    guard_source = guard if guard is not None else (default_guard if default_guard.is_file() else None)
    guard_data = read_guard(guard_source) if guard_source is not None else None
    learner = open_learner(model, trainable=trainable, lr=lr, guard=guard_data, resume=not factory, max_drop=max_drop,
                           check_every=check_every, ring=max(int(lengths.max()), 1), backend=backend, warn=warn)
    with learner:
        start = learner.generation.number if learner.generation is not None else 0
        held_out = lambda: learner.evaluate(x[test_idx], y[test_idx], lengths=lengths[test_idx]).accuracy if len(test_idx) else None  # noqa: E731
        extra = lambda: {p: learner.evaluate(xs, ys, lengths=ls).accuracy for p, (xs, ys, ls) in scored.items()}  # noqa: E731
        before = {"new_data": held_out(), "guard": None if learner.baseline is None else learner.baseline.accuracy, **extra()}
        t0 = time.perf_counter()
        updates = learner.train(x[train_idx], y[train_idx], lengths[train_idx], epochs=epochs, seed=seed, progress=progress)
        seconds = time.perf_counter() - t0
        gen = learner.commit({"data": str(data or events), "samples": int(len(train_idx)), "epochs": epochs})
        guard_after = None if learner.guard is None else learner.evaluate(learner.guard[0], learner.guard[1], lengths=learner.guard[2]).accuracy
        after = {"new_data": held_out(), "guard": guard_after, **extra()}
        return {
            "model": str(model), "train_model": str(learner.train_path), "trainable": learner.trainable, "lr": learner.lr, "epochs": epochs,
            "samples": {"train": int(len(train_idx)), "held_out": int(len(test_idx))}, "guard": None if guard_source is None else str(guard_source),
            "started_from": f"generation {start}" if start else "factory weights", "updates": updates,
            "seconds": seconds, "update_us": 1e6 * learner.events.update_seconds / max(learner.events.updates, 1),
            "guard_checks": learner.events.checks, "guard_check_seconds": learner.events.check_seconds, "accuracy_before": before, "accuracy_after": after,
            "rollbacks": learner.events.rollbacks, "forgetting_rollbacks": learner.events.forgetting,
            "factory_resets": learner.events.factory_resets, "events": learner.events.log,
            "committed": gen is not None, "weights": None if gen is None else str(gen.path),
            "push_us": 1e6 * learner.push_seconds[-1] if learner.push_seconds else None,
            "learner_bytes": learner.memory_bytes(),
        }


def adapted_weights(model, warn=None) -> tuple[dict[str, np.ndarray] | None, str]:
    """The latest good generation's ``Wbar`` by initializer name for ``model``, and what it is
    (``"factory"`` when there is none, or no train graph to read its layout from)."""
    from ..io import file_sha256
    from ..train_contract import read_train_contract
    from .adapted import AdaptedStore, store_dir
    from .learner import train_path_for

    model = Path(model)
    folder, train = store_dir(model), train_path_for(model)
    if model.suffix != ".onnx" or not folder.is_dir():
        return None, "factory"
    if not train.is_file():
        if warn:
            warn(f"{folder} holds adapted weights but {train.name} is missing: using the factory weights")
        return None, "factory"
    try:
        contract = read_train_contract(train)
    except ContractError as exc:  # damaged like missing: the generations' layout is unknown, the shipped weights still run
        if warn:
            warn(f"{folder} holds adapted weights but {train.name} cannot be read ({str(exc).removeprefix(str(train) + ': ')}): "
                 "using the factory weights")
        return None, "factory"
    store = AdaptedStore(folder, file_sha256(model), file_sha256(train), contract)
    gen = store.latest_good(warn=warn)
    if gen is None:
        return None, "factory"
    row = gen.buffers["wbar"].reshape(-1)
    return {t.name: row[t.offset:t.offset + t.size].reshape(t.shape) for t in contract.tensors}, str(gen.path)
