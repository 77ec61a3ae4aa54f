"""Event-driven conv front end: the first conv layer's output from the events alone.

A model whose first layer is a :class:`~fptt_edge.layers.ConvLTC` starts its step with
``Conv(x_t)`` (batch norm folded in at export), then a 2x2 max-pool. The convolution is linear,
so each active input pixel ``(c, y, x)`` with value ``v`` adds ``v`` times its flipped kernel
slice ``W[:, c, ::-1, ::-1]`` into the ``k x k`` output neighbourhood around ``(y, x)``
(a scatter), and ``Conv(x_t) = Conv(x_{t-1}) + Conv(x_t - x_{t-1})``: the runtime keeps the
conv output of the previous frame and scatters only the *changes* (pixels that turn on or off,
or change value) where fewer inputs changed than are active, else rebuilds the output from the
bias and the active inputs. Either way the work per step is proportional to the events, not to
the frame.

As :mod:`.sparse` does for a dense first layer, the ONNX graph is split at load time: the first
``Conv`` is cut off and its output becomes the graph input; the runtime fills that buffer (the
ONNX Runtime backend's input, in place) and steps the rest of the graph. Above a crossover
density of scattered inputs (measured on this machine when the session opens, unless given) the
frame goes through the cut-off ``Conv`` alone in ONNX Runtime, which is the dense path itself.
Every ``refresh`` steps the dense path recomputes the output from the frame, so the float32
rounding of the running sums cannot drift: results equal the dense graph's to float32 rounding.
The scatter is compiled (numba, the ``[events]`` extra) where numba is installed, numpy otherwise.

numpy and onnxruntime only; needs the ``onnx`` package to split the graph. No torch.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from ..contract import ContractError, InputSpec, StepContract, read_contract, verify_checksum
from .errors import RuntimeInputError
from .ort_backend import session_options
from .session import MAX_STREAMS, StreamSession, check_count, ort_backend, validate_frames
from .sparse import FrontEndSession, check_active

WEIGHT, BIAS = "layers.0.conv.weight", "layers.0.conv.bias"
MAX_SPARSE_VALUE = 1e4  # changes from or to larger values take the dense path (running sums of huge values lose precision)


@dataclasses.dataclass
class ConvFront:
    """The first conv of a model, cut off its graph: what the runtime needs to compute it."""

    graph: bytes  # the step graph without the conv; its input is the conv output
    conv_graph: bytes  # the conv alone (the dense path): x [B, Ci, H, W] -> y [B, Co, H, W]
    weight: np.ndarray  # [Co, Ci, k, k] float32, batch norm folded
    bias: np.ndarray  # [Co]
    output: str  # the conv output's name: the split graph's input
    contract: StepContract  # the split graph's contract (input: the conv output)


def _attr(node, name, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def split_conv_front(model_path) -> ConvFront:
    """Cut the first ``Conv`` (the one reading ``x`` and the initializer of ``layers.0.conv.weight``) off the step graph."""
    import onnx
    from onnx import helper, numpy_helper

    contract = read_contract(model_path)
    if not contract.model_config.get("conv_channels"):
        raise RuntimeInputError("the event-driven conv front end needs a conv first layer; this model starts with a dense layer "
                                "(use the sparse input projection, --sparse-input)")
    w_name, b_name = (contract.parameter_map.get(k, {}).get("initializer") for k in (WEIGHT, BIAS))
    model = onnx.load(str(model_path))  # read_contract refused external data outside the model's folder
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    x_name = contract.input.name
    conv = next((n for n in g.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[0] == x_name and n.input[1] == w_name), None)
    if conv is None or w_name not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
        raise ContractError(f"{model_path}: no Conv reads the input and the initializer of {WEIGHT}; cannot split the conv front end")
    readers = [n for n in g.node if x_name in n.input]
    if readers != [conv]:
        raise ContractError(f"{model_path}: the input feeds more than the first Conv; cannot split the conv front end")
    w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
    co, ci, kh, kw = w.shape
    pad = kh // 2
    want = {"group": 1, "strides": [1, 1], "dilations": [1, 1], "pads": [pad] * 4, "auto_pad": b"NOTSET"}
    got = {"group": _attr(conv, "group", 1), "strides": list(_attr(conv, "strides", [1, 1])), "dilations": list(_attr(conv, "dilations", [1, 1])),
           "pads": list(_attr(conv, "pads", [0, 0, 0, 0])), "auto_pad": _attr(conv, "auto_pad", b"NOTSET")}
    if kh != kw or kh % 2 == 0 or got != want:
        raise ContractError(f"{model_path}: the first Conv is not a stride-1, 'same'-padded {kh}x{kw} convolution ({got}); "
                            "the event-driven front end handles those only")
    bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32) if len(conv.input) > 2 else np.zeros(co, np.float32)
    batch = contract.input.shape[0]
    frame = contract.input.frame_shape
    if len(frame) != 3 or frame[0] != ci:
        raise ContractError(f"{model_path}: the first Conv takes {ci} channels, the input is {list(frame)}")
    h, wd = frame[1], frame[2]
    output = conv.output[0]
    opset = [o for o in model.opset_import]
    dim = batch if isinstance(batch, int) else str(batch)
    conv_model = helper.make_model(
        helper.make_graph([helper.make_node("Conv", list(conv.input), [output], name="conv_front", kernel_shape=[kh, kw], pads=[pad] * 4)],
                          "conv_front", [helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, [dim, ci, h, wd])],
                          [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [dim, co, h, wd])],
                          [inits[n] for n in conv.input[1:]]),
        opset_imports=opset, ir_version=model.ir_version)
    g.node.remove(conv)
    del g.input[[i.name for i in g.input].index(x_name)]
    g.input.insert(0, helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [dim, co, h, wd]))
    for name in conv.input[1:]:
        if not any(name in n.input for n in g.node):
            g.initializer.remove(inits[name])
    try:
        onnx.checker.check_model(model)
        onnx.checker.check_model(conv_model)
    except onnx.checker.ValidationError as exc:
        raise ContractError(f"{model_path}: the graph without its conv front end is not valid ({str(exc).splitlines()[0][:200]})") from None
    split = dataclasses.replace(contract, input=InputSpec(output, (batch, co, h, wd), source=contract.input.source))
    return ConvFront(model.SerializeToString(), conv_model.SerializeToString(), w, bias, output, split)


class ConvScatter:
    """The scatter itself: ``acc += sum_i v_i * stamp(q_i)`` for flat input indices ``q_i`` into an
    ``[Co, H, W]`` output (flat), numpy only. Stamps at the border are clipped: their out-of-frame
    entries point at the event's own output pixel with weight 0 (adding 0.0 changes nothing).

    Where they fit in ``table_bytes``, the target indices and weights of every input's stamp are
    tabulated (two gathers per call); otherwise they are built from per-pixel and per-border-class tables."""

    def __init__(self, weight: np.ndarray, frame_shape: tuple[int, int, int], table_bytes: int = 16 << 20):
        co, ci, k, _ = weight.shape
        _, h, w = frame_shape
        p = k // 2
        self.out_size, self.in_size = co * h * w, ci * h * w
        dy, dx = np.meshgrid(np.arange(k) - p, np.arange(k) - p, indexing="ij")  # offsets of the output pixels an input touches
        ys, xs = np.divmod(np.arange(h * w), w)
        ty, tx = ys[:, None] + dy.ravel()[None], xs[:, None] + dx.ravel()[None]  # [HW, k*k] targets
        valid = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        self._targets = np.where(valid, ty * w + tx, (ys * w + xs)[:, None]).astype(np.intp)  # spatial, clipped to the centre
        self._channel = (np.arange(co) * h * w).astype(np.intp)[None, :, None]
        # the input at (y, x) reaches output (y + dy, x + dx) through W[:, :, p - dy, p - dx]: the flipped kernel
        stamp = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(ci, co, k * k)  # [Ci, Co, k*k]
        masks, key = np.unique(valid, axis=0, return_inverse=True)  # border classes: which offsets stay in the frame
        self._stamps = np.ascontiguousarray((stamp[:, None] * masks[None, :, None, :]).reshape(ci * len(masks), co * k * k), np.float32)
        self._key = (np.arange(ci)[:, None] * len(masks) + key.reshape(-1)[None]).reshape(-1).astype(np.intp)  # per flat input
        self._hw = h * w
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        if self.in_size * co * k * k * (np.dtype(np.intp).itemsize + 4) <= table_bytes:
            self._tables = (self._indices(np.arange(self.in_size)), self._stamps[self._key])

    def _indices(self, q: np.ndarray) -> np.ndarray:
        return (self._targets[q % self._hw][:, None, :] + self._channel).reshape(len(q), -1)  # [n, Co*k*k]

    def add(self, acc: np.ndarray, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """Scatter the inputs ``q`` (flat indices into ``[Ci, H, W]``) with values ``v`` (1 if None) into ``acc`` (flat ``[Co*H*W]``)."""
        if len(q) == 0:
            return
        if self._tables is not None:
            idx, w = self._tables[0][q], self._tables[1][q]
        else:
            idx, w = self._indices(q), self._stamps[self._key[q]]
        if v is not None:
            w *= v[:, None]
        np.add.at(acc, idx.reshape(-1), w.reshape(-1))

    def rebuild(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, bias: np.ndarray) -> None:
        """``acc`` = the conv of ``frame`` from scratch (``bias`` per output channel + the active inputs' stamps), ``prev`` = ``frame``."""
        acc.reshape(len(bias), -1)[:] = bias[:, None]
        q = np.flatnonzero(frame)
        self.add(acc, q, frame[q].copy())
        prev[:] = frame

    def front(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, bias: np.ndarray, limit: float, rebuild_cost: float) -> int:
        """One stream's front end: scatter the changes (returns 0) or rebuild from the active inputs (1),
        whichever scatters fewer (a rebuild counts ``rebuild_cost`` inputs more), or -1 when that is more
        than ``limit`` inputs or a large value changed (then ``acc``/``prev`` need the dense conv)."""
        q = np.flatnonzero(frame != prev)
        active = int(np.count_nonzero(frame))
        if active + rebuild_cost < len(q):
            if active + rebuild_cost > limit:
                return -1
            self.rebuild(acc, prev, frame, bias)
            return 1
        if len(q) > limit:
            return -1
        return 0 if self._apply_changes(acc, prev, frame, q) else -1

    def update(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, limit: int) -> int:
        """Bring ``acc`` (flat conv output of the flat frame ``prev``) to that of ``frame``, and ``prev`` to
        ``frame``, by scattering the inputs that changed. Returns how many changed, or -1 (nothing
        done) when more than ``limit`` changed or a changed value exceeds :data:`MAX_SPARSE_VALUE`."""
        q = np.flatnonzero(frame != prev)
        if len(q) > limit:
            return -1
        return len(q) if self._apply_changes(acc, prev, frame, q) else -1

    def _apply_changes(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, q: np.ndarray) -> bool:
        """Scatter the changes at ``q`` and take them into ``prev``; False (nothing done) when a value is too large."""
        if len(q):
            new = frame[q]
            dv = new - prev[q]
            if float(np.abs(dv).max()) > MAX_SPARSE_VALUE or float(np.abs(new).max()) > MAX_SPARSE_VALUE:
                return False
            self.add(acc, q, dv)
            prev[q] = new
        return True


class JitConvScatter:
    """:class:`ConvScatter`'s interface over the compiled kernels of :mod:`.conv_scatter_jit` (numba):
    the same sums in one machine-code pass, without tables (``ImportError`` without numba)."""

    def __init__(self, weight: np.ndarray, frame_shape: tuple[int, int, int]):
        from . import conv_scatter_jit as jit

        co, ci, k, _ = weight.shape
        _, self._h, self._w = frame_shape
        self.out_size, self.in_size = co * self._h * self._w, ci * self._h * self._w
        self._jit, self._k = jit, k
        self._stamps = jit.flipped_stamps(weight)
        scratch = np.zeros(self.out_size, np.float32)  # compile (or load from numba's cache) now, not at the first step
        zeros = np.zeros(self.in_size, np.float32)
        self.update(scratch, zeros.copy(), zeros, 0)
        self.add(scratch, np.zeros(1, np.intp), np.zeros(1, np.float32))
        self.rebuild(scratch, zeros.copy(), zeros, np.zeros(co, np.float32))
        self.front(scratch, zeros.copy(), zeros, np.zeros(co, np.float32), 0.0, 0.0)

    def add(self, acc: np.ndarray, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """As :meth:`ConvScatter.add` (indices, values and ``acc`` checked here: the compiled kernel does not bounds-check)."""
        q = np.ascontiguousarray(q, np.intp)
        v = np.ones(len(q), np.float32) if v is None else np.ascontiguousarray(v, np.float32)
        if acc.shape != (self.out_size,) or acc.dtype != np.float32 or not acc.flags.c_contiguous or q.ndim != 1 or v.shape != q.shape:
            raise RuntimeInputError(f"add needs a float32 accumulator of {self.out_size} and as many values as indices")
        if q.size and (int(q.min()) < 0 or int(q.max()) >= self.in_size):
            raise RuntimeInputError(f"input indices must lie in [0, {self.in_size})")
        self._jit.scatter(acc, q, v, self._stamps, self._k, self._h, self._w)

    def rebuild(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, bias: np.ndarray) -> None:
        """As :meth:`ConvScatter.rebuild`."""
        self._check(acc, prev, frame, bias)
        self._jit.rebuild_from_frame(acc, prev, frame, self._stamps, bias, self._k, self._h, self._w)

    def _check(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, bias: np.ndarray | None = None) -> None:
        """The compiled kernels do not bounds-check: the buffers must have the sizes this scatter was made for."""
        if acc.size != self.out_size or prev.size != self.in_size or frame.size != self.in_size or (
                bias is not None and bias.size != self._stamps.shape[1]):
            raise RuntimeInputError(f"the scatter needs an accumulator of {self.out_size}, frames of {self.in_size} values "
                                    f"and {self._stamps.shape[1]} biases")

    def front(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, bias: np.ndarray, limit: float, rebuild_cost: float) -> int:
        """As :meth:`ConvScatter.front`, in one compiled call."""
        self._check(acc, prev, frame, bias)
        return self._jit.front_update(acc, prev, frame, self._stamps, bias, self._k, self._h, self._w, limit, rebuild_cost, MAX_SPARSE_VALUE)

    def update(self, acc: np.ndarray, prev: np.ndarray, frame: np.ndarray, limit: int) -> int:
        """As :meth:`ConvScatter.update`, but on -1 ``acc`` and ``prev`` may be partly updated (recompute both)."""
        self._check(acc, prev, frame)
        return int(self._jit.update_from_frame(acc, prev, frame, self._stamps, self._k, self._h, self._w, limit, MAX_SPARSE_VALUE))


SCATTER_ENGINES = ("auto", "numba", "numpy")


def conv_scatter(weight: np.ndarray, frame_shape: tuple[int, int, int], engine: str = "auto") -> ConvScatter | JitConvScatter:
    """The scatter for ``engine``: ``numba`` (compiled; ``pip install fptt-edge[events]``), ``numpy``, or
    ``auto`` (numba where it is installed)."""
    if engine not in SCATTER_ENGINES:
        raise RuntimeInputError(f"scatter engine must be one of {', '.join(SCATTER_ENGINES)}, got {str(engine)[:20]!r}")
    if engine != "numpy":
        try:
            return JitConvScatter(weight, frame_shape)
        except ImportError:
            if engine == "numba":
                raise RuntimeInputError("the numba scatter needs numba: pip install 'fptt-edge[events]' (or use the numpy engine)") from None
    return ConvScatter(weight, frame_shape)


class SparseConvSession(FrontEndSession):
    """A :class:`StreamSession` whose first conv is computed from the changed inputs only (see the module docstring)."""

    def __init__(self, model_path, streams: int | None = None, threads: int = 1, crossover: float | None = None, refresh: int = 100,
                 verify: bool = True, engine: str = "auto", rebuild_cost: float | None = None):
        """``crossover``: the fraction of scattered inputs above which a frame takes the dense conv;
        None measures it here (:meth:`calibrate`). ``refresh``: steps between dense recomputations
        that bound rounding drift (1: every step dense). ``verify``: refuse a model whose graph or
        weights differ from the exported checksum. ``engine``: the scatter's (:func:`conv_scatter`).
        ``rebuild_cost``: what rebuilding the output from the active inputs costs beyond their
        scatter (filling in the bias), in scattered inputs; None measures it here."""
        import onnxruntime as ort

        if verify:
            verify_checksum(model_path)
        front = split_conv_front(model_path)
        self.frame_shape = read_contract(model_path).input.frame_shape
        fixed = front.contract.batch if isinstance(front.contract.batch, int) else None
        streams = check_count((fixed or 1) if streams is None else streams, "streams", MAX_STREAMS)
        if fixed is not None and streams != fixed:
            raise RuntimeInputError(f"{model_path} was exported for batch {fixed}; re-export with --batch {streams} or --batch dynamic")
        self.refresh = check_count(refresh, "refresh")
        self.session = StreamSession(ort_backend(front.graph, front.contract, streams, "ort", threads), front.contract)
        self.streams, self.contract, self.weight, self.bias = streams, front.contract, front.weight, front.bias
        self.scatter = conv_scatter(front.weight, self.frame_shape, engine)
        self.engine = "numba" if isinstance(self.scatter, JitConvScatter) else "numpy"
        self.conv_out = self.session.backend.x  # [streams, Co, H, W]: the split graph's input buffer, filled in place
        self._acc = self.conv_out.reshape(streams, -1)
        self._prev = np.zeros((streams, self.scatter.in_size), np.float32)  # the frame the conv output belongs to
        self._frame = np.zeros((streams, *self.frame_shape), np.float32)  # the dense path's input
        self._events_frame = np.zeros((streams, self.scatter.in_size), np.float32)  # step_events builds its frames here
        self._acc_rows, self._prev_rows = list(self._acc), list(self._prev)  # per-stream views, made once
        opts = session_options(ort, threads)
        self._conv = ort.InferenceSession(front.conv_graph, opts, providers=["CPUExecutionProvider"])
        self._binding = self._conv.io_binding()
        self._binding.bind_input(self._conv.get_inputs()[0].name, "cpu", 0, np.float32, self._frame.shape, self._frame.ctypes.data)
        self._binding.bind_output(front.output, "cpu", 0, np.float32, self.conv_out.shape, self.conv_out.ctypes.data)
        self._dense_conv()  # the conv output of an empty frame: the bias everywhere
        self._since_dense = 0
        self.counts = {"sparse": 0, "dense": 0, "rebuilds": 0}  # steps per path; streams rebuilt from their active inputs
        self._lock = threading.Lock()
        calib = self.calibrate() if crossover is None or rebuild_cost is None else {}
        self.crossover = float(crossover) if crossover is not None else calib["crossover"]
        if not 0 <= self.crossover <= 1:
            raise RuntimeInputError(f"crossover must be a fraction in [0, 1], got {self.crossover}")
        self.rebuild_cost = float(rebuild_cost) if rebuild_cost is not None else calib["rebuild_inputs"]
        if not 0 <= self.rebuild_cost < float("inf"):
            raise RuntimeInputError(f"rebuild_cost must be a finite number >= 0, got {self.rebuild_cost}")

    # -- the two paths ---------------------------------------------------------------------------

    def _dense_conv(self) -> None:
        """The conv of ``self._frame`` by ONNX Runtime's Conv (the dense graph's own kernel), into the graph input."""
        self._conv.run_with_iobinding(self._binding)
        self._prev[:] = self._frame.reshape(self.streams, -1)
        self._since_dense = 0

    def calibrate(self, repeats: int = 15) -> dict:
        """Time the dense conv and the scatter here; the crossover is where they cost the same.

        Returns ``dense_us``, ``scatter_us_per_input`` (per changed input), ``scatter_fixed_us``,
        ``crossover`` (fraction of scattered inputs), ``rebuild_us`` (a rebuild from an empty frame:
        the bias fill and the scan) and ``rebuild_inputs`` (that, in scattered inputs). Leaves the conv
        output as it found it."""
        saved_acc, saved_prev, saved_frame = self._acc.copy(), self._prev.copy(), self._frame.copy()
        rng = np.random.default_rng(0)
        d = self.scatter.in_size
        scratch = np.zeros(self.scatter.out_size, np.float32)

        def best(fn) -> float:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                fn()
                times.append(time.perf_counter_ns() - t0)
            return float(np.median(times)) / 1e3

        dense = best(self._conv_only)
        sizes = [max(1, d // 200), max(2, d // 25)]
        cost = []
        for n in sizes:
            q = np.sort(rng.choice(d, n, replace=False)).astype(np.intp)
            v = np.where(rng.random(n) < 0.5, 1.0, -1.0).astype(np.float32)
            cost.append(best(lambda q=q, v=v: self.scatter.add(scratch, q, v)))
        per = max((cost[1] - cost[0]) / (sizes[1] - sizes[0]), 1e-6)
        fixed = max(cost[0] - per * sizes[0], 0.0)
        crossover = float(np.clip((dense - fixed) / per / d, 0.0, 1.0))
        empty, prev = np.zeros(d, np.float32), np.zeros(d, np.float32)
        rebuild = best(lambda: self.scatter.rebuild(scratch, prev, empty, self.bias))
        self._acc[:], self._prev[:], self._frame[:] = saved_acc, saved_prev, saved_frame
        return {"dense_us": dense, "scatter_us_per_input": per, "scatter_fixed_us": fixed, "crossover": crossover,
                "rebuild_us": rebuild, "rebuild_inputs": rebuild / per}

    def _conv_only(self) -> None:
        self._conv.run_with_iobinding(self._binding)

    def _front(self, x: np.ndarray) -> None:
        """Bring the conv output to frames ``x`` ``[streams, *frame]`` (validated), per stream the cheaper of:
        scatter the inputs that changed since the last frame (frames whose active pixels persist), or
        rebuild from the bias and the active inputs (event frames whose pixels do not persist); the
        dense conv for all streams when a stream's cheaper way scatters more than the crossover, at a
        refresh, or when large values change."""
        flat = x.reshape(self.streams, -1)
        dense = self._since_dense + 1 >= self.refresh
        limit = float(self.crossover * self.scatter.in_size)
        rebuilds = 0
        front, bias, cost = self.scatter.front, self.bias, float(self.rebuild_cost)
        for acc, prev, frame in zip(self._acc_rows, self._prev_rows, flat):
            if dense:
                break
            path = front(acc, prev, frame, bias, limit, cost)
            dense, rebuilds = path < 0, rebuilds + max(path, 0)
        if dense:  # also when a stream gave up half-way: the dense conv recomputes every stream's output
            np.copyto(self._frame, x)
            self._dense_conv()
            self.counts["dense"] += 1
            return
        self._since_dense += 1
        self.counts["sparse"] += 1
        self.counts["rebuilds"] += rebuilds

    # -- the public steps ------------------------------------------------------------------------

    def step(self, x: np.ndarray) -> np.ndarray:
        """Same contract as a dense session's ``step``: frames ``[streams, *frame]``."""
        x = validate_frames(x, self.streams, self.frame_shape)
        self._enter()
        try:
            self._front(x)
            return self.session.step_buffered()  # the conv output is already in the graph's input buffer
        finally:
            self._lock.release()

    def convolve(self, x: np.ndarray) -> np.ndarray:
        """The conv output for frames ``x`` ``[streams, *frame]`` without stepping the network (the
        front end alone; the next step's frames are compared against these). A view, valid until the next call."""
        x = validate_frames(x, self.streams, self.frame_shape)
        self._enter()
        try:
            self._front(x)
            return self.conv_out
        finally:
            self._lock.release()

    def step_events(self, active: list[np.ndarray], values: list[np.ndarray] | None = None) -> np.ndarray:
        """One step from each stream's active inputs (flat indices into ``[C, H, W]``; values 1 if
        None, summed where an index repeats): the whole frame, as for a dense step. Checked first."""
        active, values = check_active(active, values, self.streams, self.scatter.in_size)
        self._enter()
        try:
            frames = self._events_frame
            frames[:] = 0.0
            for s, idx in enumerate(active):
                np.add.at(frames[s], idx, 1.0 if values is None else values[s])
            if not np.isfinite(frames).all():
                raise RuntimeInputError("the values sum to Inf at a repeated index; state unchanged")
            self._front(frames.reshape(self.streams, *self.frame_shape))
            return self.session.step_buffered()  # the conv output is already in the graph's input buffer
        finally:
            self._lock.release()

    def close(self) -> None:
        self._binding = None
        self._conv = None
        super().close()
