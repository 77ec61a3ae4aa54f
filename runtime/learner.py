"""On-device FPTT adaptation without torch: labelled segments replayed through ``model.train.onnx``.

    learner = open_learner("model.onnx", guard=(gx, gy))   # model.train.onnx beside it
    for frame in stream:                                   # [streams, *frame] float32
        logits = learner.step(frame)                       # the live session (predicts with Wbar) + the ring buffer
    learner.label(stream=0, y=3, start=120, end=148)       # late, sparse labels: frames 120..147 were class 3
    learner.commit()                                       # guard check, save a generation, push Wbar live

Frames live in a bounded ring buffer per stream; ``label`` copies the segment into one of
``batch`` slots, and when the slots are full each time step ``t`` of the segments is one FPTT
update with loss weight ``(t+1)/T`` (0 for a slot whose segment has ended), from the initial
state; with a chunked train graph (``export --adapt-chunk L``) each L steps are one FPTT-K
update (:func:`~fptt_edge.train_contract.chunk_loss_weights`). Memory is constant in stream length: no activation history, every buffer preallocated.

Safety: the shipped weights stay in ``model.onnx``. Every ``check_every`` updates and at commit
the guard set (labelled data from the original domain) is scored with ``Wbar``; non-finite
values, a guard-accuracy drop beyond ``max_drop`` or spike rates outside ``rate_band`` of the
shipped model's roll back to the last good weights and halve ``lr``; ``max_failures``
rollbacks in a row return to the factory weights. Commits are numbered generations
(:mod:`.adapted`); the live session only ever sees weights that passed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..contract import ContractError, StepContract, read_contract, verify_checksum
from ..encoding import EncodingError
from ..io import file_sha256
from ..npzfile import float32_x
from ..train_contract import TrainContract, chunk_loss_weights, read_train_contract
from .adapted import AdaptedStore, Generation, store_dir
from .errors import AdaptationError, RuntimeInputError
from .session import MAX_STREAMS, MAX_THREADS, StreamSession, check_count, validate_frames
from .train_backend import FLAT, TrainStepBackend

SAVED = (*FLAT, "step")


@dataclass
class GuardResult:
    accuracy: float | None
    spike_rate: dict[str, float]
    finite: bool
    ok: bool
    reason: str = ""


FORGOT = "guard accuracy"  # how a check that found the original domain forgotten begins its reason


@dataclass
class LearnerEvents:
    updates: int = 0
    segments: int = 0
    checks: int = 0
    rollbacks: int = 0
    forgetting: int = 0  # rollbacks for the guard set's accuracy alone (not non-finite values, nor with a spike rate out of band)
    factory_resets: int = 0
    update_seconds: float = 0.0  # in the train-step graph
    check_seconds: float = 0.0  # scoring the guard set
    log: list[str] = field(default_factory=list)


def train_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".train.onnx")


def trainable_names(contract: TrainContract, model_config: dict, choice: str) -> list[str]:
    """The train graph's tensors that a ``--trainable`` choice updates; refused unless the graph holds all of them."""
    names = [t.name for t in contract.tensors]
    layers = len(model_config.get("conv_channels", ())) + len(model_config.get("hidden", ()))
    pick = {"all": lambda n: True, "readout": lambda n: n.startswith("readout."),
            "last": lambda n: n.startswith((f"layers.{layers - 1}.", "readout.")),
            "input": lambda n: n.startswith(("layers.0.fc_x.", "layers.0.conv."))}
    if choice not in pick:
        raise AdaptationError(f"unknown trainable set {choice!r}; choose from {sorted(pick)}")
    found = _found(names, layers)
    if not _regions(contract.trainable, layers) <= found:  # metadata (outside the checksum); the tensors are checked against the graph
        raise AdaptationError(f"the train graph's metadata says it was exported with --trainable {contract.trainable}, but it updates "
                              f"only tensors of {sorted(found)}: edited metadata; export it again with `fptt-edge export MODEL.pt --adapt`")
    if not _covers(contract.trainable, choice, layers):
        raise AdaptationError(f"--trainable {choice}: this train graph was exported with --trainable {contract.trainable} and updates "
                              f"only those tensors; use --trainable {contract.trainable}, or re-export with "
                              f"`fptt-edge export MODEL.pt --adapt --trainable {choice}`")
    chosen = [n for n in names if pick[choice](n)]
    if not chosen:
        raise AdaptationError(f"--trainable {choice}: the train graph (exported with --trainable {contract.trainable}) cannot update "
                              f"those tensors; re-export with --adapt --trainable {choice} or all")
    return chosen


