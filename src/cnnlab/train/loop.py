"""Mini-batch SGD: augmentation, schedules, mixed precision, checkpoints, resumption.

Kept as a few small functions (torchvision's ``references/classification/train.py``):
:func:`train_one_epoch`, :func:`evaluate`, :func:`train`. Batches come from :class:`Batches`,
the one place that decides which examples a step sees.

Each step: draw the batch (in-process slices of tensors already on the device when
``num_workers=0``, the fast path for data sets that fit in memory; else a ``DataLoader`` with
that many persistent worker processes, ``prefetch_factor`` 4 and pinned memory on CUDA), augment
it on the device with its own generator (8.3.4), normalise, forward (under autocast with
``amp``), loss, backward (scaled for fp16), clip, SGD step at the schedule's learning rate.

A run is reproducible from its seed, and resumable to the bit: every ``checkpoint_every``
steps and at each epoch's end it saves the weights, the optimizer, the schedule, the running
sums of the epoch and the states of the three random streams (shuffling, augmentation, and
PyTorch's global one for dropout), so ``train(config, resume=True)`` continues a killed run
with the same remaining batches and random draws as if it had not stopped (same device and
thread count). A NaN or infinite loss or weight stops the run with a message, and is never
checkpointed: it is checked (one device sync each) before every checkpoint, at each epoch's
end, and every 25 steps where a progress bar shows the loss.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import cnnlab
from cnnlab import ops
from cnnlab.data import ImageDataset, load
from cnnlab.data.augment import Transform
from cnnlab.data.datasets import batch_collate
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.ops import KernelName
from cnnlab.train import augmentation, checkpoint, distributed, optim
from cnnlab.train.config import TrainConfig
from cnnlab.train.distributed import Context
from cnnlab.train.metrics import ConfusionMeter, per_class_accuracy, topk_correct
from cnnlab.train.run import CHECKPOINT, WEIGHTS, RunFolder, device_of, load_run, read_metadata

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Normalize = Callable[[torch.Tensor], torch.Tensor]

AUGMENT_SEED = 0x5EED_A06         # the augmentation generator starts at seed ^ AUGMENT_SEED
PREFETCH = 4                      # batches each DataLoader worker prepares ahead
CHECK_EVERY = 25                  # steps between progress-bar updates of the loss (a sync)


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here; use "
                          "device 'cpu' or 'auto'")
    return device


def loss_function(model: nn.Module) -> LossFn:
    """The model's own ``loss(output, target)`` when it has one (LeNet-5's RBF criterion),
    else cross-entropy on the scores."""
    own = getattr(model, "loss", None)
    return own if callable(own) else F.cross_entropy


def training_loss(model: nn.Module, label_smoothing: float = 0.0) -> LossFn:
    """:func:`loss_function`, with ``label_smoothing`` for cross-entropy; a model with its own
    loss is refused a smoothing it would not apply."""
    if not label_smoothing:
        return loss_function(model)
    if callable(getattr(model, "loss", None)):
        raise CnnlabError(f"label_smoothing={label_smoothing} applies to cross-entropy, but "
                          f"{type(model).__name__} trains with its own loss (model.loss); "
                          "drop --label-smoothing")
    return functools.partial(F.cross_entropy, label_smoothing=label_smoothing)


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Normalize:
    """x -> (x - mean) / std per channel, for (N, C, H, W) batches on ``device``."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - m) / s


