"""The one evaluator: every task, the epoch's test pass, ``cnnlab eval`` and ensembles.

:func:`evaluate_members` runs one or more models (the members of an ensemble) over a data
set batch by batch; each member's prediction is its task's
:meth:`~cnnlab.train.tasks.Task.predict`, combined over the test-time views; the ensemble's
is the members' combined (8.4.1: averaged probabilities). Every figure comes from the task's
additive sums, so a single model is an ensemble of one: its member row and the ensemble row
are the same numbers, and ``cnnlab eval RUN`` equals RUN's row among others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError
from cnnlab.train import distributed
from cnnlab.train.batches import Batches, normalizer
from cnnlab.train.distributed import Context
from cnnlab.train.run import device_of
from cnnlab.train.tasks import Classification, Sums, Task, task_class, task_name

Views = Callable[[torch.Tensor], list[torch.Tensor]]


def single_view(x: torch.Tensor) -> list[torch.Tensor]:
    return [x]


@dataclass
class Member:
    """One model as evaluation sees it: its task, and the statistics its inputs are
    normalised with (the training set's)."""

    model: nn.Module
    task: Task
    mean: Sequence[float]
    std: Sequence[float]


@dataclass
class Evaluation:
    """Figures of each member and of their ensemble, with the sums behind them."""

    members: list[dict[str, Any]]
    ensemble: dict[str, Any]
    sums: Sums                      # the ensemble's (a single model's own)
    n: int
    predictions: list[torch.Tensor]  # each member's, on the CPU, when asked to keep them


@torch.no_grad()
def evaluate_members(members: Sequence[Member], dataset: ImageDataset, batch_size: int = 500,
                     *, views: Views = single_view, context: Context | None = None,
                     num_workers: int = 0, progress: bool = False,
                     desc: str = "evaluate", keep: bool = False) -> Evaluation:
    """Evaluate ``members`` on ``dataset`` (images in [0, 1], normalised per member) in eval
    mode (restored after).

    ``views``: the test-time views of a batch, each a batch the models take (default: the
    batch itself). ``context``: under torchrun each process evaluates a contiguous part and
    the sums are added over the processes, so every process returns the whole set's figures.
    ``num_workers``: DataLoader processes for a lazy data set; an in-memory one is sliced on
    the device. ``keep``: also return each member's predictions (N, ...), on the CPU.
    """
    if not members:
        raise CnnlabError("nothing to evaluate: give at least one model")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise CnnlabError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(dataset) == 0:
        raise CnnlabError(f"cannot evaluate on an empty data set ({dataset!r})")
    device = device_of(members[0].model)
    ctx = context or Context()
    n = len(dataset)
    part = dataset if not ctx.distributed else dataset.subset(
        slice(ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size))
    start = 0 if not ctx.distributed else ctx.rank * n // ctx.world_size   # of ``part``
    norms = [normalizer(m.mean, m.std, device) for m in members]
    modes = [m.model.training for m in members]
    totals: list[Sums] = [{} for _ in members]
    ensemble: Sums = {}
    kept: list[list[torch.Tensor]] = [[] for _ in members]
    for m in members:
        m.model.eval()
    try:
        batches = Batches(part, batch_size, device, num_workers=num_workers if part.lazy else 0)
        for x, y in tqdm(batches if len(part) else (), desc=desc, unit="batch", leave=False,
                         dynamic_ncols=True, disable=None if progress else True):
            predictions, targets = [], []
            for m, norm, sums in zip(members, norms, totals, strict=True):
                # the task's inputs and target, keyed by the batch's place in the data set
                inputs, target = m.task.prepare(x, y, train=False, key=start)
                p = m.task.combine([m.task.predict(m.model(norm(v))) for v in views(inputs)])
                _add(sums, m.task.eval_sums(p, target))
                predictions.append(p)
                targets.append(target)
            start += len(x)
            if keep:
                for into, p in zip(kept, predictions, strict=True):
                    into.append(p.cpu())
            if len(members) > 1:
                first = members[0].task
                _add(ensemble, first.eval_sums(first.combine(predictions), targets[0]))
    finally:
        for m, mode in zip(members, modes, strict=True):
            m.model.train(mode)
    if len(members) == 1:
        ensemble = totals[0]
    if ctx.distributed:
        totals = [{k: distributed.all_sum(ctx, v) for k, v in sorted(s.items())}
                  for s in totals]
        ensemble = totals[0] if len(members) == 1 else {
            k: distributed.all_sum(ctx, v) for k, v in sorted(ensemble.items())}
    rows = [{**m.task.figures(s, n), "n": n} for m, s in zip(members, totals, strict=True)]
    return Evaluation(rows, {**members[0].task.figures(ensemble, n), "n": n}, ensemble, n,
                      [torch.cat(k) for k in kept] if keep else [])


def _add(into: Sums, sums: Sums) -> None:
    for k, v in sums.items():
        if k in into:
            into[k] += v
        else:
            into[k] = v.clone()


def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = 500,
             task: Task | None = None, *, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, context: Context | None = None,
             num_workers: int = 0) -> dict[str, Any]:
    """The figures of ``model`` on ``dataset`` (classification: ``loss``, ``top1``,
    ``top5``, ``error``, ``per_class_top1``), and the count ``n``: an ensemble of one.

    Inputs are normalised with ``mean``/``std`` (default: the data set's own statistics;
    pass the training set's when evaluating on another set). ``task`` defaults to the
    model's declared one: classification of its classes, or an autoencoder's reconstruction
    (mse, no noise).
    """
    if task is None:
        name = task_name(model)
        task = (Classification(model, dataset.num_classes) if name == Classification.name
                else task_class(name)())
    member = Member(model, task, dataset.mean if mean is None else mean,
                    dataset.std if std is None else std)
    return evaluate_members([member], dataset, batch_size, context=context,
                            num_workers=num_workers).members[0]
