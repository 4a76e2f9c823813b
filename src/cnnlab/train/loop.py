"""Mini-batch SGD for any task: :func:`train_one_epoch`, the epoch loop, :func:`train`.

Kept as a few small functions (torchvision's ``references/classification/train.py``).
Which examples a step sees is :mod:`cnnlab.train.batches`'s; what a checkpoint holds,
:mod:`cnnlab.train.state`'s; what the target, loss and figures are, the task's
(:mod:`cnnlab.train.tasks`); evaluation is :mod:`cnnlab.train.evaluation`'s one path.

Each step: draw the batch, augment it on the device with its own generator (8.3.4),
normalise, forward (under autocast with ``amp``), the task's loss, backward (scaled for
fp16), clip, SGD step at the schedule's learning rate. A NaN or infinite loss or weight
stops the run with a message and is never checkpointed: it is checked (one device sync
each) before every checkpoint, at each epoch's end, and whenever the progress display reads
the loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

import torch
from torch import nn
from tqdm.auto import tqdm

import cnnlab
from cnnlab import ops
from cnnlab.data import ImageDataset, load
from cnnlab.data.augment import Compose
from cnnlab.data.datasets import size_of
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.nn.classifier import takes_ids
from cnnlab.ops import KernelName
from cnnlab.train import augmentation, checkpoint, distributed, optim
from cnnlab.train.batches import Batches, Normalize, normalizer
from cnnlab.train.config import TrainConfig
from cnnlab.train.distributed import Context
from cnnlab.train.evaluation import Member, evaluate_members
from cnnlab.train.run import CHECKPOINT, RunFolder
from cnnlab.train.state import Diverged, EpochTotals, RunState, StepRecipe
from cnnlab.train.tasks import Task, adapt, task_for

if TYPE_CHECKING:
    from cnnlab.train.transfer import TransferReport  # it imports this module

AUGMENT_SEED = 0x5EED_A06         # the augmentation generator starts at seed ^ AUGMENT_SEED
CHECK_EVERY = 25                  # steps between progress-bar updates of the loss (a sync)
PLAIN_EVERY = 30.0                # seconds between progress lines when not on a terminal
PROGRESS_ENV = "CNNLAB_PROGRESS_SECONDS"


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here; use "
                          "device 'cpu' or 'auto'")
    return device


class Progress:
    """A pass's progress: tqdm's bar on a terminal (stderr); elsewhere (a log file under
    nohup, CI, a cluster's log) a plain line on stdout, beside the epoch lines, every
    ``every`` seconds (default ``$CNNLAB_PROGRESS_SECONDS``, else 30) with the figures the
    bar shows -- step, examples (``unit``) per second, running loss, time left -- so a stuck
    run and a slow one look different. ``enabled=False``: silent."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True,
                 every: float | None = None, bar: TextIO | None = None,
                 log: TextIO | None = None, unit: str = "img") -> None:
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.every = progress_seconds() if every is None else every
        bar_stream, self.log = bar or sys.stderr, log or sys.stdout
        terminal = enabled and _isatty(bar_stream)
        self.plain = enabled and not terminal
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False,
                        dynamic_ncols=True, file=bar_stream, disable=not terminal)
        self.start = self.last = time.perf_counter()
        self.images = self.steps = 0                  # done since this display started

    def advance(self, images: int, loss: Callable[[], float]) -> float | None:
        """One step of ``images`` done; returns the loss when it was read (a sync) to show
        it, else None."""
        self.done += 1
        self.steps += 1
        self.images += images
        if not self.bar.disable:
            self.bar.update()
            if self.done % CHECK_EVERY == 1:
                value = loss()
                self.bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                return value
            return None
        now = time.perf_counter()
        if self.plain and now - self.last >= self.every:
            self.last, value = now, loss()
            rate = self.images / max(now - self.start, 1e-9)
            left = (self.total - self.done) * (now - self.start) / self.steps
            print(f"{self.desc}: step {self.done}/{self.total} "
                  f"({100 * self.done / max(self.total, 1):.0f}%), {rate:,.0f} {self.unit}/s, "
                  f"loss {value:.4f}, {_clock(left)} left", file=self.log, flush=True)
            return value
        return None

    def close(self) -> None:
        self.bar.close()


