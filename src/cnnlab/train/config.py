"""One typed training configuration, checked when it is made and saved beside the run."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cnnlab.errors import CnnlabError

KERNELS = ("native", "reference")
SCHEDULES = ("step", "constant", "cosine", "onecycle", "plateau")
AMP = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that decides a training run (nanoGPT's ``GPTConfig``, airbench's ``hyp``).

    >>> TrainConfig(model="lenet5", epochs=2).out
    'runs/lenet5-digits'
    """

    model: str = "lenet5"           # registry name (cnnlab.models)
    data: str = "digits"            # data set name (cnnlab.data)
    data_dir: str | None = None     # folder with the data files; None: $CNNLAB_DATA, else cache
    epochs: int = 10                # passes over the training split
    batch_size: int = 64            # images per SGD step
    lr: float = 0.01                # initial learning rate
    momentum: float = 0.9           # SGD momentum, in [0, 1)
    weight_decay: float = 5e-4      # L2 coefficient on every trainable parameter
    lr_step: int = 0                # epochs between learning-rate drops; 0 = constant
    lr_gamma: float = 0.1           # factor applied at each drop, in (0, 1]
    seed: int = 0                   # initial weights, shuffling and dropout
    kernel: str = "native"          # "native" (PyTorch) or "reference" (the chapter's math)
    device: str = "auto"            # "auto" (cuda if present, else cpu), "cpu", "cuda:0", ...
    out: str | None = None          # run folder; None: runs/<model>-<data>
    num_workers: int = 0            # DataLoader worker processes; 0 slices tensors in-process
    eval_batch_size: int = 500      # images per evaluation batch
    # -- augmentation (8.3.4), per batch on the device; grammar: cnnlab.train.augmentation.
    # Off unless asked for (or a model's recipe asks): LeNet-5's published figures are without
    # distortions; "auto" is the data set's default.
    augment: str = "none"           # "none", "auto", or a list such as "crop4,flip,pca"
    # -- optimisation (cnnlab.train.optim)
    nesterov: bool = False          # Nesterov momentum (needs momentum > 0)
    schedule: str = "step"          # step (lr_step, lr_gamma), constant, cosine, onecycle, plateau
    warmup_epochs: float = 0.0      # linear warm-up, in epochs (fractions too); onecycle: 0 = 30%
    patience: int = 3               # plateau: epochs without a lower test error before lr*gamma
    label_smoothing: float = 0.0    # cross-entropy label smoothing, in [0, 1)
    clip_grad_norm: float = 0.0     # clip the global gradient L2 norm to this; 0 = off
    amp: str = "none"               # mixed precision: "none", "bf16", "fp16" (CUDA only)
    channels_last: bool = False     # NHWC memory format for the model and its inputs
    compile: bool = False           # torch.compile the model for training
    sync_bn: bool = False           # under torchrun on GPUs: batch norm over the global batch
    # -- checkpoints (cnnlab.train.checkpoint)
    checkpoint_every: int = 0       # also checkpoint every this many steps; 0 = each epoch only
    # -- transfer learning (8.4.7; cnnlab.train.transfer)
    init: str | None = None         # start from these weights: a run folder, .safetensors, .pth
    freeze_until: str | None = None  # train only the layers after this one ("conv5", "fc6")
    # -- outputs beside metrics.jsonl
    tensorboard: bool = True        # TensorBoard events in RUN/tensorboard/
    plots: bool = True              # RUN/curves.png, RUN/confusion.png at the end

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind, ok, wanted = _RULES[f.name]
            value = getattr(self, f.name)
            if kind is float and _is_int(value):
                value = float(value)          # 1 is a fine learning rate too
                setattr(self, f.name, value)
            verdict = _has_kind(value, kind) and ok(value)
            if verdict is not True:               # False, or a str that says what is wrong
                flag = "--" + f.name.replace("_", "-")
                why = f" ({verdict})" if isinstance(verdict, str) else ""
                raise CnnlabError(f"{f.name} must be {wanted}, got {f.name}={value!r}{why} "
                                  f"(command line: {flag})")
        self._check_together()
        if self.out is None:
            self.out = f"runs/{self.model}-{self.data}"

    def _check_together(self) -> None:
        """Settings that conflict with each other are refused, not silently overridden."""
        if self.lr_step and self.schedule != "step":
            raise CnnlabError(f"lr_step={self.lr_step} drops the learning rate of schedule "
                              f"'step' only, got schedule={self.schedule!r}; drop --lr-step "
                              "or use --schedule step")
        if self.nesterov and self.momentum == 0:
            raise CnnlabError("nesterov=True needs momentum > 0, got momentum=0.0; set "
                              "--momentum (e.g. 0.9) or drop --nesterov")
        if self.amp == "fp16" and self.device == "cpu":
            raise CnnlabError("amp='fp16' needs a CUDA GPU (its GradScaler), got device='cpu'; "
                              "use --amp bf16 on the CPU")
        if self.sync_bn and (self.device == "cpu" or self.kernel == "reference"):
            raise CnnlabError(f"sync_bn=True needs CUDA GPUs and the native kernels (torch's "
                              f"SyncBatchNorm), got device={self.device!r}, "
                              f"kernel={self.kernel!r}; drop --sync-bn")
        if self.warmup_epochs >= self.epochs:
            raise CnnlabError(f"warmup_epochs={self.warmup_epochs} must be less than "
                              f"epochs={self.epochs}; lower --warmup-epochs")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict such as ``config.json``; unknown keys are refused, missing ones
        take their defaults."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise CnnlabError(f"unknown training setting {unknown[0]!r}: {hint}"
                              f"known settings are {', '.join(known)}")
        return cls(**values)

    @classmethod
    def for_model(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Like :meth:`from_dict`, but settings not given come from the model's recipe
        (``cnnlab.models.info(name).recipe``) before the defaults. A recipe's ``lr_step``
        belongs to its step schedule: it is left out when ``values`` choose another schedule."""
        from cnnlab import models

        name = values.get("model", cls.model)
        recipe = dict(models.info(name).recipe)
        if values.get("schedule", recipe.get("schedule", "step")) != "step":
            recipe.pop("lr_step", None)
        return cls.from_dict({**recipe, **values})


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _has_kind(v: object, kind: type | None) -> bool:
    if kind is None:                            # str or None
        return v is None or isinstance(v, str)
    if kind is int:
        return _is_int(v)
    if kind is float:
        return isinstance(v, float) and math.isfinite(v)
    return isinstance(v, kind)


def _device_ok(v: str) -> bool:
    import torch

    if v == "auto":
        return True
    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return False
    return True


def _any(v: object) -> bool:
    return True


def _augment_ok(v: str) -> bool | str:
    from cnnlab.train.augmentation import parse

    try:
        parse(v)
    except CnnlabError as err:
        return str(err)
    return True


# field -> (type, range check, what the error says it must be); None type: a str or None.
# The check returns True, False, or a str that says what is wrong.
_RULES: dict[str, tuple[type | None, Callable[[Any], bool | str], str]] = {
    "model": (str, bool, "a model name (see `cnnlab models`)"),
    "data": (str, bool, "a data set name: digits, mnist or fashion-mnist"),
    "data_dir": (None, _any, "a folder path or None"),
    "epochs": (int, lambda v: v >= 1, "a positive int"),
    "batch_size": (int, lambda v: v >= 1, "a positive int"),
    "lr": (float, lambda v: v > 0, "a positive number"),
    "momentum": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (float, lambda v: v >= 0, "a number >= 0"),
    "lr_step": (int, lambda v: v >= 0, "an int >= 0 (0: never drop the learning rate)"),
    "lr_gamma": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "seed": (int, lambda v: 0 <= v < 2**63, "an int in [0, 2**63)"),
    "kernel": (str, lambda v: v in KERNELS, "'native' or 'reference'"),
    "device": (str, _device_ok, "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    "out": (None, lambda v: v is None or bool(v), "a folder path"),
    "num_workers": (int, lambda v: v >= 0, "an int >= 0"),
    "eval_batch_size": (int, lambda v: v >= 1, "a positive int"),
    "augment": (str, _augment_ok, ("'auto', 'none' or a comma list such as 'crop4,flip' of "
                                   "crop[PIXELS], flip[P], translate[PIXELS], rotate[DEGREES], "
                                   "jitter[AMOUNT], pca[SIGMA]")),
    "nesterov": (bool, _any, "True or False"),
    "schedule": (str, lambda v: v in SCHEDULES, "one of " + ", ".join(map(repr, SCHEDULES))),
    "warmup_epochs": (float, lambda v: v >= 0, "a number of epochs >= 0"),
    "patience": (int, lambda v: v >= 1, "a positive int (epochs)"),
    "label_smoothing": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "clip_grad_norm": (float, lambda v: v >= 0, "a number >= 0 (0: no clipping)"),
    "amp": (str, lambda v: v in AMP, "'none', 'bf16' or 'fp16'"),
    "channels_last": (bool, _any, "True or False"),
    "compile": (bool, _any, "True or False"),
    "sync_bn": (bool, _any, "True or False"),
    "checkpoint_every": (int, lambda v: v >= 0, "an int >= 0 (steps; 0: at epoch ends only)"),
    "init": (None, lambda v: v is None or bool(v),
             "a run folder, a .safetensors or a .pth file"),
    "freeze_until": (None, lambda v: v is None or bool(v), "a layer name such as conv5 or fc6"),
    "tensorboard": (bool, _any, "True or False"),
    "plots": (bool, _any, "True or False"),
}
