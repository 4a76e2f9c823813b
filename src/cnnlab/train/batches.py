"""Which examples a step sees: :class:`Batches`, the one place that draws them, and the
DataLoader worker policy.

With ``num_workers=0`` an in-memory data set is moved to the device once and sliced: the
fastest path for data sets that fit in memory. Otherwise a DataLoader with that many
persistent worker processes (``prefetch_factor`` 4, pinned memory on CUDA) gathers the same
batches; a lazy data set (a large image folder) always goes through one.

A target may be a tensor per example (a label, a number, an image) or a list of
variable-length tensors (boxes, a sentence): a batch then holds the list of its examples'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.data import ImageDataset
from cnnlab.data.datasets import Targets, take_targets
from cnnlab.errors import CnnlabError
from cnnlab.train.distributed import Context

Normalize = Callable[[torch.Tensor], torch.Tensor]

PREFETCH = 4                      # batches each DataLoader worker prepares ahead


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Normalize:
    """x -> (x - mean) / std per channel, for (N, C, ...) batches on ``device``; the
    identity without statistics (token ids)."""
    if not mean:
        return lambda x: x
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)                # (1, C, 1, 1) for images
        return (x - m.view(shape)) / s.view(shape)

    return normalize


def to_device(target: Targets, device: torch.device, non_blocking: bool = False) -> Targets:
    """A batch's targets on ``device``: a tensor, or each tensor of a list."""
    if isinstance(target, torch.Tensor):
        return target.to(device, non_blocking=non_blocking)
    return [t.to(device, non_blocking=non_blocking) for t in target]


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


class Batches:
    """(inputs, targets) batches of a data set on ``device``, shuffled by ``generator`` (a
    new order each pass) or in order when it is None.

    ``context``: under torchrun every process draws the same global batches and takes its
    share; a last batch smaller than the number of processes is left out.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None, num_workers: int = 0,
                 context: Context | None = None) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.generator = generator
        self.num_workers = num_workers = data_workers(dataset, num_workers, device)
        self.context = context or Context()
        self.global_size = 0                            # size of the last global batch drawn
        self.epoch_state: torch.Tensor | None = None   # generator state before this pass
        self.in_memory = num_workers == 0 and isinstance(dataset.images, torch.Tensor)
        if self.in_memory and isinstance(dataset.images, torch.Tensor):
            self.images = dataset.images.to(device)
            self.targets = to_device(dataset.labels, device)
        # the DataLoader's worker seeds come from here, not from the global RNG (dropout's)
        self.worker_rng = torch.Generator().manual_seed(0)
        self._sampler = _PassSampler()
        self._loader: DataLoader[Any] | None = None
        self._sizes: list[int] = []

    def __len__(self) -> int:
        n, last = divmod(len(self.dataset), self.batch_size)
        return n + (last > 0 and last >= self.context.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Targets]]:
        return self.iterate()

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, Targets]]:
        """A new pass, from its batch ``start`` on (a resumed pass skips the batches done,
        after drawing the same order from the same ``epoch_state``)."""
        n = len(self.dataset)
        if self.generator is None:
            order = torch.arange(n)
        else:
            self.epoch_state = self.generator.get_state()
            order = torch.randperm(n, generator=self.generator)
        chunks: Sequence[torch.Tensor] = torch.split(order, self.batch_size)[start:]
        if self.context.distributed:
            world = self.context.world_size
            self._sizes = [len(c) for c in chunks if len(c) >= world]
            chunks = [self.context.shard(c) for c in chunks if len(c) >= world]
        else:
            self._sizes = [len(c) for c in chunks]
        if self.in_memory:
            for size, idx in zip(self._sizes, chunks, strict=True):
                idx = idx.to(self.device)
                self.global_size = size
                yield self.images[idx], take_targets(self.targets, idx)
            return
        self._sampler.batches = [c.tolist() for c in chunks]
        if self._loader is None:               # one loader: its workers live across passes
            cuda, workers = self.device.type == "cuda", self.num_workers
            # each batch is one indexing of the data set (ImageDataset.__getitems__), not a
            # list of examples to collate: a lazy folder decodes it in one go
            self._loader = DataLoader(_Guarded(self.dataset), batch_sampler=self._sampler,
                                      collate_fn=_keep, num_workers=workers,
                                      generator=self.worker_rng, pin_memory=cuda,
                                      prefetch_factor=PREFETCH if workers else None,
                                      persistent_workers=workers > 0)
        for size, batch in zip(self._sizes, self._loader, strict=True):
            if isinstance(batch, _Failed):
                raise batch.error()
            x, y = batch
            self.global_size = size
            yield x.to(self.device, non_blocking=True), to_device(y, self.device, True)


class _Failed:
    """A cnnlab error raised while a worker read a batch (a corrupt image of a lazy folder),
    carried back as a value: PyTorch would re-raise it with the worker's traceback folded
    into the message."""

    def __init__(self, err: CnnlabError) -> None:
        self.kind, self.message = type(err), str(err)

    def error(self) -> CnnlabError:
        return self.kind(self.message)


class _Guarded(Dataset[Any]):
    """The data set as a DataLoader reads it: whole batches, a cnnlab error as a value."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        try:
            return self.dataset.__getitems__(indices)
        except CnnlabError as err:
            return _Failed(err)


def _keep(batch: Any) -> Any:
    """The DataLoader's ``collate_fn``: :meth:`_Guarded.__getitems__` made the batch."""
    return batch


class _PassSampler:
    """The batch sampler of :class:`Batches`' DataLoader: this pass's index lists."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
