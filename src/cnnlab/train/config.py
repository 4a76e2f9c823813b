"""One typed training configuration, checked when it is made and saved beside the run.

Each field carries what a user needs to set it (:class:`Setting`: a one-line help, its choices,
the range check and what an error says it must be); ``cnnlab train``'s options are made from
them, so the command line and the config cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass
from typing import Any

from cnnlab import data as _data
from cnnlab.data.datasets import BOX_FORMATS, CROPS, DATA_OPTIONS, FOLDER, LOADERS
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.train.optim import OPTIMIZERS

KERNELS = ("native", "reference")
SCHEDULES = ("step", "constant", "cosine", "onecycle", "plateau")
AMP = ("none", "bf16", "fp16")
LOSSES = ("auto", "mse", "l1", "bce")
# --task: the word a user says -> the name of the Task it trains (cnnlab.train.tasks.task_class);
# auto: the one the model declares (classification, or an autoencoder's reconstruction)
TASKS = {"auto": None, "classify": "classification", "reconstruct": "reconstruction",
         "localize": "localization"}
# the registry's, folders, boxes, crops, and sentences and clips
DATA = (*_data.names(), FOLDER, *BOX_FORMATS, CROPS, *LOADERS)
OUT = "runs/{model}-{data}"                      # where a run goes when ``out`` is not given
COMMAND_LINE = "command line"                    # the ``source`` of values from `cnnlab train`

Check = Callable[[Any], "bool | str"]      # True, False, or a str that says what is wrong


def _any(v: object) -> bool:
    return True


def _setting(default: Any, help: str, wanted: str = "", check: Check = _any,
             choices: tuple[str, ...] = (), metavar: str | None = None) -> Any:
    """A field with its :class:`Setting` (the name, kind and default come from the field)."""
    rule = {"help": help, "wanted": wanted, "check": check, "choices": choices,
            "metavar": metavar}
    return dataclasses.field(default=default, metadata={"setting": rule})


def _device_ok(v: str) -> bool:
    import torch

    if v == "auto":
        return True
    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return False
    return True


def _augment_ok(v: str) -> bool | str:
    from cnnlab.train.augmentation import parse

    try:
        parse(v)
    except CnnlabError as err:
        return str(err)
    return True


def _path_or_none(v: str | None) -> bool:
    return v is None or bool(v)




@dataclass
class TrainConfig:
    """Everything that decides a training run (nanoGPT's ``GPTConfig``, airbench's ``hyp``).

    Every field is also an option of ``cnnlab train`` (``eval_batch_size`` is
    ``--eval-batch-size``). ``source`` says where the values came from, for error messages
    (:meth:`from_dict`); it is not a setting.

    >>> c = TrainConfig(model="lenet5", epochs=2)
    >>> c.out is None, c.default_out()
    (True, 'runs/lenet5-digits')
    """

    model: str = _setting("lenet5", "model name (see `cnnlab models`)",
                          "a model name (see `cnnlab models`)", bool)
    data: str = _setting("digits", f"data set; {FOLDER}: ROOT/train/<class>/ and "
                         f"ROOT/test/<class>/ given as --data-dir ROOT; {', '.join(BOX_FORMATS)}: "
                         "images with boxes, a VOC folder or ROOT/train.csv, test.csv (`cnnlab "
                         f"make-data`); {CROPS}: a detector's crops of those (R-CNN); mr: sentence polarity; "
                         "text, video: ROOT/<class>/ files of text or video (8.6.4-8.6.5)",
                         choices=DATA)
    data_dir: str | None = _setting(
        None, "folder with the data files; default: $CNNLAB_DATA, else the per-user cache",
        "a folder path or None")
    epochs: int = _setting(10, "passes over the training split", "a positive int",
                           lambda v: v >= 1)
    batch_size: int = _setting(64, "images per SGD step", "a positive int", lambda v: v >= 1)
    lr: float = _setting(0.01, "initial learning rate", "a positive number", lambda v: v > 0)
    momentum: float = _setting(0.9, "SGD momentum, in [0, 1) (optimizer sgd only)", "a number in [0, 1)",
                               lambda v: 0 <= v < 1)
    weight_decay: float = _setting(5e-4, "L2 coefficient on every trainable parameter",
                                   "a number >= 0", lambda v: v >= 0)
    lr_step: int = _setting(0, "epochs between learning-rate drops of schedule step; 0: none",
                            "an int >= 0 (0: never drop the learning rate)", lambda v: v >= 0)
    lr_gamma: float = _setting(0.1, "factor applied at each drop, in (0, 1]",
                               "a number in (0, 1]", lambda v: 0 < v <= 1)
    seed: int = _setting(0, "seed of the initial weights, shuffling and dropout",
                         "an int in [0, 2**63)", lambda v: 0 <= v < 2**63)
    kernel: str = _setting("native", "native: PyTorch's kernels; reference: the chapter's math",
                           choices=KERNELS)
    device: str = _setting("auto", "auto: cuda if present, else cpu; or cpu, cuda, cuda:N",
                           "'auto', 'cpu', 'cuda' or 'cuda:N'", _device_ok)
    out: str | None = _setting(None, "run folder; default: a new folder "
                               f"{OUT.format(model='MODEL', data='DATA')}[-N]",
                               "a folder path", _path_or_none)
    num_workers: int = _setting(0, "DataLoader worker processes; 0: slice tensors in memory",
                                "an int >= 0", lambda v: v >= 0)
    eval_batch_size: int = _setting(500, "images per evaluation batch", "a positive int",
                                    lambda v: v >= 1)
    # -- augmentation (8.3.4), per batch on the device; grammar: cnnlab.train.augmentation.
    # Off unless asked for (or a model's recipe asks): LeNet-5's published figures are without
    # distortions; "auto" is the data set's default.
    augment: str = _setting("none", "training-time augmentation: none, auto (the data set's "
                            "default) or a comma list such as crop4,flip,pca",
                            "'auto', 'none' or a comma list of transforms such as 'crop4,flip'",
                            _augment_ok, metavar="LIST")
    # -- optimisation (cnnlab.train.optim)
    optimizer: str = _setting("sgd", "sgd: momentum and L2 decay (8.3.5); adadelta: "
                              "Zeiler's, Kim's for his text CNN (lr 1 is the paper's rule); "
                              "adam; adamw: decoupled weight decay", choices=tuple(OPTIMIZERS))
    nesterov: bool = _setting(False, "Nesterov momentum (needs momentum > 0)")
    schedule: str = _setting("step", "learning-rate schedule; step: lr_step and lr_gamma, "
                             "plateau: lr*gamma when the test error stalls", choices=SCHEDULES)
    warmup_epochs: float = _setting(0.0, "linear warm-up, in epochs (fractions too); "
                                    "onecycle: 0 means 30% of the run",
                                    "a number of epochs >= 0", lambda v: v >= 0)
    patience: int = _setting(3, "plateau: epochs without a lower test error before lr*gamma",
                             "a positive int (epochs)", lambda v: v >= 1)
    label_smoothing: float = _setting(0.0, "cross-entropy label smoothing, in [0, 1)",
                                      "a number in [0, 1)", lambda v: 0 <= v < 1)
    clip_grad_norm: float = _setting(0.0, "clip the global gradient L2 norm to this; 0: off",
                                     "a number >= 0 (0: no clipping)", lambda v: v >= 0)
    amp: str = _setting("none", "mixed precision; fp16 on CUDA only", choices=AMP)
    channels_last: bool = _setting(False, "NHWC memory format for the model and its inputs")
    compile: bool = _setting(False, "torch.compile the model; slow to start, on the CPU "
                             "especially")
    sync_bn: bool = _setting(False, "torch's SyncBatchNorm under torchrun on GPUs: batch norm "
                             "over the global batch, not each process's share")
    # -- checkpoints (cnnlab.train.checkpoint)
    checkpoint_every: int = _setting(0, "also checkpoint every this many steps; 0: at each "
                                     "epoch's end only",
                                     "an int >= 0 (steps; 0: at epoch ends only)",
                                     lambda v: v >= 0, metavar="STEPS")
    # -- transfer learning (8.4.7; cnnlab.train.transfer)
    init: str | None = _setting(None, "start from these weights: a run folder, a .safetensors "
                                "or a torchvision .pth state dict; the output layer is "
                                "replaced when the class count differs",
                                "a run folder, a .safetensors or a .pth file", _path_or_none,
                                metavar="PATH")
    freeze_until: str | None = _setting(None, "train only the layers after this one: a "
                                        "chapter name such as conv5 or fc6, or a module path",
                                        "a layer name such as conv5 or fc6", _path_or_none,
                                        metavar="LAYER")
    # -- what is learned: the task (cnnlab.train.tasks), an autoencoder's loss (8.5.2;
    # cnnlab.train.reconstruction), a localiser's box loss (8.6.2; cnnlab.apps.localize)
    task: str = _setting("auto", "what the model learns; auto: what it declares (classes, or "
                         "an autoencoder's reconstruction); localize: a classifier gets a "
                         "regression head for one box per image (8.6.2; data with boxes)",
                         choices=tuple(TASKS))
    loss: str = _setting("auto", "reconstruction loss of an autoencoder: mse (Eq. 8.6, per "
                         "pixel), l1, or bce (sigmoid outputs); a localiser's box loss: mse or "
                         "l1; auto: mse for autoencoders, smooth L1 for boxes, cross-entropy "
                         "for classes", choices=LOSSES)
    denoise: float = _setting(0.0, "denoising autoencoder: Gaussian noise of this std (in "
                              "[0, 1] pixels) on the input, the clean image as target; 0: off",
                              "a number >= 0 (0: no noise)", lambda v: v >= 0, metavar="SIGMA")
    # -- sentences and clips (8.6.4-8.6.5): the data options (cnnlab.data.DATA_OPTIONS)
    vectors: str | None = _setting(DATA_OPTIONS["vectors"], "word vectors for a text model's "
                                   "embedding: a word2vec .bin, a GloVe or fastText .txt/.vec "
                                   "file, or glove-6b-50d (the optional extra cnnlab[glove])",
                                   "a vectors file or glove-6b-50d", _path_or_none,
                                   metavar="PATH")
    frame_stride: int = _setting(DATA_OPTIONS["frame_stride"], "take every this many frames of "
                                 "a video for a clip", "a positive int", lambda v: v >= 1,
                                 metavar="N")
    # -- several runs of this setting in one folder (cnnlab.train.series)
    folds: int = _setting(1, "k-fold cross-validation: train and test splits joined, split into "
                          "this many stratified folds, one run each; 1: the data set's own split",
                          "a positive int (1: no cross-validation)", lambda v: v >= 1,
                          metavar="K")
    # -- outputs beside metrics.jsonl
    tensorboard: bool = _setting(True, "TensorBoard events in RUN/tensorboard/")
    plots: bool = _setting(True, "RUN/curves.png and RUN/confusion.png at the end")
    source: InitVar[str | Mapping[str, str] | None] = None

    def __post_init__(self, source: str | Mapping[str, str] | None) -> None:
        where = _where_of(source)
        for s in SETTINGS.values():
            value = getattr(self, s.name)
            if s.kind is float and _is_int(value):
                value = float(value)          # 1 is a fine learning rate too
                setattr(self, s.name, value)
            verdict = s.verdict(value)
            if verdict is not True:               # False, or a str that says what is wrong
                why = f" ({verdict})" if isinstance(verdict, str) else ""
                raise ConfigError(f"{s.name} must be {s.wanted}, got {s.name}={value!r}{why} "
                                  f"({where(s.name) or s.flag})")
        self._check_together(where)

    def _check_together(self, where: Callable[[str], str]) -> None:
        """Settings that conflict with each other are refused, not silently overridden."""
        def refuse(message: str, *names: str) -> ConfigError:
            seen = [w for w in dict.fromkeys(where(n) for n in names) if w]
            return ConfigError(message + (f" ({'; '.join(seen)})" if seen else ""))

        if self.lr_step and self.schedule != "step":
            raise refuse(f"lr_step={self.lr_step} drops the learning rate of schedule 'step' "
                         f"only, got schedule={self.schedule!r}; drop --lr-step or use "
                         "--schedule step", "lr_step", "schedule")
        if self.nesterov and self.optimizer != "sgd":
            raise refuse(f"nesterov=True is SGD's, got optimizer={self.optimizer!r}; drop "
                         "--nesterov or use --optimizer sgd", "nesterov", "optimizer")
        if self.nesterov and self.momentum == 0:
            raise refuse("nesterov=True needs momentum > 0, got momentum=0.0; set --momentum "
                         "(e.g. 0.9) or drop --nesterov", "nesterov", "momentum")
        if self.amp == "fp16" and self.device == "cpu":
            raise refuse("amp='fp16' needs a CUDA GPU (its GradScaler), got device='cpu'; "
                         "use --amp bf16 on the CPU", "amp", "device")
        if self.sync_bn and (self.device == "cpu" or self.kernel == "reference"):
            raise refuse(f"sync_bn=True needs CUDA GPUs and the native kernels (torch's "
                         f"SyncBatchNorm), got device={self.device!r}, kernel={self.kernel!r}; "
                         "drop --sync-bn", "sync_bn", "device", "kernel")
        if self.warmup_epochs >= self.epochs:
            raise refuse(f"warmup_epochs={self.warmup_epochs} must be less than "
                         f"epochs={self.epochs}; lower --warmup-epochs", "warmup_epochs",
                         "epochs")

    def data_options(self) -> dict[str, Any]:
        """The options that :func:`cnnlab.data.load` passes to a reader of sentences or clips."""
        return {name: getattr(self, name) for name in DATA_OPTIONS}

    def default_out(self) -> str:
        """The run folder a run gets when ``out`` is not given (``runs/<model>-<data>``)."""
        return OUT.format(model=self.model, data=self.data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (what ``config.json`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any],
                  source: str | Mapping[str, str] | None = None) -> TrainConfig:
        """Build from a dict such as ``config.json``; unknown keys are refused, missing ones
        take their defaults. ``source`` says where the values came from, for the errors: a
        file's path (``"(in runs/a/config.json)"``), :data:`COMMAND_LINE`
        (``"(command line: --epochs)"``), ``"recipe of model NAME"``, or one of these per key.
        """
        where = _where_of(source)
        known = list(SETTINGS)
        unknown = [k for k in values if k not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            at = where(str(unknown[0]))
            raise ConfigError(f"unknown training setting {unknown[0]!r}: {hint}"
                              f"known settings are {', '.join(known)}"
                              + (f" ({at})" if at else ""))
        return cls(**values, source=source)

    @classmethod
    def for_model(cls, values: Mapping[str, Any],
                  source: str | Mapping[str, str] | None = None) -> TrainConfig:
        """Like :meth:`from_dict`, but settings not given come from the model's recipe
        (``cnnlab.models.info(name).recipe``) before the defaults. A recipe's ``lr_step``
        belongs to its step schedule: it is left out when ``values`` choose another schedule."""
        from cnnlab import models

        name = values.get("model", SETTINGS["model"].default)
        recipe = dict(models.info(name).recipe)
        if values.get("schedule", recipe.get("schedule", "step")) != "step":
            recipe.pop("lr_step", None)
        given = _per_key(source, values)
        sources = {**dict.fromkeys(recipe, recipe_source(name)), **given}
        return cls.from_dict({**recipe, **values}, source=sources)


def recipe_source(model: str) -> str:
    """The ``source`` of the values a model's recipe gives."""
    return f"recipe of model {model}"


