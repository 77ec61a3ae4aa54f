"""The training run: epochs, evaluation, metrics, checkpoints and exact resume.

Files in ``out_dir``: ``model.pt`` (the evaluated weights, every epoch), ``checkpoint.pt``
(everything needed to resume: weights, optimiser, FPTT traces, progress; every epoch and
every ``checkpoint_interval`` seconds), ``metrics.json`` and ``curves.png``.

Data order and the random initial states come from generators seeded by ``(seed, epoch)``,
and their state is saved with the progress, so a resumed run reproduces the uninterrupted
one exactly.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import math
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no run lock
    fcntl = None  # type: ignore[assignment]

import torch
from tqdm.auto import tqdm

from ..checkpoint import check_weights, load_checkpoint, model_from_payload, plain_json, save_checkpoint
from ..config import ModelConfig
from ..data.dataset import SequenceDataset, split_validation
from ..data.tasks import data_identity
from ..errors import FpttEdgeError
from ..io import OutputPathError, output_target, write_json_atomic
from ..model import LTCNetwork
from ..reporting import plot_curves
from ..seeding import derived_seed
from . import gradstats
from .averaging import WeightAverage
from .distributed import DistContext
from .init import init_time_constants
from .selection import DESCRIPTIONS, selected_index
from .trainers import TrainConfig, evaluate, make_trainer

MODEL_FILE, RESUME_FILE, METRICS_FILE, PLOT_FILE = "model.pt", "checkpoint.pt", "metrics.json", "curves.png"
LOCK_FILE = ".lock"


class TrainingError(FpttEdgeError, RuntimeError):
    """A run that cannot start or continue, with the reason."""


def _epoch_generators(seed: int, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    order = torch.Generator().manual_seed(derived_seed(seed, 1_000_003, 2 * epoch))
    draws = torch.Generator().manual_seed(derived_seed(seed, 1_000_003, 2 * epoch + 1))
    return order, draws


def _metadata(train: SequenceDataset, model: LTCNetwork, cfg: TrainConfig, val: SequenceDataset | None) -> dict:
    spec = dict(train.input_spec)
    if val is not None and "validation" not in spec:
        spec["validation"] = {"split": "given", "samples": len(val)}
    return {
        "model_config": model.config.to_dict(),
        "training": {"method": cfg.method, **cfg.to_dict()},
        "class_names": list(train.class_names),
        "input_spec": spec,
    }


def fit(model_config: ModelConfig, cfg: TrainConfig, train: SequenceDataset, test: SequenceDataset, out_dir,
        resume: bool = False, device: str = "cpu", progress: bool = True, val: SequenceDataset | None = None,
        views: Callable[[int], SequenceDataset] | None = None) -> dict:
    """Train, evaluate after every epoch, select the best epoch on validation data, write artefacts; returns the metrics dict.

    ``val``: the validation data; without it, ``cfg.val_fraction`` of ``train`` is held out
    (stratified, fixed by ``cfg.seed``; :func:`~fptt_edge.data.dataset.split_validation`). With no
    validation data at all (``val_fraction`` 0) the last epoch is kept. The test set is never used
    to select anything.

    ``views``: the training samples of epoch ``e`` >= 1 (``train`` is epoch 0's), e.g. freshly drawn
    augmented views; it must give the same number of samples with the same labels in the same order
    every epoch, and the same samples for the same epoch (a resumed run calls it again). Only with
    an explicit ``val`` (the split must not change between epochs)."""
    out = Path(out_dir)
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but this PyTorch sees no usable CUDA device; use --device cpu")
    ctx = DistContext.from_env(device)
    try:
        with _run_lock(out, ctx.is_main):
            return _fit(model_config, cfg, train, test, val, out, resume, ctx, progress, views)
    except RuntimeError as exc:  # torch turning a scalar of the update (lr / (1 - beta1), beta / alpha, ...) into float32
        if "without overflow" not in str(exc):
            raise
        raise TrainingError(f"the settings take an update beyond float32's range ({str(exc).splitlines()[0][:80]}); "
                            "use a --lr and --alpha nearer the defaults") from None
    finally:
        ctx.close()


@contextlib.contextmanager
def _run_lock(out: Path, take: bool):
    """Hold ``out/.lock`` exclusively (``flock``, released when the run ends or its process dies):
    two trainings on one folder would overwrite each other's artefacts."""
    if not take or fcntl is None:
        yield
        return
    # the folders this run creates, deepest first; none through '..' ('x/../y' is a 'y' that may have been there)
    made = [] if ".." in out.parts else [p for p in (out, *out.parents) if not os.path.lexists(p)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{out}: cannot create the run folder ({exc.strerror})") from None
    lock = out / LOCK_FILE
    try:  # never blocks (a FIFO), never follows a link
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise TrainingError(f"{lock}: not a regular file (a link, FIFO or folder); remove it to train in {out}") from None
        raise TrainingError(f"{lock}: cannot create the run's lock file ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TrainingError(f"{lock}: not a regular file (a device or socket); remove it to train in {out}")
    with os.fdopen(fd, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"another training is using {out}; wait for it to end or choose another --out") from None
        try:
            yield
        except BaseException:
            _remove_unused(made, lock)
            raise


def _remove_unused(made: list[Path], lock: Path) -> None:
    """A run that ended before writing anything leaves no trace: the lock and the folders it made, while they hold
    nothing else (a run that saved a checkpoint keeps all)."""
    with contextlib.suppress(OSError):  # never in place of the error that ended the run (the folder may be gone)
        if not made or any(p.name != LOCK_FILE for p in made[0].iterdir()):
            return
        lock.unlink()
        for folder in made:
            folder.rmdir()  # stops at the first that holds something


def _epoch_views(views, epoch: int, train: SequenceDataset) -> SequenceDataset:
    """``views(epoch)``, checked to line up with epoch 0's samples (count, labels, order, step shape)."""
    ds = views(epoch)
    if len(ds) != len(train) or tuple(ds.input_shape) != tuple(train.input_shape) or not torch.equal(ds.y, train.y):
        raise TrainingError(f"epoch {epoch + 1}'s training views do not line up with epoch 1's samples "
                            f"({len(ds)} samples of {tuple(ds.input_shape)} vs {len(train)} of {tuple(train.input_shape)}, or other labels)")
    return ds


def _fit(model_config, cfg, train, test, val, out, resume, ctx: DistContext, progress, views=None) -> dict:
    if ctx.enabled and cfg.oracle:
        raise TrainingError("--oracle trains in one process only (data-parallel ranks would each keep their own soft-target table)")
    if views is not None and val is None and cfg.val_fraction > 0:
        raise TrainingError("per-epoch training views need the validation data split off beforehand (pass val)")
    if tuple(train.input_shape) != model_config.input_shape:
        raise TrainingError(f"data steps have shape {train.input_shape}, the model expects {model_config.input_shape}")
    for name, ds in (("test", test), ("validation", val)):
        if ds is not None and tuple(ds.input_shape) != model_config.input_shape:
            raise TrainingError(f"{name} data steps have shape {ds.input_shape}, the model expects {model_config.input_shape}")
    resume_path = out / RESUME_FILE
    start_epoch, start_batch = 0, 0
    history: list[dict] = []
    saved_progress: dict | None = None
    if resume_path.exists() and not resume:
        raise TrainingError(f"{out} already holds a run ({RESUME_FILE}); pass --resume to continue it or choose another --out")
    results = [f for f in (MODEL_FILE, METRICS_FILE, PLOT_FILE) if os.path.lexists(out / f)]
    if results and not resume_path.exists():
        raise TrainingError(f"{out} already holds results ({', '.join(results)}) but no {RESUME_FILE} to resume; "
                            "choose another --out (or move them away): a new run would overwrite them")
    for name in (RESUME_FILE, MODEL_FILE, METRICS_FILE, PLOT_FILE):  # what the run writes: refused now, not after an epoch
        try:
            output_target(out / name)
        except OutputPathError as exc:
            raise TrainingError(str(exc)) from None
    if cfg.patience and val is None and cfg.val_fraction == 0:
        raise TrainingError("--patience stops a run some epochs after the one selected on validation data; without any "
                            "(--val-fraction 0, no --val) the last epoch is kept and it would never stop")
    torch.manual_seed(cfg.seed)
    data = {"train": data_identity(train), "test": data_identity(test)}  # the training data as given (before any split)
    if val is not None:
        data["val"] = data_identity(val)
    elif cfg.val_fraction > 0:  # fixed by the data, the fraction and the seed, all of which --resume compares
        train, val = split_validation(train, cfg.val_fraction, cfg.seed)
    if resume and resume_path.exists():
        payload = load_checkpoint(resume_path, kind="resume")
        _saved_config(payload, resume_path)  # refuses a malformed training_config
        differs = _resume_differences(payload, model_config, cfg, data, resume_path)
        if differs:
            raise TrainingError(f"{resume_path}: --resume continues a run on the same data with the same settings; "
                                f"these differ: {'; '.join(differs)}. Start a new run (another --out) to train on these")
        model = model_from_payload(payload, resume_path)
        saved_progress, history = _saved_progress(payload, resume_path, val is not None)
        start_epoch, start_batch = saved_progress["epoch"], saved_progress["batch"]
        if start_epoch + (1 if start_batch else 0) > cfg.epochs:
            raise TrainingError(f"{resume_path}: the run has trained {start_epoch} epochs{' and part of the next' if start_batch else ''}; "
                                f"--epochs {cfg.epochs} would drop them (--epochs may only grow)")
    else:
        if resume and ctx.is_main:  # killed before its first save, or a mistyped --out: say which (--quiet too)
            tqdm.write(f"--resume: no {RESUME_FILE} in {out}, so a new run starts there")
        model = LTCNetwork(model_config)
        init_time_constants(model, train.steps, cfg.tau_init, cfg.seed)
    model.to(ctx.device)
    net = ctx.wrap(model)
    n, bs = len(train), cfg.batch_size
    n_batches = n // bs if ctx.enabled else (n + bs - 1) // bs  # ranks need equal shards: drop the remainder
    if n_batches == 0:
        raise TrainingError(f"batch size {bs} is larger than the {n} training samples")
    if start_batch >= n_batches:
        raise TrainingError(f"{resume_path}: saved at batch {start_batch}, but an epoch of this data has {n_batches} batches")
    # the whole run's updates, not those left: a resumed run decides --compile auto as the uninterrupted one did
    trainer = make_trainer(model, cfg, net, updates_planned=cfg.epochs * n_batches * train.steps, steps=train.steps)
    average = WeightAverage(cfg.ema_decay) if cfg.ema_decay > 0 else None
    if saved_progress is not None:
        _load_trainer(trainer, payload["trainer"], resume_path)
        if average is not None:
            _load_average(average, payload.get("weight_average"), trainer, resume_path)
        table = getattr(getattr(trainer, "oracle", None), "table", None)
        points = trainer.update_points(train.steps)
        if table is not None and table.shape[1] != points:
            raise TrainingError(f"{resume_path}: the oracle table holds {table.shape[1]} update points per sequence, this run has {points}")
    meta = _metadata(train, model, cfg, val)
    interval = cfg.checkpoint_interval if not ctx.enabled else 0.0
    scored = train.subset(_train_eval_indices(n, cfg.train_eval_samples, cfg.seed))
    pick = _Selection(cfg.selection, None if val is None else len(val))
    best_state = _best_state_on_resume(history, payload, model_config, out / MODEL_FILE, pick) if history else None
    ran = 0  # epochs trained by this call

    def save_resume(epoch, batch, sums, draws, elapsed):
        prog = {"epoch": epoch, "batch": batch, "loss_sum": float(sums[0]), "correct": int(sums[1]), "seen": int(sums[2]),
                "generator": draws.get_state(), "elapsed": elapsed, "grad_stats": trainer.grad_stats.tolist() if batch else [0.0] * gradstats.SIZE}
        save_checkpoint(resume_path, {"kind": "resume", **meta, "training_config": cfg.to_dict(), "state_dict": _own_tensors(model),
                                      "trainer": trainer.state_dict(), "progress": prog, "history": history, "data": data,
                                      **({"selected_state": best_state} if best_state is not None else {}),
                                      **({"weight_average": average.state_dict()} if average is not None else {})})

    def write_results() -> None:
        """``model.pt`` (the selected weights), ``metrics.json`` and ``curves.png`` from the history so far."""
        metrics = _metrics_summary(history, cfg, model, train, test, val, ctx, pick, trainer)
        save_checkpoint(out / MODEL_FILE, {"kind": "model", **meta, "state_dict": best_state, "metrics": metrics})
        write_json_atomic(out / METRICS_FILE, metrics)
        plot_curves(history, out / PLOT_FILE, title=f"{train.input_spec.get('task', '')} - {cfg.method.upper()}", clip=cfg.clip)

    for epoch in range(start_epoch, cfg.epochs):
        if _stop_early(history, cfg.patience, pick):
            break
        order, draws = _epoch_generators(cfg.seed, epoch)
        perm = torch.randperm(n, generator=order)
        data_epoch = train if views is None or epoch == 0 else _epoch_views(views, epoch, train)
        sums = torch.zeros(3, dtype=torch.float64)
        elapsed, first = 0.0, 0
        trainer.grad_stats.zero_()
        if saved_progress is not None and epoch == start_epoch and start_batch > 0:
            draws.set_state(saved_progress["generator"])
            if "grad_stats" in saved_progress:  # checked by _saved_progress (older checkpoints have none: this part of the epoch only)
                trainer.grad_stats.copy_(gradstats.from_saved(saved_progress["grad_stats"], trainer.grad_stats.device))
            sums = torch.tensor([saved_progress["loss_sum"], saved_progress["correct"], saved_progress["seen"]], dtype=torch.float64)
            elapsed, first = float(saved_progress["elapsed"]), start_batch
        t_start, t_saved = time.perf_counter() - elapsed, time.perf_counter()
        bar = tqdm(range(first, n_batches), desc=f"epoch {epoch + 1}/{cfg.epochs} [{cfg.method}]", initial=first, total=n_batches,
                   disable=None if progress and ctx.is_main else True,  # None: drawn on a terminal only (a log gets the epoch lines)
                   leave=False, dynamic_ncols=True)
        lr = cfg.lr
        for b in bar:
            lr = cfg.lr_at(epoch, b, n_batches)
            trainer.set_lr(lr)
            idx = ctx.shard(perm[b * bs : (b + 1) * bs])
            x = data_epoch.x[idx].to(ctx.device, torch.float32, non_blocking=True)
            y = data_epoch.y[idx].to(ctx.device)
            lengths = None if data_epoch.lengths is None else data_epoch.lengths[idx].to(ctx.device)
            loss_sum, correct = trainer.train_batch(x, y, lengths, draws)
            if average is not None:
                average.update(trainer.evaluated_weights())
            loss_value = float(loss_sum)
            if loss_value != loss_value or loss_value in (float("inf"), float("-inf")):
                kept = f"the last good state is in {resume_path}" if resume_path.is_file() else "no state was saved yet"
                raise TrainingError(f"training diverged (loss is {loss_value}) at epoch {epoch + 1}, batch {b + 1}; {kept}. "
                                    "Try a lower --lr, or check the data for extreme values.")
            sums += torch.tensor([loss_value, float(correct), float(len(y))], dtype=torch.float64)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", online_acc=f"{sums[1] / sums[2]:.3f}")
            if interval > 0 and time.perf_counter() - t_saved > interval and b + 1 < n_batches and ctx.is_main:
                save_resume(epoch, b + 1, sums, draws, time.perf_counter() - t_start)
                t_saved = time.perf_counter()
        bar.close()
        train_time = time.perf_counter() - t_start
        sums = ctx.all_reduce_sum(sums)
        trainer.before_eval()
        traces = trainer.traces.wbar + trainer.traces.lam if cfg.method == "fptt" else []
        divergence = ctx.divergence(list(model.parameters()) + traces)
        record = {"epoch": epoch + 1, "lr": lr, "online_loss": float(sums[0] / sums[2]), "online_accuracy": float(sums[1] / sums[2]),
                  "grad_norm": gradstats.summary(trainer.grad_stats)}
        with average.swapped_in(trainer.params) if average is not None else contextlib.nullcontext():
            for name, ds in (("train", scored), ("val", val), ("test", test)):
                if ds is not None:
                    m = evaluate(model, ds.x, ds.y, ds.lengths, device=ctx.device)
                    record[f"{name}_loss"], record[f"{name}_accuracy"] = m["loss"], m["accuracy"]
            record.update({"train_time_s": round(train_time, 3), "rank_divergence": divergence})
            history.append(record)
            if pick.index(history) == len(history) - 1:
                best_state = _own_tensors(model)
        trainer.after_eval()
        ran += 1
        if ctx.is_main:  # the resume state first (it holds the selected weights too): a kill between the writes loses nothing
            save_resume(epoch + 1, 0, torch.zeros(3), draws, 0.0)
            write_results()
            if progress:
                shown = f" | val acc {record['val_accuracy']:.4f}" if val is not None else ""
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: online loss {record['online_loss']:.4f} acc {record['online_accuracy']:.4f} | "
                           f"train acc {record['train_accuracy']:.4f}{shown} | test acc {record['test_accuracy']:.4f} | lr {lr:.2e} | "
                           f"{_clip_note(record['grad_norm'])}{train_time:.1f}s")
        ctx.barrier()
    if ran == 0 and history and ctx.is_main:  # resumed with nothing left to train (killed after the last save): finish the results
        write_results()
    return _metrics_summary(history, cfg, model, train, test, val, ctx, pick, trainer)


class _Selection:
    """The run's selection rule (:mod:`.selection`) over its history; the last epoch without validation data."""

    def __init__(self, rule: str, val_samples: int | None):
        self.rule, self.val_samples = rule, val_samples

    def index(self, history: list[dict]) -> int:
        if self.val_samples is None:
            return len(history) - 1
        return selected_index(history, self.rule, self.val_samples)

    def describe(self) -> str:
        return DESCRIPTIONS[self.rule] if self.val_samples is not None else "last epoch (no validation data)"


def _stop_early(history: list[dict], patience: int, pick: _Selection) -> bool:
    """``patience`` epochs have passed since the selected epoch (never without validation data)."""
    return bool(patience and pick.val_samples is not None and history and len(history) - 1 - pick.index(history) >= patience)


def _train_eval_indices(n: int, samples: int, seed: int) -> torch.Tensor:
    """A fixed random subset (sorted) of the training data, re-scored like the test set after each epoch."""
    if samples == 0 or samples >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(derived_seed(seed, 1_000_003, 99_991))
    return torch.sort(torch.randperm(n, generator=g)[:samples]).values


def _best_state_on_resume(history: list[dict], payload: dict, model_config: ModelConfig, model_path: Path, pick: _Selection) -> dict:
    """The selected weights of an interrupted run: kept in its resume checkpoint (older checkpoints: in ``model.pt``,
    written at every epoch end)."""
    want = history[pick.index(history)]["epoch"]
    if "selected_state" in payload:
        state = payload["selected_state"]
        if not isinstance(state, dict):
            raise TrainingError(f"{model_path.with_name(RESUME_FILE)}: selected_state must be a dict of tensors")
        check_weights(model_config, state, model_path.with_name(RESUME_FILE))
        return state
    try:
        saved = load_checkpoint(model_path, kind="model")
    except FpttEdgeError as exc:
        raise TrainingError(f"{model_path}: the selected weights of the interrupted run are unreadable ({exc}); start a new run") from None
    got = (saved.get("metrics") or {}).get("selected_epoch")
    if got != want:
        raise TrainingError(f"{model_path}: holds epoch {got!r}, the interrupted run selected epoch {want}; start a new run")
    return saved["state_dict"]


HISTORY_KEYS = ("epoch", "online_loss", "online_accuracy", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
VAL_KEYS = ("val_loss", "val_accuracy")


def _saved_config(payload: dict, path) -> TrainConfig:
    for key, kind in (("training_config", dict), ("progress", dict), ("history", list), ("trainer", dict)):
        if not isinstance(payload.get(key), kind):
            raise TrainingError(f"{path}: '{key}' is missing or not a {kind.__name__}; not a resume checkpoint fptt-edge wrote")
    try:
        return TrainConfig(**payload["training_config"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise TrainingError(f"{path}: invalid training_config ({str(exc)[:200]})") from None


# Settings a resumed run may change: how long it runs and what is only reported or how fast it runs
# (the compiled update agrees with the eager one within float rounding).
RESUME_MAY_CHANGE = ("epochs", "checkpoint_interval", "patience", "train_eval_samples", "compile")


# What runs written before a setting existed did, for settings whose default may differ from that.
RECORDED_SINCE = {"selection": "best"}


def _resume_differences(payload: dict, model_config: ModelConfig, cfg: TrainConfig, data: dict, path) -> list[str]:
    """What this command would change against the interrupted run: the model, the training
    settings (but :data:`RESUME_MAY_CHANGE`; ``epochs`` may grow) and the data (task and
    options, file contents, sample counts, the loaded samples), one readable item each."""
    out = [f"model {k}: {_show(a)} then, {_show(b)} now" for k, a, b in _dict_diff(payload["model_config"], model_config.to_dict())]
    saved_cfg, now_cfg = payload["training_config"], cfg.to_dict()
    defaults = {**TrainConfig().to_dict(), **RECORDED_SINCE}  # what an older run that did not record a setting used
    out += [f"{k}: {_show(saved_cfg.get(k, defaults[k]))} then, {_show(now_cfg[k])} now" for k in now_cfg
            if k not in RESUME_MAY_CHANGE and not _same(saved_cfg.get(k, defaults[k]), now_cfg[k])]
    if saved_cfg.get("epochs") != cfg.epochs and (cfg.schedule == "cosine" or (cfg.schedule == "step" and not cfg.milestones)):
        out.append(f"epochs: {_show(saved_cfg.get('epochs'))} then, {cfg.epochs} now (the {cfg.schedule} learning-rate schedule spans "
                   f"the run's epochs, so other --epochs would change the rates; --epochs may grow with --schedule constant or "
                   f"step with --milestones)")
    saved_data = payload.get("data")
    if not (plain_json(saved_data) and isinstance(saved_data, dict) and all(isinstance(saved_data.get(s), dict) for s in ("train", "test"))):
        raise TrainingError(f"{path}: records no usable identity of its training data (written by an older fptt-edge, or edited); "
                            f"--resume cannot check the data are the same. Start a new run (another --out)")
    for split in ("train", "test"):
        out += _data_differences(split, saved_data[split], data[split])
    if isinstance(saved_data.get("val"), dict) and "val" in data:
        out += _data_differences("val", saved_data["val"], data["val"])
    elif "val" in saved_data or "val" in data:
        out.append(f"validation data (--val): {'a file' if 'val' in saved_data else 'none'} then, {'a file' if 'val' in data else 'none'} now")
    return out


def _data_differences(split: str, old: dict, new: dict) -> list[str]:
    out = [f"{split} data {k}: {_show(a)} then, {_show(b)} now"
           for k, a, b in _dict_diff(old.get("spec") if isinstance(old.get("spec"), dict) else {}, new["spec"])]
    if not _same(old.get("samples"), new["samples"]):
        out.append(f"{split} samples: {_show(old.get('samples'))} then, {new['samples']} now (--max-{split}-samples or the data file)")
    if not _same(old.get("file_sha256"), new.get("file_sha256")):
        out.append(f"{split} data file: {_file(old)} then, {_file(new)} now")
    elif not _same(old.get("recordings_sha256"), new.get("recordings_sha256")):
        out.append(f"{split} recordings listed in {_show(new.get('file'))}: their names, labels or sizes changed")
    if not out and not _same(old.get("samples_sha256"), new["samples_sha256"]):
        out.append(f"{split} samples: the loaded data differ (SHA-256 {_short(old.get('samples_sha256'))} then, "
                   f"{_short(new['samples_sha256'])} now)")
    return out


def _file(ident: dict) -> str:
    sha = ident.get("file_sha256")
    if not isinstance(sha, str):
        return "none (built-in data)"
    return f"{_show(ident.get('file'))} (SHA-256 {_short(sha)})"


def _short(sha) -> str:
    return sha[:12] + "..." if isinstance(sha, str) else _show(sha)


def _dict_diff(old, new: dict) -> list[tuple]:
    old = old if isinstance(old, dict) else {}
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new), key=str) if not _same(old.get(k), new.get(k))]


def _same(a, b) -> bool:
    return plain_json(a) and plain_json(b) and _normal(a) == _normal(b)


def _normal(v):
    """Tuples and lists alike (a config's tuples come back from a checkpoint as either)."""
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_normal(x) for x in v]
    return v


def _show(v) -> str:
    if not plain_json(v):
        return f"<{type(v).__name__}>"
    text = repr(_normal(v))
    return text if len(text) <= 80 else text[:77] + "..."


def _number(v, integer: bool = False) -> bool:
    """A finite, non-negative number (an int when ``integer``); never a bool."""
    kinds = int if integer else (int, float)
    return isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _saved_progress(payload: dict, path, has_val: bool) -> tuple[dict, list]:
    """The saved progress and history, refused with the reason unless sound and consistent."""
    progress, history = payload["progress"], payload["history"]
    bad = [k for k in ("epoch", "batch", "correct", "seen") if not _number(progress.get(k), integer=True)]
    bad += [k for k in ("loss_sum", "elapsed") if not _number(progress.get(k))]
    gen = progress.get("generator")
    if not (isinstance(gen, torch.Tensor) and gen.dtype == torch.uint8 and gen.shape == torch.Generator().get_state().shape
            and _generator_state(gen)):
        bad.append("generator")
    if "grad_stats" in progress and gradstats.from_saved(progress["grad_stats"]) is None:
        bad.append("grad_stats")
    if bad:
        raise TrainingError(f"{path}: invalid progress fields {bad}")
    keys = HISTORY_KEYS + (VAL_KEYS if has_val else ())
    if not all(isinstance(r, dict) and all(_number(r.get(k)) for k in keys) for r in history):
        raise TrainingError(f"{path}: history entries must hold finite {', '.join(keys)}")
    if not all(_grad_norm_ok(r.get("grad_norm", {})) for r in history):
        raise TrainingError(f"{path}: a history entry's grad_norm must map updates, clipped, geo_mean and max to numbers")
    if progress["epoch"] != len(history):
        raise TrainingError(f"{path}: progress is at epoch {progress['epoch']}, but the history holds {len(history)} epochs")
    return progress, list(history)


def _clip_note(g: dict) -> str:
    """``clipped 12% (max 3.4e+01) | `` for the epoch line."""
    largest = "overflow" if g["max"] is None else f"{g['max']:.1e}"
    return f"clipped {g['clipped']:.0%} (max {largest}) | " if g["updates"] else ""


def _grad_norm_ok(entry) -> bool:
    """An epoch's ``grad_norm`` summary as :func:`gradstats.summary` writes it (``{}``: a run from before it)."""
    if not isinstance(entry, dict) or not entry:
        return isinstance(entry, dict)
    return (set(entry) == {"updates", "clipped", "geo_mean", "max"} and _number(entry["updates"], integer=True) and _number(entry["clipped"])
            and all(v is None or _number(v) for v in (entry["geo_mean"], entry["max"])))


def _generator_state(state: torch.Tensor) -> bool:
    """Whether a generator takes ``state`` (torch refuses an invalid Mersenne Twister state of the right size)."""
    try:
        torch.Generator().set_state(state)
    except RuntimeError:
        return False
    return True


OPTIMISER_FLAGS = ("foreach", "maximize", "differentiable", "capturable", "fused")
OPTIMISER_FIXED = ("eps", "weight_decay", "betas")


def _setting(v):
    """An optimiser setting as compared on resume (betas saved as a tuple or a list are the same)."""
    return list(v) if isinstance(v, (tuple, list)) else v


def _load_trainer(trainer, state: dict, path) -> None:
    """Optimiser and FPTT trace state, refused unless it fits the model and is finite."""
    # what this trainer creates: the flags, and the settings a run never changes (the rate follows the schedule)
    made = [{k: copy.deepcopy(g.get(k)) for k in OPTIMISER_FLAGS + OPTIMISER_FIXED} for g in trainer.optimizer.param_groups]
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError) as exc:
        raise TrainingError(f"{path}: the optimiser, FPTT trace or oracle table state does not fit this model ({type(exc).__name__}: "
                            f"{str(exc)[:160]})") from None
    live = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    if any(id(k) not in live for k in trainer.optimizer.state):  # state saved under other ids: torch keeps it apart, unused
        raise TrainingError(f"{path}: the optimiser state belongs to parameters this model does not have (its 'params' ids do not match)")
    traces = getattr(trainer, "traces", None)
    if traces is not None:
        if (traces.alpha, traces.beta) != (trainer.cfg.alpha, trainer.cfg.beta):
            raise TrainingError(f"{path}: FPTT trace alpha/beta {traces.alpha}/{traces.beta} differ from the training config's")
        if not all(torch.isfinite(t).all() for t in traces.tensors()):
            raise TrainingError(f"{path}: FPTT traces hold NaN or Inf")
    for group, want in zip(trainer.optimizer.param_groups, made):
        if not all(_number(group.get(k)) for k in ("lr", "eps", "weight_decay")):
            raise TrainingError(f"{path}: optimiser lr, eps and weight_decay must be finite numbers")
        betas = group.get("betas")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_number(b) and b < 1 for b in betas)):
            raise TrainingError(f"{path}: optimiser betas must be two numbers in [0, 1)")
        flags = [k for k in OPTIMISER_FLAGS + OPTIMISER_FIXED if _setting(group.get(k)) != _setting(want[k])]
        if flags:
            raise TrainingError(f"{path}: optimiser options {', '.join(flags)} differ from what this training creates")
        for p in group["params"]:
            if not _whole_number(trainer.optimizer.state.get(p, {}).get("step", 0)):  # Adamax divides by 1 - beta1 ** (step + 1)
                raise TrainingError(f"{path}: optimiser state 'step' must be a whole number >= 0 (one value)")
            for key, value in trainer.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise TrainingError(f"{path}: optimiser state '{key}' has shape {list(value.shape)}, its weights {list(p.shape)}")
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                    raise TrainingError(f"{path}: optimiser state '{key}' holds NaN or Inf")