def _regions(choice: str, layers: int) -> set[str]:
    """The parts of the network a ``--trainable`` choice updates: the layers' and the readout's parameters; ``input`` is part
    of layer 0."""
    return {"all": {f"layers.{i}" for i in range(layers)} | {"readout"}, "readout": {"readout"},
            "last": {f"layers.{layers - 1}", "readout"}, "input": {"layers.0.input"}}[choice]


def _covers(exported: str, choice: str, layers: int) -> bool:
    """Whether a graph exported with ``--trainable exported`` holds every tensor that ``choice`` updates in the whole network."""
    held = _regions(exported, layers)
    held |= {"layers.0.input"} if "layers.0" in held else set()
    return _regions(choice, layers) <= held


def _found(names: list[str], layers: int) -> set[str]:
    """The parts of the network of which the train graph holds tensors."""
    found = {f"layers.{i}" for i in range(layers) if any(n.startswith(f"layers.{i}.") for n in names)}
    found |= {"readout"} if any(n.startswith("readout.") for n in names) else set()
    return found | ({"layers.0.input"} if any(n.startswith(("layers.0.fc_x.", "layers.0.conv.")) for n in names) else set())


def factory_weights(model_path: Path, contract: TrainContract) -> np.ndarray:
    """The shipped weights of every trainable tensor, flat ``[1, N]``, read from the inference graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    flat = np.zeros((1, contract.size), np.float32)
    for t in contract.tensors:
        init = inits.get(t.name)
        if init is None:
            raise AdaptationError(f"{model_path}: has no initializer '{t.name}' that the train graph updates")
        value = numpy_helper.to_array(init)
        if tuple(value.shape) != t.shape or value.dtype != np.float32:
            raise AdaptationError(f"{model_path}: initializer '{t.name}' is {value.dtype} {list(value.shape)}, the train graph has {list(t.shape)}")
        flat[0, t.offset:t.offset + t.size] = value.reshape(-1)
    return flat


class Learner:
    """FPTT fine-tuning beside a live session; see the module docstring."""

    def __init__(self, model, train_model=None, *, streams: int | None = None, ring: int = 512, threads: int = 1, lr: float | None = None,
                 trainable: str | None = None, guard=None, check_every: int = 500, max_drop: float = 0.02, rate_band: float = 4.0,
                 max_failures: int = 3, store: bool = True, resume: bool = True, backend: str = "ort", session=None, warn=None):

        self.model_path = Path(model)
        self.train_path = Path(train_model) if train_model else train_path_for(self.model_path)
        if not self.train_path.is_file():
            raise AdaptationError(f"{self.train_path}: no train-step graph; export with `fptt-edge export MODEL.pt --adapt`")
        self.contract: StepContract = read_contract(self.model_path)
        self.train_contract: TrainContract = read_train_contract(self.train_path)
        try:  # graph and weights as exported: a tampered graph that still loads would train wrongly
            verify_checksum(self.train_path)
        except ContractError as exc:
            what = "its metadata does not match its checksum fptt_edge.metadata_sha256" if "metadata" in str(exc) else (
                "its graph or weights do not match (or it lacks) its checksum fptt_edge.graph_sha256")
            raise AdaptationError(f"{self.train_path}: {what}: a corrupt copy, an edited file or an older export; "
                                  "export it again with `fptt-edge export MODEL.pt --adapt`") from None
        base_sha = file_sha256(self.model_path)
        if self.train_contract.inference_sha256 != base_sha:
            raise AdaptationError(f"{self.train_path} was exported with another {self.model_path.name} "
                                  f"({self.train_contract.inference_sha256[:12]}..., this one is {base_sha[:12]}...); export both together")
        self._warn = warn or (lambda m: None)
        self.push_seconds: list[float] = []
        fixed = self.contract.batch if isinstance(self.contract.batch, int) else None
        self.streams = check_count((fixed or 1) if streams is None else streams, "streams", MAX_STREAMS)  # as open_session
        threads = check_count(threads, "threads", MAX_THREADS)
        if session is None and fixed is not None and self.streams != fixed:
            raise AdaptationError(f"{self.model_path} was exported for batch {fixed}: the live session runs {fixed} stream(s), "
                                  f"not streams={self.streams}; re-export with --batch {self.streams} or --batch dynamic")
        self.ring_capacity = check_count(ring, "ring")
        self.check_every, self.max_drop, self.rate_band = check_count(check_every, "check_every"), _max_drop(max_drop), _rate_band(rate_band)
        self.max_failures = check_count(max_failures, "max_failures")
        self._failures = 0
        tc = self.train_contract
        self.batch, self.frame_shape, self.classes = tc.batch, tuple(tc.frame_shape), tc.num_classes
        self.backend = TrainStepBackend(self.train_path, tc, threads, backend)  # checks the metadata's sizes against the graph
        _refuse_beyond_memory((self.streams + self.batch) * self.ring_capacity * int(np.prod(self.frame_shape)) * 4, ring)
        self.base_lr = _real(lr, "lr") if lr is not None else tc.hyper.lr
        with np.errstate(over="ignore", under="ignore"):
            lr32 = np.float32(self.base_lr)  # what the train graph computes with
        if not (np.isfinite(lr32) and lr32 > 0):
            raise AdaptationError(f"lr must be a positive number within float32's range (1.2e-38 .. 3.4e38), got {self.base_lr:g}")
        self.backend.lr[:] = self.base_lr
        self.trainable = tc.trainable if trainable is None else trainable  # default: what the graph was exported to update
        self.set_trainable(self.trainable)
        # preallocated: ring buffer, replay slots, snapshots (factory, last good)
        self._ring = np.zeros((self.streams, self.ring_capacity, *self.frame_shape), np.float32)
        self._seen = np.zeros(self.streams, np.int64)
        self._slots = np.zeros((self.batch, self.ring_capacity, *self.frame_shape), np.float32)
        self._slot_len = np.zeros(self.batch, np.int64)
        self._slot_y = np.zeros(self.batch, np.int64)
        self._pending = 0
        self._initial = {s.name: s.initial(1)[0] for s in self.contract.states}
        factory = factory_weights(self.model_path, tc)
        self._factory = {"weights": factory, "wbar": factory.copy(), "lam": np.zeros_like(factory), "m": np.zeros_like(factory),
                         "u": np.zeros_like(factory), "step": np.zeros(1, np.float32)}
        self._good = {k: v.copy() for k, v in self._factory.items()}
        self.backend.load(self._factory)
        self.guard = None if guard is None else self._guard_arrays(*_pair(guard))  # checked before the store is taken
        if session is not None and (not hasattr(getattr(session, "backend", None), "set_initializers")
                                    or getattr(session, "streams", None) != self.streams):
            raise AdaptationError("the live session must be a StreamSession over ONNX Runtime or TensorRT with the learner's streams")
        self.store = AdaptedStore(store_dir(self.model_path), base_sha, file_sha256(self.train_path), tc) if store else None
        self._held = None
        if self.store is not None:
            self.store.check_folder()
            self._held = self.store.hold_for_learning()  # one learner per model: another would build on a stale generation
        self.events = LearnerEvents()
        self._closed = False
        try:  # a failure (or Ctrl-C) from here on lets the store go: a half-built learner would hold it for the process's life
            self._open_sessions(session, resume, threads)
            self.baseline = self._score(self._factory["wbar"]) if self.guard is not None else None
        except BaseException:
            self._release_store()
            raise

    def _open_sessions(self, session, resume: bool, threads: int) -> None:
        """Resume from the latest good generation (unless ``resume`` is off); open the live and the evaluation sessions."""
        from .ort_backend import OrtBackend

        self.generation: Generation | None = None
        if self.store is not None and resume:
            self.generation = self.store.latest_good(warn=self._warn)
            if self.generation is not None:
                self.backend.load(self.generation.buffers)
                self._snapshot_good()
        wbar = self.backend.views(self.backend.buffers()["wbar"])
        if session is None:
            session = StreamSession(OrtBackend(str(self.model_path), self.contract, self.streams, "ort", threads, initializers=wbar), self.contract)
        self.session = session  # a TensorRT session (open_session(..., backend="tensorrt")) is refitted on push
        if self.generation is not None:
            self.push()
        inf_batch = self.contract.batch if isinstance(self.contract.batch, int) else 1
        self._eval = OrtBackend(str(self.model_path), self.contract, inf_batch, "ort", threads, initializers=wbar)

    def _release_store(self) -> None:
        if self._held is not None and self.store is not None:
            self.store.release(self._held)
            self._held = None

    # --- configuration -------------------------------------------------------------------------
    def set_trainable(self, choice: str) -> None:
        """Which tensors learn (the update mask); the others keep every bit."""
        self._require_open()
        names = set(trainable_names(self.train_contract, self.contract.model_config, choice))
        for t in self.train_contract.tensors:
            self.backend.mask[0, t.offset:t.offset + t.size] = 1.0 if t.name in names else 0.0
        self.trainable = choice

    @property
    def lr(self) -> float:
        return float(self.backend.lr[0])

    # --- streaming -----------------------------------------------------------------------------
    def step(self, x: np.ndarray) -> np.ndarray:
        """One live step for every stream (predicting with the pushed ``Wbar``); the frames are kept for labels."""
        self._require_open()
        logits = self.session.step(x)
        self.observe(x)
        return logits

    def step_raw(self, x: np.ndarray) -> np.ndarray:
        """:meth:`step` on raw samples of a model trained with an input encoding (``StreamSession.step_raw``): the encoded
        frames are what the ring buffer keeps and labels train on."""
        self._require_open()
        logits, frames = self.session._step_raw(x)  # the encoder and the live session step together or not at all
        self.observe(frames)
        return logits

    def observe(self, x: np.ndarray) -> None:
        """Keep one frame per stream (``[streams, *frame]``) in the ring buffer without stepping the live session."""
        self._require_open()
        x = validate_frames(x, self.streams, self.frame_shape)
        for i in range(self.streams):
            np.copyto(self._ring[i, self._seen[i] % self.ring_capacity], x[i])
        self._seen += 1

    def label(self, stream: int, y: int, start: int, end: int) -> int:
        """Frames ``start..end-1`` of ``stream`` (indices counted from its first frame) were class ``y``.

        The segment is copied into a replay slot; when all ``batch`` slots are full they are trained
        on. Returns the number of updates run (0 while slots are still free)."""
        self._require_open()
        stream = _index(stream, self.streams, "stream")
        y = _index(y, self.classes, "label")
        start, end = _int(start, "start"), _int(end, "end")
        seen = int(self._seen[stream])
        if not 0 <= start < end <= seen:
            raise AdaptationError(f"segment {start}..{end} of stream {stream} is not within the {seen} frames seen")
        if end - start > self.ring_capacity or start < seen - self.ring_capacity:
            raise AdaptationError(f"frames {start}..{end} of stream {stream} are no longer in the ring buffer "
                                  f"(it keeps the last {self.ring_capacity}); label sooner or open the learner with a larger ring")
        idx = np.arange(start, end) % self.ring_capacity
        return self._enqueue(self._ring[stream, idx], y)

    def learn(self, frames: np.ndarray, y: int) -> int:
        """Train on one labelled recording ``[T, *frame]`` directly (no ring buffer); see :meth:`label`."""
        self._require_open()
        y = _index(y, self.classes, "label")
        frames = _array(frames, "a recording")
        if frames.ndim != len(self.frame_shape) + 1 or frames.shape[1:] != self.frame_shape or len(frames) == 0:
            raise AdaptationError(f"a recording must be [T >= 1, {', '.join(map(str, self.frame_shape))}], got {list(frames.shape)}")
        if len(frames) > self.ring_capacity:
            raise AdaptationError(f"recording of {len(frames)} steps is longer than the replay slots ({self.ring_capacity})")
        if frames.dtype != np.float32 or not np.isfinite(frames).all():
            raise AdaptationError("a recording must be finite float32")
        return self._enqueue(frames, y)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Raw recordings ``[..., T, *raw_shape]`` of a model trained with an input encoding (``--encoding``) -> their frames
        ``[..., T, *frame]``, each recording encoded from its first sample with the code training used (as ``fptt-edge
        adapt`` encodes; :meth:`step_raw` gives the same frames step by step). For :meth:`train` and :meth:`evaluate` on raw
        data. A model without an encoding takes frames as given."""
        self._require_open()
        raw = self.session.raw_shape
        samples = float32_x(_array(samples, "raw recordings"), "raw samples", AdaptationError)
        if samples.ndim < len(raw) + 1 or samples.shape[samples.ndim - len(raw):] != raw or samples.shape[-len(raw) - 1] == 0:
            raise AdaptationError(f"raw recordings must be [..., T >= 1, {', '.join(map(str, raw))}], got {list(samples.shape)}")
        try:
            return self.session.encoding.encode(samples)
        except EncodingError as exc:
            raise AdaptationError(str(exc)) from None

    def learn_raw(self, samples: np.ndarray, y: int) -> int:
        """:meth:`learn` on one labelled recording of raw samples ``[T, *raw_shape]``, encoded as :meth:`encode` does."""
        self._require_open()
        frames = self.encode(samples)  # refuses what is not [..., T >= 1, *raw_shape]
        if frames.ndim != len(self.frame_shape) + 1:
            raise AdaptationError(f"learn_raw takes one recording [T, {', '.join(map(str, self.session.raw_shape))}]; "
                                  "for several: train(learner.encode(x), y, lengths)")
        return self.learn(frames, y)

    def flush(self) -> int:
        """Train on the segments waiting in the slots now (the free slots get loss weight 0)."""
        self._require_open()
        return self._train_slots() if self._pending else 0

    # --- training ------------------------------------------------------------------------------
    def _enqueue(self, frames: np.ndarray, y: int) -> int:
        b = self._pending
        self._slots[b, :len(frames)] = frames
        self._slot_len[b], self._slot_y[b] = len(frames), y
        self._pending += 1
        self.events.segments += 1
        return self._train_slots() if self._pending == self.batch else 0

    def _train_slots(self) -> int:
        be = self.backend
        n = self._pending
        lengths = self._slot_len[:n]
        be.y[:] = 0.0
        be.y[np.arange(n), self._slot_y[:n]] = 1.0
        state = be.state()
        for name, init in self._initial.items():
            state[name][:] = init
        updates = 0
        be.x[n:] = 0.0
        be.w[:] = 0.0
        chunk = self.train_contract.chunk
        for t in range(0, int(lengths.max()), chunk):
            if chunk > 1:
                self._fill_chunk(t, lengths)
            else:
                self._fill_step(t, lengths)
            if n < self.batch:  # the graph divides by its batch B; the trainer by the n sequences it has
                be.w[:n] *= np.float32(self.batch / n)
            started = time.perf_counter()
            be.step()
            self.events.update_seconds += time.perf_counter() - started
            updates += 1
            self.events.updates += 1
            if self.events.updates % self.check_every == 0:
                self.check()
        self._pending = 0
        if not all(np.isfinite(v).all() for v in be.buffers().values()):
            self._rollback("non-finite weights after an update")
        return updates

    def _fill_step(self, t: int, lengths: np.ndarray) -> None:
        """Step ``t`` of every pending slot into the graph's ``x`` and ``w = (t+1)/T`` (0 past a slot's end)."""
        be = self.backend
        for b in range(len(lengths)):  # no temporaries: copy in place, per slot
            length = int(lengths[b])
            if t < length:
                np.copyto(be.x[b], self._slots[b, t])
                be.w[b] = (t + 1) / length
            else:
                be.x[b] = 0.0
                be.w[b] = 0.0

    def _fill_chunk(self, t0: int, lengths: np.ndarray) -> None:
        """Steps ``t0 .. t0 + L - 1`` of every pending slot (zeros past its end) and FPTT-K's loss weights."""
        be = self.backend
        chunk = be.x.shape[1]
        for b in range(len(lengths)):
            real = max(0, min(chunk, int(lengths[b]) - t0))
            be.x[b, :real] = self._slots[b, t0:t0 + real]
            be.x[b, real:] = 0.0
        be.w[:len(lengths)] = chunk_loss_weights(lengths, t0, chunk)

    def train(self, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None, epochs: int = 1, seed: int = 0, progress=None) -> int:
        """Adapt on labelled recordings ``x`` ``[N, T, *frame]`` (``y`` ``[N]``), ``epochs`` passes in a seeded order."""
        self._require_open()
        if _int(seed, "seed") < 0:
            raise AdaptationError(f"seed must be a non-negative integer, got {seed}")
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != len(self.frame_shape) + 2 or x.shape[2:] != self.frame_shape or len(x) == 0 or x.shape[1] == 0:
            raise AdaptationError(f"x must be [N, T, {', '.join(map(str, self.frame_shape))}] with N, T >= 1, got {list(x.shape)}")
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= self.classes:
            raise AdaptationError(f"y must be [N] integer labels in 0..{self.classes - 1}")
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.shape != (len(x),) or lengths.dtype.kind not in "iu" or lengths.min() < 1 or lengths.max() > x.shape[1]:
                raise AdaptationError(f"lengths must be [N] integers in 1..{x.shape[1]}")
        if x.dtype != np.float32 or not np.isfinite(x).all():
            raise AdaptationError("x must be finite float32")
        updates = 0
        rng = np.random.default_rng(seed)
        for _ in range(check_count(epochs, "epochs")):
            for i in rng.permutation(len(x)):
                n = x.shape[1] if lengths is None else int(lengths[i])
                updates += self.learn(x[i, :n], int(y[i]))
                if progress is not None:
                    progress(1)
        return updates + self.flush()

    # --- safety --------------------------------------------------------------------------------
    def _guard_arrays(self, x, y, lengths=None):
        """``(x, y, lengths)`` checked against the model: ``lengths`` ``None`` (every recording ``T`` steps) or ``[N]``
        integers in ``1..T`` (recordings zero-padded to ``T``)."""
        x, y = _array(x, "guard/evaluation data"), _array(y, "guard/evaluation data")
        x = float32_x(x, "guard x", AdaptationError)  # checked as float32: a float64 beyond its range is Inf here
        if x.ndim != len(self.frame_shape) + 2 or x.shape[2:] != self.frame_shape or len(x) == 0 or x.shape[1] == 0:
            raise AdaptationError(f"guard x must be [N, T, {', '.join(map(str, self.frame_shape))}], got {list(x.shape)}")
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= self.classes:
            raise AdaptationError(f"guard y must be [N] integer labels in 0..{self.classes - 1}")
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.shape != (len(x),) or lengths.dtype.kind not in "iu" or lengths.min() < 1 or lengths.max() > x.shape[1]:
                raise AdaptationError(f"lengths of the guard or scored recordings must be [N] integers in 1..{x.shape[1]} "
                                      "(each recording's steps before the padding)")
            lengths = lengths.astype(np.int64)
        return x, y.astype(np.int64), lengths

    def evaluate(self, x: np.ndarray, y: np.ndarray | None = None, wbar: np.ndarray | None = None,
                 lengths: np.ndarray | None = None) -> GuardResult:
        """Accuracy (at each recording's last step: ``lengths - 1`` where given) and spike rates (over the recordings'
        own steps) of ``wbar`` (default: the current ``Wbar``)."""
        self._require_open()
        data = self._guard_arrays(x, np.zeros(len(x), np.int64) if y is None else y, lengths)
        return self._score(self.backend.buffers()["wbar"] if wbar is None else self._flat_weights(wbar), data)

    def _flat_weights(self, wbar) -> np.ndarray:
        """``wbar`` as the train graph's flat float32 ``[1, N]`` (``[N]`` is taken too)."""
        wbar, n = np.asarray(wbar), self.train_contract.size
        if wbar.dtype.kind not in "fiu" or wbar.shape not in ((1, n), (n,)):
            raise AdaptationError(f"wbar must be real numbers [1, {n}] (the train graph's flat weights), got {wbar.dtype} {list(wbar.shape)[:6]}")
        with np.errstate(over="ignore"):  # beyond float32: Inf, scored as non-finite
            return np.ascontiguousarray(wbar.reshape(1, n), np.float32)

    def _score(self, wbar: np.ndarray, data=None) -> GuardResult:
        if data is None:
            if self.guard is None:
                raise AdaptationError("no guard set to score")
            data = self.guard
        x, y, lengths = data
        if lengths is None:
            lengths = np.full(len(x), x.shape[1], np.int64)
        ev = self._eval
        ev.set_initializers(self.backend.views(wbar))
        spikes = [s.name for s in self.contract.states if s.name.endswith(".s")]
        fired, total, correct, finite = dict.fromkeys(spikes, 0.0), 0, 0, True
        b = ev.streams
        for i0 in range(0, len(x), b):
            xb, lb = x[i0:i0 + b], lengths[i0:i0 + b]
            n = len(xb)
            for name, init in self._initial.items():
                ev.write_state(name, np.broadcast_to(init, (b, *init.shape)))
            pred = np.zeros(n, np.int64)
            for t in range(int(lb.max())):
                ev.x[:n] = xb[:, t]
                ev.x[n:] = 0.0
                ev.step()
                running = lb > t  # the steps after a recording's end are padding: not scored, not counted
                cur = ev.state_views()
                for name in spikes:
                    fired[name] += float(cur[name][:n][running].sum())
                total += int(running.sum())
                ends = lb == t + 1
                if ends.any():
                    logits = ev.logits[:n][ends]
                    finite &= bool(np.isfinite(logits).all())
                    pred[ends] = logits.argmax(1)
            correct += int((pred == y[i0:i0 + b]).sum())
        sizes = {s.name: int(np.prod([int(d) for d in s.shape[1:]])) for s in self.contract.states}
        rates = {n[:-2]: fired[n] / max(total * sizes[n], 1) for n in spikes}
        return GuardResult(correct / len(x), rates, finite, finite)

    def check(self) -> GuardResult:
        """Score the current ``Wbar`` on the guard set; roll back if it fails; else it is the last good."""
        self._require_open()
        self.events.checks += 1
        t0 = time.perf_counter()
        buffers = self.backend.buffers()
        if not all(np.isfinite(v).all() for v in buffers.values()):
            result = GuardResult(None, {}, False, False, "non-finite weights")
        elif self.guard is None:
            result = GuardResult(None, {}, True, True)
        else:
            result = self._score(buffers["wbar"])
            reasons = self._judge(result)
            result.reason, result.ok = "; ".join(reasons), not reasons
            if len(reasons) == 1 and reasons[0].startswith(FORGOT):  # the guard accuracy alone (more --max-drop would pass it)
                self.events.forgetting += 1
        if result.ok:
            self._snapshot_good()
        else:
            self._rollback(result.reason)
        self.events.check_seconds += time.perf_counter() - t0
        return result

    def _judge(self, r: GuardResult) -> list[str]:
        """Why the check fails (empty: it passes): non-finite logits, or the guard accuracy and the first spike rate out of
        its band, each that applies."""
        base = self.baseline
        if base is None:
            return []
        if not r.finite:
            return ["non-finite logits on the guard set"]
        reasons = []
        if base.accuracy is not None and r.accuracy is not None and r.accuracy < base.accuracy - self.max_drop:
            reasons.append(f"{FORGOT} {r.accuracy:.3f} < shipped {base.accuracy:.3f} - {self.max_drop:.3f}")
        for layer, rate in r.spike_rate.items():
            ref = base.spike_rate.get(layer, 0.0)
            lo, hi = ref / self.rate_band, min(1.0, max(ref * self.rate_band, 1e-3))
            if not lo <= rate <= hi:
                reasons.append(f"spike rate of {layer} {rate:.4f} outside [{lo:.4f}, {hi:.4f}] (shipped {ref:.4f})")
                break
        return reasons

    def _snapshot_good(self) -> None:
        for k, v in self.backend.buffers().items():
            np.copyto(self._good[k], v)

    def _rollback(self, reason: str) -> None:
        self.events.rollbacks += 1
        self._failures += 1
        if self._failures >= self.max_failures:
            self.backend.load(self._factory)
            self._snapshot_good()
            self.backend.lr[:] = self.base_lr
            self._failures = 0
            self.events.factory_resets += 1
            self.events.log.append(f"update {self.events.updates}: {reason}; {self.max_failures} rollbacks in a row: factory weights")
        else:
            self.backend.load(self._good)
            self.backend.lr[:] = self.lr * 0.5
            self.events.log.append(f"update {self.events.updates}: {reason}; rolled back, lr -> {self.lr:.2e}")

    def reset_to_factory(self) -> None:
        """The shipped weights, fresh traces and moments (the live session too)."""
        self._require_open()
        self.backend.load(self._factory)
        self._snapshot_good()
        self.push()

    # --- commit --------------------------------------------------------------------------------
    def commit(self, info: dict | None = None) -> Generation | None:
        """Train what waits in the slots, check, save a generation (if there is a store) and push it live.

        Returns the saved generation, or ``None`` if the check rolled back or nothing was learned since the weights were
        loaded (after a return to the factory weights: the generation the learner started from stays the latest)."""
        self._require_open()
        self.flush()
        if not self.check().ok:
            self.push()
            return None
        self.push()
        if self.store is None:
            return None
        if float(self.backend.buffers()["step"][0]) == 0.0:  # the factory weights, untrained: nothing to save
            self.events.log.append("commit: no update since the factory weights were loaded; nothing saved"
                                   + (f", generation {self.generation.number} stays the latest" if self.generation is not None else ""))
            return None
        self.generation = self.store.save(self.backend.buffers(), {"updates": self.events.updates, "trainable": self.trainable,
                                                                   "lr": self.lr, **(info or {})})
        return self.generation

    def push(self) -> float:
        """``Wbar`` into the live session (in place on the CPU); returns the seconds it took."""
        self._require_open()
        t0 = time.perf_counter()
        self.session.backend.set_initializers(self.backend.views(self.backend.buffers()["wbar"]))
        seconds = time.perf_counter() - t0
        self.push_seconds.append(seconds)
        return seconds

    def memory_bytes(self) -> int:
        """Bytes of the learner's own preallocated buffers (ring, slots, train-step sets, snapshots)."""
        be = self.backend
        arrays = [self._ring, self._slots, be.x, be.y, be.w, be.mask, be.logits, *self._good.values(), *self._factory.values()]
        arrays += [a for s in be._flat for a in s.values()] + [a for s in be._state for a in s.values()]
        return int(sum(a.nbytes for a in arrays))

    def summary(self) -> dict:
        return {**asdict(self.events), "lr": self.lr, "trainable": self.trainable,
                "generation": None if self.generation is None else self.generation.number}

    def close(self) -> None:
        """Free the live session, the guard evaluator and the train step; let another learner take the store."""
        self._closed = True
        self.session.close()
        self._eval.close()
        self.backend.close()
        self._release_store()

    def _require_open(self) -> None:
        if getattr(self, "_closed", False):  # set_trainable runs in __init__ before the flag exists
            raise AdaptationError("the learner is closed (its sessions are freed and the store let go); open a new one")

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_learner(model, train_model=None, **kwargs) -> Learner:
    """A :class:`Learner` over ``model.onnx`` and ``model.train.onnx`` (beside it unless given); see :class:`Learner`."""
    return Learner(model, train_model, **kwargs)


