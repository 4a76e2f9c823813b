"""Data-parallel training through ``torch.distributed``, launched by ``torchrun``.

The same command runs on one CPU, one GPU, N GPUs or several nodes::

    cnnlab train resnet20 --data cifar10                        # one process
    torchrun --nproc_per_node=4 -m cnnlab train resnet20 ...    # four processes, one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-endpoint=HOST:29500 -m cnnlab train ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each process; :func:`setup`
reads them and joins the process group (NCCL between GPUs, gloo between CPU processes).

``batch_size`` is the *global* mini-batch: every step, all processes draw the same shuffled
batch and each takes its own contiguous share of it; DistributedDataParallel then averages the
gradients. So N processes take the same steps as one process with the same settings, and the
learning rate needs no rescaling (up to floating-point summation order and batch-norm
statistics, which each process computes on its own share).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and prints progress."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local process; CPU processes share the CPU."""
        if self.distributed and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of one global batch's ``indices``.

        Shares differ by at most one example; a process whose share is empty (a last batch
        smaller than the number of processes) gets an empty tensor.
        """
        if not self.distributed:
            return indices
        n, w = len(indices), self.world_size
        start = self.rank * n // w
        stop = (self.rank + 1) * n // w
        return indices[start:stop]

    def shard_weight(self, n_local: int, n_global: int) -> float:
        """Factor that turns this process's mean loss into its part of the global mean: DDP
        averages gradients over processes, so each share is weighted by its size."""
        if not self.distributed or n_global == 0:
            return 1.0
        return n_local * self.world_size / n_global


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise CnnlabError(f"environment variable {name}={value!r} is not an integer; launch "
                          "with torchrun, which sets it") from None


def context_from_env() -> Context:
    """The context ``torchrun`` describes in the environment (one process when it is unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise CnnlabError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; launch "
                          "with torchrun --nproc_per_node=N")
    return Context(rank, world, local)


def setup(device: torch.device) -> Context:
    """Join the process group when launched by torchrun (no-op for a single process)."""
    ctx = context_from_env()
    if ctx.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    return ctx


def teardown(ctx: Context) -> None:
    """Leave the process group that :func:`setup` joined."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End this process with ``code``. A process that torchrun launched leaves without the
    interpreter's finalisation, once its output is flushed: there, PyTorch's autograd engine
    and gloo's threads can wait on each other for ever after the work is done (pytorch#75097,
    #190489; seen here as a resumed two-process run that finished and never exited). Every
    file a command writes is complete by then (atomic writes), so nothing is lost."""
    if context_from_env().distributed:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):         # a closed or broken pipe: nothing to keep
                pass
        os._exit(code)
    sys.exit(code)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(ctx: Context, t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over processes (``t`` itself for one process)."""
    if ctx.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(ctx: Context, t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` (same shape everywhere), stacked in rank order (world, ...)."""
    if not ctx.distributed:
        return t.unsqueeze(0)
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts)


def broadcast_buffers(ctx: Context, model: torch.nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics) in every process. DDP copies them
    before each training forward; the last one leaves each process with its own update."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