class Batches:
    """(images, labels) batches of a data set on ``device``, shuffled by ``generator`` (a new
    order each pass) or in order when it is None.

    With ``num_workers=0`` the data set's tensors are moved to the device once and sliced;
    otherwise a DataLoader with that many persistent workers gathers the same batches. A lazy
    data set (a large image folder) always goes through a DataLoader, which decodes in this
    process when ``num_workers=0``, except on a GPU (see :func:`data_workers`).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None, num_workers: int = 0,
                 context: Context | None = None) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.generator = generator
        self.num_workers = num_workers = data_workers(dataset, num_workers, device)
        # data parallel: every process draws the same global batches and takes its share
        self.context = context or Context()
        self.global_size = 0                            # size of the last global batch drawn
        self.epoch_state: torch.Tensor | None = None   # generator state before this pass
        self.in_memory = num_workers == 0 and isinstance(dataset.images, torch.Tensor)
        if isinstance(dataset.images, torch.Tensor) and self.in_memory:
            self.images = dataset.images.to(device)
            self.labels = dataset.labels.to(device)
        # the DataLoader's worker seeds come from here, not from the global RNG (dropout's)
        self.worker_rng = torch.Generator().manual_seed(0)
        self._sampler = _PassSampler()
        self._loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        n, last = divmod(len(self.dataset), self.batch_size)
        return n + (last > 0 and last >= self.context.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate()

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A new pass, from its batch ``start`` on (a resumed pass skips the batches done,
        after drawing the same order from the same ``epoch_state``)."""
        n = len(self.dataset)
        if self.generator is None:
            order = torch.arange(n)
        else:
            self.epoch_state = self.generator.get_state()
            order = torch.randperm(n, generator=self.generator)
        chunks = order.split(self.batch_size)[start:]
        if self.context.distributed:
            # a last batch smaller than the number of processes would leave one without data
            world = self.context.world_size
            self._sizes = [len(c) for c in chunks if len(c) >= world]
            chunks = tuple(self.context.shard(c) for c in chunks if len(c) >= world)
        else:
            self._sizes = [len(c) for c in chunks]
        if self.in_memory:
            for size, idx in zip(self._sizes, chunks, strict=True):
                idx = idx.to(self.device)
                self.global_size = size
                yield self.images[idx], self.labels[idx]
            return
        self._sampler.batches = [c.tolist() for c in chunks]
        if self._loader is None:               # one loader: its workers live across passes
            cuda, workers = self.device.type == "cuda", self.num_workers
            # each batch is one indexing of the data set (ImageDataset.__getitems__), not a
            # list of examples to collate: a lazy folder decodes it in one go
            self._loader = DataLoader(self.dataset, batch_sampler=self._sampler,
                                      collate_fn=batch_collate,
                                      num_workers=workers, generator=self.worker_rng,
                                      pin_memory=cuda, prefetch_factor=PREFETCH if workers else None,
                                      persistent_workers=workers > 0)
        try:
            for size, (x, y) in zip(self._sizes, self._loader, strict=True):
                self.global_size = size
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except CnnlabError as err:
            raise _from_worker(err) from None


def _from_worker(err: CnnlabError) -> CnnlabError:
    """A DataLoader worker's error (a corrupt image of a lazy folder, say) as raised in the
    worker: PyTorch wraps its message in the worker's traceback."""
    lines = str(err).strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith("Caught "):
        return err
    last = lines[-1]
    message = last.split(": ", 1)[1] if last.startswith(("cnnlab.", "DataError")) else last
    return type(err)(message)