def _array(value, what: str) -> np.ndarray:
    """``value`` as a numpy array, refused in one line where numpy cannot take it (ragged lists, a tensor that requires
    grad, ...)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise AdaptationError(f"{what} must be an array of one shape ({str(exc).splitlines()[0][:120]})") from None


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AdaptationError(f"{what} must be an integer, got {type(value).__name__} {value!r}"[:200])
    return int(value)


def _real(value, what: str) -> float:
    """A real number (not a bool or text) as a float; huge integers become Inf (refused by the caller's range check)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AdaptationError(f"{what} must be a number, got {type(value).__name__} {str(value)[:20]!r}")
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def _max_drop(value) -> float:
    """The largest guard-accuracy drop a check accepts, in [-1, 1] (negative: the accuracy must rise; NaN or more than 1
    would switch the guard off)."""
    drop = _real(value, "max_drop")
    if not -1.0 <= drop <= 1.0:
        raise AdaptationError(f"max_drop must be a guard-accuracy drop in [-1, 1] (0.02: two points), got {drop}")
    return drop


def _rate_band(value) -> float:
    """The spike-rate factor a check accepts: finite and >= 1 (0 divides by zero; below 1, NaN or negative fails every check)."""
    band = _real(value, "rate_band")
    if not (np.isfinite(band) and band >= 1.0):
        raise AdaptationError(f"rate_band must be a finite factor >= 1 (spike rates within [shipped / band, shipped * band]), got {band}")
    return band


def _refuse_beyond_memory(needed: int, ring: int) -> None:
    """The ring buffer and replay slots are preallocated: refuse sizes beyond the memory available in one line."""
    from .recognition import available_memory

    free = available_memory()
    if needed > free:
        raise AdaptationError(f"ring={ring} frames per stream and replay slot needs {needed / 2**30:.1f} GiB, more than the "
                              f"{free / 2**30:.1f} GiB available; open the learner with a smaller ring or fewer streams")


def _pair(guard) -> tuple:
    """``guard`` as ``(x, y)`` or ``(x, y, lengths)``."""
    if not isinstance(guard, (tuple, list)) or len(guard) not in (2, 3):
        size = f" of {len(guard)}" if isinstance(guard, (tuple, list)) else ""
        raise AdaptationError(f"guard must be a pair (x, y) of arrays, or (x, y, lengths), got a {type(guard).__name__}{size}")
    return tuple(guard)


def _index(value, n: int, what: str) -> int:
    value = _int(value, what)
    if not 0 <= value < n:
        raise AdaptationError(f"{what} {value} out of range 0..{n - 1}")
    return value


__all__ = ["GuardResult", "Learner", "RuntimeInputError", "open_learner"]
