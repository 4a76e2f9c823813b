"""Mini-batch SGD with momentum and weight decay, a step schedule, and evaluation.

Kept as a few small functions (torchvision's ``references/classification/train.py``):
:func:`train_one_epoch`, :func:`evaluate`, :func:`train`. Batches come from :class:`Batches`,
the one place that decides which examples a step sees (the seam for distributed sampling and
augmentation later).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
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
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.ops import KernelName
from cnnlab.train.config import TrainConfig
from cnnlab.train.metrics import topk_correct
from cnnlab.train.run import WEIGHTS, RunFolder, device_of, load_run, read_metadata

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Normalize = Callable[[torch.Tensor], torch.Tensor]


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


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Normalize:
    """x -> (x - mean) / std per channel, for (N, C, H, W) batches on ``device``."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - m) / s


class Batches:
    """(images, labels) batches of a data set on ``device``, shuffled by ``generator`` (a new
    order each pass) or in order when it is None.

    With ``num_workers=0`` the data set's tensors are moved to the device once and sliced;
    otherwise a DataLoader with that many workers gathers the same batches.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None, num_workers: int = 0) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.generator, self.num_workers = generator, num_workers
        if num_workers == 0:
            self.images = dataset.images.to(device)
            self.labels = dataset.labels.to(device)
        # the DataLoader's worker seeds come from here, not from the global RNG (dropout's)
        self.worker_rng = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = (torch.arange(n) if self.generator is None
                 else torch.randperm(n, generator=self.generator))
        chunks = order.split(self.batch_size)
        if self.num_workers == 0:
            for idx in chunks:
                idx = idx.to(self.device)
                yield self.images[idx], self.labels[idx]
            return
        loader = DataLoader(self.dataset, batch_sampler=[c.tolist() for c in chunks],
                            num_workers=self.num_workers, generator=self.worker_rng,
                            pin_memory=self.device.type == "cuda")
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                    loss_fn: LossFn, normalize: Normalize, bar: tqdm | None = None
                    ) -> dict[str, float]:
    """One pass of mini-batch SGD; the mean training loss and top-1 accuracy seen on the way."""
    model.train()
    total_loss = torch.zeros((), device=batches.device)
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    n = 0
    for step, (x, y) in enumerate(batches):
        out = model(normalize(x))                      # N x classes
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)
        correct += out.detach().argmax(dim=1).eq(y).sum()
        n += len(y)
        if bar is not None:
            bar.update()
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return {"loss": total_loss.item() / n, "top1": correct.item() / n, "n": float(n)}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = 500,
             loss_fn: LossFn | None = None, *, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy of ``model`` on ``dataset``, and the count ``n``.

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
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    top1 = torch.zeros((), dtype=torch.long, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    try:
        for x, y in Batches(dataset, batch_size, device):
            out = model(normalize(x))
            total_loss += loss_fn(out, y) * len(y)
            c1, c5 = topk_correct(out, y, (1, 5))
            top1 += c1
            top5 += c5
    finally:
        model.train(was_training)
    n = len(dataset)
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
          overwrite: bool = False,
          datasets: tuple[ImageDataset, ImageDataset] | None = None) -> dict[str, Any]:
    """Train ``config.model`` (or the given ``model``) on ``config.data``; save the run folder.

    The run folder ``config.out`` gets ``config.json`` at the start, one line of
    ``metrics.jsonl`` per epoch, and ``model.safetensors`` at the end. A folder that already
    holds a trained model is refused unless ``overwrite``. Returns (JSON-ready): final
    ``test_top1``, ``test_error``, ``test_top5``, ``test_loss``, ``history`` (the metrics
    records), ``seconds`` (wall time of the whole call), ``train_seconds`` and
    ``time_to_accuracy`` (``elapsed_seconds`` and ``test_top1`` per epoch).

    ``datasets``: (train, test) to use instead of loading ``config.data`` (a subset, or data
    of your own; already sized for the model).

    >>> result = train(TrainConfig("lenet5", epochs=1, out="/tmp/run"), progress=False)  # doctest: +SKIP
    """
    start = time.perf_counter()
    run = RunFolder(config.out or "", overwrite)          # refuses before any slow work
    device = resolve_device(config.device)
    if datasets is None:
        size = _input_size(config, model)
        train_ds = load(config.data, "train", config.data_dir, size=size)
        test_ds = load(config.data, "test", config.data_dir, size=size)
    else:
        train_ds, test_ds = datasets
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), ops.kernels(cast(KernelName, config.kernel)):
        torch.manual_seed(config.seed)                  # initial weights and dropout
        if model is None:
            from cnnlab import models

            model = models.create(config.model, num_classes=train_ds.num_classes,
                                  in_channels=train_ds.in_channels)
        _check_fits(model, train_ds)
        model.to(device)
        history = _fit(model, config, run, train_ds, test_ds, device, progress)
        c, h, w = train_ds.image_shape
        run.save_model(model, {
            "model": config.model, "data": config.data, "num_classes": train_ds.num_classes,
            "in_channels": c, "input_shape": [c, h, w], "classes": list(train_ds.classes),
            "mean": list(train_ds.mean), "std": list(train_ds.std),
            "epochs": config.epochs, "cnnlab_version": cnnlab.__version__})
    last = history[-1]
    return {
        "test_top1": last["test_top1"], "test_error": last["test_error"],
        "test_top5": last["test_top5"], "test_loss": last["test_loss"],
        "history": history, "seconds": time.perf_counter() - start,
        "train_seconds": last["elapsed_seconds"], "run_dir": str(run.path),
        "time_to_accuracy": {"elapsed_seconds": [r["elapsed_seconds"] for r in history],
                             "test_top1": [r["test_top1"] for r in history]},
    }


def _check_fits(model: nn.Module, ds: ImageDataset) -> None:
    shape = getattr(model, "default_input_shape", None)
    if shape is not None and int(shape[0]) != ds.in_channels:
        raise ShapeError(f"the model takes {shape[0]}-channel images but {ds.name} has "
                         f"{ds.in_channels}; build it with in_channels={ds.in_channels}")


def _fit(model: nn.Module, config: TrainConfig, run: RunFolder, train_ds: ImageDataset,
         test_ds: ImageDataset, device: torch.device, progress: bool) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError(f"model {config.model!r} has no trainable parameters")
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step, config.lr_gamma)
                 if config.lr_step else None)
    loss_fn = loss_function(model)
    normalize = normalizer(train_ds.mean, train_ds.std, device)
    shuffle = torch.Generator().manual_seed(config.seed)
    batches = Batches(train_ds, config.batch_size, device, shuffle, config.num_workers)
    run.start(config)
    elapsed = 0.0                                           # seconds of training, no evaluation
    for epoch in range(1, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        with tqdm(total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                  leave=False, dynamic_ncols=True, disable=None if progress else True) as bar:
            _sync(device)
            t0 = time.perf_counter()
            fit = train_one_epoch(model, batches, optimizer, loss_fn, normalize, bar)
            _sync(device)
            seconds = time.perf_counter() - t0
        if not math.isfinite(fit["loss"]):
            raise CnnlabError(f"training diverged: the training loss is {fit['loss']} in epoch "
                              f"{epoch}; lower the learning rate (lr={config.lr})")
        elapsed += seconds
        t1 = time.perf_counter()
        test = evaluate(model, test_ds, config.eval_batch_size, loss_fn,
                        mean=train_ds.mean, std=train_ds.std)
        record = {
            "epoch": epoch, "lr": lr,
            "train_loss": fit["loss"], "train_top1": fit["top1"],
            "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
            "test_error": 1.0 - test["top1"], "test_top5_error": 1.0 - test["top5"],
            "epoch_seconds": seconds, "images_per_second": len(train_ds) / max(seconds, 1e-9),
            "eval_seconds": time.perf_counter() - t1, "elapsed_seconds": elapsed,
        }
        run.log(record)
        if scheduler is not None:
            scheduler.step()
        if progress:
            tqdm.write(f"epoch {epoch}/{config.epochs}: train loss {fit['loss']:.4f} "
                       f"top-1 {100 * fit['top1']:.2f}% | test loss {test['loss']:.4f} "
                       f"top-1 {100 * test['top1']:.2f}% top-5 {100 * test['top5']:.2f}% | "
                       f"lr {lr:g} | {seconds:.1f} s, {record['images_per_second']:,.0f} img/s")
    return run.records


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