@dataclass(frozen=True)
class Setting:
    """One field of :class:`TrainConfig` as a user sets it (what ``cnnlab train`` shows)."""

    name: str
    kind: type                       # int, float, bool or str
    optional: bool                   # None is allowed (the help says what it means)
    default: Any
    help: str                        # one line
    wanted: str                      # what an error says a value must be
    check: Check                     # range check, after the kind is right
    choices: tuple[str, ...]         # the values allowed, where they are a short list
    metavar: str | None

    @property
    def flag(self) -> str:
        """The option of ``cnnlab train`` that sets it."""
        return "--" + self.name.replace("_", "-")

    def verdict(self, value: object) -> bool | str:
        """True if ``value`` is allowed; else False or what is wrong (a near match)."""
        if value is None:
            return self.optional
        if not (_is_int(value) if self.kind is int else isinstance(value, self.kind)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            return f"did you mean {close[0]!r}?" if close else False
        return self.check(value)


def _settings() -> dict[str, Setting]:
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)    # str | None: (str, None)
        kind = next(k for k in kinds if k is not type(None))
        rule = f.metadata["setting"]
        choices = rule["choices"]
        wanted = rule["wanted"] or (_either(choices) if choices else "True or False")
        out[f.name] = Setting(f.name, kind, type(None) in kinds, f.default, rule["help"],
                              wanted, rule["check"], choices, rule["metavar"])
    return out


def _either(choices: tuple[str, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _per_key(source: str | Mapping[str, str] | None, keys: Mapping[str, Any]
             ) -> dict[str, str]:
    if source is None:
        return {}
    if isinstance(source, str):
        return dict.fromkeys(keys, source)
    return {k: v for k, v in source.items() if k in keys}


def _where_of(source: str | Mapping[str, str] | None) -> Callable[[str], str]:
    """name -> where its value came from, as an error says it ("" when not known)."""
    def where(name: str) -> str:
        s = source if isinstance(source, str) or source is None else source.get(name)
        if s is None:
            return ""
        if s == COMMAND_LINE:
            return f"{COMMAND_LINE}: --{name.replace('_', '-')}"
        return s if s.startswith(recipe_source("")) else f"in {s}"
    return where


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


SETTINGS: Mapping[str, Setting] = _settings()   # field name -> its Setting, in field order