def data_workers(dataset: ImageDataset, num_workers: int = 0,
                 device: torch.device | str = "cpu") -> int:
    """``num_workers``, except for a lazy data set (a large image folder) left at 0 on a GPU:
    a worker process per spare core of this process's share of the machine (at most 8), so
    the CPU decodes while the GPU computes. On the CPU the model's own threads use every core
    already, and decoding in the training process is as fast (BENCHMARKS.md)."""
    if num_workers or not dataset.lazy or torch.device(device).type == "cpu":
        return num_workers
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))   # torchrun's
    return max(1, min(8, (os.cpu_count() or 2) // local - 1))


class _PassSampler:
    """The batch sampler of :class:`Batches`' DataLoader: this pass's index lists."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class StepRecipe:
    """How each SGD step runs besides the model and optimizer (the defaults: plain steps)."""

    augment: Transform | None = None            # on [0, 1] images, before normalisation
    generator: torch.Generator | None = None     # augmentation's random draws
    amp: torch.dtype | None = None               # autocast to this dtype
    scaler: torch.amp.GradScaler | None = None   # fp16 loss scaling
    clip_grad_norm: float = 0.0                  # max global gradient L2 norm; 0 = off
    channels_last: bool = False                  # NHWC inputs
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None   # e.g. the compiled model
    lr_at: Callable[[int], float] | None = None  # global step -> learning rate

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp)


@dataclass
class EpochTotals:
    """Where a pass stands: the batches done and the sums behind its mean loss and top-1
    (0-d tensors on the device: adding to them needs no sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    n: int = 0                      # examples seen
    step: int = 0                   # batches of this pass done
    global_step: int = 0            # batches of the run done
    seconds: float = 0.0            # training time of this pass before a resumption

    @classmethod
    def zeros(cls, device: torch.device, global_step: int = 0) -> EpochTotals:
        return cls(torch.zeros((), device=device),
                   torch.zeros((), dtype=torch.long, device=device), global_step=global_step)


class Diverged(CnnlabError):
    """The training loss, or a weight, is NaN or infinite."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"{what} by step {step}")
        self.what, self.step = what, step


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                    loss_fn: LossFn, normalize: Normalize, bar: tqdm | None = None, *,
                    recipe: StepRecipe | None = None, totals: EpochTotals | None = None,
                    on_step: Callable[[EpochTotals], None] | None = None) -> dict[str, float]:
    """One pass of mini-batch SGD; the mean training loss and top-1 accuracy seen on the way.

    ``recipe``: augmentation, autocast, clipping, learning rates (default: plain steps).
    ``totals``: where a resumed pass stands (its first ``totals.step`` batches are skipped);
    updated in place. ``on_step(totals)`` runs after every step (the trainer checkpoints
    there). Raises :class:`Diverged` when the loss the progress bar shows is not finite.
    """
    r = recipe or StepRecipe()
    t = totals or EpochTotals.zeros(batches.device)
    forward = model if r.forward is None else r.forward
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    for x, y in batches.iterate(t.step):
        if r.lr_at is not None:
            optim.set_lr(optimizer, r.lr_at(t.global_step))
        if r.augment is not None:
            x = r.augment(x, r.generator)
        x = normalize(x)
        if r.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with r.autocast(batches.device):
            out = forward(x)                                    # N x classes
        if r.amp is not None:
            out = _to_float(out)
        loss = loss_fn(out, y)
        t.loss_sum.add_(loss.detach(), alpha=len(y))          # no sync: tensors, not floats
        # GoogLeNet's auxiliary heads: a tuple in training, the main scores first
        scores = out[0] if isinstance(out, tuple) else out
        if batches.context.distributed:     # DDP averages gradients over the processes
            loss = loss * batches.context.shard_weight(len(y), batches.global_size)
        optimizer.zero_grad(set_to_none=True)
        if r.scaler is not None:
            r.scaler.scale(loss).backward()
            if r.clip_grad_norm:
                r.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, r.clip_grad_norm)
            r.scaler.step(optimizer)
            r.scaler.update()
        else:
            loss.backward()
            if r.clip_grad_norm:
                nn.utils.clip_grad_norm_(params, r.clip_grad_norm)
            optimizer.step()
        t.correct.add_(scores.detach().argmax(dim=1).eq(y).sum())
        t.n += len(y)
        t.step += 1
        t.global_step += 1
        if bar is not None:
            bar.update()
            if t.step % CHECK_EVERY == 1 and not bar.disable:
                value = loss.item()                            # a sync: not every step
                # under torchrun only rank 0 looks: the processes stop together at the next
                # checkpoint or the epoch's end instead, where the check is collective
                if not math.isfinite(value) and not batches.context.distributed:
                    raise Diverged(f"the training loss is {value}", t.step)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if on_step is not None:
            on_step(t)
    ctx = batches.context
    loss_sum, correct = distributed.all_sum(ctx, t.loss_sum), distributed.all_sum(ctx, t.correct)
    n = int(distributed.all_sum(ctx, torch.tensor(t.n, device=batches.device)).item())
    return {"loss": loss_sum.item() / max(n, 1), "top1": correct.item() / max(n, 1),
            "n": float(n)}


def _to_float(out: Any) -> Any:
    """Autocast's low-precision scores (or tuple of scores) as float32 for the loss."""
    return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = 500,
             loss_fn: LossFn | None = None, *, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, meter: ConfusionMeter | None = None,
             context: Context | None = None, num_workers: int = 0) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy of ``model`` on ``dataset``, and the count ``n``.

    ``context``: under torchrun, each process evaluates its own contiguous part of the data
    set and the sums (and the meter's counts) are added up over the processes, so every
    process returns the figures of the whole set. ``num_workers``: DataLoader processes for a
    lazy data set (see :func:`data_workers`); an in-memory one is sliced on the device.

    ``meter``: also accumulate the confusion matrix (true class x predicted class) there.
    Inputs are normalised with ``mean``/``std`` (default: the data set's own statistics; pass
    the training set's when evaluating on another set). ``loss_fn`` defaults to the model's
    own ``loss`` method, else cross-entropy. The model's train/eval mode is restored after.
    """
    if len(dataset) == 0:
        raise CnnlabError(f"cannot evaluate on an empty data set ({dataset!r})")
    device = device_of(model)
    loss_fn = loss_fn or loss_function(model)
    normalize = normalizer(dataset.mean if mean is None else mean,
                           dataset.std if std is None else std, device)
    ctx = context or Context()
    n = len(dataset)
    part = dataset if not ctx.distributed else dataset.subset(
        slice(ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size))
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    top1 = torch.zeros((), dtype=torch.long, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    try:
        # workers decode a lazy set; an in-memory one is sliced on the device
        batches = Batches(part, batch_size, device, num_workers=num_workers if part.lazy else 0)
        for x, y in batches if len(part) else ():
            out = model(normalize(x))
            total_loss += loss_fn(out, y) * len(y)
            c1, c5 = topk_correct(out, y, (1, 5))
            top1 += c1
            top5 += c5
            if meter is not None:
                meter.update(out, y)
    finally:
        model.train(was_training)
    if ctx.distributed:
        total_loss, top1, top5 = (distributed.all_sum(ctx, v) for v in (total_loss, top1, top5))
        if meter is not None:
            meter.reduce(functools.partial(distributed.all_sum, ctx), device)
    return {"loss": total_loss.item() / n, "top1": top1.item() / n, "top5": top5.item() / n,
            "n": n}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input_size(config: TrainConfig, model: nn.Module | None) -> tuple[int, int] | None:
    """(H, W) the model wants: its ``default_input_shape``, or the registry's."""
    if model is None:
        from cnnlab import models

        shape: Sequence[int] | None = models.info(config.model).input_shape
    else:
        shape = getattr(model, "default_input_shape", None)
    return (int(shape[1]), int(shape[2])) if shape is not None else None


def train(config: TrainConfig, model: nn.Module | None = None, *, progress: bool = True,
          overwrite: bool = False, datasets: tuple[ImageDataset, ImageDataset] | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train ``config.model`` (or the given ``model``) on ``config.data``; save the run folder.

    The run folder ``config.out`` gets ``config.json`` at the start, one line of
    ``metrics.jsonl`` per epoch, ``checkpoint.safetensors`` at each epoch's end (and every
    ``checkpoint_every`` steps) while the run is unfinished, and ``model.safetensors`` at the
    end, when the checkpoint is removed. A folder that already holds a trained model or an
    unfinished run is refused unless ``overwrite``. Returns (JSON-ready): final ``test_top1``,
    ``test_error``, ``test_top5``, ``test_loss``, ``history`` (the metrics records),
    ``seconds`` (wall time of the whole call), ``train_seconds`` and ``time_to_accuracy``
    (``elapsed_seconds`` and ``test_top1`` per epoch).

    ``resume``: continue the unfinished run in ``config.out`` from its checkpoint; ``config``
    must be the run's own (:func:`cnnlab.train.checkpoint.resume_config` reads it), except
    for ``epochs`` (not for cosine and onecycle, whose curve depends on it), ``device``,
    ``num_workers``, ``data_dir`` and ``eval_batch_size``. On the same device and thread
    count the result is bit-identical to a run that never stopped; pass the same ``model``
    class and ``datasets`` as the first call did.

    ``datasets``: (train, test) to use instead of loading ``config.data`` (a subset, or data
    of your own; already sized for the model).

    >>> result = train(TrainConfig("lenet5", epochs=1, out="/tmp/run"), progress=False)  # doctest: +SKIP
    """
    start = time.perf_counter()
    ctx = distributed.context_from_env()                # torchrun's RANK and WORLD_SIZE
    # refuses before any slow work
    run = RunFolder(config.out or config.default_out(), overwrite, resume, writer=ctx.is_main)
    state = checkpoint.load(run.path / CHECKPOINT) if resume else None
    if state is not None:
        checkpoint.check_resume(TrainConfig.from_dict(state["config"]), config,
                                int(state["epoch"]), int(state["step"]))
    device = ctx.device(resolve_device(config.device))
    if config.amp == "fp16" and device.type != "cuda":
        raise CnnlabError(f"amp='fp16' needs a CUDA GPU (its GradScaler), but training runs "
                          f"on {device}; use --amp bf16 on the CPU")
    if config.sync_bn and device.type != "cuda":
        raise CnnlabError(f"sync_bn=True needs CUDA GPUs (torch's SyncBatchNorm), but training "
                          f"runs on {device}; drop --sync-bn")
    if datasets is None:
        size = _input_size(config, model)
        train_ds = load(config.data, "train", config.data_dir, size=size)
        test_ds = load(config.data, "test", config.data_dir, size=size)
    else:
        train_ds, test_ds = datasets
    augment = augmentation.build(config.augment, train_ds)
    cuda = [device.index or 0] if device.type == "cuda" else []
    ctx = distributed.setup(device)                     # joins the process group under torchrun
    try:
        with torch.random.fork_rng(devices=cuda), ops.kernels(cast(KernelName, config.kernel)), \
                _cudnn_autotune(device):
            torch.manual_seed(config.seed)              # initial weights and dropout
            if model is None:
                from cnnlab import models

                model = models.create(config.model, num_classes=train_ds.num_classes,
                                      in_channels=train_ds.in_channels)
            _check_fits(model, train_ds)
            _transfer(model, config, fresh=state is None)
            if config.sync_bn and ctx.distributed:
                model = sync_batch_norm(model)
            model.to(device)
            if config.channels_last:
                model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            history, meter = _fit(model, config, run, (train_ds, test_ds), device, augment,
                                  progress, state, ctx)
            c, h, w = train_ds.image_shape
            run.save_model(model, {
                "model": config.model, "data": config.data, "num_classes": train_ds.num_classes,
                "in_channels": c, "input_shape": [c, h, w], "classes": list(train_ds.classes),
                "mean": list(train_ds.mean), "std": list(train_ds.std),
                "epochs": config.epochs, "cnnlab_version": cnnlab.__version__})
            if run.writer:
                _write_outputs(run, config, meter, list(test_ds.classes))
            run.finish()
            distributed.barrier(ctx)                    # the folder is complete for everyone
    finally:
        distributed.teardown(ctx)
    last = history[-1]
    return {
        "test_top1": last["test_top1"], "test_error": last["test_error"],
        "test_top5": last["test_top5"], "test_loss": last["test_loss"],
        "history": history, "seconds": time.perf_counter() - start,
        "train_seconds": last["elapsed_seconds"], "run_dir": str(run.path),
        "time_to_accuracy": {"elapsed_seconds": [r["elapsed_seconds"] for r in history],
                             "test_top1": [r["test_top1"] for r in history]},
    }


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
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _transfer(model: nn.Module, config: TrainConfig, fresh: bool) -> None:
    """``--init`` (not on resume: the checkpoint holds the weights) and ``--freeze-until``."""
    from cnnlab.train.transfer import freeze_until, load_pretrained

    if config.init and fresh:
        load_pretrained(model, config.init)     # the head stays fresh for another class count
    if config.freeze_until:
        freeze_until(model, config.freeze_until)


def _write_outputs(run: RunFolder, config: TrainConfig, meter: ConfusionMeter,
                   classes: list[str]) -> None:
    """The last evaluation's confusion matrix (JSON) and, with ``plots``, the PNG plots."""
    from cnnlab.train.metrics import write_confusion

    names = classes if len(classes) == meter.matrix.shape[0] else None
    write_confusion(run.path, meter.matrix, names)
    if config.plots:
        from cnnlab.train.plots import write_plots

        write_plots(run.path, run.records, meter.matrix, names)


def _check_fits(model: nn.Module, ds: ImageDataset) -> None:
    shape = getattr(model, "default_input_shape", None)
    if shape is not None and int(shape[0]) != ds.in_channels:
        raise ShapeError(f"the model takes {shape[0]}-channel images but {ds.name} has "
                         f"{ds.in_channels}; build it with in_channels={ds.in_channels}")


class _Run:
    """The state of one training run that a checkpoint holds, and its saving and restoring."""

    def __init__(self, model: nn.Module, config: TrainConfig, folder: RunFolder,
                 device: torch.device, batches: Batches, optimizer: torch.optim.Optimizer,
                 schedule: optim.Schedule, recipe: StepRecipe) -> None:
        self.model, self.config, self.folder, self.device = model, config, folder, device
        self.batches, self.optimizer, self.schedule, self.recipe = (batches, optimizer,
                                                                     schedule, recipe)
        self.elapsed = 0.0                     # training seconds of the finished epochs
        self.saved: tuple[int, int] | None = None   # (epoch, step) of the last checkpoint

    def rng(self, shuffle_state: torch.Tensor | None) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state()}
        if shuffle_state is not None:
            states["shuffle"] = shuffle_state
        if self.recipe.generator is not None:
            states["augment"] = self.recipe.generator.get_state()
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def save(self, epoch: int, t: EpochTotals, shuffle_state: torch.Tensor | None,
             seconds: float) -> None:
        """Checkpoint: continue at batch ``t.step`` of ``epoch``, whose pass started from
        ``shuffle_state`` and has trained ``seconds`` since ``t``'s last resumption. Refused
        (:class:`Diverged`) when the loss or a weight is not finite. Under torchrun it
        holds each process's sums of the epoch too, which each takes back on resumption."""
        loss, correct, n = self.epoch_sums(t)
        self.check_finite(t, loss.sum())
        ranks = {"ranks": {"loss_sum": loss, "correct": correct, "n": n}}
        state = {
            "config": self.config.to_dict(), "epoch": epoch, "step": t.step,
            "global_step": t.global_step, "elapsed": self.elapsed,
            "records": self.folder.records,
            "totals": {"loss_sum": loss.sum(), "correct": correct.sum(), "n": int(n.sum()),
                       "seconds": t.seconds + seconds,
                       **(ranks if self.batches.context.distributed else {})},
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": {} if self.recipe.scaler is None else self.recipe.scaler.state_dict(),
            "schedule": self.schedule.state_dict(), "rng": self.rng(shuffle_state),
        }
        path = self.folder.path / CHECKPOINT
        if not self.folder.writer:            # another process (rank 0) writes it
            self.saved = (epoch, t.step)
            return
        try:
            checkpoint.save(path, state)
        except OSError as err:
            kept = (f"the checkpoint of epoch {self.saved[0]}, step {self.saved[1]} is kept"
                    if self.saved else "no checkpoint was kept")
            raise CnnlabError(f"could not write the checkpoint {path}: {err.strerror or err}; "
                              f"{kept}; free space, then `cnnlab train --resume "
                              f"{self.folder.path}`") from err
        self.saved = (epoch, t.step)

    def restore(self, state: dict[str, Any]) -> tuple[int, EpochTotals]:
        """Load a checkpoint; the epoch to continue and its totals so far."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.recipe.scaler is not None:
            self.recipe.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state["schedule"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.recipe.generator is not None:
            self.recipe.generator.set_state(rng["augment"])
        if self.batches.generator is not None and "shuffle" in rng:
            self.batches.generator.set_state(rng["shuffle"])
        s = state["totals"]
        t = EpochTotals.zeros(self.device, int(state["global_step"]))
        t.step, t.seconds = int(state["step"]), float(s["seconds"])
        ctx = self.batches.context
        ranks = s.get("ranks")
        if ctx.distributed and ranks is not None and len(ranks["n"]) == ctx.world_size:
            # each process continues its own sums: the epoch's figures add up in the same
            # order as in a run that never stopped
            r = ctx.rank
            t.loss_sum = ranks["loss_sum"][r].to(self.device).clone()
            t.correct = ranks["correct"][r].to(self.device).clone()
            t.n = int(ranks["n"][r])
        elif ctx.is_main:                      # the sums of all processes, counted once
            t.loss_sum, t.correct = s["loss_sum"].to(self.device), s["correct"].to(self.device)
            t.n = int(s["n"])
        self.elapsed = float(state["elapsed"])
        self.saved = (int(state["epoch"]), t.step)
        return int(state["epoch"]), t

    def epoch_sums(self, t: EpochTotals) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each process's loss sum, correct count and examples so far in the pass, in rank
        order (one entry for one process; a collective under torchrun: every process calls
        it at the same step)."""
        ctx = self.batches.context
        n = torch.tensor(t.n, device=self.device)
        loss, correct, count = (distributed.all_gather(ctx, v) for v in (t.loss_sum, t.correct, n))
        return loss, correct, count

    def check_finite(self, t: EpochTotals, loss_sum: torch.Tensor | None = None) -> None:
        """Raise :class:`Diverged` if the epoch's loss sum (``loss_sum``: the one over all
        processes; default: computed here) or a weight is NaN or infinite (one sync: a
        checkpoint and an epoch's end call it, not every step)."""
        loss = (self.epoch_sums(t)[0].sum() if loss_sum is None else loss_sum).item()
        if not math.isfinite(loss):
            raise Diverged(f"the training loss is {loss}", t.step)
        params = [p.detach() for p in self.model.parameters()]
        if params and not math.isfinite(nn.utils.get_total_norm(params).item()):
            raise Diverged("a weight is infinite or NaN (the loss was finite)", t.step)


def _fit(model: nn.Module, config: TrainConfig, folder: RunFolder,
         data: tuple[ImageDataset, ImageDataset], device: torch.device,
         augment: Transform | None, progress: bool, state: dict[str, Any] | None,
         ctx: Context | None = None) -> tuple[list[dict[str, Any]], ConfusionMeter]:
    """The epochs; the metrics records and the last evaluation's confusion matrix."""
    ctx = ctx or Context()
    progress = progress and ctx.is_main
    train_ds, test_ds = data
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"model {config.model!r} has no trainable parameters")
    optimizer = optim.sgd(params, config)
    loss_fn = training_loss(model, config.label_smoothing)
    eval_loss = loss_function(model)              # test loss: no label smoothing
    normalize = normalizer(train_ds.mean, train_ds.std, device)
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
    run = _Run(model, config, folder, device, batches, optimizer, schedule, recipe)
    first, totals = 1, EpochTotals.zeros(device)
    if state is not None:
        first, totals = run.restore(state)
    folder.start(config, state["records"] if state is not None else None)
    meter = ConfusionMeter(max(test_ds.num_classes, _num_outputs(model, test_ds)))
    board = None
    if config.tensorboard and folder.writer:
        from cnnlab.train.tensorboard import TensorBoardLogger

        board = TensorBoardLogger(folder.path, resume=state is not None)
    with board or contextlib.nullcontext():
        _epochs(model, config, folder, (train_ds, test_ds), device, progress, run, batches,
                (first, totals), (loss_fn, eval_loss, normalize), meter, board)
    return folder.records, meter


def _per_class(meter: ConfusionMeter) -> list[float | None]:
    """Top-1 accuracy of each true class (None for a class absent from the test set)."""
    return [None if math.isnan(v) else v for v in per_class_accuracy(meter.matrix).tolist()]


def _num_outputs(model: nn.Module, ds: ImageDataset) -> int:
    return int(getattr(model, "num_classes", ds.num_classes))


def _forward(model: nn.Module, config: TrainConfig, ctx: Context, device: torch.device
             ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What a training step calls instead of ``model``: DistributedDataParallel around it
    under torchrun, compiled with ``compile``; None: the model itself."""
    forward: nn.Module | None = None
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        forward = cast(nn.Module, torch.compile(model if forward is None else forward))
    return None if forward is None else cast(Callable[[torch.Tensor], torch.Tensor], forward)


def _epochs(model: nn.Module, config: TrainConfig, folder: RunFolder,
            data: tuple[ImageDataset, ImageDataset], device: torch.device, progress: bool,
            run: _Run, batches: Batches, start: tuple[int, EpochTotals],
            losses: tuple[LossFn, LossFn, Normalize], meter: ConfusionMeter,
            board: Any) -> None:
    train_ds, test_ds = data
    first, totals = start
    loss_fn, eval_loss, normalize = losses
    optimizer, schedule, recipe = run.optimizer, run.schedule, run.recipe
    shuffle = batches.generator
    assert shuffle is not None
    every = config.checkpoint_every

    for epoch in range(first, config.epochs + 1):
        lr = schedule.lr_at((epoch - 1) * len(batches))
        with tqdm(total=len(batches), initial=totals.step, desc=f"epoch {epoch}/{config.epochs}",
                  unit="batch", leave=False, dynamic_ncols=True,
                  disable=None if progress else True) as bar:
            _sync(device)
            t0 = time.perf_counter()

            def on_step(t: EpochTotals, epoch: int = epoch, t0: float = t0) -> None:
                if every and t.global_step % every == 0 and t.step < len(batches):
                    # mid-epoch: the pass resumes from the order drawn at its start
                    run.save(epoch, t, batches.epoch_state, time.perf_counter() - t0)

            try:
                fit = train_one_epoch(model, batches, optimizer, loss_fn, normalize, bar,
                                      recipe=recipe, totals=totals, on_step=on_step)
                run.check_finite(totals)           # before the epoch is evaluated and logged
            except Diverged as err:
                raise _diverged(err, epoch, config, run) from None
            _sync(device)
            seconds = totals.seconds + time.perf_counter() - t0
        run.elapsed += seconds
        t1 = time.perf_counter()
        meter.reset()
        # each process evaluates its part with rank 0's batch-norm statistics: the model saved
        distributed.broadcast_buffers(batches.context, model)
        test = evaluate(model, test_ds, config.eval_batch_size, eval_loss,
                        mean=train_ds.mean, std=train_ds.std, meter=meter,
                        context=batches.context, num_workers=config.num_workers)
        record = {
            "epoch": epoch, "lr": lr, "lr_end": schedule.lr_at(totals.global_step - 1),
            "train_loss": fit["loss"], "train_top1": fit["top1"], "train_images": int(fit["n"]),
            "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
            "test_error": 1.0 - test["top1"], "test_top5_error": 1.0 - test["top5"],
            "test_per_class_top1": _per_class(meter),
            "epoch_seconds": seconds, "images_per_second": len(train_ds) / max(seconds, 1e-9),
            "eval_seconds": time.perf_counter() - t1, "elapsed_seconds": run.elapsed,
        }
        folder.log(record)
        if board is not None:
            board.log(record)
        schedule.observe(1.0 - test["top1"])
        totals = EpochTotals.zeros(device, totals.global_step)
        try:
            run.save(epoch + 1, totals, shuffle.get_state(), 0.0)
        except Diverged as err:
            raise _diverged(err, epoch, config, run) from None
        if progress:
            tqdm.write(f"epoch {epoch}/{config.epochs}: train loss {fit['loss']:.4f} "
                       f"top-1 {100 * fit['top1']:.2f}% | test loss {test['loss']:.4f} "
                       f"top-1 {100 * test['top1']:.2f}% top-5 {100 * test['top5']:.2f}% | "
                       f"lr {lr:g} | {seconds:.1f} s, {record['images_per_second']:,.0f} img/s")


def _diverged(err: Diverged, epoch: int, config: TrainConfig, run: _Run) -> CnnlabError:
    kept = ("no checkpoint was written" if run.saved is None else
            f"the last good checkpoint (epoch {run.saved[0]}, step {run.saved[1]}) is kept")
    return CnnlabError(f"training diverged: {err.what} in epoch {epoch} (by step {err.step}); "
                       f"lower the learning rate (lr={config.lr}) or "
                       f"clip the gradients (--clip-grad-norm); {kept}")


def evaluate_run(run_dir: str | os.PathLike[str], data: str | None = None,
                 data_dir: str | None = None, split: str = "test", batch_size: int = 500
                 ) -> dict[str, Any]:
    """Evaluate a saved run on a data set (default: the one it was trained on).

    Images are sized and normalised as in training (the run's input shape, mean and std).
    """
    model, config = load_run(run_dir)
    meta = read_metadata(Path(run_dir) / WEIGHTS)
    name = data or config.data
    if data_dir is None and name == config.data:
        data_dir = config.data_dir
    c, h, w = (int(v) for v in meta["input_shape"])
    ds = load(name, split, data_dir, size=(h, w))
    if ds.in_channels != c:
        raise ShapeError(f"the run's model takes {c}-channel images but {name} has "
                         f"{ds.in_channels}; evaluate it on a {c}-channel data set")
    if ds.num_classes > int(meta["num_classes"]):
        raise ShapeError(f"{name} has {ds.num_classes} classes but the run's model tells "
                         f"{meta['num_classes']} apart; evaluate it on a data set with as many")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnnlabError(f"batch_size must be a positive int, got {batch_size!r}")
    model.to(resolve_device("auto"))
    result = evaluate(model, ds, batch_size, mean=meta["mean"], std=meta["std"])
    return {"run": str(run_dir), "model": config.model, "data": name, "split": split,
            **result, "error": 1.0 - result["top1"]}
