"""What a training task is: a batch's target, its loss, the predictions that evaluation
scores and ensembles combine, and the figures that measure them.

The loop (:mod:`cnnlab.train.loop`) owns everything else -- steps, checkpoints and
resumption to the bit, torchrun, mixed precision, TensorBoard, plots -- so a new task
(reconstruction, boxes, sentences, clips) is a small subclass of :class:`Task`, never a
second loop. A task's figures are additive sums over examples (so a checkpoint can hold them
mid-epoch and torchrun can add them over processes) turned into means at the end.

Adding a task: regress each image's mean brightness, a target the data set carries (an
:class:`~cnnlab.data.ImageDataset` holds any per-example target tensor in ``labels``):

>>> import torch
>>> from torch import nn
>>> from cnnlab.data import load
>>> from cnnlab.train import TrainConfig, train
>>> from cnnlab.train.tasks import Task
>>> class Brightness(Task):
...     name = "brightness"
...     def loss(self, output, target):                    # the training objective
...         return nn.functional.mse_loss(output.squeeze(1), target)
...     def eval_sums(self, prediction, target):           # sums over a test batch
...         error = prediction.squeeze(1) - target
...         return {"loss": error.pow(2).sum(), "abs_error": error.abs().sum()}
>>> def bright(split):
...     ds = load("digits", split, size=8)
...     ds.labels, ds.classes = ds.images.mean(dim=(1, 2, 3)), ()
...     return ds
>>> import tempfile
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
>>> config = TrainConfig("brightness", epochs=3, lr=0.01, out=tempfile.mkdtemp() + "/run",
...                      tensorboard=False, plots=False)
>>> result = train(config, net, task=Brightness(), datasets=(bright("train"), bright("test")),
...                progress=False)
>>> result["test_abs_error"] < 0.05
True

Where the code goes: a task lives beside the application it serves (``cnnlab.apps``,
``cnnlab.visualize``); this module holds the interface and classification.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.metrics import confusion_matrix, per_class_accuracy

if TYPE_CHECKING:
    from cnnlab.train.config import TrainConfig

Sums = dict[str, torch.Tensor]


class Task:
    """The part of training that depends on what is learned.

    A subclass sets ``name`` and implements :meth:`loss` and :meth:`eval_sums`; the other
    methods have defaults that suit a task whose figures are means over examples.
    """

    name: ClassVar[str] = "task"
    # the test figure the plateau schedule watches and the run's one-line summary shows;
    # lower is better
    monitor: ClassVar[str] = "loss"
    # the figures a report shows (a column each in `cnnlab eval`'s table)
    headline: ClassVar[tuple[str, ...]] = ("loss",)

    @classmethod
    def adapt(cls, model: nn.Module) -> nn.Module:
        """The network this task trains, made from ``model`` (a registry model): the model
        itself when it declares this task; a task that builds on another model (localisation
        adds a regression head to a classifier) overrides it."""
        declared = task_name(model)
        if declared != cls.name:
            raise CnnlabError(f"{type(model).__name__} is a {declared} model, so it cannot "
                              f"learn {cls.name}; drop --task, or pick a model made for it")
        return model

    def prepare(self, x: torch.Tensor, y: Any, *, train: bool, key: int
                ) -> tuple[torch.Tensor, Any]:
        """``(inputs, target)`` of a batch of images in [0, 1] (augmented, not yet
        normalised) and the data set's targets ``y``; default: ``(x, y)``. Training and
        evaluation both call it. Anything random must be drawn from ``key`` (with ``train``:
        unique to each training step and process; else the index of the batch's first example
        in the data set), never from hidden state, so that a resumed run draws the same (e.g. a denoising
        autoencoder's noise, :mod:`cnnlab.train.reconstruction`)."""
        return x, y

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The training objective on a batch: a 0-d tensor, the mean over its examples."""
        raise NotImplementedError

    def train_sums(self, output: Any, target: Any) -> Sums:
        """Sums over a training batch besides the loss's (which the loop keeps), e.g. the
        correct predictions; 0-d tensors on the device (no sync)."""
        return {}

    def predict(self, output: Any) -> torch.Tensor:
        """What evaluation scores, test-time views and ensembles combine (default: the
        output itself)."""
        return output if isinstance(output, torch.Tensor) else output[0]

    def combine(self, predictions: Sequence[torch.Tensor]) -> torch.Tensor:
        """One prediction from several (test-time views, ensemble members): the mean."""
        return torch.stack(list(predictions)).mean(dim=0)

    def eval_sums(self, prediction: torch.Tensor, target: Any) -> Sums:
        """Additive sums over a test batch; ``"loss"`` is the sum of the per-example loss."""
        raise NotImplementedError

    def figures(self, sums: Mapping[str, torch.Tensor], n: int) -> dict[str, Any]:
        """The figures of a pass from its sums over ``n`` examples (default: each sum's
        mean)."""
        return {k: float(v) / max(n, 1) for k, v in sums.items() if v.dim() == 0}

    def summary(self, figures: Mapping[str, Any]) -> str:
        """One line that says how good the figures are, for the end of a run."""
        return f"test {self.monitor} {figures[self.monitor]:.4g}"

    @classmethod
    def describe(cls, figures: Mapping[str, Any]) -> str:
        """The headline figures in words, as ``cnnlab eval`` prints them for one run."""
        return ", ".join(f"{k} {figures[k]:.4g}" for k in cls.headline)

    def write_outputs(self, folder: Path, sums: Mapping[str, torch.Tensor],
                      records: Sequence[Mapping[str, Any]], plots: bool) -> None:
        """Write what the run folder shows besides metrics.jsonl (default: nothing)."""


class Classification(Task):
    """Class scores, cross-entropy (or the model's own ``loss``, LeNet-5's RBF criterion),
    top-1/top-5 accuracy, the confusion matrix.

    Predictions are log-probabilities: the model's ``log_proba(scores)`` where it has one
    (LeNet-5's RBF outputs), else ``log_softmax``; evaluation's loss is the mean negative
    log-probability of the right class, which equals the training criterion on test data.
    Views and ensemble members are combined by averaging probabilities (8.4.1).
    """

    name = "classification"
    monitor = "error"
    headline = ("top1", "top5", "error", "loss")

    def __init__(self, model: nn.Module | None = None, num_classes: int | None = None,
                 label_smoothing: float = 0.0, classes: Sequence[str] = ()) -> None:
        own = getattr(model, "loss", None)
        if label_smoothing and callable(own):
            raise CnnlabError(f"label_smoothing={label_smoothing} applies to cross-entropy, "
                              f"but {type(model).__name__} trains with its own loss "
                              "(model.loss); drop --label-smoothing")
        self._loss = own if callable(own) else None
        self._log_proba = getattr(model, "log_proba", None)
        self.label_smoothing = label_smoothing
        outputs = getattr(model, "num_classes", None)
        self.num_classes = max(int(outputs or 0), int(num_classes or 0)) or None
        self.classes = tuple(classes)

    def prepare(self, x: torch.Tensor, y: Any, *, train: bool, key: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class ids as they are; data with boxes (a list of (k, 5) rows ``[class, box]``
        per image, :mod:`cnnlab.data.boxes`) gives the class of each image's one object,
        which is how a localiser's classifier is trained first (8.6.2, step 1)."""
        return x, object_classes(y) if isinstance(y, list) else y

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if self._loss is not None:          # e.g. GoogLeNet's, with its auxiliary heads
            loss: torch.Tensor = self._loss(output, target)
            return loss
        return F.cross_entropy(output, target, label_smoothing=self.label_smoothing)

    def train_sums(self, output: Any, target: torch.Tensor) -> Sums:
        scores = output if isinstance(output, torch.Tensor) else output[0]
        return {"top1": scores.detach().argmax(dim=1).eq(target).sum()}

    def predict(self, output: Any) -> torch.Tensor:
        scores = super().predict(output).float()                       # N x classes
        if self._log_proba is not None:
            log_p: torch.Tensor = self._log_proba(scores)
            return log_p
        return F.log_softmax(scores, dim=1)

    def combine(self, predictions: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(predictions) == 1:
            return predictions[0]
        # the mean of the probabilities, in log space: log(mean_i exp(l_i))
        stacked = torch.stack(list(predictions))
        return torch.logsumexp(stacked, dim=0) - math.log(len(predictions))

    def eval_sums(self, prediction: torch.Tensor, target: torch.Tensor) -> Sums:
        c = max(prediction.shape[1], self.num_classes or 0)
        k = min(5, prediction.shape[1])
        top = prediction.topk(k, dim=1).indices                       # N x k
        hit = top.eq(target.view(-1, 1))
        return {"loss": -prediction.gather(1, target.view(-1, 1)).sum(),
                "top1": hit[:, 0].sum(), "top5": hit.any(dim=1).sum(),
                "confusion": confusion_matrix(top[:, 0], target, c)}

    def figures(self, sums: Mapping[str, torch.Tensor], n: int) -> dict[str, Any]:
        out = super().figures(sums, n)
        if "top5" in out:
            out["error"], out["top5_error"] = 1.0 - out["top1"], 1.0 - out["top5"]
        if "confusion" in sums:
            out["per_class_top1"] = [None if math.isnan(v) else v for v in
                                     per_class_accuracy(sums["confusion"].cpu()).tolist()]
        return out

    def summary(self, figures: Mapping[str, Any]) -> str:
        return (f"test accuracy {100 * figures['top1']:.2f}% "
                f"(error {100 * figures['error']:.2f}%)")

    @classmethod
    def describe(cls, figures: Mapping[str, Any]) -> str:
        return (f"top-1 accuracy {100 * figures['top1']:.2f}% (error "
                f"{100 * figures['error']:.2f}%), top-5 {100 * figures['top5']:.2f}%, loss "
                f"{figures['loss']:.4f}")

    def write_outputs(self, folder: Path, sums: Mapping[str, torch.Tensor],
                      records: Sequence[Mapping[str, Any]], plots: bool) -> None:
        """The last evaluation's confusion matrix (JSON) and, with ``plots``, the PNG plots."""
        from cnnlab.train.metrics import write_confusion

        matrix = sums["confusion"].cpu()
        names = list(self.classes) if len(self.classes) == matrix.shape[0] else None
        write_confusion(folder, matrix, names)
        if plots:
            from cnnlab.train.plots import write_plots

            write_plots(folder, list(records), matrix, names)


# -- which task a model trains with ------------------------------------------------------------

def task_name(model: nn.Module) -> str:
    """The task a model declares (its ``task`` attribute, e.g. the autoencoders'
    ``"reconstruction"``); classifiers declare none: ``"classification"``."""
    return str(getattr(model, "task", Classification.name))


def object_classes(targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N,) class ids of data with boxes, one object per image: each (1, 5) row's class."""
    counts = {len(t) for t in targets}
    if counts != {1}:
        raise CnnlabError(f"these images hold {sorted(counts)} objects each, but a class (or "
                          "one box) per image needs exactly one object per image: use "
                          "single-object data (e.g. `cnnlab make-data mnist-single`), or "
                          "`cnnlab detect` for several")
    return torch.stack([t[0, 0] for t in targets]).round().long()


# each task by its name (the weights' metadata "task") -> where its class lives; a task beside
# its application (cnnlab.apps) is imported only when asked for
_TASKS = {"classification": "cnnlab.train.tasks:Classification",
          "reconstruction": "cnnlab.train.reconstruction:Reconstruction",
          "localization": "cnnlab.apps.localize:Localization"}


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass called ``name``."""
    import importlib

    where = _TASKS.get(name)
    if where is None:
        raise CnnlabError(f"unknown task {name!r}: cnnlab trains {', '.join(_TASKS)}; write a "
                          "Task and pass it to train(task=...)")
    module, _, cls = where.partition(":")
    found: type[Task] = getattr(importlib.import_module(module), cls)
    return found


def adapt(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The network that ``config.task`` trains, made from ``model`` (``--task auto``: the
    model as it is, for the task it declares)."""
    from cnnlab.train.config import TASKS

    wanted = TASKS[config.task]
    return model if wanted is None else task_class(wanted).adapt(model)


def task_for(model: nn.Module, config: TrainConfig, num_classes: int = 0,
             classes: Sequence[str] = ()) -> Task:
    """The task that trains (and evaluates) ``model`` under the settings ``config`` (a
    :class:`~cnnlab.train.TrainConfig`): the model's declared task (:func:`task_name`),
    built from the settings that concern it; settings of another task are refused."""
    name = task_name(model)
    if name == Classification.name:
        for setting, value, off in (("loss", config.loss, "auto"),
                                    ("denoise", config.denoise, 0.0)):
            if value != off:
                raise CnnlabError(f"{setting}={value!r} is a setting of autoencoders, but "
                                  f"{config.model!r} is a classifier (cross-entropy); drop "
                                  f"--{setting}")
        return Classification(model, num_classes, config.label_smoothing, classes)
    task = task_class(name)
    from_config = getattr(task, "from_config", None)
    if not callable(from_config):
        raise CnnlabError(f"task {name!r} has no from_config(config); pass the task to "
                          "train(task=...)")
    built: Task = from_config(config)
    return built
