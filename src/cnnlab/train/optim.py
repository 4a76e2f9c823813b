"""The optimizer and the learning-rate schedule of a :class:`~cnnlab.train.TrainConfig`.

Optimizers (``optimizer``), each torch's, with ``lr`` and ``weight_decay`` from the config:

``sgd``       mini-batch SGD with ``momentum`` (and ``nesterov``), L2 weight decay: the
              chapter's (8.3.5) and the zoo's
``adadelta``  Zeiler's AdaDelta with his and Kim's rho = 0.95, eps = 1e-6; ``lr`` scales
              the update (1.0: the paper's rule; Kim trains his text CNN with it, 8.6.4)
``adam``      Adam, betas (0.9, 0.999), L2 weight decay added to the gradient
``adamw``     Adam with decoupled weight decay (Loshchilov and Hutter)

The schedule sets each step's ``lr`` whatever the optimizer.

The learning rate is a function of the global step (0, 1, ... over the whole run), so a
resumed run continues the same curve exactly, with nothing to save but the plateau state:

``step``      ``lr * lr_gamma ** (epoch // lr_step)`` (``lr_step`` 0: constant); per epoch
``constant``  ``lr``
``cosine``    ``lr * (1 + cos(pi * t)) / 2``, t going 0 -> 1 over the steps after warm-up
              (torch's ``CosineAnnealingLR`` stepped per iteration); per step
``onecycle``  Smith's one cycle, as torch's ``OneCycleLR``: from ``lr / 25`` up to ``lr`` over
              the warm-up (``warmup_epochs``, else 30% of the run), then down to
              ``lr / 25e4``, both by cosine (momentum is not cycled); per step
``plateau``   AlexNet (8.4.1): ``lr`` times ``lr_gamma`` (0.1 divides by 10) whenever the
              test error has not improved for ``patience`` epochs in a row (torch's
              ``ReduceLROnPlateau(patience=patience - 1, threshold=0)``); per epoch

``warmup_epochs`` > 0 ramps every schedule but onecycle linearly from ``lr / W`` up to its
curve over the first W steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cnnlab.train.config import TrainConfig

ONECYCLE_WARMUP = 0.3            # torch's OneCycleLR pct_start
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4


ADADELTA_RHO, ADADELTA_EPS = 0.95, 1e-6     # Zeiler (2012) and Kim (2014)

Params = Iterable[torch.nn.Parameter]
# ``optimizer`` -> its builder (TrainConfig's choices are these keys)
OPTIMIZERS: dict[str, Callable[[Params, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum,
                                        weight_decay=c.weight_decay, nesterov=c.nesterov),
    "adadelta": lambda p, c: torch.optim.Adadelta(p, lr=c.lr, rho=ADADELTA_RHO,
                                                  eps=ADADELTA_EPS, weight_decay=c.weight_decay),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay),
}


def make(params: Params, config: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer over ``params``.

    >>> from cnnlab.train import TrainConfig
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> type(make([w], TrainConfig(optimizer="adadelta", lr=1.0))).__name__
    'Adadelta'
    """
    return OPTIMIZERS[config.optimizer](params, config)


class Schedule:
    """The learning rate of every step of a run; ``steps_per_epoch`` batches per epoch.

    >>> from cnnlab.train import TrainConfig
    >>> s = Schedule(TrainConfig(lr=0.1, epochs=10, schedule="cosine"), steps_per_epoch=10)
    >>> s.lr_at(0), round(s.lr_at(50), 6)
    (0.1, 0.05)
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.kind, self.base = config.schedule, config.lr
        self.gamma, self.lr_step, self.patience = config.lr_gamma, config.lr_step, config.patience
        self.steps_per_epoch = steps_per_epoch
        self.total = config.epochs * steps_per_epoch
        warmup = config.warmup_epochs
        if self.kind == "onecycle" and warmup == 0:
            warmup = ONECYCLE_WARMUP * config.epochs
        self.warmup = min(round(warmup * steps_per_epoch), self.total - 1)
        # plateau: the best test error so far, epochs since it, drops made
        self.best, self.bad_epochs, self.drops = math.inf, 0, 0

    def lr_at(self, step: int) -> float:
        """The learning rate of global step ``step`` (0-based)."""
        w = self.warmup
        if self.kind == "onecycle":
            low = self.base / ONECYCLE_DIV
            if step <= w - 1:                              # torch: phase 1 ends at step w - 1
                return _cos(low, self.base, step / max(w - 1, 1))
            return _cos(self.base, low / ONECYCLE_FINAL_DIV,
                        (step - w + 1) / max(self.total - w, 1))
        if self.kind == "cosine":
            lr = _cos(self.base, 0.0, max(step - w, 0) / max(self.total - w, 1))
        elif self.kind == "step" and self.lr_step:
            lr = self.base * self.gamma ** (step // self.steps_per_epoch // self.lr_step)
        elif self.kind == "plateau":
            lr = self.base * self.gamma ** self.drops
        else:
            lr = self.base
        return lr * (step + 1) / w if step < w else lr

    def observe(self, test_error: float) -> None:
        """After each epoch: the plateau schedule's test error (ignored by the others)."""
        if self.kind != "plateau":
            return
        if test_error < self.best:
            self.best, self.bad_epochs = test_error, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.drops, self.bad_epochs = self.drops + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_epochs, self.drops = int(state["bad_epochs"]), int(state["drops"])


def _cos(start: float, end: float, t: float) -> float:
    """Cosine from ``start`` (t = 0) to ``end`` (t = 1)."""
    return end + (start - end) / 2 * (math.cos(math.pi * min(t, 1.0)) + 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
