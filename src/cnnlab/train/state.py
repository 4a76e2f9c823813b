"""The state of one training run: what a checkpoint holds, and its saving and restoring.

A checkpoint (every ``checkpoint_every`` steps and at each epoch's end) holds the weights,
the optimizer, the GradScaler, the schedule, the running sums of the epoch (each process's,
under torchrun) and the states of the random streams -- shuffling, augmentation, and
PyTorch's global one for dropout -- so a resumed run draws the same remaining batches and
random numbers as one that never stopped, and ends with the same weights, bit for bit on
the same device and thread count. A NaN or infinite loss or weight is never checkpointed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint, distributed, optim
from cnnlab.train.batches import Batches
from cnnlab.train.config import TrainConfig
from cnnlab.train.run import CHECKPOINT, RunFolder, storage_error
from cnnlab.train.tasks import Sums, Task


@dataclass
class StepRecipe:
    """How each SGD step runs besides the model and optimizer (the defaults: plain steps)."""

    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None
    generator: torch.Generator | None = None     # augmentation's random draws
    amp: torch.dtype | None = None               # autocast to this dtype
    scaler: torch.amp.GradScaler | None = None   # fp16 loss scaling
    clip_grad_norm: float = 0.0                  # max global gradient L2 norm; 0 = off
    channels_last: bool = False                  # NHWC inputs
    forward: Callable[[torch.Tensor], Any] | None = None   # e.g. the compiled model
    lr_at: Callable[[int], float] | None = None  # global step -> learning rate

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp)


@dataclass
class EpochTotals:
    """Where a pass stands: the batches done and the sums behind its figures (0-d tensors on
    the device, ``"loss"`` and the task's :meth:`~cnnlab.train.tasks.Task.train_sums`:
    adding to them needs no sync)."""

    device: torch.device
    sums: Sums = field(default_factory=dict)
    n: int = 0                      # examples seen
    step: int = 0                   # batches of this pass done
    global_step: int = 0            # batches of the run done
    seconds: float = 0.0            # training time of this pass before a resumption

    def add(self, sums: Sums) -> None:
        for k, v in sums.items():
            if k in self.sums:
                self.sums[k].add_(v)
            else:
                self.sums[k] = v.detach().clone().to(self.device)

    def loss_sum(self) -> torch.Tensor:
        return self.sums.get("loss", torch.zeros((), device=self.device))


class Diverged(CnnlabError):
    """The training loss, or a weight, is NaN or infinite."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"{what} by step {step}")
        self.what, self.step = what, step


class RunState:
    """Model, optimizer, schedule, step recipe, batches and task of one run, with the
    folder they are checkpointed in; the epoch loop reads it instead of a dozen arguments."""

    def __init__(self, model: nn.Module, config: TrainConfig, folder: RunFolder,
                 device: torch.device, batches: Batches, optimizer: torch.optim.Optimizer,
                 schedule: optim.Schedule, recipe: StepRecipe, task: Task) -> None:
        self.model, self.config, self.folder, self.device = model, config, folder, device
        self.batches, self.optimizer, self.schedule = batches, optimizer, schedule
        self.recipe, self.task = recipe, task
        self.elapsed = 0.0                     # training seconds of the finished epochs
        self.saved: tuple[int, int] | None = None   # (epoch, step) of the last checkpoint

    @property
    def context(self) -> distributed.Context:
        return self.batches.context

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
        sums, n = self.epoch_sums(t)
        self.check_finite(t, sums["loss"].sum() if "loss" in sums else None)
        ranks = {"ranks": {"sums": sums, "n": n}}
        state = {
            "config": self.config.to_dict(), "epoch": epoch, "step": t.step,
            "global_step": t.global_step, "elapsed": self.elapsed,
            "records": self.folder.records,
            "totals": {"sums": {k: v.sum(0) for k, v in sums.items()}, "n": int(n.sum()),
                       "seconds": t.seconds + seconds,
                       **(ranks if self.context.distributed else {})},
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
            raise storage_error(f"could not write the checkpoint {path}", err,
                                f"; {kept}; then `cnnlab train --resume {self.folder.path}`"
                                ) from None
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
        t = EpochTotals(self.device, global_step=int(state["global_step"]))
        t.step, t.seconds = int(state["step"]), float(s["seconds"])
        ctx = self.context
        ranks = s.get("ranks")
        if ctx.distributed and ranks is not None and len(ranks["n"]) == ctx.world_size:
            # each process continues its own sums: the epoch's figures add up in the same
            # order as in a run that never stopped
            r = ctx.rank
            t.sums = {k: v[r].to(self.device).clone() for k, v in ranks["sums"].items()}
            t.n = int(ranks["n"][r])
        elif ctx.is_main:                      # the sums of all processes, counted once
            t.sums = {k: v.to(self.device).clone() for k, v in s["sums"].items()}
            t.n = int(s["n"])
        else:
            t.sums = {k: torch.zeros_like(v, device=self.device) for k, v in s["sums"].items()}
        self.elapsed = float(state["elapsed"])
        self.saved = (int(state["epoch"]), t.step)
        return int(state["epoch"]), t

    def epoch_sums(self, t: EpochTotals) -> tuple[Sums, torch.Tensor]:
        """Each process's sums and example count so far in the pass, stacked in rank order
        (one row for one process; a collective under torchrun: every process calls it at
        the same step)."""
        ctx = self.context
        n = torch.tensor(t.n, device=self.device)
        sums = {k: distributed.all_gather(ctx, v) for k, v in sorted(t.sums.items())}
        return sums, distributed.all_gather(ctx, n)

    def check_finite(self, t: EpochTotals, loss_sum: torch.Tensor | None = None) -> None:
        """Raise :class:`Diverged` if the epoch's loss sum (``loss_sum``: the one over all
        processes; default: computed here) or a weight is NaN or infinite (one sync: a
        checkpoint and an epoch's end call it, not every step)."""
        if loss_sum is None:
            sums, _ = self.epoch_sums(t)
            loss_sum = sums["loss"].sum() if "loss" in sums else torch.zeros(())
        loss = loss_sum.item()
        if not math.isfinite(loss):
            raise Diverged(f"the training loss is {loss}", t.step)
        params = [p.detach() for p in self.model.parameters()]
        if params and not math.isfinite(nn.utils.get_total_norm(params).item()):
            raise Diverged("a weight is infinite or NaN (the loss was finite)", t.step)

    def diverged(self, err: Diverged, epoch: int) -> CnnlabError:
        """The one-line error a divergence becomes, naming the checkpoint kept."""
        kept = ("no checkpoint was written" if self.saved is None else
                f"the last good checkpoint (epoch {self.saved[0]}, step {self.saved[1]}) "
                "is kept")
        return CnnlabError(f"training diverged: {err.what} in epoch {epoch} (by step "
                           f"{err.step}); lower the learning rate (lr={self.config.lr}) or "
                           f"clip the gradients (--clip-grad-norm); {kept}")