def progress_seconds() -> float:
    """Seconds between plain progress lines: ``$CNNLAB_PROGRESS_SECONDS``, else 30."""
    text = os.environ.get(PROGRESS_ENV, "")
    if not text:
        return PLAIN_EVERY
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise CnnlabError(f"{PROGRESS_ENV}={text!r} must be a number of seconds >= 0 (e.g. "
                          f"{PLAIN_EVERY:g}); fix or unset it")
    return value


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):           # a closed or odd stream
        return False


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                    task: Task, normalize: Normalize, progress: Progress | None = None, *,
                    recipe: StepRecipe | None = None, totals: EpochTotals | None = None,
                    on_step: Callable[[EpochTotals], None] | None = None) -> dict[str, Any]:
    """One pass of mini-batch SGD; the task's training figures seen on the way (the mean
    ``loss``, and e.g. ``top1``) and the count ``n``.

    ``recipe``: augmentation, autocast, clipping, learning rates (default: plain steps).
    ``totals``: where a resumed pass stands (its first ``totals.step`` batches are skipped);
    updated in place. ``on_step(totals)`` runs after every step (the trainer checkpoints
    there). Raises :class:`Diverged` when the loss the progress display reads is not finite.
    """
    r = recipe or StepRecipe()
    t = totals or EpochTotals(batches.device)
    forward = model if r.forward is None else r.forward
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ctx = batches.context
    constrain = getattr(model, "constrain", None)
    model.train()
    for x, y in batches.iterate(t.step):
        if r.lr_at is not None:
            optim.set_lr(optimizer, r.lr_at(t.global_step))
        if r.augment is not None:
            x = r.augment(x, r.generator)
        # the task's inputs and target from the raw batch (a key per step and process)
        x, y = task.prepare(x, y, train=True, key=t.global_step * ctx.world_size + ctx.rank)
        x = normalize(x)
        if r.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with r.autocast(batches.device):
            out = forward(x)
        if r.amp is not None:
            out = _to_float(out)
        loss = task.loss(out, y)
        n = len(y)
        # sums, not floats: no sync
        t.add({"loss": loss.detach() * n, **task.train_sums(out, y)})
        if ctx.distributed:               # DDP averages gradients over the processes
            loss = loss * ctx.shard_weight(n, batches.global_size)
        optimizer.zero_grad(set_to_none=True)
        if r.scaler is not None:
            torch.autograd.backward(r.scaler.scale(loss))
            if r.clip_grad_norm:
                r.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, r.clip_grad_norm)
            r.scaler.step(optimizer)
            r.scaler.update()
        else:
            torch.autograd.backward(loss)
            if r.clip_grad_norm:
                nn.utils.clip_grad_norm_(params, r.clip_grad_norm)
            optimizer.step()
        if constrain is not None:
            constrain()                   # e.g. max-norm on the output weights (8.6.4)
        t.n += n
        t.step += 1
        t.global_step += 1
        if progress is not None:
            value = progress.advance(n, loss.item)
            # under torchrun only rank 0 looks: the processes stop together at the next
            # checkpoint or the epoch's end instead, where the check is collective
            if value is not None and not math.isfinite(value) and not ctx.distributed:
                raise Diverged(f"the training loss is {value}", t.step)
        if on_step is not None:
            on_step(t)
    sums = {k: distributed.all_sum(ctx, v) for k, v in sorted(t.sums.items())}
    count = int(distributed.all_sum(ctx, torch.tensor(t.n, device=batches.device)).item())
    return {**task.figures(sums, count), "n": count}