def _whole_number(v) -> bool:
    """A finite whole number >= 0, or a one-value real tensor holding one."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex() or v.dtype == torch.bool:
            return False
        v = v.item()
    return _number(v) and float(v) == int(v)


def _load_average(average: WeightAverage, state, trainer, path) -> None:
    """The saved weight average (``--ema-decay``), refused unless it fits the model and is finite."""
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: the run averages its weights (--ema-decay), but the checkpoint holds no average")
    try:
        average.load_state_dict(state, trainer.evaluated_weights())
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"{path}: the weight average does not fit this run ({str(exc)[:160]})") from None


def _own_tensors(model) -> dict:
    """The state dict with each tensor in its own storage (FPTT's weights are views of one flat buffer)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _update_path(trainer) -> dict:
    """FPTT: how its updates ran, ``compiled`` or ``eager`` (with the reason when compiling was asked for and refused)."""
    if not hasattr(trainer, "compile_note"):
        return {}
    note = trainer.compile_note
    return {"fptt_update": "compiled" if trainer.compiled is not None else "eager" + (f" ({note})" if note else "")}


def _metrics_summary(history, cfg, model, train, test, val, ctx, pick: _Selection, trainer) -> dict:
    best = history[pick.index(history)]
    last = history[-1]
    keys = ("epoch", "online_accuracy", "train_accuracy", "val_accuracy", "test_accuracy", "test_loss")
    return {
        "test_accuracy": best["test_accuracy"],
        "train_accuracy": best["train_accuracy"],
        "val_accuracy": best.get("val_accuracy"),
        "online_accuracy": best["online_accuracy"],
        "selected_epoch": best["epoch"],
        "selection": pick.describe(),
        "last_epoch": {k: last.get(k) for k in keys},
        "stopped_early": _stop_early(history, cfg.patience, pick) and len(history) < cfg.epochs,
        "epochs": history,
        "method": cfg.method,
        "training_config": cfg.to_dict(),
        "model_config": model.config.to_dict(),
        "input_spec": dict(train.input_spec),
        "train_samples": len(train),
        "val_samples": 0 if val is None else len(val),
        "test_samples": len(test),
        "train_scored_samples": min(len(train), cfg.train_eval_samples or len(train)),
        "world_size": ctx.world,
        **_update_path(trainer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "notes": {"online_accuracy": "FPTT/BPTT figure read during training (FPTT: after the weights were updated at every step of "
                                     "the very sequence with its label); not comparable with the others",
                  "train_accuracy": "the training data (a fixed subset of train_scored_samples) scored like the test set",
                  **({"weights": f"every accuracy and model.pt are of the per-batch moving average (decay {cfg.ema_decay}) of the "
                                 "evaluated weights; training went on from its own weights"} if cfg.ema_decay > 0 else {})},
    }