def _to_float(out: Any) -> Any:
    """Autocast's low-precision outputs (or tuple of outputs) as float32 for the loss."""
    if isinstance(out, tuple):
        return type(out)(*(o.float() for o in out)) if hasattr(out, "_fields") else tuple(
            o.float() for o in out)
    return out.float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_epochs(state: RunState, test_ds: ImageDataset, first: int, totals: EpochTotals,
               progress: bool, board: Any) -> dict[str, Any]:
    """Epochs ``first`` .. ``config.epochs`` of the run in ``state``, each logged and
    checkpointed; the last evaluation's sums."""
    config, batches, schedule, task = state.config, state.batches, state.schedule, state.task
    train_ds = batches.dataset
    normalize = normalizer(train_ds.mean, train_ds.std, state.device)
    member = Member(state.model, task, train_ds.mean, train_ds.std)
    shuffle = batches.generator
    if shuffle is None:
        raise CnnlabError("the training batches need a generator (they are shuffled)")
    every = config.checkpoint_every
    last: dict[str, Any] = {}
    for epoch in range(first, config.epochs + 1):
        lr = schedule.lr_at((epoch - 1) * len(batches))
        bar = Progress(len(batches), totals.step, f"epoch {epoch}/{config.epochs}", progress,
                       unit=train_ds.unit)
        _sync(state.device)
        t0 = time.perf_counter()

        def on_step(t: EpochTotals, epoch: int = epoch, t0: float = t0) -> None:
            if every and t.global_step % every == 0 and t.step < len(batches):
                # mid-epoch: the pass resumes from the order drawn at its start
                state.save(epoch, t, batches.epoch_state, time.perf_counter() - t0)

        try:
            fit = train_one_epoch(state.model, batches, state.optimizer, task, normalize, bar,
                                  recipe=state.recipe, totals=totals, on_step=on_step)
            state.check_finite(totals)            # before the epoch is evaluated and logged
        except Diverged as err:
            raise state.diverged(err, epoch) from None
        finally:
            bar.close()
        _sync(state.device)
        seconds = totals.seconds + time.perf_counter() - t0
        state.elapsed += seconds
        t1 = time.perf_counter()
        # each process evaluates its part with rank 0's batch-norm statistics: the model saved
        distributed.broadcast_buffers(state.context, state.model)
        test = evaluate_members([member], test_ds, config.eval_batch_size,
                                context=state.context, num_workers=config.num_workers)
        figures = test.members[0]
        record = {
            "epoch": epoch, "lr": lr, "lr_end": schedule.lr_at(totals.global_step - 1),
            **{f"train_{k}": v for k, v in fit.items() if k != "n"},
            "train_images": int(fit["n"]),
            **{f"test_{k}": v for k, v in figures.items() if k != "n"},
            "epoch_seconds": seconds, "images_per_second": len(train_ds) / max(seconds, 1e-9),
            "eval_seconds": time.perf_counter() - t1, "elapsed_seconds": state.elapsed,
        }
        state.folder.log(record)
        if board is not None:
            board.log(record)
        if task.monitor not in figures:
            raise CnnlabError(f"task {task.name!r} monitors {task.monitor!r}, which is not "
                              f"among its test figures ({', '.join(figures)}); set its "
                              "monitor to one of them")
        schedule.observe(figures[task.monitor])
        totals = EpochTotals(state.device, global_step=totals.global_step)
        try:
            state.save(epoch + 1, totals, shuffle.get_state(), 0.0)
        except Diverged as err:
            raise state.diverged(err, epoch) from None
        if progress:
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in fit.items() if k != "n")
            tested = ", ".join(f"{k} {_fmt(figures[k])}" for k in task.headline)
            tqdm.write(f"epoch {epoch}/{config.epochs}: train {shown} | test {tested} | "
                       f"lr {lr:g} | {seconds:.1f} s, {record['images_per_second']:,.0f} "
                       f"{train_ds.unit}/s")
        last = test.sums
    if not last:           # resumed after the last epoch's checkpoint: nothing left to train
        distributed.broadcast_buffers(state.context, state.model)
        last = evaluate_members([member], test_ds, config.eval_batch_size,
                                context=state.context, num_workers=config.num_workers).sums
    return last


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def load_splits(config: TrainConfig, model: nn.Module | None = None
                ) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of ``config.data``, sized for the model (``model``, else
    ``config.model``'s registry entry), with the run's data options: what :func:`train`
    trains and tests on."""
    size = _input_size(config, model)
    options = config.data_options()
    return (load(config.data, "train", config.data_dir, size=size, options=options),
            load(config.data, "test", config.data_dir, size=size, options=options))


def _input_size(config: TrainConfig, model: nn.Module | None) -> tuple[int, ...] | None:
    """The size the model wants its data loaded at (:func:`~cnnlab.data.datasets.size_of`
    its ``default_input_shape``, or the registry's): (H, W) of images, (T, H, W) of clips,
    (L,) of sentences."""
    if model is None:
        from cnnlab import models

        built: nn.Module = models.info(config.model).meta_model
    else:
        built = model
    shape: Sequence[int] | None = getattr(built, "default_input_shape", None)
    return None if shape is None else size_of(shape, takes_ids(built))


def train(config: TrainConfig, model: nn.Module | None = None, *, task: Task | None = None,
          progress: bool = True, overwrite: bool = False,
          datasets: tuple[ImageDataset, ImageDataset] | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train ``config.model`` (or the given ``model``) on ``config.data``; save the run folder.

    ``task``: what is learned (default: the model's declared task,
    :func:`~cnnlab.train.tasks.task_for`: :class:`~cnnlab.train.tasks.Classification` of the
    data set's classes, or an autoencoder's
    :class:`~cnnlab.train.reconstruction.Reconstruction`); see :mod:`cnnlab.train.tasks` for
    adding one.

    The run folder ``config.out`` gets ``config.json`` at the start, one line of
    ``metrics.jsonl`` per epoch, ``checkpoint.safetensors`` at each epoch's end (and every
    ``checkpoint_every`` steps) while the run is unfinished, and ``model.safetensors`` at the
    end, when the checkpoint is removed. A folder that already holds a trained model or an
    unfinished run is refused unless ``overwrite``. Returns (JSON-ready): the last epoch's
    test figures as ``test_<name>`` (classification: ``test_top1``, ``test_error``,
    ``test_top5``, ``test_loss``), ``summary`` (one line of them), ``history`` (the metrics
    records), ``seconds`` (wall time of the whole call), ``train_seconds`` and
    ``time_to_accuracy`` (``elapsed_seconds`` and ``test_top1`` per epoch, classification).

    ``config.folds`` > 1 (without ``datasets``): k-fold cross-validation instead, a run per
    fold in ``config.out`` (:func:`cnnlab.train.series.cross_validate`, whose result it
    returns: the folds' figures, their mean and std, ``run_dir``, ``seconds``); a folder of
    such a series is refused as a single run.

    ``resume``: continue the unfinished run in ``config.out`` from its checkpoint; ``config``
    must be the run's own (:func:`cnnlab.train.checkpoint.resume_config` reads it), except
    for ``epochs`` (not for cosine and onecycle, whose curve depends on it), ``device``,
    ``num_workers``, ``data_dir`` and ``eval_batch_size``. On the same device and thread
    count the result is bit-identical to a run that never stopped; pass the same ``model``
    class, ``task`` and ``datasets`` as the first call did.

    ``datasets``: (train, test) to use instead of loading ``config.data`` (a subset, or data
    of your own; already sized for the model).

    >>> result = train(TrainConfig("lenet5", epochs=1, out="/tmp/run"), progress=False)  # doctest: +SKIP
    """
    from cnnlab.train import series  # several runs of one setting in one folder

    if datasets is None and (config.folds > 1 or series.governs(config.out) is not None):
        # folds > 1: k-fold cross-validation (each fold a call here, with its datasets); a
        # series' folder is refused (cnnlab.train.series)
        return series.train_series(config, model, task=task, progress=progress,
                                   overwrite=overwrite, resume=resume)
    start = time.perf_counter()
    if progress:
        progress_seconds()                              # a bad $CNNLAB_PROGRESS_SECONDS: now
    ctx = distributed.context_from_env()                # torchrun's RANK and WORLD_SIZE
    device = ctx.device(resolve_device(config.device))
    if config.amp == "fp16" and device.type != "cuda":
        raise CnnlabError(f"amp='fp16' needs a CUDA GPU (its GradScaler), but training runs "
                          f"on {device}; use --amp bf16 on the CPU")
    if config.sync_bn and device.type != "cuda":
        raise CnnlabError(f"sync_bn=True needs CUDA GPUs (torch's SyncBatchNorm), but training "
                          f"runs on {device}; drop --sync-bn")
    # refuses before any slow work; without ``out``, a new folder (runs/MODEL-DATA[-N])
    run = RunFolder(config.out, overwrite, resume, writer=ctx.is_main,
                    default=config.default_out())
    try:
        state = checkpoint.load(run.path / CHECKPOINT) if resume else None
        if state is not None:
            saved = TrainConfig.from_dict(state["config"], source=str(run.path / CHECKPOINT))
            checkpoint.check_resume(saved, config, int(state["epoch"]), int(state["step"]))
        train_ds, test_ds = load_splits(config, model) if datasets is None else datasets
        _warn_batch_size(config, train_ds, ctx)
        augment = augmentation.build(config.augment, train_ds)
        cuda = [device.index or 0] if device.type == "cuda" else []
        ctx = distributed.setup(device)                     # joins the process group under torchrun
        try:
            kernels = ops.kernels(cast(KernelName, config.kernel))
            with torch.random.fork_rng(devices=cuda), kernels, _cudnn_autotune(device):
                torch.manual_seed(config.seed)              # initial weights and dropout
                model, transferred = setup_model(config, model, train_ds, fresh=state is None)
                if transferred is not None and progress and ctx.is_main:
                    tqdm.write(transferred.summary())
                if config.sync_bn and ctx.distributed:
                    model = sync_batch_norm(model)
                model.to(device)
                if config.channels_last:
                    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                if task is None:            # the model's declared task (classification)
                    task = task_for(model, config, max(train_ds.num_classes,
                                                       test_ds.num_classes), test_ds.classes)
                rs = _run_state(model, config, run, device, train_ds, augment, task, ctx)
                first, totals = (1, EpochTotals(device)) if state is None else rs.restore(state)
                run.start(config, state["records"] if state is not None else None)
                board = None
                if config.tensorboard and run.writer:
                    from cnnlab.train.tensorboard import TensorBoardLogger

                    board = TensorBoardLogger(run.path, resume=state is not None)
                with board or contextlib.nullcontext():
                    sums = run_epochs(rs, test_ds, first, totals, progress and ctx.is_main, board)
                # the outputs before the weights: a run killed in between is still unfinished,
                # and its resumption (no epoch left) evaluates once and writes both
                if run.writer:
                    task.write_outputs(run.path, sums, run.records, config.plots)
                run.save_model(model, {
                    "model": config.model, "data": config.data, "task": task.name,
                    "num_classes": train_ds.num_classes, "in_channels": train_ds.in_channels,
                    "input_shape": list(train_ds.shape), "model_args": train_ds.model_args(),
                    "data_metadata": train_ds.metadata(),
                    "classes": list(train_ds.classes), "mean": list(train_ds.mean),
                    "std": list(train_ds.std), "epochs": config.epochs,
                    "cnnlab_version": cnnlab.__version__})
                run.finish()
                distributed.barrier(ctx)                    # the folder is complete for everyone
        finally:
            distributed.teardown(ctx)
    except BaseException:
        run.abandon()                        # a run refused before it started: no folder
        raise
    history = run.records
    last = history[-1]
    tested = {k: v for k, v in last.items() if k.startswith("test_")}
    figures = {k[len("test_"):]: v for k, v in tested.items()}
    return {
        **tested, "summary": task.summary(figures),
        "history": history, "seconds": time.perf_counter() - start,
        "train_seconds": last["elapsed_seconds"], "run_dir": str(run.path),
        "time_to_accuracy": {"elapsed_seconds": [r["elapsed_seconds"] for r in history],
                             "test_top1": [r.get("test_top1") for r in history]},
    }


def setup_model(config: TrainConfig, model: nn.Module | None, train_ds: ImageDataset, *,
                fresh: bool) -> tuple[nn.Module, TransferReport | None]:
    """The model a run trains, on the CPU: ``model`` or one built from ``config.model`` for
    the data, adapted to ``--task``, checked against the data and, for a ``fresh`` run, given
    its word vectors; then ``--init`` and ``--freeze-until`` (what they did, or None)."""
    if model is None:
        from cnnlab import models

        model = models.create(config.model, num_classes=train_ds.num_classes,
                              **train_ds.model_args())
    model = adapt(model, config)     # --task: e.g. a classifier gets a box head
    _check_fits(model, train_ds)
    if fresh:
        train_ds.prepare_model(model)   # e.g. word vectors into the embedding
    return model, _transfer(model, config, fresh=fresh)


def check_setup(config: TrainConfig, model: nn.Module | None, train_ds: ImageDataset) -> None:
    """Refuse what :func:`setup_model` would refuse (missing or bad word vectors, a bad
    ``--init`` or ``--freeze-until``, a model that does not fit the data), without touching
    ``model`` or the random numbers: a series checks this before it writes its folder."""
    with torch.random.fork_rng(devices=[]):
        setup_model(config, None if model is None else copy.deepcopy(model), train_ds,
                    fresh=True)


def _run_state(model: nn.Module, config: TrainConfig, folder: RunFolder, device: torch.device,
               train_ds: ImageDataset, augment: Compose | None, task: Task,
               ctx: Context) -> RunState:
    """The optimizer, schedule, step recipe and shuffled batches of a new run."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"model {config.model!r} has no trainable parameters")
    optimizer = optim.make(params, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    batches = Batches(train_ds, config.batch_size, device, shuffle, config.num_workers, ctx)
    schedule = optim.Schedule(config, len(batches))
    recipe = StepRecipe(
        augment=augment,
        generator=torch.Generator().manual_seed(config.seed ^ AUGMENT_SEED),
        amp={"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp],
        scaler=torch.amp.GradScaler(device.type) if config.amp == "fp16" else None,
        clip_grad_norm=config.clip_grad_norm, channels_last=config.channels_last,
        forward=_forward(model, config, ctx, device), lr_at=schedule.lr_at)
    return RunState(model, config, folder, device, batches, optimizer, schedule, recipe, task)


def _warn_batch_size(config: TrainConfig, train_ds: ImageDataset, ctx: Context) -> None:
    """One line when a batch holds the whole training set: one step per epoch."""
    n = len(train_ds)
    if config.batch_size > n and ctx.is_main:
        smaller = 1 << max(0, (n // 4).bit_length() - 1)     # a power of two, 4+ steps an epoch
        print(f"warning: batch_size={config.batch_size} exceeds the {n:,} training examples, "
              f"so each epoch is one step of {n:,}; lower --batch-size (e.g. {smaller}) "
              "unless you mean full-batch gradient descent", file=sys.stderr)


def _forward(model: nn.Module, config: TrainConfig, ctx: Context, device: torch.device
             ) -> Callable[[torch.Tensor], Any] | None:
    """What a training step calls instead of ``model``: DistributedDataParallel around it
    under torchrun, compiled with ``compile``; None: the model itself."""
    forward: nn.Module | None = None
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        forward = cast(nn.Module, torch.compile(model if forward is None else forward))
    return forward


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device) -> Iterator[None]:
    """On a GPU, cuDNN's autotuner for the run (every batch has the same shape, so the
    fastest convolution algorithms are timed once); restored after."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with every batch-norm layer as torch's SyncBatchNorm (statistics over all
    processes' shares of a batch), in place; parameter and buffer names stay the same, so
    the weights save and load as before."""
    # torch leaves convert_sync_batchnorm untyped
    converted: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(  # type: ignore[no-untyped-call]
        model)
    return converted


def _transfer(model: nn.Module, config: TrainConfig, fresh: bool) -> TransferReport | None:
    """``--init`` (not on resume: the checkpoint holds the weights) and ``--freeze-until``;
    what they did (None: neither asked for)."""
    from cnnlab.train.transfer import apply_transfer

    return apply_transfer(model, config.init, config.freeze_until, resumed=not fresh)


def _check_fits(model: nn.Module, ds: ImageDataset) -> None:
    if takes_ids(model) != ds.tokens:
        wants, has = ("token ids", "pixels") if ds.tokens is False else ("pixels", "token ids")
        raise ShapeError(f"the model {type(model).__name__} takes {wants} but {ds.name} holds "
                         f"{has}; train a {'text' if ds.tokens else 'image'} model on it "
                         "(see `cnnlab models`)")
    if ds.tokens:
        return
    shape = getattr(model, "default_input_shape", None)
    if shape is not None and int(shape[0]) != ds.in_channels:
        raise ShapeError(f"the model takes {shape[0]}-channel images but {ds.name} has "
                         f"{ds.in_channels}; build it with in_channels={ds.in_channels}")
